"""Names of the state buffers a genome needs (plain data: shared by the compiler and ``show``).

Buffers are named by what they hold, so two terms reading one statistic share it and a
checkpoint reads like the rule: ``momentum.grad.beta1``, ``second_moment.grad.beta2``.
"""

from __future__ import annotations

from evolveopt.genome.registry import LOCI, PARTS, locus_slot_kinds
from evolveopt.genome.schema import Genome, Signal, Term, fallback_genome


def signal_name(signal: Signal) -> str:
    """A signal by its kind and the genes it reads: ``grad``, ``nesterov_grad(beta2)``, ``corrected_grad(beta1,gamma)``."""
    genes = PARTS["signal"].genes(signal.kind, signal)
    return f"{signal.kind}({','.join(genes)})" if genes else signal.kind


def normalized_name(term: Term) -> str:
    """What a normalize-first term's momentum averages: its signal divided as its precondition says."""
    pre = term.precondition
    mode = f"atan2({pre.a},{pre.b})" if pre.eps_mode == "atan2" else f"{pre.eps_mode}({pre.eps})"
    extras = ["bc" if pre.bias_correction else "", "rectify" if pre.rectify else "",
              f"clip({pre.clip})" if pre.clip else ""]
    return ",".join([signal_name(term.signal), precondition_slots(term)[-1], mode, *(e for e in extras if e)])


def _averaged(term: Term) -> str:
    """What the term's momentum averages: its signal, or the normalized signal (normalize_first)."""
    if term.order == "normalize_first":
        return f"normalized({normalized_name(term)})"
    return signal_name(term.signal)


def _momentum_slots(term: Term) -> list[tuple[str, str]]:
    mom = term.momentum
    slots = PARTS["momentum"].slot_names(mom.kind, mom, _averaged(term))
    if not mom.dampening:  # Σ βᵏx, not an average: a buffer of its own
        slots[0] = (f"{slots[0][0]}.sum", slots[0][1])
    return slots


def momentum_slot(term: Term) -> str:
    return _momentum_slots(term)[0][0]


def momentum_slots(term: Term) -> list[str]:
    """Buffer names of a term's momentum, in its registry row's order (what its function receives)."""
    return [name for name, _ in _momentum_slots(term)]


def _precondition_slots(term: Term) -> list[tuple[str, str]]:
    pre = term.precondition
    signal = signal_name(pre.signal)
    if pre.signal.kind == "residual":
        signal = f"residual({momentum_slot(term)})"
    slots = PARTS["precondition"].slot_names(pre.kind, pre, signal)
    if pre.stale:  # advanced after use, from v_0 = x_1²: not shareable with a fresh one
        slots = [(f"{name}.stale", kind) for name, kind in slots]
    return slots


def precondition_slots(term: Term) -> list[str]:
    """Buffer names of a term's second-moment statistic; the last is what the root is taken of."""
    return [name for name, _ in _precondition_slots(term)]


PARAM_SHAPED = "param_shaped"  # a buffer shaped like its parameter, starting at 0
PARAM_COPY = "param_copy"  # a buffer shaped like its parameter, starting as a copy of it (schedule-free z)
PER_MEMBER = "per_member"  # one number per model (0-d, or [P] for a population), starting at 1
PER_MEMBER_ZERO = "per_member_zero"  # the same, starting at 0 (schedule-free lr_max and weight sum)
# Adafactor's factored statistic of a tensor with >= 2 dims per member (its last two dims n×m): the rows
# slot holds R [..., n, 1], the columns slot C [..., 1, m]; for a tensor of fewer dims the rows slot holds a
# full, parameter-shaped v and the columns slot is empty ([..., 0]).
FACTORED_ROWS = "factored_rows"
FACTORED_COLUMNS = "factored_columns"
PARAM_KINDS = (PARAM_SHAPED, PARAM_COPY)  # the kinds that cost a parameter-sized buffer
TENSOR_KINDS = (*PARAM_KINDS, FACTORED_ROWS, FACTORED_COLUMNS)  # buffers with the parameter's dtype and device


def state_slots(genome: Genome) -> dict[str, str]:
    """Every state buffer the genome's rule keeps per parameter tensor, with its kind."""
    slots: dict[str, str] = {}
    for term in genome.terms:
        signals = [term.signal] + ([term.precondition.signal] if term.precondition else [])
        for signal in signals:  # the previous gradient, shared by every signal reading it
            slots.update(dict.fromkeys(PARTS["signal"].variant(signal.kind).slots, PARAM_SHAPED))
        if term.momentum is not None:
            slots.update(_momentum_slots(term))
        if term.precondition is not None:
            slots.update(_precondition_slots(term))
    for key, value in genome.loci.items():
        slots.update(locus_slot_kinds(LOCI[key], value))
    return slots


def buffers_per_param(genome: Genome) -> int:
    """Parameter-sized state buffers (Adam 2, Lion 1, Adan 4); with a fallback rule, the larger of
    the two rules' counts (the bound a memory cap needs)."""
    counts = [rule_buffers(genome)]
    sub = fallback_genome(genome)
    if sub is not None:
        counts.append(rule_buffers(sub))
    return max(counts)


def rule_buffers(genome: Genome) -> int:
    """Parameter-sized buffers of the genome's own rule (not its fallback's). A factored statistic
    counts as one: its rows and columns are far smaller on matrices, but a vector keeps a full v,
    so one buffer is the bound (the count is a bound for memory caps, not an average)."""
    kinds = state_slots(genome).values()
    return sum(kind in PARAM_KINDS or kind == FACTORED_ROWS for kind in kinds)
