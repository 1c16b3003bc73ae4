"""Property: a genome and its canonical form are the same rule.

The evaluator trains the canonical form, so canonicalization (rounding, merging equal terms,
renaming term weights, dropping unused genes) must never change the steps a rule takes, and the
canonical form must itself be a valid genome file. Genomes are drawn over the whole language:
every term part, shared and tied weights, zero weights, duplicate terms and every genome-level slot.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import evolveopt
from evolveopt.errors import GenomeError
from evolveopt.genome import canonical_form, genome_hash, to_dict
from evolveopt.genome.genes import GENES, gene_spec, round_gene
from evolveopt.genome.registry import LOCI
from evolveopt.search.space import with_fallback
from evolveopt.genome.schema import outside_step_genes
from evolveopt.genome.schema import (EPS_MODES, MOMENTUM_KINDS, PRECONDITION_KINDS, SCHEMA_VERSION, SIGNALS,
                                     TERM_SIGNALS, parse_genome)

RATES = st.sampled_from(["beta1", "beta2", "beta3"])
WEIGHTS = st.sampled_from([None, "w1", "w2", "w3", "beta2"])  # shared, tied and absent weights
ON_GRID = {  # values already on the canonical grid, so rounding leaves them be
    "lr": [1e-3, 5e-3], "beta1": [0.9, 0.5], "beta2": [0.99, 0.95], "beta3": [0.999, 0.9],
    "eps": [1e-8, 1e-6], "trust_eps": [1e-6], "trust_clamp": [10.0], "weight_decay": [0.01, 0.1],
    "alpha": [-1.0, 0.5], "clip": [1.0, 0.25], "warmup": [0.1, 0.3], "gamma": [0.99],
    "feedback_low": [0.1], "feedback_high": [10.0], "momentum_decay": [0.004],
    "d0": [1e-6, 1e-3], "d_coef": [1.0, 0.5], "growth_rate": [1.02, 2.0],
    "w1": [1.0, 0.0, -0.5], "w2": [0.25, 1.0, 0.0], "w3": [-1.0, 2.0], "a": [1.27, 0.5], "b": [1.0, 2.0],
}


@st.composite
def signals(draw, kinds):
    kind = draw(st.sampled_from(kinds))
    if kind == "corrected_grad":  # MARS's c, with or without its per-tensor norm clip
        clip = {"clip": "clip"} if draw(st.booleans()) else {}
        return {"kind": kind, "beta": draw(RATES), "gamma": "correction", **clip}
    return {"kind": kind, "beta": draw(RATES)} if kind == "nesterov_grad" else kind


@st.composite
def terms(draw):
    term = {"signal": draw(signals(TERM_SIGNALS)), "sign": draw(st.booleans())}
    weight = draw(WEIGHTS)
    if weight:
        term["weight"] = weight
    if draw(st.booleans()):
        kind = draw(st.sampled_from(MOMENTUM_KINDS))
        momentum = {"kind": kind, "beta": draw(RATES)}
        if kind in ("ema", "nesterov"):
            momentum["dampening"] = draw(st.booleans())
            momentum["bias_correction"] = momentum["dampening"] and draw(st.booleans())
        momentum.update({"interp": {"mix": draw(RATES)}, "nadam": {"decay": "momentum_decay"}}.get(kind, {}))
        term["momentum"] = momentum
    if draw(st.booleans()):
        kind = draw(st.sampled_from(PRECONDITION_KINDS))
        signal_kinds = SIGNALS if "momentum" in term else tuple(s for s in SIGNALS if s != "residual")
        # belief adds ε to its state and factored floors mean(R) by ε: neither takes the ε-free atan2
        modes = EPS_MODES if kind not in ("belief", "factored") else tuple(m for m in EPS_MODES if m != "atan2")
        pre = {"kind": kind, "eps": "eps", "signal": draw(signals(signal_kinds)), "eps_mode": draw(st.sampled_from(modes))}
        if pre["eps_mode"] == "atan2":
            del pre["eps"]
            pre.update(a="a", b="b")
        stale = draw(st.booleans())
        if kind != "sum":
            pre.update(beta=draw(RATES), bias_correction=not stale and draw(st.booleans()),
                       rectify=not stale and draw(st.booleans()))
        if stale:
            pre["stale"] = True
        if draw(st.booleans()):
            pre["clip"] = "clip"
        term["precondition"] = pre
        if "momentum" in term and pre["signal"] != "residual" and draw(st.booleans()):
            term["order"] = "normalize_first"
    return term


KNOWN_GENES = [*GENES, *(g for g in ON_GRID if g not in GENES)]


def on_grid(name: str) -> list[float]:
    """Values of a gene already on the canonical grid (the top of its search range if not listed)."""
    return ON_GRID.get(name) or [round_gene(name, gene_spec(name).search[1])]


@st.composite
def locus_values(draw, locus):
    """Any value of a registry locus: a variant, then each of its fields (a gene of a fitting role,
    an option, an integer, a flag; optional fields sometimes left out)."""
    variant = draw(st.sampled_from(locus.variants))
    if locus.value_type is None:
        return variant.kind
    value = {locus.tag: variant.kind} if locus.tag else {}
    for f in variant.fields:
        if not f.required and draw(st.booleans()):
            continue
        if f.is_gene:
            value[f.name] = draw(st.sampled_from([g for g in KNOWN_GENES if gene_spec(g).role in f.roles]))
        elif f.options:
            value[f.name] = draw(st.sampled_from(f.options))
        elif f.integer:
            value[f.name] = draw(st.integers(f.minimum or 0, (f.minimum or 0) + 5))
        else:
            value[f.name] = draw(st.booleans())
    return value


# (ε is never warmed up from 0: y/(√v + 0) is 0/0 where v is, in either form)
SCHEDULABLE = {"linear_warmup": ("alpha", "beta1", "beta2", "beta3", "weight_decay", "clip", "a", "b"),
               "halflife_warmup": ("beta2", "beta3"), "power": ("clip", "beta2", "beta3", "eps", "a")}


@st.composite
def gene_schedules(draw, used: set[str], outside: set[str]):
    """Schedules for some of the genes a drawn structure uses (none of those read outside the step)."""
    out = {}
    for kind, genes in SCHEDULABLE.items():
        options = sorted(g for g in genes if g in used - outside - set(out))
        if not options or not draw(st.booleans()):
            continue
        gene = draw(st.sampled_from(options))
        if kind == "power":
            decaying = gene.startswith("beta") or gene == "eps"
            power = draw(st.sampled_from([-0.8, -0.5] if decaying else [0.25, 0.5, -0.5]))
            out[gene] = {"kind": kind, "power": power, **({"offset": 1} if power > 0 and draw(st.booleans()) else {})}
        else:
            out[gene] = {"kind": kind, "horizon": draw(st.sampled_from([1, 3, 10])),
                         **({"start": draw(RATES)} if kind == "halflife_warmup" else {}),
                         **({"offset": 1} if kind == "linear_warmup" and draw(st.booleans()) else {})}
    return out


@st.composite
def genome_dicts(draw):
    """A genome document; ``draw``s a whole structure first, then on-grid values of its genes."""
    data = {"schema_version": SCHEMA_VERSION, "terms": draw(st.lists(terms(), min_size=1, max_size=4))}
    if draw(st.booleans()):
        data["terms"].append(dict(data["terms"][0]))  # an exact duplicate: canonicalization merges it
    for locus in LOCI.values():  # every locus the registry declares, each variant and field
        if draw(st.booleans()):
            data[locus.key] = draw(locus_values(locus))
    with_fallback(data)  # an orthogonalizing rule sends the bias to a fallback, as drawn genomes do
    if draw(st.booleans()):  # AdEMAMix's α: a coefficient as a term weight, so a schedule can vary it
        data["terms"][-1] = {**data["terms"][-1], "weight": "alpha"}
    used = {"lr"} | _names(data)
    data["genes"] = {name: draw(st.sampled_from(on_grid(name))) for name in sorted(used)}
    try:  # the genes the optimizer reads outside the step (the library's own rule) cannot be scheduled
        outside = outside_step_genes(parse_genome(data, source="drawn"))
    except GenomeError:
        return data  # not a rule (e.g. every weight 0): the test says so
    schedules = draw(gene_schedules(used, outside))
    if schedules:
        data["gene_schedules"] = schedules
        for name in sorted(_names(schedules) - used):  # a schedule's own genes (a half-life's start)
            data["genes"][name] = draw(st.sampled_from(on_grid(name)))
    return data


def _names(node) -> set[str]:
    """Genes a document refers to: its string leaves that name a gene (no kind or mode is a gene's name)."""
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return set().union(*(_names(v) for v in node))
    return {node} if isinstance(node, str) and node in KNOWN_GENES else set()


def _steps(genome, steps: int = 6) -> torch.Tensor:
    """Parameters after ``steps`` of a small float64 regression, with two tensors (layer-wise parts see both)."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=generator, dtype=torch.float64), torch.randn(16, 3, generator=generator,
                                                                                    dtype=torch.float64)
    weight = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    optimizer = evolveopt.build_optimizer(genome, [weight, bias], total_steps=steps)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(x @ weight + bias, y)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return torch.cat([weight.detach().flatten(), bias.detach()])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(genome_dicts())
@example({"schema_version": 2,  # found by the search: sign(a·atan2(y, b·√v̂)) is 0 while a warms up from 0
          "terms": [{"signal": "grad", "sign": True,
                     "precondition": {"kind": "sum", "eps_mode": "atan2", "a": "a", "b": "b"}}],
          "genes": {"a": 1.27, "b": 1.0, "lr": 0.001},
          "gene_schedules": {"a": {"kind": "linear_warmup", "horizon": 1, "offset": 1}}})
def test_a_genome_and_its_canonical_form_take_the_same_steps(data):
    try:
        genome = parse_genome(data, source="drawn")
    except GenomeError as exc:  # e.g. every weight 0: not a rule
        assume("every term has weight 0" not in str(exc))
        raise
    canonical = canonical_form(genome)
    assert parse_genome(to_dict(canonical), source="canonical") == canonical  # a valid file, as `show --canonical`
    assert canonical_form(canonical) == canonical and genome_hash(canonical) == genome_hash(genome)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # schedules past total_steps are not the point here
        torch.testing.assert_close(_steps(canonical), _steps(genome), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("field, document", [
    ("terms[0].momentum.beta", {"terms": [{"momentum": {"kind": "ema", "beta": "w1"}, "weight": "w1"}]}),
    ("terms[0].weight", {"terms": [{"weight": "eps", "precondition": {"kind": "sum", "eps": "eps"}}]}),
    ("schedule.warmup", {"terms": [{}], "schedule": {"kind": "linear_warmup", "warmup": "beta1"},
                         "genes": {"beta1": 0.9}}),
    ("weight_decay.rate", {"terms": [{}], "weight_decay": {"mode": "l2", "rate": "lr"}}),
])
def test_a_gene_out_of_its_role_is_refused_with_the_field_named(field, document):
    """The defect: a momentum beta taken from a term weight (renamed by canonicalization), and the like."""
    genes = {"lr": 1e-3, "w1": 0.5, "eps": 1e-8, **document.pop("genes", {})}
    used = {g: v for g, v in genes.items() if g == "lr" or g in str(document)}
    with pytest.raises(GenomeError, match=re.escape(field) + r": gene '\w+' is .*; this field takes"):
        parse_genome({"schema_version": 1, "genes": used, **document}, source="drawn")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(genome_dicts(), genome_dicts(), st.integers(0, 2**32 - 1))
def test_every_operator_yields_a_valid_canonical_genome(first, second, seed):
    """Mutations and crossover of any two genomes give a genome that is its own canonical form and
    loads back from its file form: the GA never produces a genome the language cannot say."""
    import numpy as np

    from evolveopt.search.operators import crossover, mutate_genes, mutate_structure
    from evolveopt.search.space import SearchSpace

    try:
        a, b = (canonical_form(parse_genome(d, source="drawn")) for d in (first, second))
    except GenomeError as exc:
        assume("every term has weight 0" not in str(exc))
        raise
    rng = np.random.default_rng(seed)
    for space in (SearchSpace(max_terms=6), SearchSpace(  # the default space, and one drawing every term option
            max_terms=6, eps_modes=("outside", "raw", "inside", "clamp", "atan2"), stale_probability=0.5,
            normalize_first_probability=0.5, normalized_clip_probability=0.5,
            gene_schedules=("none", "linear_warmup", "halflife_warmup", "power"))):
        for child, _ in (mutate_genes(rng, a, space), mutate_structure(rng, a, space), crossover(rng, a, b, space)):
            assert canonical_form(child) == child
            assert parse_genome(to_dict(child), source="child") == child
