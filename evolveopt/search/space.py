"""The search space: which structures and gene values the GA may draw.

A :class:`SearchSpace` lists the allowed choice for every structural slot; :func:`random_genome`
draws a valid genome from it with an explicit ``numpy.random.Generator``. Gene values are drawn
from each gene's search range: log-uniform for ``log`` genes, log-uniform in 1 − x for rates,
uniform otherwise. Every statistic's rate refers to one of ``beta1``..``beta3``, so the search
can tie two statistics to one gene (as Adan does) or keep them apart.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any

import numpy as np

from evolveopt.genome.genes import GENES, gene_spec
from evolveopt.genome.canonical import canonical_form
from evolveopt.genome.registry import LOCI, PARTS, Locus
from evolveopt.genome.schema import (EPS_MODES, GENE_SCHEDULE_KINDS, SCHEMA_VERSION, Genome, outside_step_genes,
                                     parse_genome, referenced_genes)
from evolveopt.genome.slots import buffers_per_param

RATES = ("beta1", "beta2", "beta3")


# One field per registry locus (registry.py: ``space_key`` and ``space_default``): its choices,
# "none" meaning absent (repeats weight the draw), or the probability of a locus with one variant.
_LociChoices = make_dataclass(
    "_LociChoices", [(locus.space_key, Any, field(default=locus.space_default)) for locus in LOCI.values()],
    frozen=True,
)


@dataclass(frozen=True)
class SearchSpace(_LociChoices):
    """Allowed choices per structural slot (names as in the genome schema; "none" = absent)."""

    max_terms: int = 4
    signals: tuple[str, ...] = ("grad", "grad", "grad", "grad_diff", "nesterov_grad")  # repeats weight; may add corrected_grad
    momenta: tuple[str, ...] = ("none", "ema", "ema_bc", "nesterov", "interp", "heavy_ball")
    preconditions: tuple[str, ...] = ("none", "ema", "ema_bc", "max", "sum", "belief")  # a config may add factored
    eps_modes: tuple[str, ...] = ("outside", "raw", "inside")
    rectify_probability: float = 0.1
    sign_probability: float = 0.2
    # Schema-2 term options: off by default, so seeded v1 searches draw what they drew (eps_modes may
    # also list clamp and atan2). Each is drawn only where its probability is above 0.
    stale_probability: float = 0.0  # a precondition divides by v_{t−1} (ADOPT)
    normalize_first_probability: float = 0.0  # a term with momentum and precondition normalizes first
    normalized_clip_probability: float = 0.0  # clamp(normalized, −c, c) on a precondition
    gene_schedules: tuple[str, ...] = ("none",)  # kinds a drawn genome may vary one gene with ("none" = no schedule)
    # ...and the loci fields above (layerwise, friction, weight_decay, schedules, clip, adaptor_probability,
    # loss_feedback_probability, cautious, ...). Loss feedback needs the loss every step: off by default.
    gene_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # overrides of search ranges
    max_buffers: int | None = None  # cap on parameter-sized state buffers (Adam keeps 2); None: no cap

    def allows(self, genome: Genome) -> bool:
        """Whether a genome fits the space's memory cap (after canonicalization)."""
        return self.max_buffers is None or buffers_per_param(canonical_form(genome)) <= self.max_buffers

    def search_range(self, gene: str) -> tuple[float, float]:
        return self.gene_ranges.get(gene) or gene_spec(gene).search

    def draws(self, locus: Locus) -> bool:
        """Whether random genomes and mutations may produce this locus."""
        setting = getattr(self, locus.space_key)
        if isinstance(setting, (int, float)):
            return setting > 0
        return any(option not in ("none", *([locus.default] if isinstance(locus.default, str) else []))
                   for option in setting)

    def in_play(self, locus: Locus) -> bool:
        """Loci of schema 1 always take part in draws (so seeded v1 searches repeat); later ones
        only where the space can draw them."""
        return locus.since_schema == 1 or self.draws(locus)


