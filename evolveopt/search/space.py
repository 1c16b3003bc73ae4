"""The search space: which structures and gene values the GA may draw.

A :class:`SearchSpace` lists the allowed choice for every structural slot; :func:`random_genome`
draws a valid genome from it with an explicit ``numpy.random.Generator``. Gene values are drawn
from each gene's search range: log-uniform for ``log`` genes, log-uniform in 1 − x for rates,
uniform otherwise. Every statistic's rate refers to one of ``beta1``..``beta3``, so the search
can tie two statistics to one gene (as Adan does) or keep them apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evolveopt.genome.genes import GENES, gene_spec
from evolveopt.genome.canonical import canonical_form
from evolveopt.genome.schema import Genome, parse_genome, referenced_genes
from evolveopt.genome.slots import buffers_per_param

RATES = ("beta1", "beta2", "beta3")


@dataclass(frozen=True)
class SearchSpace:
    """Allowed choices per structural slot (names as in the genome schema; "none" = absent)."""

    max_terms: int = 4
    signals: tuple[str, ...] = ("grad", "grad", "grad", "grad_diff", "nesterov_grad")  # repeats weight the draw
    momenta: tuple[str, ...] = ("none", "ema", "ema_bc", "nesterov", "interp", "heavy_ball")
    preconditions: tuple[str, ...] = ("none", "ema", "ema_bc", "max", "sum", "belief")
    eps_modes: tuple[str, ...] = ("outside", "raw", "inside")
    rectify_probability: float = 0.1
    sign_probability: float = 0.2
    layerwise: tuple[str, ...] = ("none", "none", "trust_ratio", "rms_norm")
    friction: tuple[str, ...] = ("none", "none", "elementwise", "tensor")
    weight_decay: tuple[str, ...] = ("none", "l2", "decoupled", "decoupled", "proximal", "in_direction")
    schedules: tuple[str, ...] = ("constant", "constant", "cosine", "warmup_cosine", "linear_decay", "linear_warmup")
    clip: tuple[str, ...] = ("none", "none", "none", "global_norm", "tensor_norm", "value")
    adaptor_probability: float = 0.15
    loss_feedback_probability: float = 0.0  # needs the loss every step: off unless a config turns it on
    gene_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # overrides of search ranges
    max_buffers: int | None = None  # cap on parameter-sized state buffers (Adam keeps 2); None: no cap

    def allows(self, genome: Genome) -> bool:
        """Whether a genome fits the space's memory cap (after canonicalization)."""
        return self.max_buffers is None or buffers_per_param(canonical_form(genome)) <= self.max_buffers

    def search_range(self, gene: str) -> tuple[float, float]:
        return self.gene_ranges.get(gene) or gene_spec(gene).search


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
        pre["eps_mode"] = _pick(rng, space.eps_modes)
        term["precondition"] = pre
    if rng.random() < space.sign_probability:
        term["sign"] = True
    return term


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
    data: dict[str, Any] = {"schema_version": 1, "terms": terms}
    layerwise = _pick(rng, space.layerwise)
    if layerwise == "trust_ratio":
        data["layerwise"] = {"kind": "trust_ratio", "clamp": "trust_clamp", "eps": "trust_eps"}
    elif layerwise == "rms_norm":
        data["layerwise"] = {"kind": "rms_norm", "eps": "eps"}
    data["friction"] = _pick(rng, space.friction)
    decay = _pick(rng, space.weight_decay)
    if decay != "none":
        data["weight_decay"] = {"mode": decay, "rate": "weight_decay"}
    schedule = _pick(rng, space.schedules)
    data["schedule"] = {"kind": schedule, "warmup": "warmup"} if "warmup" in schedule else schedule
    clip = _pick(rng, space.clip)
    if clip != "none":
        data["clip"] = {"mode": clip, "threshold": "clip"}
    if rng.random() < space.adaptor_probability:
        data["adaptor"] = {"beta": _rate(rng), "alpha": "alpha"}
    if rng.random() < space.loss_feedback_probability:
        data["loss_feedback"] = {"beta": "beta3", "low": "feedback_low", "high": "feedback_high"}
    return with_drawn_genes(rng, data, space)


def with_drawn_genes(rng: np.random.Generator, data: dict[str, Any], space: SearchSpace,
                     known: dict[str, float] | None = None) -> Genome:
    """Fill ``data['genes']`` for every gene the structure uses: from ``known`` where given, else drawn."""
    known = known or {}
    genes = {n: known[n] if n in known else draw_gene(rng, n, space) for n in structure_genes(data)}
    return parse_genome({**data, "genes": genes}, source="random genome")


def structure_genes(data: dict[str, Any]) -> list[str]:
    """Gene names a genome dict's structure refers to, ``lr`` first, then sorted."""
    every = {name: _placeholder(name) for name in [*GENES, *(f"w{i}" for i in range(1, 10))]}
    probe = parse_genome({**data, "genes": every}, source="structure", allow_unused_genes=True)
    return ["lr"] + sorted(referenced_genes(probe) - {"lr"})


def _placeholder(name: str) -> float:
    return gene_spec(name).search[1]  # any valid, non-zero value: only the structure is read
