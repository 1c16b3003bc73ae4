"""Schedule-free averaging: the evaluation point is the weighted average of z, the locus is drawn
only where a search space allows it, and bad genome input names the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import evolveopt
from evolveopt.cli import main
from evolveopt.config import ConfigError, load_config
from evolveopt.genome.registry import LOCI
from evolveopt.genome.schema import to_dict
from evolveopt.search.operators import mutate_structure, structural_moves
from evolveopt.search.space import SearchSpace, random_genome


def _quadratic_run(genome: str, steps: int, lr_at=lambda t: None, **genes):
    """Train a quadratic; after each step record z. Returns (params at y, at x, list of z after each step)."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(5, 3, generator=gen, dtype=torch.float64).requires_grad_()
    target = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    optimizer = evolveopt.build_optimizer(genome, [theta], **genes)
    zs, lrs = [], []
    for t in range(1, steps + 1):
        if lr_at(t) is not None:
            optimizer.param_groups[0]["lr"] = lr_at(t)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        ((theta - target) ** 2).sum().backward()
        optimizer.step()
        zs.append(optimizer.state[theta]["averaging.z"].clone())
    y = theta.detach().clone()
    optimizer.eval()
    return y, theta.detach().clone(), zs, lrs


def test_with_a_constant_lr_the_evaluation_point_is_the_plain_mean_of_the_z_iterates():
    """r = 0, p = 2, constant η: c_t = 1/t, so x_T = (z_1 + ... + z_T)/T (the paper's uniform average)."""
    _, x, zs, _ = _quadratic_run("schedulefree_sgd", 30, lr=0.05, beta1=0.8)
    torch.testing.assert_close(x, torch.stack(zs).mean(0), rtol=1e-12, atol=1e-13)


def test_the_averaging_weights_follow_t_to_the_r_and_the_largest_lr_so_far():
    """w_t = t^r·max(η_1..η_t)^p and x_T = Σ w_t z_t / Σ w_t, with an lr that rises and falls."""
    schedule = lambda t: 0.01 * min(t, 10) if t <= 20 else 0.02  # noqa: E731
    _, x, zs, lrs = _quadratic_run("schedulefree_sgd", 30, lr_at=schedule, lr=0.01, beta1=0.7, avg_r=0.5,
                                   avg_lr_power=1.5)
    weights = [t**0.5 * max(lrs[:t]) ** 1.5 for t in range(1, 31)]
    expected = sum(w * z for w, z in zip(weights, zs)) / sum(weights)
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-12)


def test_lr_zero_from_the_start_never_moves_and_eval_stays_put():
    """All weights are 0 while lr_max is 0, so c = 0 (schedulefree's ZeroDivisionError branch)."""
    y, x, zs, _ = _quadratic_run("schedulefree_adamw", 5, lr=0.0)
    gen = torch.Generator().manual_seed(0)
    initial = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    assert torch.equal(y, initial) and torch.equal(x, initial) and torch.equal(zs[-1], initial)


# ----------------------------------------------------------------------------- search space


def test_default_and_schema_one_spaces_never_draw_averaging_and_have_no_move_for_it():
    rng = np.random.default_rng(0)
    for space in (SearchSpace(), load_config(Path(__file__).resolve().parent.parent / "experiments" / "paper.yaml").space):
        assert "change_averaging" not in structural_moves(space)
        for _ in range(200):
            genome = random_genome(rng, space)
            assert genome.averaging is None
            assert mutate_structure(rng, genome, space)[0].averaging is None


def test_a_space_that_allows_averaging_draws_it_with_its_genes_in_range():
    space = SearchSpace(averaging=("none", "schedule_free"))
    assert "change_averaging" in structural_moves(space)
    rng = np.random.default_rng(1)
    drawn = [random_genome(rng, space) for _ in range(100)]
    averaged = [g for g in drawn if g.averaging is not None]
    assert 20 < len(averaged) < 80
    for genome in averaged:
        assert genome.averaging.beta == "beta1" and 0.0 <= genome.genes["avg_r"] <= 1.0
        assert 0.0 <= genome.genes["avg_lr_power"] <= 4.0
        assert to_dict(genome)["schema_version"] == 2


