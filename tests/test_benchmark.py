"""The benchmark protocol, its statistics and its outputs, on a tiny suite."""

from __future__ import annotations

import json
import math

import pytest

import evolveopt
from evolveopt.benchmark.protocol import BenchmarkSettings, halton, run_benchmark, trial_points
from evolveopt.benchmark.baselines import FRONTIER
from evolveopt.benchmark.summary import build_report, pareto_front
from evolveopt.benchmark.stats import bootstrap_median_ratio, performance_profile, steps_to_target
from evolveopt.cli import main

TINY_TASKS = ({"name": "digits_mlp", "hidden": 16}, {"name": "nqm", "dim": 20})


def test_steps_to_target_interpolates_the_first_crossing():
    assert steps_to_target([4.0, 2.0, 1.0], [10, 20, 30], 3.0) == pytest.approx(15.0)
    assert steps_to_target([4.0, 2.0, 1.0], [10, 20, 30], 5.0) == 10.0
    assert steps_to_target([4.0, 2.0, 1.5], [10, 20, 30], 1.0) == math.inf


def test_halton_points_fill_the_space_and_are_shared():
    assert [halton(i, 2) for i in range(1, 5)] == [0.5, 0.25, 0.75, 0.125]
    points = trial_points(BenchmarkSettings(tasks=TINY_TASKS, trials=8))
    assert len({p["lr"] for p in points}) == 8
    assert all(1e-5 <= p["lr"] <= 1.0 and 1e-6 <= p["weight_decay"] <= 0.1 for p in points)


def test_performance_profile_and_score():
    taus, rho, scores = performance_profile({"a": [10.0, 20.0], "b": [20.0, math.inf]}, taus=[1.0, 2.0, 4.0])
    assert rho["a"] == [1.0, 1.0, 1.0] and rho["b"] == [0.0, 0.5, 0.5]
    assert scores["a"] == 1.0 and scores["b"] == pytest.approx(1 / 3)


def test_bootstrap_interval_excludes_one_for_a_clearly_faster_optimizer():
    per_task = [([50.0, 52.0, 48.0, 51.0, 49.0], [100.0, 98.0, 103.0, 101.0, 99.0])] * 4
    point, low, high = bootstrap_median_ratio(per_task)
    assert low <= point <= high < 1.0 and point == pytest.approx(0.5, abs=0.02)


def test_every_optimizer_gets_the_same_trials_then_fresh_seeds():
    genomes = {n: evolveopt.load_genome(n) for n in ("adamw", "lion", "eve")}
    settings = BenchmarkSettings(tasks=TINY_TASKS[:1], budget=20, trials=3, seeds=2)
    (run,) = run_benchmark(genomes, settings)
    points = trial_points(settings)
    for name, result in run.optimizers.items():
        assert len(result.tuning_losses) == 3 and len(result.results) == 2
        assert result.setting["lr"] in {p["lr"] for p in points}
    assert "weight_decay" not in run.optimizers["eve"].setting  # eve has no weight decay gene
    assert min(settings.fresh_seeds) >= 10_000 and not set(settings.fresh_seeds) & set(settings.tuning_seed_list)
    report = build_report([run], genomes, settings)
    adamw = report["tasks"][0]["optimizers"]["adamw"]
    assert adamw["speed_ratio_vs_adamw"] == 1.0 and report["summary"]["optimizers"]["adamw"]["ci95"] == [1.0, 1.0]
    assert report["tasks"][0]["optimizers"]["lion"]["state_bytes_per_param"] == 4


