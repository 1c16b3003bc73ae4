"""The gene vocabulary: every continuous hyperparameter a genome may carry.

A gene is a named float. Structure fields of a genome refer to genes by name (``beta: beta1``),
so one gene can feed several primitives (Adan uses ``beta2`` as an EMA rate and as a term
weight) and every training script can override it by its canonical name (``lr``, ``beta1``,
``beta2``, ``beta3``, ``eps``, ``weight_decay``).

Each gene has a valid range (checked on load), a scale that says how it is mutated and rounded
(``log``: multiplicative; ``beta``: on 1 - x, for rates near 1; ``linear``: additive), and a
search range used when the GA draws a fresh value.

Each gene also has a *role*, and every structure field that refers to a gene says which roles it
takes: a momentum's ``beta`` takes a rate (``beta1``..``beta3``), a term's ``weight`` a term weight
(``w1``..``w9``) or a rate tied to it (Adan's ``beta2``). A reference out of role is refused on
load, so canonicalization, which renames and merges term weights, never changes another field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

SIGNIFICANT_DIGITS = 4  # the canonical grid: genes are rounded to this many significant digits


@dataclass(frozen=True)
class GeneSpec:
    """Range, scale and meaning of one gene."""

    low: float
    high: float
    scale: str  # "log" | "beta" | "linear"
    search: tuple[float, float]
    doc: str
    role: str
    high_open: bool = False  # True: ``high`` itself is not allowed (betas < 1)
    low_open: bool = False  # True: ``low`` itself is not allowed (clip > 0)

    def contains(self, value: float) -> bool:
        if math.isnan(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe_range(self) -> str:
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"{left}{self.low:g}, {self.high:g}{right}"


_BETA = dict(low=0.0, high=1.0, high_open=True, scale="beta", role="rate")

GENES: dict[str, GeneSpec] = {
    "lr": GeneSpec(0.0, 100.0, "log", (1e-5, 1e-1), "learning rate η", "lr"),
    "beta1": GeneSpec(**_BETA, search=(0.5, 0.99), doc="first EMA rate β1"),
    "beta2": GeneSpec(**_BETA, search=(0.8, 0.9999), doc="second EMA rate β2"),
    "beta3": GeneSpec(**_BETA, search=(0.8, 0.9999), doc="third EMA rate β3"),
    "eps": GeneSpec(0.0, 1.0, "log", (1e-10, 1e-4), "numerical floor ε", "eps"),
    "weight_decay": GeneSpec(0.0, 10.0, "log", (1e-6, 1e-1), "weight decay λ", "weight_decay"),
    "alpha": GeneSpec(-100.0, 100.0, "linear", (-5.0, 1.0),
                      "coefficient α (ALTO's adaptor weight of EMA(g_t - g_{t-1}); AdEMAMix's slow-momentum weight)",
                      "coefficient"),
    "clip": GeneSpec(0.0, 1e6, "log", (0.1, 10.0), "clipping threshold c", "threshold", low_open=True),
    "warmup": GeneSpec(0.0, 1.0, "linear", (0.0, 0.3), "warmup length as a fraction of total_steps", "fraction"),
    "gamma": GeneSpec(0.0, 1.0, "beta", (0.99, 0.9999), "exponential decay factor per step γ", "decay_factor",
                      low_open=True),
    "trust_clamp": GeneSpec(0.0, math.inf, "log", (1.0, 100.0), "upper clamp of ‖θ‖ in the trust ratio", "clamp",
                            low_open=True),
    "trust_eps": GeneSpec(0.0, 1.0, "log", (1e-10, 1e-4), "floor ε_τ of the trust-ratio denominator", "eps"),
    "feedback_low": GeneSpec(0.0, 10.0, "log", (0.01, 0.5), "Eve lower threshold k", "feedback_bound"),
    "feedback_high": GeneSpec(0.0, 1000.0, "log", (2.0, 20.0), "Eve upper threshold K", "feedback_bound"),
    "momentum_decay": GeneSpec(0.0, 1.0, "log", (1e-3, 1e-2), "NAdam momentum-schedule rate ψ", "momentum_decay"),
    "avg_r": GeneSpec(0.0, 10.0, "linear", (0.0, 1.0),
                      "schedule-free averaging: power r of t in the weights t^r·lr_max^p", "averaging_power"),
    "avg_lr_power": GeneSpec(0.0, 10.0, "linear", (0.0, 4.0),
                             "schedule-free averaging: power p of lr_max in the weights t^r·lr_max^p",
                             "averaging_power"),
    # The fallback sub-rule's own hyperparameters (schema.Fallback: the tensors a matrix rule such as Muon's
    # does not take). Its lr is a ratio ρ of the genome's η_t, so lr schedulers and per-group lr drive both.
    "fallback_lr_ratio": GeneSpec(0.0, 1e4, "log", (0.01, 1.0), "fallback learning rate as a multiple ρ of η",
                                  "lr_ratio"),
    "fallback_beta1": GeneSpec(**_BETA, search=(0.5, 0.99), doc="fallback first EMA rate"),
    "fallback_beta2": GeneSpec(**_BETA, search=(0.8, 0.9999), doc="fallback second EMA rate"),
    "fallback_eps": GeneSpec(0.0, 1.0, "log", (1e-10, 1e-4), "fallback numerical floor", "eps"),
    "fallback_weight_decay": GeneSpec(0.0, 10.0, "log", (1e-6, 1e-1), "fallback weight decay", "weight_decay"),
    "a": GeneSpec(0.0, 100.0, "log", (0.5, 3.0), "output scale a of a·atan2(y, b·√v̂) (Adam-atan2)", "atan2_scale",
                  low_open=True),
    "b": GeneSpec(0.0, 100.0, "log", (0.25, 4.0), "denominator scale b of a·atan2(y, b·√v̂) (Adam-atan2)",
                  "atan2_scale", low_open=True),
    "d0": GeneSpec(0.0, 1.0, "log", (1e-8, 1e-4), "initial step-size estimate d0 (Prodigy)", "initial_estimate",
                   low_open=True),
    "d_coef": GeneSpec(0.0, 100.0, "log", (0.1, 10.0), "coefficient of the step-size estimate (Prodigy d_coef)",
                       "estimate_coefficient", low_open=True),
    "growth_rate": GeneSpec(1.0, math.inf, "linear", (1.01, 1.5), "largest growth of the estimate per step (Prodigy)",
                            "growth_rate"),  # linear: multiplicative steps of a value near 1 would clamp at 1
    # Adafactor (Shazeer & Stern 2018): the relative step's floor of rms(θ) and the update-RMS clip.
    "eps2": GeneSpec(0.0, 1.0, "log", (1e-5, 1e-2), "floor ε2 of rms(θ) in the relative step (Adafactor)", "eps"),
    "update_clip": GeneSpec(0.0, 1e6, "log", (0.5, 4.0), "update-RMS clip d: u ← u/max(1, rms(u)/d) (Adafactor)",
                            "threshold", low_open=True),
    "correction": GeneSpec(0.0, 100.0, "log", (1e-3, 0.1),
                           "MARS's correction strength γ: c = g + γ·β/(1−β)·(g_t − g_{t−1})", "correction"),
}

ROLES: dict[str, str] = {  # role -> what a field of that role means, for messages
    "lr": "the learning rate", "rate": "an EMA rate", "weight": "a term weight", "eps": "a numerical floor",
    "weight_decay": "a weight-decay rate", "coefficient": "the adaptor's weight", "threshold": "a clipping threshold",
    "fraction": "a fraction of total_steps", "decay_factor": "a decay factor per step", "clamp": "a trust-ratio clamp",
    "feedback_bound": "a loss-feedback bound", "momentum_decay": "a momentum-schedule rate",
    "averaging_power": "a power in the averaging weights",
    "lr_ratio": "a learning-rate ratio",
    "atan2_scale": "a scale of eps_mode atan2",
    "initial_estimate": "an initial step-size estimate", "estimate_coefficient": "a step-size estimate's coefficient",
    "growth_rate": "a step-size estimate's growth rate",
    "correction": "a gradient-correction strength",
}

_WEIGHT = GeneSpec(-100.0, 100.0, "linear", (-2.0, 2.0), "weight of a direction term", "weight")
WEIGHT_GENE = re.compile(r"^w[1-9]$")
OVERRIDABLE = ("lr", "beta1", "beta2", "beta3", "eps", "weight_decay")


def gene_spec(name: str) -> GeneSpec | None:
    """The spec of gene ``name``, or None if no such gene exists."""
    if name in GENES:
        return GENES[name]
    if WEIGHT_GENE.match(name):
        return _WEIGHT
    return None


def range_problem(name: str, value: int | float) -> str | None:
    """Why ``value`` is not allowed for the (existing) gene ``name``, or None if it is."""
    spec = gene_spec(name)
    if spec.contains(float(value)):
        return None
    return f"{value!r} is out of range {spec.describe_range()} ({spec.doc})"


def role_problem(name: str, roles: tuple[str, ...]) -> str | None:
    """Why the (existing) gene ``name`` cannot fill a field taking ``roles``, or None if it can."""
    role = gene_spec(name).role
    if role in roles:
        return None
    takes = " or ".join(f"{ROLES[r]} ({', '.join(genes_of_role(r))})" for r in roles)
    return f"gene '{name}' is {ROLES[role]}; this field takes {takes}"


def genes_of_role(role: str) -> list[str]:
    return ["w1..w9"] if role == "weight" else [name for name, spec in GENES.items() if spec.role == role]


def known_gene_names() -> str:
    return ", ".join([*GENES, "w1..w9"])


def round_gene(name: str, value: float) -> float:
    """Round a gene to the canonical grid (significant digits on x, or on 1 - x for rates)."""
    spec = gene_spec(name)
    if value == 0.0 or math.isinf(value):
        return float(value)
    if spec is not None and spec.scale == "beta":
        return 1.0 - float(f"{1.0 - value:.{SIGNIFICANT_DIGITS}g}")
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


# YAML 1.1 (PyYAML) reads a float without a dot, such as 3e-4 or 1e3, as a string.
_YAML_MISSED_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def as_written_number(value: object) -> object:
    """A number written as people write it (``3e-4``, ``1e3``) that YAML 1.1 left as text, as a
    number (an integral one, such as ``3e2``, as an int); any other value unchanged."""
    if isinstance(value, str) and _YAML_MISSED_FLOAT.match(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    return value
