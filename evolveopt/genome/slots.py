"""Names of the state buffers a genome needs (plain data: shared by the compiler and ``show``).

Buffers are named by what they hold, so two terms reading one statistic share it and a
checkpoint reads like the rule: ``momentum.grad.beta1``, ``second_moment.grad.beta2``.
"""

from __future__ import annotations

from evolveopt.genome.registry import LOCI, locus_copies, locus_slots
from evolveopt.genome.schema import Genome, Signal, Term


def signal_name(signal: Signal) -> str:
    return f"{signal.kind}({signal.beta})" if signal.beta else signal.kind


def momentum_slot(term: Term) -> str:
    mom = term.momentum
    name = f"momentum.{signal_name(term.signal)}.{mom.beta}"
    if mom.kind == "interp":  # Lion reads m_{t-1} before updating: a buffer of its own
        return f"lion_{name}.{mom.mix}"
    if mom.kind == "nadam":  # the NAdam readout depends on its own μ product
        return f"nadam_{name}.{mom.decay}"
    return name if mom.dampening else f"{name}.sum"


def nadam_slot(term: Term) -> str:
    return f"nadam_mu_product.{signal_name(term.signal)}.{term.momentum.beta}.{term.momentum.decay}"


def precondition_slots(term: Term) -> list[str]:
    """Buffer names of a term's second-moment statistic; the last is what the root is taken of."""
    pre = term.precondition
    signal = signal_name(pre.signal)
    if pre.signal.kind == "residual":
        signal = f"residual({momentum_slot(term)})"
    if pre.kind == "sum":
        return [f"sum_of_squares.{signal}"]
    if pre.kind == "belief":
        return [f"belief.{signal}.{pre.beta}.{pre.eps}"]
    base = f"second_moment.{signal}.{pre.beta}"
    return [base, f"second_moment_max.{signal}.{pre.beta}"] if pre.kind == "max" else [base]


PARAM_SHAPED = "param_shaped"  # a buffer shaped like its parameter, starting at 0
PARAM_COPY = "param_copy"  # a buffer shaped like its parameter, starting as a copy of it (Prodigy's θ0)
PARAM_SIZED = (PARAM_SHAPED, PARAM_COPY)
PER_MEMBER = "per_member"  # one number per model (0-d, or [P] for a population), starting at 1


def state_slots(genome: Genome) -> dict[str, str]:
    """Every state buffer the genome's rule keeps per parameter tensor, with its kind."""
    slots: dict[str, str] = {}
    for term in genome.terms:
        signals = [term.signal] + ([term.precondition.signal] if term.precondition else [])
        if any(s.kind in ("grad_diff", "nesterov_grad") for s in signals):
            slots["prev_grad"] = PARAM_SHAPED
        if term.momentum is not None:
            slots[momentum_slot(term)] = PARAM_SHAPED
            if term.momentum.kind == "nadam":
                slots[nadam_slot(term)] = PER_MEMBER
        if term.precondition is not None:
            for slot in precondition_slots(term):
                slots[slot] = PARAM_SHAPED
    for key, value in genome.loci.items():
        for slot in locus_slots(LOCI[key], value):
            slots[slot] = PARAM_SHAPED
        for slot in locus_copies(LOCI[key], value):
            slots[slot] = PARAM_COPY
    return slots


def buffers_per_param(genome: Genome) -> int:
    """Parameter-sized state buffers (Adam 2, Lion 1, Adan 4)."""
    return sum(kind in PARAM_SIZED for kind in state_slots(genome).values())
