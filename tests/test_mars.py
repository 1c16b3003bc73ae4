"""MARS's part of the language: the signal ``corrected_grad`` (c = g + γ·β/(1−β)·(g − g_prev), g_prev = 0
at t = 1, then a per-tensor norm clip).

Reference equivalence with pytorch-optimizer 4.1.0 MARS (with its AdamW for 1-D tensors, and with
optimize_1d=True) is in test_reference_equivalence.py (cases mars, mars_optimize_1d); here: bad input, the
state, the first steps against the formulas (one model and a stacked population), equations and the
search drawing it only where a space lists it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import evolveopt
from evolveopt.compile.population import PopulationOptimizer, stack_genes
from evolveopt.config import parse_config
from evolveopt.errors import GenomeError
from evolveopt.genome import load_genome, parse_genome, to_dict
from evolveopt.genome.equations import render_equations
from evolveopt.genome.slots import buffers_per_param, rule_buffers, state_slots


def _doc(signal, version=2):
    genes = {"lr": 1e-3, "beta1": 0.9, "correction": 0.025, "clip": 1.0}
    return {"schema_version": version, "genes": genes,
            "terms": [{"signal": signal, "momentum": {"kind": "ema", "beta": "beta1"}}]}


BAD = [
    ("terms[0].signal: signal 'corrected_grad' needs 'gamma'", _doc({"kind": "corrected_grad", "beta": "beta1"})),
    ("terms[0].signal: signal 'corrected_grad' needs 'beta'", _doc({"kind": "corrected_grad", "gamma": "correction"})),
    ("terms[0].signal.gamma: gene 'clip' is a clipping threshold",
     _doc({"kind": "corrected_grad", "beta": "beta1", "gamma": "clip"})),
    ("terms[0].signal.clip: gene 'beta1' is an EMA rate",
     _doc({"kind": "corrected_grad", "beta": "beta1", "gamma": "correction", "clip": "beta1"})),
    ("terms[0].signal.gamma: signal 'nesterov_grad' takes no gamma (corrected_grad does)",
     _doc({"kind": "nesterov_grad", "beta": "beta1", "gamma": "correction"})),
    ("terms[0].signal.clip: signal 'grad' takes no clip (corrected_grad does)", _doc({"kind": "grad", "clip": "clip"})),
    ("terms[0].signal.kind: 'kind: corrected_grad' needs schema_version 2 (this file says 1)",
     _doc({"kind": "corrected_grad", "beta": "beta1", "gamma": "correction"}, version=1)),
]


@pytest.mark.parametrize("message, document", BAD, ids=[m.split(": ")[1][:30] for m, _ in BAD])
def test_bad_corrected_signals_fail_with_one_line_naming_the_field(message, document):
    document = copy.deepcopy(document)
    if "clip" not in str(document["terms"]):
        del document["genes"]["clip"]
    if "correction" not in str(document["terms"]):
        del document["genes"]["correction"]
    with pytest.raises(GenomeError) as info:
        parse_genome(document, source="g.yaml")
    text = str(info.value)
    assert "\n" not in text and text.startswith("g.yaml: ") and message in text, text


def test_the_genome_keeps_three_buffers_round_trips_and_shows_its_equations():
    genome = load_genome("mars")
    assert parse_genome(to_dict(genome)) == genome and to_dict(genome)["schema_version"] == 2
    assert state_slots(genome) == {"prev_grad": "param_shaped",
                                   "momentum.corrected_grad(beta1,correction,clip).beta1": "param_shaped",
                                   "second_moment.corrected_grad(beta1,correction,clip).beta2": "param_shaped"}
    assert rule_buffers(genome) == 3 and buffers_per_param(genome) == 3  # m, v, g_prev (the AdamW fallback: 2)
    lines = "\n".join(render_equations(genome))
    assert "m1 ← β1·m1 + (1 − β1)·clip_c(g + γ_c·β1/(1 − β1)·(g − g_prev))" in lines
    assert "(g_prev = 0 at t = 1; clip_c(x) = x·min(1, c/‖x‖) per tensor)" in lines


def _direct_c(g, prev, beta, gamma, clip):
    c = g + gamma * beta / (1 - beta) * (g - prev)
    return c * min(1.0, clip / c.norm().item())


def test_the_first_steps_follow_the_formulas_with_g_prev_zero_at_step_one():
    """Momentum-only MARS (lr 1, β 0.5: m = c/2 at t = 1, m = c_1/4 + c_2/2 at t = 2)."""
    genome = parse_genome({**_doc({"kind": "corrected_grad", "beta": "beta1", "gamma": "correction", "clip": "clip"}),
                           "genes": {"lr": 1.0, "beta1": 0.5, "correction": 0.2, "clip": 3.0}})
    weight = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    optimizer = evolveopt.build_optimizer(genome, [weight])
    g1 = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]], dtype=torch.float64)
    g2 = torch.tensor([[0.1, 0.0, 0.3], [-0.2, 0.4, 0.1]], dtype=torch.float64)
    c1 = _direct_c(g1, torch.zeros_like(g1), 0.5, 0.2, 3.0)
    c2 = _direct_c(g2, g1, 0.5, 0.2, 3.0)
    assert c1.norm() == pytest.approx(3.0) and c2.norm() < 3.0  # the first is clipped, the second not
    weight.grad = g1.clone()
    optimizer.step()
    torch.testing.assert_close(weight.detach(), -c1 / 2, rtol=1e-14, atol=1e-15)
    weight.grad = g2.clone()
    optimizer.step()
    torch.testing.assert_close(weight.detach(), -c1 / 2 - (c1 / 4 + c2 / 2), rtol=1e-14, atol=1e-15)


def test_a_stacked_population_corrects_and_clips_each_member_with_its_own_genes():
    base = parse_genome({**_doc({"kind": "corrected_grad", "beta": "beta1", "gamma": "correction", "clip": "clip"}),
                         "genes": {"lr": 1.0, "beta1": 0.5, "correction": 0.2, "clip": 3.0}})
    genomes = [base, base.with_genes(beta1=0.8, correction=0.05, clip=0.5)]
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(2, 4, 3, dtype=torch.float64, generator=gen) for _ in range(3)]
    param = torch.zeros(2, 4, 3, dtype=torch.float64)
    population = PopulationOptimizer(base, [param], stack_genes(genomes, dtype=torch.float64))
    for g in grads:
        population.step([g])
    for i, genome in enumerate(genomes):
        beta, gamma, clip = (genome.genes[k] for k in ("beta1", "correction", "clip"))
        m, prev, expected = torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64), 0.0
        for g in grads:
            m = beta * m + (1 - beta) * _direct_c(g[i], prev, beta, gamma, clip)
            prev = g[i]
            expected = expected - m
        torch.testing.assert_close(param[i], expected, rtol=1e-12, atol=1e-14)


def test_the_default_space_never_draws_it_and_a_space_that_lists_it_does():
    from evolveopt.search.operators import mutate_structure
    from evolveopt.search.space import SearchSpace, random_genome

    def corrected(genome):
        return any("corrected_grad" in (t.signal.kind, t.precondition.signal.kind if t.precondition else "")
                   for t in genome.terms)

    rng = np.random.default_rng(2)
    assert not any(corrected(random_genome(rng, SearchSpace())) for _ in range(300))
    space = SearchSpace(signals=("grad", "corrected_grad"), max_terms=2)
    genomes = [random_genome(rng, space) for _ in range(40)]
    assert any(map(corrected, genomes))
    for genome in genomes[:15]:
        child, _ = mutate_structure(rng, genome, space)
        assert parse_genome(to_dict(child)) == child
        weight = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        optimizer = evolveopt.build_optimizer(genome.with_genes(lr=1e-3), [weight], total_steps=5)
        for _ in range(5):
            optimizer.zero_grad()
            (weight**2).sum().backward()
            optimizer.step()
        assert torch.isfinite(weight).all(), genome
    assert parse_config({"space": {"signals": ["grad", "corrected_grad"]}}).space.signals == ("grad", "corrected_grad")