def test_config_space_averaging_is_checked(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("name: sf\nspace: {averaging: [none, schedule_free]}\n")
    assert load_config(path).space.averaging == ("none", "schedule_free")
    path.write_text("name: sf\nspace: {averaging: [none, polyak]}\n")
    with pytest.raises(ConfigError, match=r"space\.averaging: 'polyak' is not allowed \(allowed: "
                                                           r"none, schedule_free\)"):
        load_config(path)


# ----------------------------------------------------------------------------- bad input

SF = """schema_version: 2
genes: {lr: 1.0, beta1: 0.9, avg_r: 0.0, avg_lr_power: 2.0}
terms:
  - signal: grad
averaging: {kind: schedule_free, beta: beta1, r: avg_r, lr_power: avg_lr_power}
"""

BAD = {
    "schema_one": (SF.replace("schema_version: 2", "schema_version: 1"),
                   r"averaging: 'averaging' needs schema_version 2 \(this file says 1\)"),
    "unknown_kind": (SF.replace("kind: schedule_free", "kind: polyak"),
                     r"averaging\.kind: unknown value 'polyak' \(allowed: schedule_free\)"),
    "missing_field": (SF.replace(", lr_power: avg_lr_power", "").replace(", avg_lr_power: 2.0", ""),
                      r"averaging: averaging 'schedule_free' needs 'lr_power'"),
    "gene_out_of_role": (SF.replace("beta: beta1", "beta: avg_r").replace(", beta1: 0.9", ""),
                         r"averaging\.beta: gene 'avg_r' is a power in the averaging weights; this field takes an EMA rate"),
    "out_of_range": (SF.replace("avg_lr_power: 2.0}", "avg_lr_power: 11.0}"),
                     r"genes\.avg_lr_power: 11\.0 is out of range \[0, 10\]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_averaging_input_is_one_line_naming_the_field(case, tmp_path, capsys):
    text, pattern = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(evolveopt.GenomeError, match=pattern):
        evolveopt.load_genome(path)
    assert main(["show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err


def test_the_registry_row_declares_the_move_stage_and_its_state():
    variant = LOCI["averaging"].variant("schedule_free")
    assert variant.stage == "move" and LOCI["averaging"].since_schema == 2
    assert evolveopt.genome.slots.buffers_per_param(evolveopt.load_genome("schedulefree_adamw")) == 2
    assert evolveopt.genome.slots.buffers_per_param(evolveopt.load_genome("schedulefree_sgd")) == 1


def test_an_averaging_matrix_rule_without_matrices_evaluates_at_its_fallbacks_point():
    """Found by a frontier search: an orthogonalizing, averaging genome on a task whose tensors are all
    vectors routes every one to its fallback; eval() has nothing to average and must not fail."""
    import torch

    from evolveopt.compile.population import PopulationOptimizer, stack_genes
    from evolveopt.genome.schema import parse_genome
    from evolveopt.search.space import DRAWN_FALLBACK, with_drawn_genes

    import numpy as np

    data = {**evolveopt.genome.to_dict(evolveopt.load_genome("schedulefree_adamw")),
            "orthogonalize": "newton_schulz", "fallback": DRAWN_FALLBACK}
    genome = with_drawn_genes(np.random.default_rng(0), data, evolveopt.search.space.SearchSpace(),
                              known=data["genes"])
    params = [torch.randn(3, 5), torch.randn(3, 2)]
    population = PopulationOptimizer(genome, params, stack_genes([genome] * 3, dtype=torch.float32))
    before = [p.clone() for p in params]
    population.step([torch.randn_like(p) for p in params])
    population.eval()
    population.train()
    assert all(not torch.equal(a, b) for a, b in zip(before, params))
    assert parse_genome(evolveopt.genome.to_dict(genome)) == genome
