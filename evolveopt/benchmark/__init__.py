"""``evolveopt benchmark``: optimizers compared under one protocol on search or held-out tasks.

``protocol`` (equal quasi-random tuning, then fresh seeds), ``stats`` (steps to target,
bootstrap intervals, performance profiles), ``report`` (JSON, markdown, pictures).
"""
