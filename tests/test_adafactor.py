"""Adafactor's parts of the language: the factored second moment (precondition kind ``factored``), the
update-RMS clip (``layerwise: rms_clip``) and the relative step (locus ``relative_step``).

Reference equivalence with torch.optim.Adafactor is in test_reference_equivalence.py (case adafactor); here:
bad input, the state's shapes (rows and columns, a full v below 2 dims, per member when stacked), the memory
bound, the equations, the parts against direct formulas, and the search drawing them only where allowed.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import evolveopt
from evolveopt.config import ConfigError, parse_config
from evolveopt.errors import GenomeError
from evolveopt.genome import load_genome, parse_genome, to_dict
from evolveopt.genome.equations import render_equations
from evolveopt.genome.slots import buffers_per_param, state_slots
from evolveopt.compile.rule import Rule, StepContext
from evolveopt.compile.population import PopulationOptimizer, stack_genes


def _doc(**top):
    doc = to_dict(load_genome("adafactor"))
    doc.update(top)
    return copy.deepcopy(doc)


def _edited(path: str, value):
    """The adafactor document with one field replaced (``a.b`` paths; value None deletes)."""
    doc = _doc()
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is None:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return doc


BAD = [
    ("terms[0].precondition.eps_mode: precondition 'factored' needs eps (the floor of mean(R))",
     _edited("terms.0.precondition", {"kind": "factored", "beta": "beta2", "eps_mode": "atan2", "a": "a", "b": "b"})),
    ("terms[0].precondition: precondition 'factored' needs a beta",
     _edited("terms.0.precondition", {"kind": "factored", "eps": "eps"})),
    ("layerwise: layerwise 'rms_clip' needs 'threshold'", _edited("layerwise", {"kind": "rms_clip"})),
    ("layerwise.threshold: gene 'eps' is a numerical floor", _edited("layerwise", {"kind": "rms_clip", "threshold": "eps"})),
    ("layerwise.eps: layerwise 'rms_clip' takes no 'eps'",
     _edited("layerwise", {"kind": "rms_clip", "threshold": "update_clip", "eps": "eps"})),
    ("relative_step: missing required key 'kind'", _edited("relative_step", {"eps": "eps2"})),
    ("relative_step: relative_step 'parameter_rms' needs 'eps'", _edited("relative_step", {"kind": "parameter_rms"})),
    ("relative_step.kind: unknown value 'adam'", _edited("relative_step", {"kind": "adam", "eps": "eps2"})),
    ("genes.update_clip: 0.0 is out of range (0, 1e+06]", _edited("genes.update_clip", 0.0)),
]


@pytest.mark.parametrize("message, document", BAD, ids=[m.split(":")[0] + "|" + m.split(": ")[1][:24] for m, _ in BAD])
def test_bad_adafactor_parts_fail_with_one_line_naming_the_field(message, document):
    with pytest.raises(GenomeError) as info:
        parse_genome(document, source="g.yaml")
    text = str(info.value)
    assert "\n" not in text and text.startswith("g.yaml: ") and message in text, text


@pytest.mark.parametrize("what, edit", [
    ("terms[0].precondition.kind", lambda d: d.update(gene_schedules=None, relative_step=None, layerwise=None,
                                                      terms=[{"signal": "grad", "precondition": {
                                                          "kind": "factored", "beta": "beta2", "eps": "eps"}}])),
    ("layerwise.kind", lambda d: d.update(gene_schedules=None, relative_step=None,
                                          terms=[{"signal": "grad", "precondition": {"kind": "ema", "beta": "beta2",
                                                                                     "eps": "eps"}}])),
    ("relative_step", lambda d: d.update(gene_schedules=None, layerwise=None,
                                         terms=[{"signal": "grad", "precondition": {"kind": "ema", "beta": "beta2",
                                                                                    "eps": "eps"}}])),
])
def test_a_v1_file_cannot_use_an_adafactor_part(what, edit):
    doc = _doc(schema_version=1)
    edit(doc)
    doc = {k: v for k, v in doc.items() if v is not None}
    doc["genes"] = {k: v for k, v in doc["genes"].items() if k in ("lr", "beta2", "eps", "weight_decay")
                    or (k == "eps2" and "relative_step" in doc) or (k == "update_clip" and "layerwise" in doc)}
    with pytest.raises(GenomeError, match=r"needs schema_version 2 \(this file says 1\)") as info:
        parse_genome(doc, source="g.yaml")
    assert f"g.yaml: {what}" in str(info.value)


def test_the_genome_round_trips_says_schema_2_and_shows_its_equations():
    genome = load_genome("adafactor")
    assert parse_genome(to_dict(genome)) == genome and to_dict(genome)["schema_version"] == 2
    lines = "\n".join(render_equations(genome))
    for part in ("β2_t = 1 − (1 − β2)·t^-0.8", "α = max(ε2, rms(θ))·min(η_t, 1/√t) per tensor (θ before its decay)",
                 "v1 = R·C/max(mean(R), ε)", "u = g/max(√v1, ε)", "u ← u/max(1, rms(u)/d) per tensor", "θ ← θ − α·u"):
        assert part in lines, part


def test_the_factored_state_is_rows_and_columns_and_counts_as_one_buffer():
    genome = load_genome("adafactor")
    assert state_slots(genome) == {"factored_rows.grad.beta2": "factored_rows",
                                   "factored_columns.grad.beta2": "factored_columns"}
    assert buffers_per_param(genome) == 1  # the bound: a vector keeps a full v
    rule = Rule(genome)
    conv, head, bias = torch.zeros(2, 1, 3, 5), torch.zeros(4, 18), torch.zeros(4)
    shapes = {name: tuple(t.shape) for name, t in rule.init_state(conv).items()}
    assert shapes == {"factored_rows.grad.beta2": (2, 1, 3, 1), "factored_columns.grad.beta2": (2, 1, 1, 5)}
    assert [tuple(t.shape) for t in rule.init_state(head).values()] == [(4, 1), (1, 18)]
    assert [tuple(t.shape) for t in rule.init_state(bias).values()] == [(4,), (0,)]
    stacked = [tuple(t.shape) for t in rule.init_state(torch.zeros(3, 4), member_dims=1).values()]
    assert stacked == [(3, 4), (3, 0)]  # [P, n]: a vector per member, a full v


def _direct_adafactor(weight, grads, lr, eps1, eps2, d, wd):
    """Adafactor on one 2-D tensor from its formulas, written out without the rule's code."""
    w = weight.clone()
    r, c = torch.zeros(w.shape[0], 1, dtype=w.dtype), torch.zeros(1, w.shape[1], dtype=w.dtype)
    for t, g in enumerate(grads, start=1):
        keep = 1 - t**-0.8
        alpha = max(eps2, w.pow(2).mean().sqrt().item()) * min(lr, 1 / math.sqrt(t))
        w = w * (1 - lr * wd)
        r = keep * r + (1 - keep) * (g * g).mean(dim=1, keepdim=True)
        c = keep * c + (1 - keep) * (g * g).mean(dim=0, keepdim=True)
        v = r * c / max(r.mean().item(), eps1)
        u = g / torch.sqrt(torch.clamp(v, min=eps1**2))
        u = u / max(1.0, u.pow(2).mean().sqrt().item() / d)
        w = w - alpha * u
    return w


