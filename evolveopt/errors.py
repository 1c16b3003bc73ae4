"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class EvolveOptError(Exception):
    """Base class of every error caused by bad input (files, options, values)."""


class GenomeError(EvolveOptError, ValueError):
    """A genome file or genome data is malformed, or names something that does not exist.

    The message names the source (file or 'genome'), the field path and what is allowed,
    e.g. ``genomes/adam.yaml: terms[0].momentum.beta: unknown gene 'beta7' (genes: lr, beta1)``.
    """


class OptimizerUsageError(EvolveOptError, ValueError):
    """The compiled optimizer was used in a way its genome does not support."""


class EvaluationError(EvolveOptError, ValueError):
    """An evaluation was asked for with an impossible budget, no seeds, or similar."""
