"""Learning-rate robustness: fitness over a per-genome sweep of lr multipliers (fitness.lr_sweep)."""

from __future__ import annotations

import math

import pytest
import yaml

import evolveopt
from evolveopt.config import ConfigError, FitnessConfig, load_config, parse_config
from evolveopt.evaluation import ResultCache
from evolveopt.evaluation.fitness import SOFT_MIN_TAU, aggregate_lr_scores, lr_scaled
from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings

TASKS = [{"name": "digits_mlp", "hidden": 16}]  # held-out data (the default objective), trains in milliseconds
BUDGET, SEEDS = 12, [0]
LION = evolveopt.load_genome("lion").with_genes(lr=1e-3)


def scorer(cache, rungs=1, **sweep):
    return FitnessScorer(FitnessSettings(tasks=TASKS, budget=BUDGET, seeds=SEEDS, rungs=rungs, **sweep), cache)


def test_the_default_is_no_sweep_and_scores_bit_identically():
    assert FitnessConfig().lr_sweep == (1.0,) and FitnessSettings(TASKS, BUDGET, SEEDS).lr_sweep == (1.0,)
    cache = ResultCache()
    before = scorer(cache).score([LION, evolveopt.load_genome("adam")])
    sweep = scorer(cache, lr_sweep=(1.0,), lr_aggregate="best").score([LION, evolveopt.load_genome("adam")])
    assert [f.to_json() for f in sweep] == [f.to_json() for f in before]
    assert "by_lr" not in before[0].to_json()


def test_best_over_a_sweep_is_at_least_the_score_at_the_genomes_own_lr():
    cache = ResultCache()
    own = scorer(cache).score([LION])[0]
    best = scorer(cache, lr_sweep=(0.5, 1.0, 2.0), lr_aggregate="best").score([LION])[0]
    soft = scorer(cache, lr_sweep=(0.5, 1.0, 2.0), lr_aggregate="soft_min").score([LION])[0]
    label = next(iter(own.task_scores))
    at = {float(m): scores[label] for m, scores in best.by_lr.items()}
    assert at[1.0] == own.task_scores[label]
    assert best.fitness == max(at.values()) >= own.fitness
    assert min(at.values()) <= soft.fitness <= sum(at.values()) / 3
    assert len(set(at.values())) == 3  # the multipliers really trained at different rates


def test_a_genome_at_twice_the_lr_scores_as_the_sweep_shifted_by_two():
    cache = ResultCache()
    up = scorer(cache, lr_sweep=(1.0, 2.0), lr_aggregate="best").score([LION])[0]
    down = scorer(cache, lr_sweep=(0.5, 1.0), lr_aggregate="best").score([LION.with_genes(lr=2e-3)])[0]
    assert up.by_lr["1"] == down.by_lr["0.5"] and up.by_lr["2"] == down.by_lr["1"]
    assert up.fitness == down.fitness
    alone = scorer(cache).score([LION.with_genes(lr=2e-3)])[0]
    assert alone.task_scores == up.by_lr["2"]


def test_successive_halving_ranks_by_the_aggregated_score():
    cache = ResultCache()
    genomes = [LION.with_genes(lr=lr) for lr in (1e-4, 1e-3, 1e-2)]
    outcomes = scorer(cache, rungs=2, lr_sweep=(0.5, 2.0), lr_aggregate="soft_min").score_with_halving(genomes)
    first = [o.scores_by_rung[0].fitness for o in outcomes]
    promoted = [i for i, o in enumerate(outcomes) if o.rung == 1]
    assert promoted == [max(range(3), key=lambda i: first[i])]
    assert all(set(o.score.by_lr) == {"0.5", "2"} for o in outcomes)


def test_a_scaled_genome_has_its_own_result_key_and_stays_in_the_lr_range():
    assert lr_scaled(LION, 1.0) is LION
    assert evolveopt.genome_hash(lr_scaled(LION, 2.0)) != evolveopt.genome_hash(LION)
    assert lr_scaled(LION.with_genes(lr=80.0), 2.0).genes["lr"] == 100.0  # the gene's upper bound