def test_a_stacked_population_steps_each_member_as_the_formulas_say():
    """Rows and columns per member ([P, n, 1], [P, 1, m]), rms(θ), rms(u) and min(η_t, 1/√t) per member."""
    gen = torch.Generator().manual_seed(0)
    members = [dict(lr=0.3, eps=1e-10, eps2=1e-3, update_clip=1.0, weight_decay=0.1),
               dict(lr=0.05, eps=1e-6, eps2=0.5, update_clip=3.0, weight_decay=0.0)]
    genomes = [load_genome("adafactor").with_genes(**m) for m in members]
    start = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen)
    grads = [torch.randn(2, 3, 5, dtype=torch.float64, generator=gen) for _ in range(6)]
    param = start.clone()
    population = PopulationOptimizer(genomes[0], [param], stack_genes(genomes, dtype=torch.float64))
    for g in grads:
        population.step([g])
    for i, m in enumerate(members):
        expected = _direct_adafactor(start[i], [g[i] for g in grads], m["lr"], m["eps"], m["eps2"],
                                     m["update_clip"], m["weight_decay"])
        torch.testing.assert_close(param[i], expected, rtol=1e-12, atol=1e-14)


def test_the_relative_step_replaces_the_lr_of_an_averaged_move_too():
    """With schedule-free averaging, α moves y and z: at t = 1 (c = 1) y = θ_0 − α·u with α = rms(θ_0)·min(η, 1)."""
    doc = _doc()
    doc["averaging"] = {"kind": "schedule_free", "beta": "beta1", "r": "avg_r", "lr_power": "avg_lr_power"}
    doc["genes"].update(beta1=0.9, avg_r=0.0, avg_lr_power=2.0, lr=0.5, update_clip=100.0, eps2=1e-6)
    genome = parse_genome(doc)
    weight = torch.tensor([[3.0, -4.0], [0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    start = weight.detach().clone()
    optimizer = evolveopt.build_optimizer(genome, [weight])
    weight.grad = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
    optimizer.step()
    g = weight.grad
    v = (g * g).mean(dim=1, keepdim=True) * (g * g).mean(dim=0, keepdim=True) / (g * g).mean()
    u = g / v.sqrt()
    alpha = start.pow(2).mean().sqrt() * 0.5
    torch.testing.assert_close(weight.detach(), start + alpha * (0.9 * 0.0 - 1.0) * u, rtol=1e-12, atol=1e-14)


def test_the_default_space_never_draws_them_and_a_space_that_lists_them_does():
    from evolveopt.search.operators import mutate_structure
    from evolveopt.search.space import SearchSpace, random_genome

    def features(genome):
        out = {"factored"} if any(t.precondition is not None and t.precondition.kind == "factored"
                                  for t in genome.terms) else set()
        if genome.layerwise is not None and genome.layerwise.kind == "rms_clip":
            out.add("rms_clip")
        return out | ({"relative_step"} if genome.relative_step is not None else set())

    rng = np.random.default_rng(7)
    assert set().union(*(features(random_genome(rng, SearchSpace())) for _ in range(300))) == set()
    space = SearchSpace(preconditions=("none", "factored"), layerwise=("none", "rms_clip"),
                        relative_step=("none", "parameter_rms"), eps_modes=("outside", "clamp", "atan2"), max_terms=2)
    genomes = [random_genome(rng, space) for _ in range(60)]
    assert set().union(*map(features, genomes)) == {"factored", "rms_clip", "relative_step"}
    for genome in genomes[:20]:
        child, _ = mutate_structure(rng, genome, space)
        assert parse_genome(to_dict(child)) == child
        weights = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True),
                   torch.randn(3, dtype=torch.float64, requires_grad=True)]
        optimizer = evolveopt.build_optimizer(genome.with_genes(lr=1e-3), weights, total_steps=5)
        for _ in range(5):
            optimizer.zero_grad()
            sum((w**2).sum() for w in weights).backward()
            optimizer.step()
        assert all(torch.isfinite(w).all() for w in weights), genome


def test_config_accepts_factored_and_the_relative_step_and_refuses_unknown_ones():
    config = parse_config({"space": {"preconditions": ["ema", "factored"], "relative_step": ["none", "parameter_rms"],
                                     "layerwise": ["none", "rms_clip"]}})
    assert "factored" in config.space.preconditions and config.space.relative_step == ("none", "parameter_rms")
    with pytest.raises(ConfigError, match=r"space\.preconditions: 'shampoo' is not allowed"):
        parse_config({"space": {"preconditions": ["shampoo"]}})