def full_space(**overrides: Any) -> SearchSpace:
    """A space that can draw every locus of the registry (each variant as often as its absence) and
    every term option: what the property tests sample, and the base of the frontier search space."""
    loci = {}
    for locus in LOCI.values():
        default = getattr(SearchSpace(), locus.space_key)
        if isinstance(default, (int, float)):
            loci[locus.space_key] = 0.5
        elif locus.key == "schedule":
            loci[locus.space_key] = locus.kinds
        else:
            loci[locus.space_key] = ("none",) * len(locus.kinds) + locus.kinds
    terms = dict(signals=("grad", "grad", "grad_diff", "nesterov_grad"), eps_modes=EPS_MODES,
                 rectify_probability=0.2, sign_probability=0.2)
    return SearchSpace(**{**loci, **terms, **overrides})


def allowed_choices(name: str) -> set[str]:
    """Every option the search-space field ``name`` may list."""
    for locus in LOCI.values():
        if locus.space_key == name:
            return {"none", *locus.kinds} - ({"none"} if locus.key == "schedule" else set())
    if name == "eps_modes":
        return set(EPS_MODES)
    if name == "gene_schedules":
        return {"none", *GENE_SCHEDULE_KINDS}
    if name == "signals":  # schema 2's corrected_grad (MARS) is drawn only where a config lists it
        return {*SearchSpace().signals, "corrected_grad"}
    if name == "preconditions":  # schema 2's factored statistic (Adafactor) is drawn only where a config lists it
        return {*SearchSpace().preconditions, "factored"}
    return set(getattr(SearchSpace(), name))


def draw_gene(rng: np.random.Generator, name: str, space: SearchSpace) -> float:
    """A value from the gene's search range, on its own scale."""
    spec = gene_spec(name)
    low, high = space.search_range(name)
    if spec.scale == "log" and low > 0:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    if spec.scale == "beta":
        a, b = math.log(1 - high), math.log(1 - low)
        return float(1 - math.exp(rng.uniform(a, b)))
    return float(rng.uniform(low, high))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _rate(rng: np.random.Generator) -> str:
    return RATES[int(rng.integers(len(RATES)))]


def _random_term(rng: np.random.Generator, space: SearchSpace, index: int) -> dict[str, Any]:
    term: dict[str, Any] = {"weight": f"w{index + 1}"}
    signal = _pick(rng, space.signals)
    term["signal"] = {"kind": signal, "beta": _rate(rng)} if signal == "nesterov_grad" else signal
    if signal == "corrected_grad":  # MARS's c, clipped to norm ≤ clip per tensor (schema 2; only where listed)
        term["signal"] = {"kind": signal, "beta": _rate(rng), "gamma": "correction", "clip": "clip"}
    momentum = _pick(rng, space.momenta)
    if momentum != "none":
        term["momentum"] = {
            "ema": {"kind": "ema", "beta": "beta1"},
            "ema_bc": {"kind": "ema", "beta": "beta1", "bias_correction": True},
            "heavy_ball": {"kind": "ema", "beta": "beta1", "dampening": False},
            "nesterov": {"kind": "nesterov", "beta": "beta1"},
            "interp": {"kind": "interp", "beta": "beta2", "mix": "beta1"},
        }[momentum]
        if momentum != "interp" and rng.random() < 0.3:
            term["momentum"]["beta"] = _rate(rng)
    precondition = _pick(rng, space.preconditions)
    if precondition != "none":
        pre: dict[str, Any] = {"kind": "ema" if precondition == "ema_bc" else precondition, "eps": "eps"}
        if precondition != "sum":
            pre["beta"] = "beta2" if rng.random() < 0.7 else _rate(rng)
            pre["bias_correction"] = precondition == "ema_bc" or (precondition != "ema" and rng.random() < 0.5)
            if rng.random() < space.rectify_probability:
                pre["rectify"] = True
        if precondition == "belief" and "momentum" in term:
            pre["signal"] = "residual"
        excluded = PARTS["precondition"].variant(pre["kind"]).excludes.get("eps_mode", (None,))[0]
        modes = tuple(m for m in space.eps_modes if m != excluded)
        set_eps_mode(pre, _pick(rng, modes or ("outside",)))
        _draw_v2_precondition(rng, space, term, pre)
        term["precondition"] = pre
    if rng.random() < space.sign_probability:
        term["sign"] = True
    return term