def test_soft_min_is_the_log_mean_exp_of_the_negated_scores():
    scores = [0.3, -0.1, 0.2]
    expected = -SOFT_MIN_TAU * math.log(sum(math.exp(-s / SOFT_MIN_TAU) for s in scores) / 3)
    assert aggregate_lr_scores(scores, "soft_min") == pytest.approx(expected, rel=1e-12)
    assert aggregate_lr_scores([0.4, -5.0], "soft_min") < -4.5  # a divergence at one multiplier dominates
    assert aggregate_lr_scores([0.4, 0.4], "soft_min") == pytest.approx(0.4)
    assert aggregate_lr_scores(scores, "best") == 0.3


def test_the_config_reads_a_sweep_and_an_aggregate():
    config = parse_config({"fitness": {"lr_sweep": [0.5, 1, "2e0"], "lr_aggregate": "best"}})
    assert config.fitness.lr_sweep == (0.5, 1.0, 2.0) and config.fitness.lr_aggregate == "best"


@pytest.mark.parametrize("value, words", [([0.5, -1.0], "positive"), ([0.0], "positive"), (["fast"], "positive"),
                                          ([1.0, 1], "twice"), ([2.0 ** k for k in range(9)], "at most 8"),
                                          ([], "non-empty"), (1.0, "non-empty")])
def test_a_bad_sweep_is_a_config_error_naming_the_key(value, words):
    with pytest.raises(ConfigError, match=rf"fitness\.lr_sweep: .*{words}"):
        parse_config({"fitness": {"lr_sweep": value}})


def test_a_bad_aggregate_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"fitness\.lr_aggregate: 'worst' is not allowed"):
        parse_config({"fitness": {"lr_aggregate": "worst"}})


def test_a_run_recorded_before_the_sweep_resumes_without_one(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"fitness": {"budget": 10}}))
    assert load_config(path, recorded=True).fitness.lr_sweep == (1.0,)


def test_bench_transfer_compares_no_sweep_with_each_aggregate_on_the_same_genomes(monkeypatch):
    from evolveopt.measure import fitness_transfer

    genomes = {name: LION.with_genes(lr=lr) for name, lr in (("slow", 1e-4), ("mid", 1e-3), ("fast", 1e-2))}
    genomes["adam"] = evolveopt.load_genome("adam")
    monkeypatch.setattr(fitness_transfer, "candidate_genomes", lambda random_count: genomes)
    monkeypatch.setattr("evolveopt.tasks.SEARCH_SUITE", TASKS)
    monkeypatch.setattr("evolveopt.tasks.HELDOUT_SUITE", [{"name": "digits_mlp", "hidden": 24}])
    report = fitness_transfer.run_lr_sweep_transfer((0.5, 1.0, 2.0), budget=BUDGET)
    search = report["search"]
    assert list(search) == ["no sweep", "best ×(0.5, 1, 2)", "soft_min ×(0.5, 1, 2)"]
    assert all(b >= own for b, own in zip(search["best ×(0.5, 1, 2)"], search["no sweep"]))
    assert [(r["lr sweep"], r["heldout_score"]) for r in report["rows"]] == [
        (name, target) for name in search
        for target in ("train_loss", "heldout_loss", "heldout_loss, best lr ×(0.5, 1, 2)")]
    assert all(r["delta"] == 0.0 for r in report["rows"] if r["lr sweep"] == "no sweep")
    table = fitness_transfer.format_transfer_table(report)
    assert "| search lr sweep | held-out score by |" in table and "ρ − ρ(no sweep)" in table


def test_bench_transfer_refuses_a_bad_sweep_naming_it(capsys):
    from evolveopt.cli import main

    assert main(["bench", "transfer", "--lr-sweep", "1", "1"]) == 2
    assert "--lr-sweep: fitness.lr_sweep: a multiplier appears twice" in capsys.readouterr().err