def test_benchmark_command_writes_json_markdown_and_pictures(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["benchmark", "lion", "ga2025", "--task", "digits_mlp:hidden=16", "--task", "nqm:dim=20",
            "--trials", "2", "--seeds", "2", "--budget", "20", "--baselines", "none", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert report["optimizers"] == ["adamw", "lion", "ga2025"]
    assert [t["task"] for t in report["tasks"]] == ["digits_mlp[hidden=16]", "nqm[dim=20]"]
    for task in report["tasks"]:
        for o in task["optimizers"].values():
            assert {"final_loss_median", "steps_to_target_median", "speed_ratio_vs_adamw", "step_ms",
                    "state_bytes_per_param", "heldout_median"} <= set(o)
    assert "## Summary" in (out / "benchmark.md").read_text()
    for picture in ("curves.png", "profile.png", "pareto.png"):
        assert (out / picture).read_bytes()[:4] == b"\x89PNG"
    (out / "benchmark.md").unlink()
    assert main(["benchmark", "--summarize", str(out)]) == 0  # from the JSON alone, no training
    assert json.loads((out / "benchmark.json").read_text())["summary"] == report["summary"]
    assert "## Summary" in (out / "benchmark.md").read_text()


def test_benchmark_bad_input(tmp_path, capsys):
    assert main(["benchmark", "adamx", "--task", "nqm", "--out", str(tmp_path / "b")]) == 2
    assert "no genome named 'adamx'" in capsys.readouterr().err
    assert main(["benchmark", "adam", "--task", "nqmx", "--out", str(tmp_path / "b")]) == 2
    assert "unknown task 'nqmx'" in capsys.readouterr().err


def _bench(champion_losses, adamw_losses):
    from evolveopt.benchmark.protocol import OptimizerOnTask, TaskBenchmark
    from evolveopt.evaluation.results import MemberResult

    def side(losses):
        return OptimizerOnTask({"lr": 1e-3}, [], [MemberResult(x, x, diverged=math.isnan(x)) for x in losses])

    return TaskBenchmark({"name": "nqm"}, "nqm", 10, {"champion": side(champion_losses), "adamw": side(adamw_losses)})


def test_checkup_verdicts_follow_the_interval_and_divergence():
    from evolveopt.benchmark.checkup import summarize, summary_line, task_row

    lower = task_row(_bench([0.10, 0.11, 0.12, 0.10, 0.11], [0.20, 0.21, 0.22, 0.20, 0.21]), "heldout")
    assert lower["verdict"] == "win" and lower["log_loss_vs_adamw"][2] < 0
    higher = task_row(_bench([0.20, 0.21, 0.22, 0.20, 0.21], [0.10, 0.11, 0.12, 0.10, 0.11]), "heldout")
    assert higher["verdict"] == "loss"
    mixed = task_row(_bench([0.10, 0.30, 0.10, 0.30, 0.20], [0.20, 0.20, 0.20, 0.20, 0.20]), "search")
    assert mixed["verdict"] == "tie"
    diverged = task_row(_bench([math.nan, 0.10, 0.10, 0.10, 0.10], [0.20] * 5), "search")
    assert diverged["verdict"] == "loss" and diverged["optimizers"]["champion"]["diverged_seeds"] == 1
    rows = [lower, higher, mixed, diverged]
    assert summarize(rows) == {"heldout": {"win": 1, "tie": 0, "loss": 1}, "search": {"win": 0, "tie": 1, "loss": 1}}
    assert summary_line({"summary": summarize(rows)}) == "held-out 1/0/1, search 0/1/1"


def test_bench_heap_measures_both_allocator_settings_in_their_own_process(capsys):
    """`evolveopt bench heap`: each allocator setting trains in a fresh interpreter and reports its own peak RSS."""
    assert main(["bench", "heap", "--sizes", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["setting"] for r in report["rows"]] == ["glibc default", "temporaries in heap"]
    assert all(r["member_steps_per_s"] > 0 and 50 < r["peak_rss_mb"] < 20_000 for r in report["rows"])


def test_the_default_comparison_holds_the_classics_and_the_frontier():
    from evolveopt.cli import build_parser

    args = build_parser().parse_args(["benchmark", "mine.yaml"])
    assert args.baselines == "all"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "x", "--baselines", "newest"])


def test_a_frontier_benchmark_tunes_every_frontier_optimizer_and_draws_speed_against_memory(tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", "--baselines", "frontier", "--task", "digits_mlp:hidden=8", "--trials", "1",
                 "--seeds", "2", "--budget", "12", "--out", str(out)]) == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert report["optimizers"] == ["adamw", *FRONTIER]
    summary = report["summary"]["optimizers"]
    assert all(s["step_ms_median"] > 0 for s in summary.values())
    assert summary["schedulefree_adamw"]["state_bytes_per_param"] == 8  # z and v
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "step ms (median over tasks)" in (out / "benchmark.md").read_text()


def test_the_pareto_front_keeps_the_points_nothing_beats_in_both_memory_and_speed():
    points = {"sgd": (0.0, 2.0), "adamw": (8.0, 1.0), "lion": (4.0, 1.2), "bad": (8.0, 1.5), "twin": (4.0, 1.2),
              "never": (0.0, math.inf)}
    assert pareto_front(points) == ["sgd", "lion", "twin", "adamw"]
