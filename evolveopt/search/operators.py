"""Variation operators over genomes: typed mutations and crossover.

Every operator is a pure function of (numpy Generator, genome(s), search space) that returns a
new, validated genome in canonical form plus a description of what it did (for lineage):

* structural mutations change one slot: add, remove or replace a term; change a term's signal,
  momentum, preconditioner, eps placement or sign; toggle bias correction or rectification;
  flip a term weight's sign; change the layer-wise scaling, friction, weight-decay mode,
  schedule or clipping; toggle the ALTO adaptor;
* gene mutation takes Gaussian steps on each gene's own scale (log for learning rates and
  decays, log(1 − β) for rates, linear for weights), kept inside the gene's valid range;
* crossover exchanges whole terms and whole loci (layer-wise, friction, decay, schedule, clip,
  adaptor) between two parents; genes travel with the parts that use them.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable

import numpy as np

from evolveopt.errors import GenomeError
from evolveopt.genome.canonical import canonical_form
from evolveopt.genome.genes import WEIGHT_GENE, gene_spec
from evolveopt.genome.registry import LOCI
from evolveopt.genome.schema import EPS_MODES, SCHEMA_VERSION, Genome, to_dict
from evolveopt.search.space import (SearchSpace, _random_term, draw_gene, draw_gene_schedule, prune_gene_schedules,
                                    random_genome, set_eps_mode, structure_genes, with_fallback)

Change = tuple[Genome, dict[str, Any]]


# ----------------------------------------------------------------------------- genes


def mutate_genes(rng: np.random.Generator, genome: Genome, space: SearchSpace, probability: float = 0.3,
                 sigma: float = 0.3, redraw: float = 0.05) -> Change:
    """Each gene moves with ``probability``: x·e^{σz} (log), 1 − (1 − x)e^{σz} (rates), or
    x + σz·(search width)/2 (linear); with ``redraw`` it is drawn afresh instead."""
    genes = dict(genome.genes)
    changed = []
    for name, value in genes.items():
        if rng.random() >= probability:
            continue
        changed.append(name)
        if rng.random() < redraw:
            genes[name] = draw_gene(rng, name, space)
        else:
            genes[name] = _gaussian_step(rng, name, value, sigma, space)
    if not changed:  # always change something
        name = list(genes)[int(rng.integers(len(genes)))]
        genes[name] = _gaussian_step(rng, name, genes[name], sigma, space)
        changed.append(name)
    return _finish({**to_dict(genome), "genes": genes}), {"genes": changed}


def _gaussian_step(rng: np.random.Generator, name: str, value: float, sigma: float, space: SearchSpace) -> float:
    spec = gene_spec(name)
    z = float(rng.normal())
    if spec.scale == "log":
        new = value * math.exp(sigma * z) if value > 0 else draw_gene(rng, name, space)
    elif spec.scale == "beta":
        new = 1.0 - (1.0 - value) * math.exp(sigma * z)
    else:
        low, high = space.search_range(name)
        new = value + sigma * z * (high - low) / 2
    return _clamp(name, new)


def _clamp(name: str, value: float) -> float:
    spec = gene_spec(name)
    low = spec.low if not spec.low_open else spec.low + 1e-12
    high = spec.high if not spec.high_open else spec.high - 1e-6
    return float(min(max(value, low), high))


# ----------------------------------------------------------------------------- structure


def _term_index(rng: np.random.Generator, data: dict[str, Any]) -> int:
    return int(rng.integers(len(data["terms"])))


def _add_term(rng, data, space):
    if len(data["terms"]) >= space.max_terms:
        return None
    data["terms"].append(_random_term(rng, space, len(data["terms"])))
    return {"term": len(data["terms"]) - 1}


def _remove_term(rng, data, space):
    if len(data["terms"]) < 2:
        return None
    k = _term_index(rng, data)
    del data["terms"][k]
    return {"term": k}


def _replace_term(rng, data, space):
    k = _term_index(rng, data)
    data["terms"][k] = {**_random_term(rng, space, k), "weight": data["terms"][k].get("weight", f"w{k + 1}")}
    return {"term": k}


def _term_part(slot: str) -> Callable:
    """Redraw one part (signal, momentum, precondition) of one term from the search space."""
    def change(rng, data, space):
        k = _term_index(rng, data)
        fresh = _random_term(rng, space, k)
        term = data["terms"][k]
        before = term.get(slot)
        if fresh.get(slot) == before:
            return None
        if fresh.get(slot) is None:
            term.pop(slot, None)
        else:
            term[slot] = fresh[slot]
        if slot == "momentum" and "momentum" not in term:
            _drop_residual(term)
        return {"term": k, "to": _describe(term.get(slot))}
    return change


def _drop_residual(term: dict[str, Any]) -> None:
    pre = term.get("precondition")
    if pre and pre.get("signal") == "residual":
        pre["signal"] = "grad"


def _toggle_sign(rng, data, space):
    k = _term_index(rng, data)
    term = data["terms"][k]
    if not term.get("sign", False) and space.sign_probability == 0:
        return None
    term["sign"] = not term.get("sign", False)
    return {"term": k, "sign": term["sign"]}


def _toggle_bias_correction(rng, data, space):
    k = _term_index(rng, data)
    term = data["terms"][k]
    options = []
    if term.get("momentum", {}).get("kind") in ("ema", "nesterov") and term["momentum"].get("dampening", True):
        options.append("momentum")
    if term.get("precondition", {}).get("kind") in ("ema", "max", "belief"):
        options.append("precondition")
    allowed = {"momentum": "ema_bc" in space.momenta, "precondition": "ema_bc" in space.preconditions}
    options = [p for p in options if allowed[p] or term[p].get("bias_correction", False)]
    if not options:
        return None
    part = options[int(rng.integers(len(options)))]
    term[part]["bias_correction"] = not term[part].get("bias_correction", False)
    return {"term": k, "part": part, "bias_correction": term[part]["bias_correction"]}


def _toggle_rectify(rng, data, space):
    k = _term_index(rng, data)
    pre = data["terms"][k].get("precondition")
    if not pre or pre["kind"] == "sum" or (not pre.get("rectify") and space.rectify_probability == 0):
        return None
    pre["rectify"] = not pre.get("rectify", False)
    return {"term": k, "rectify": pre["rectify"]}


def _change_eps_mode(rng, data, space):
    k = _term_index(rng, data)
    pre = data["terms"][k].get("precondition")
    if not pre:
        return None
    options = [m for m in EPS_MODES if m != pre.get("eps_mode", "outside") and m in space.eps_modes]
    if not options:
        return None
    set_eps_mode(pre, options[int(rng.integers(len(options)))])
    return {"term": k, "eps_mode": pre["eps_mode"]}


def _toggle_stale(rng, data, space):
    k = _term_index(rng, data)
    pre = data["terms"][k].get("precondition")
    if not pre:
        return None
    pre["stale"] = not pre.get("stale", False)
    if pre["stale"]:
        pre.pop("rectify", None)
        if "bias_correction" in pre:
            pre["bias_correction"] = False
    return {"term": k, "stale": pre["stale"]}


def _toggle_order(rng, data, space):
    k = _term_index(rng, data)
    term = data["terms"][k]
    if "momentum" not in term or "precondition" not in term:
        return None
    term["order"] = "momentum_first" if term.get("order") == "normalize_first" else "normalize_first"
    return {"term": k, "order": term["order"]}


def _toggle_normalized_clip(rng, data, space):
    k = _term_index(rng, data)
    pre = data["terms"][k].get("precondition")
    if not pre:
        return None
    if pre.pop("clip", None) is None:
        pre["clip"] = "clip"
    return {"term": k, "clip": "clip" in pre}


def _change_gene_schedule(rng, data, space):
    """Redraw the genome's gene schedules: one fresh schedule, or none."""
    before = data.get("gene_schedules")
    after = draw_gene_schedule(rng, data, space)
    if after == before or (not before and not after):
        return None
    if after:
        data["gene_schedules"] = after
    else:
        data.pop("gene_schedules", None)
    return {"to": _describe(next(iter(after.values()))) if after else "none"}


