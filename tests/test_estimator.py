"""Prodigy's global step-size estimate (the ``estimator`` locus) where it couples param groups and steps.

The estimate is one number per model, so every param group shares lr and the estimator's genes;
a group of lr 0 is frozen; steps before any gradient is nonzero move nothing. Each behaviour is
checked against prodigyopt 1.1.2 (float64) or as the exact error it gives.
"""

from __future__ import annotations

import pytest
import torch
from conftest import exported_class, tiny_batches, tiny_net, train, weight_and_bias_groups

import evolveopt
from evolveopt.errors import OptimizerUsageError
from evolveopt.genome.equations import render_genome

GENES = dict(lr=0.5, beta1=0.8, beta2=0.99, beta3=0.95, eps=1e-6, d0=1e-5, d_coef=0.7)
KW = dict(lr=0.5, betas=(0.8, 0.99), beta3=0.95, eps=1e-6, d0=1e-5, d_coef=0.7)


def build(implementation, groups, **genes):
    if implementation == "exported":
        return exported_class("prodigy")(groups, **genes)
    return evolveopt.build_optimizer("prodigy", groups, **genes)


def prodigyopt(groups, **kw):
    from prodigyopt import Prodigy

    return Prodigy(groups, **kw)


@pytest.mark.parametrize("implementation", ["compiled", "exported"])
@pytest.mark.parametrize("gene, value", [("lr", 0.3), ("d_coef", 2.0), ("beta3", 0.9), ("d0", 1e-3)])
def test_groups_that_differ_in_a_shared_gene_are_refused_before_anything_moves(implementation, gene, value):
    model = tiny_net(torch.float32)
    weights, biases = weight_and_bias_groups(model)
    optimizer = build(implementation, [{"params": weights}, {"params": biases, gene: value}])
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=rf"param_groups\[1\]\.{gene} = {value:g} differs from "
                                         rf"param_groups\[0\]\.{gene} = .*share lr and the estimator's genes"):
        train(model, optimizer, tiny_batches(1, torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert "estimator" not in optimizer.state


def test_the_refusal_is_an_optimizer_usage_error():
    weights, biases = weight_and_bias_groups(tiny_net(torch.float32))
    optimizer = build("compiled", [{"params": weights}, {"params": biases, "lr": 0.3}])
    for p in weights + biases:
        p.grad = torch.ones_like(p)
    with pytest.raises(OptimizerUsageError):
        optimizer.step()


def test_a_group_of_lr_0_is_frozen_and_takes_no_part_in_the_estimate_as_in_prodigyopt(float64):
    """prodigyopt skips a group of lr 0 in its sums and moments (with weight decay 0, as here, it stays put)."""
    results = []
    for make in (lambda groups: build("compiled", groups, **GENES), lambda groups: prodigyopt(groups, **KW)):
        model = tiny_net()
        weights, biases = weight_and_bias_groups(model)
        frozen = [b.detach().clone() for b in biases]
        optimizer = make([{"params": weights}, {"params": biases, "lr": 0.0}])
        train(model, optimizer, tiny_batches(60))
        assert all(torch.equal(a, b) for a, b in zip(biases, frozen))
        results.append(([w.detach().clone() for w in weights], optimizer))
    (ours, ours_optimizer), (theirs, their_optimizer) = results
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert ours_optimizer.state["estimator"]["d"].item() == pytest.approx(their_optimizer.param_groups[0]["d"], rel=1e-9)
    assert their_optimizer.param_groups[0]["d"] > 100 * KW["d0"]  # the estimate grew


def test_steps_before_any_nonzero_gradient_move_nothing_and_do_not_count_as_in_prodigyopt(float64):
    """While every s is 0 prodigyopt returns before stepping: no decay, no count (bias correction reads it)."""
    genes, kw = GENES | dict(weight_decay=0.1), KW | dict(weight_decay=0.1, use_bias_correction=True)
    genome = evolveopt.genome.to_dict(evolveopt.load_genome("prodigy"))
    genome["estimator"].update(bias_beta1="beta1", bias_beta2="beta2")
    genome = evolveopt.genome.parse_genome(genome, source="prodigy with bias correction")
    results = []
    for make in (lambda p: evolveopt.build_optimizer(genome, p, **genes), lambda p: prodigyopt(p, **kw)):
        model = tiny_net()
        optimizer = make(model.parameters())
        start = [p.detach().clone() for p in model.parameters()]
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            optimizer.step()
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), start))
        train(model, optimizer, tiny_batches(40))
        results.append([p.detach().clone() for p in model.parameters()])
    ours = results[0]
    for a, b in zip(ours, results[1]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_estimate_is_saved_in_the_state_dict_and_stays_per_model():
    model = tiny_net(torch.float32)
    optimizer = build("compiled", model.parameters())
    train(model, optimizer, tiny_batches(3, torch.float32))
    estimate = optimizer.state_dict()["state"]["estimator"]
    assert sorted(estimate) == ["count", "d", "d_max", "numerator"]
    assert estimate["count"].item() == 3.0 and estimate["d"].item() >= 1e-6
    assert all(value.ndim == 0 and value.dtype == torch.float64 for value in estimate.values())


def test_show_renders_the_estimate_and_its_effect_on_the_rule():
    text = render_genome(evolveopt.load_genome("prodigy"))
    assert "r ← β3·r + (d/d0)·η̂·Σ⟨g, θ0 − θ⟩" in text
    assert "g ← d·g;  η_t ← η̂;  ε ← d'·ε" in text


def test_the_search_draws_the_estimator_only_where_a_config_allows_it():
    """since_schema 2, space default ("none",): default, paper and quickstart spaces never draw it (their
    seeded searches repeat); a config listing it draws and mutates it."""
    from pathlib import Path

    import numpy as np

    from evolveopt.config import load_config, parse_config
    from evolveopt.genome.registry import LOCI
    from evolveopt.search.operators import mutate_structure, structural_moves
    from evolveopt.search.space import SearchSpace, random_genome

    experiments = Path(__file__).parent.parent / "experiments"
    for space in (SearchSpace(), load_config(experiments / "paper.yaml").space,
                  load_config(experiments / "quickstart.yaml").space):
        assert not space.in_play(LOCI["estimator"]) and "change_estimator" not in structural_moves(space)
        rng = np.random.default_rng(0)
        assert all(random_genome(rng, space).estimator is None for _ in range(100))
    space = parse_config({"space": {"estimator": ["none", "prodigy"]}}, source="run.yaml").space
    rng = np.random.default_rng(0)
    drawn = [random_genome(rng, space) for _ in range(200)]
    with_estimator = [g for g in drawn if g.estimator is not None]
    assert 60 < len(with_estimator) < 140
    assert all({"beta3", "d0", "d_coef"} <= set(g.genes) for g in with_estimator)
    assert "change_estimator" in structural_moves(space)
    changes = [mutate_structure(rng, g, space)[1] for g in drawn[:60]]
    assert any(c["mutation"] == "change_estimator" for c in changes)


def test_a_config_naming_an_unknown_estimator_is_one_line():
    from evolveopt.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=r"run\.yaml: space\.estimator: 'dadapt' is not allowed "
                                          r"\(allowed: none, prodigy\)"):
        parse_config({"space": {"estimator": ["none", "dadapt"]}}, source="run.yaml")