def set_eps_mode(pre: dict[str, Any], mode: str) -> None:
    """Give a drawn precondition eps_mode ``mode`` and the genes its registry row draws (ε, or atan2's a
    and b), dropping those of the other modes; a gene the precondition names already stays."""
    modes = PARTS["eps_mode"]
    pre["eps_mode"] = mode
    draw = modes.variant(mode).draw
    for key in modes.keys()[1:]:
        if key not in draw:
            pre.pop(key, None)
    for key, gene in draw.items():
        pre.setdefault(key, gene)


def _draw_v2_precondition(rng: np.random.Generator, space: SearchSpace, term: dict[str, Any], pre: dict[str, Any]) -> None:
    """The schema-2 options of a drawn precondition; no draw from ``rng`` for an option at probability 0."""
    if space.stale_probability > 0 and rng.random() < space.stale_probability:
        pre["stale"] = True
        if "bias_correction" in pre:
            pre["bias_correction"] = False
        pre.pop("rectify", None)
    if space.normalized_clip_probability > 0 and rng.random() < space.normalized_clip_probability:
        pre["clip"] = "clip"
    if (space.normalize_first_probability > 0 and "momentum" in term and pre.get("signal") != "residual"
            and rng.random() < space.normalize_first_probability):
        term["order"] = "normalize_first"


HORIZONS = (100, 300, 1000)  # steps of a drawn warmup schedule
# Genes a drawn schedule may vary, by kind (schema.py refuses lr, term weights and the lr schedule's genes).
SCHEDULED = {"linear_warmup": ("alpha", "beta1", "weight_decay", "clip"), "halflife_warmup": ("beta3", "beta2"),
             "power": ("clip", "beta2")}


def draw_gene_schedule(rng: np.random.Generator, data: dict[str, Any], space: SearchSpace) -> dict[str, Any] | None:
    """One gene schedule for a drawn structure (None: the space allows none, or no gene fits the kind)."""
    kind = _pick(rng, space.gene_schedules)
    if kind == "none":
        return None
    probe = _probe({k: v for k, v in data.items() if k != "gene_schedules"})
    used = referenced_genes(probe) - outside_step_genes(probe)
    genes = [g for g in SCHEDULED[kind] if g in used]
    if kind == "halflife_warmup":
        genes = [g for g in genes if "beta1" in used and g != "beta1"]
    if not genes:
        return None
    gene = genes[int(rng.integers(len(genes)))]
    if kind == "power":
        schedule: dict[str, Any] = {"kind": kind, "power": -0.8 if gene.startswith("beta") else 0.25}
        if not gene.startswith("beta"):
            schedule["offset"] = 1
    else:
        schedule = {"kind": kind, "horizon": HORIZONS[int(rng.integers(len(HORIZONS)))]}
        if kind == "halflife_warmup":
            schedule["start"] = "beta1"
    return {gene: schedule}


def random_genome(rng: np.random.Generator, space: SearchSpace = SearchSpace(), tries: int = 1000) -> Genome:
    """A valid genome drawn from ``space`` (structure first, then a value for every gene it uses),
    redrawn until it fits the space's memory cap."""
    for _ in range(tries):
        genome = _draw_genome(rng, space)
        if space.allows(genome):
            return genome
    raise ValueError(f"no genome within max_buffers={space.max_buffers} after {tries} draws")


def _draw_genome(rng: np.random.Generator, space: SearchSpace) -> Genome:
    terms = [_random_term(rng, space, i) for i in range(int(rng.integers(1, space.max_terms + 1)))]
    data: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "terms": terms}
    for locus in sorted(LOCI.values(), key=lambda locus: locus.draw_rank):
        if space.in_play(locus):
            value = draw_locus(rng, locus, space)
            if value is not None:
                data[locus.key] = value
    if space.gene_schedules != ("none",):
        schedules = draw_gene_schedule(rng, data, space)
        if schedules:
            data["gene_schedules"] = schedules
    return with_drawn_genes(rng, with_fallback(data), space)