def _flip_weight(rng, data, space):
    k = _term_index(rng, data)
    weight = data["terms"][k].get("weight")
    if weight is None or not WEIGHT_GENE.match(weight):
        return None
    data["genes"][weight] = -data["genes"][weight]
    return {"term": k, "weight": weight}


def _locus(name: str) -> Callable:
    """Redraw one whole-genome locus from the search space."""
    def change(rng, data, space):
        fresh = to_dict(random_genome(rng, space))
        before, after = data.get(name), fresh.get(name)
        if before == after or (before in (None, "none") and after in (None, "none")):
            return None
        if after is None:
            data.pop(name, None)
            if name == "orthogonalize":  # in a search the fallback travels with the matrix rule
                data.pop("fallback", None)
        else:
            data[name] = after
        return {"to": _describe(after)}
    return change


def _describe(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("kind") or value.get("mode") or "present"
    return value if value is not None else "none"


TERM_MOVES: dict[str, Callable] = {
    "add_term": _add_term,
    "remove_term": _remove_term,
    "replace_term": _replace_term,
    "change_signal": _term_part("signal"),
    "change_momentum": _term_part("momentum"),
    "change_precondition": _term_part("precondition"),
    "toggle_sign": _toggle_sign,
    "toggle_bias_correction": _toggle_bias_correction,
    "toggle_rectify": _toggle_rectify,
    "change_eps_mode": _change_eps_mode,
    "flip_weight_sign": _flip_weight,
}
# One move per registry locus that has one, in the registry's draw order.
LOCUS_MOVES: dict[str, tuple[str, Callable]] = {
    locus.key: (locus.move_name, _locus(locus.key))
    for locus in sorted(LOCI.values(), key=lambda locus: locus.draw_rank) if locus.move_name
}


# Moves over schema-2 term options, each offered only where the space draws its option (so the moves a
# v1 space offers, and a seeded v1 search, stay as they were).
V2_MOVES: dict[str, tuple[Callable[[SearchSpace], bool], Callable]] = {
    "toggle_stale": (lambda space: space.stale_probability > 0, _toggle_stale),
    "toggle_order": (lambda space: space.normalize_first_probability > 0, _toggle_order),
    "toggle_normalized_clip": (lambda space: space.normalized_clip_probability > 0, _toggle_normalized_clip),
    "change_gene_schedule": (lambda space: space.gene_schedules != ("none",), _change_gene_schedule),
}


def structural_moves(space: SearchSpace) -> dict[str, Callable]:
    """Every structural mutation the space allows: term moves, then a redraw of each locus in play,
    then the schema-2 term moves the space draws."""
    loci = {name: move for key, (name, move) in LOCUS_MOVES.items() if space.in_play(LOCI[key])}
    v2 = {name: move for name, (allowed, move) in V2_MOVES.items() if allowed(space)}
    return {**TERM_MOVES, **loci, **v2}


def mutate_structure(rng: np.random.Generator, genome: Genome, space: SearchSpace, tries: int = 20) -> Change:
    """One structural mutation, chosen uniformly among those that apply and yield a valid genome."""
    moves = structural_moves(space)
    names = list(moves)
    for _ in range(tries):
        name = names[int(rng.integers(len(names)))]
        data = copy.deepcopy(to_dict(genome))
        data.pop("name", None)
        data.pop("description", None)
        args = moves[name](rng, data, space)
        if args is None:
            continue
        try:
            child = _with_genes_for(rng, data, space, data["genes"])
        except GenomeError:
            continue
        if canonical_form(child) != canonical_form(genome) and space.allows(child):
            return child, {"mutation": name, **args}
    return mutate_genes(rng, genome, space)[0], {"mutation": "genes", "fallback": True}


def _with_genes_for(rng: np.random.Generator, data: dict[str, Any], space: SearchSpace,
                    known: dict[str, float]) -> Genome:
    """Keep known gene values, draw the ones the new structure adds, drop the rest (and the schedules
    of genes the structure no longer uses)."""
    data = with_fallback(data)
    data["schema_version"] = SCHEMA_VERSION  # a move may add a schema-2 option to a v1 parent
    prune_gene_schedules(data)
    genes = {n: known[n] if n in known else draw_gene(rng, n, space) for n in structure_genes(data)}
    data = {**data, "genes": genes}
    return _finish(data)


def _finish(data: dict[str, Any]) -> Genome:
    from evolveopt.genome.schema import parse_genome

    return canonical_form(parse_genome(data, source="offspring"))


# ----------------------------------------------------------------------------- crossover


def crossover(rng: np.random.Generator, a: Genome, b: Genome, space: SearchSpace, tries: int = 10) -> Change:
    """A child with terms taken from either parent (each with probability ½, at least one) and
    each locus from one parent; genes come with the part that uses them."""
    da, db = to_dict(a), to_dict(b)
    for _ in range(tries):
        picks = [("a", i) for i in range(len(da["terms"])) if rng.random() < 0.5]
        picks += [("b", i) for i in range(len(db["terms"])) if rng.random() < 0.5]
        if not picks:
            picks = [("a", int(rng.integers(len(da["terms"]))))]
        rng.shuffle(picks)
        picks = picks[: space.max_terms]
        child: dict[str, Any] = {"schema_version": max(da["schema_version"], db["schema_version"]), "terms": []}
        genes: dict[str, float] = {}
        for index, (side, i) in enumerate(picks):
            parent = da if side == "a" else db
            term = copy.deepcopy(parent["terms"][i])
            weight = term.get("weight")
            if weight is not None and WEIGHT_GENE.match(weight):
                term["weight"] = f"w{index + 1}"
                genes[term["weight"]] = parent["genes"][weight]
            child["terms"].append(term)
        loci = {}
        for locus in (key for key in LOCI if space.in_play(LOCI[key]) or key in da or key in db):
            side = "a" if rng.random() < 0.5 else "b"
            parent = da if side == "a" else db
            if locus in parent:
                child[locus] = copy.deepcopy(parent[locus])
                if locus == "orthogonalize" and "fallback" in parent:  # the fallback comes with the matrix rule
                    child["fallback"] = copy.deepcopy(parent["fallback"])
            loci[locus] = side
        with_fallback(child)  # parts from two parents must still make one rule (e.g. no estimator beside a fallback)
        if "gene_schedules" in da or "gene_schedules" in db:  # from one parent (no draw for v1 parents)
            parent = da if rng.random() < 0.5 else db
            if "gene_schedules" in parent:
                child["gene_schedules"] = copy.deepcopy(parent["gene_schedules"])
                prune_gene_schedules(child)
        first, second = (da, db) if rng.random() < 0.5 else (db, da)
        for name in structure_genes(child):
            if name not in genes:
                source = first if name in first["genes"] else second
                if name in source["genes"]:
                    genes[name] = source["genes"][name]
        try:
            offspring = _with_genes_for(rng, child, space, genes)
        except GenomeError:
            continue
        if space.allows(offspring):
            return offspring, {"terms": [f"{s}{i}" for s, i in picks], "loci": loci}
    return a, {"terms": "copy", "fallback": True}