# The fallback a drawn orthogonalizing genome gets for its 0-/1-D tensors (biases, norm gains): AdamW with
# genes of its own (drawn like any gene). No random number is drawn for it, so spaces without
# orthogonalize draw exactly as before.
DRAWN_FALLBACK: dict[str, Any] = {
    "lr_ratio": "fallback_lr_ratio",
    "terms": [{"signal": "grad",
               "momentum": {"kind": "ema", "beta": "fallback_beta1", "bias_correction": True},
               "precondition": {"kind": "ema", "beta": "fallback_beta2", "eps": "fallback_eps",
                                "bias_correction": True}}],
    "weight_decay": {"mode": "decoupled", "rate": "fallback_weight_decay"},
}


def with_fallback(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with :data:`DRAWN_FALLBACK` added where it orthogonalizes and has no fallback (in place;
    an estimator drawn beside it is dropped, as a genome cannot have both)."""
    if data.get("orthogonalize") not in (None, "none") and "fallback" not in data:
        data["fallback"] = copy.deepcopy(DRAWN_FALLBACK)
    if "fallback" in data:
        data.pop("estimator", None)  # a step-size estimate is one for the whole model: no fallback beside it
    return data


def draw_locus(rng: np.random.Generator, locus: Locus, space: SearchSpace) -> Any:
    """A random value of ``locus`` as genome data (None: absent), as its registry row says."""
    setting = getattr(space, locus.space_key)
    if isinstance(setting, (int, float)):  # a locus of one variant, present with this probability
        if rng.random() >= setting:
            return None
        kind = locus.variants[0].kind
    else:
        kind = _pick(rng, setting)
        if kind == "none" or locus.value_type is None:
            return kind if locus.value_type is None else None
    variant = locus.variant(kind)
    data = {f: _rate(rng) if gene == "<rate>" else gene for f, gene in variant.draw.items()}
    if locus.tag:
        if locus.bare and not data:
            return kind
        data = {locus.tag: kind, **data}
    return data


def with_drawn_genes(rng: np.random.Generator, data: dict[str, Any], space: SearchSpace,
                     known: dict[str, float] | None = None) -> Genome:
    """Fill ``data['genes']`` for every gene the structure uses: from ``known`` where given, else drawn."""
    known = known or {}
    genes = {n: known[n] if n in known else draw_gene(rng, n, space) for n in structure_genes(data)}
    return parse_genome({**data, "genes": genes}, source="random genome")


def structure_genes(data: dict[str, Any]) -> list[str]:
    """Gene names a genome dict's structure refers to, ``lr`` first, then sorted."""
    return ["lr"] + sorted(referenced_genes(_probe(data)) - {"lr"})


def _probe(data: dict[str, Any]) -> Genome:
    """The structure of a genome dict, parsed with a placeholder value for every gene."""
    every = {name: _placeholder(name) for name in [*GENES, *(f"w{i}" for i in range(1, 10))]}
    return parse_genome({**data, "genes": every}, source="structure", allow_unused_genes=True)


def prune_gene_schedules(data: dict[str, Any]) -> None:
    """Drop (in place) the gene schedules of genes the rest of the structure no longer uses (after a
    mutation or crossover removed the part that read them)."""
    if not data.get("gene_schedules"):
        data.pop("gene_schedules", None)
        return
    probe = _probe({k: v for k, v in data.items() if k != "gene_schedules"})
    used = referenced_genes(probe) - outside_step_genes(probe)
    kept = {g: s for g, s in data["gene_schedules"].items() if g in used}
    if kept:
        data["gene_schedules"] = kept
    else:
        del data["gene_schedules"]


def _placeholder(name: str) -> float:
    return gene_spec(name).search[1]  # any valid, non-zero value: only the structure is read
