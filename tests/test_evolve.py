"""Evolution runs: the GA, run directories, exact resume, bad configs, robustness."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import evolveopt
from evolveopt.cli import main
from evolveopt.config import ConfigError, load_config
from evolveopt.evolution import resume_run, start_run
from evolveopt.run_directory import RunDir, RunDirError
from evolveopt.search.algorithm import GAConfig, GeneticSearch
from evolveopt.search.operators import crossover, mutate_genes, mutate_structure
from evolveopt.genome.slots import buffers_per_param
from evolveopt.search.space import SearchSpace, random_genome

TINY = {
    "name": "tiny",
    "seed": 3,
    "search": {"population": 6, "generations": 3, "elites": 1, "tournament": 2,
               "seed_genomes": ["adam", "lion", "sgd"], "seed_variants": 0, "hall_of_fame": 4},
    "space": {"max_terms": 2},
    "fitness": {"tasks": [{"name": "digits_mlp", "hidden": 32}], "budget": 27, "seeds": [0]},
}


def tiny_config(tmp_path: Path, **changes) -> Path:
    data = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_files(run: Path) -> dict[str, bytes]:
    names = ["hall_of_fame.json", "lineage.jsonl"] + [f"population/{p.name}" for p in sorted((run / "population").iterdir())]
    return {name: (run / name).read_bytes() for name in names}


# ----------------------------------------------------------------------------- operators


def test_operators_always_return_valid_canonical_genomes():
    rng, space = np.random.default_rng(0), SearchSpace(max_terms=3)
    parents = [evolveopt.load_genome(n) for n in ("adam", "lion", "adan", "ga2025")] + \
              [random_genome(rng, space) for _ in range(6)]
    for _ in range(150):
        a, b = (parents[i] for i in rng.integers(len(parents), size=2))
        child, _ = crossover(rng, a, b, space)
        child, info = mutate_structure(rng, child, space)
        child, _ = mutate_genes(rng, child, space)
        assert len(child.terms) <= 3
        assert evolveopt.genome.canonical_form(child) == child


def test_orthogonalize_is_drawn_only_where_the_space_allows_it_and_always_with_a_fallback():
    rng = np.random.default_rng(2)
    assert not any(random_genome(rng, SearchSpace()).orthogonalize for _ in range(200))  # v1 draws unchanged
    space = SearchSpace(max_terms=2, orthogonalize=("none", "newton_schulz"))
    population = [random_genome(rng, space) for _ in range(12)] + [evolveopt.load_genome("muon")]
    drawn = sum(g.orthogonalize is not None for g in population[:12])
    assert 0 < drawn < 12
    seen = 0
    for _ in range(200):
        a, b = (population[i] for i in rng.integers(len(population), size=2))
        child, _ = mutate_structure(rng, crossover(rng, a, b, space)[0], space)
        child, _ = mutate_genes(rng, child, space)
        population[int(rng.integers(len(population)))] = child
        assert child.orthogonalize is None or child.fallback is not None
        assert evolveopt.genome.canonical_form(child) == child
        seen += child.orthogonalize is not None
    assert seen > 0


def test_a_drawn_orthogonalizing_genome_trains_a_net_with_biases():
    import torch

    rng, space = np.random.default_rng(4), SearchSpace(max_terms=1, orthogonalize=("newton_schulz",))
    genome = random_genome(rng, space)
    assert genome.orthogonalize.kind == "newton_schulz" and genome.fallback.lr_ratio == "fallback_lr_ratio"
    model = torch.nn.Linear(5, 3)
    optimizer = evolveopt.build_optimizer(genome, model.parameters(), total_steps=10)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.ones(2, 5)).pow(2).sum().backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_gene_mutation_stays_in_range_and_flips_no_structure():
    rng, space = np.random.default_rng(1), SearchSpace()
    adam = evolveopt.genome.canonical_form(evolveopt.load_genome("adam"))
    for _ in range(200):
        child, info = mutate_genes(rng, adam, space, probability=1.0, sigma=3.0)
        assert evolveopt.structure_key(child) == evolveopt.structure_key(adam)
        assert 0 <= child.genes["beta1"] < 1 and 0 <= child.genes["beta2"] < 1


def test_a_generation_has_no_duplicate_genomes():
    search = GeneticSearch(GAConfig(population=12, seed_genomes=("adam", "lion")), SearchSpace(), np.random.default_rng(0))
    population = search.initial_population()
    for i, ind in enumerate(population):
        ind.fitness.values = (0.0, float(i))
    offspring = search.next_generation(population, 1)
    assert len({ind.hash for ind in offspring}) == len(offspring) == 12
    assert offspring[0] is population[-1]  # the elite carries over
    assert all(ind.parents for ind in offspring[2:])


# ----------------------------------------------------------------------------- runs


def test_run_writes_every_record(tmp_path, capsys):
    summary = start_run(load_config(tiny_config(tmp_path)), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    log = capsys.readouterr().err.splitlines()  # not a terminal: one line per generation, nothing per unit or rung
    assert [line.split(":")[0] for line in log] == [f"[tiny] generation {g}/3" for g in (1, 2, 3)]
    assert summary.generations == 3 and summary.best is not None
    for name in ("config.yaml", "manifest.json", "generations.jsonl", "lineage.jsonl", "hall_of_fame.json",
                 "checkpoint.json", "population/gen_0000.json", "population/gen_0002.json"):
        assert (run / name).exists(), name
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2]
    assert all({"best", "median", "diversity", "evaluations", "cache_hits", "wall_time", "peak_rss_mb"} <= set(r) for r in rows)
    assert all(100 < r["peak_rss_mb"] < 64_000 for r in rows)  # torch alone takes > 100 MB
    assert all(r["threads"] and all(1 <= t <= len(os.sched_getaffinity(0)) for t in r["threads"]) for r in rows)
    lineage = [json.loads(line) for line in (run / "lineage.jsonl").read_text().splitlines()]
    ids = {r["id"] for r in lineage}
    assert all(set(r["parents"]) <= ids for r in lineage)
    assert all(r["operators"] and r["hash"] and r["fitness"] is not None for r in lineage)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["versions"]["torch"]


def test_same_seed_same_run(tmp_path):
    start_run(load_config(tiny_config(tmp_path)), tmp_path / "a", progress=False)
    start_run(load_config(tiny_config(tmp_path)), tmp_path / "b", progress=False)
    assert run_files(tmp_path / "a") == run_files(tmp_path / "b")


def cached_results(run: Path) -> dict[str, str]:
    """Every member result a run's cache holds, by key."""
    import sqlite3

    with sqlite3.connect(run / "cache.sqlite") as db:
        return dict(db.execute("SELECT key, value FROM results"))


SPECULATED = {"search.population": 9, "fitness.tasks": [{"name": "digits_mlp", "hidden": 16}, {"name": "nqm"}],
              "fitness.seeds": [0, 1], "fitness.budget": 18}


@pytest.mark.parametrize("sweep", [{}, {"fitness.lr_sweep": [0.5, 2.0], "fitness.lr_aggregate": "soft_min"}],
                         ids=["own-lr", "lr-sweep"])
def test_speculative_promotion_gives_the_run_of_rungs_one_after_another(tmp_path, sweep):
    """Issue 14: rungs overlapping (pipeline.py) on a backend of 3 slots that runs its units here, in the order
    they were submitted, against rungs one after another: same records, and the same cache (no dropped guess in it);
    with a learning-rate sweep too (each candidate speculated with all its lr variants)."""
    from evolveopt.backends import LocalBackend
    from evolveopt.evolution import Evolution, manifest
    from evolveopt.config import to_plain

    config = load_config(tiny_config(tmp_path, **SPECULATED, **sweep))
    start_run(config, tmp_path / "plain", progress=False)
    backend = LocalBackend()
    backend.workers = 3  # the scorer plans for 3 workers and keeps up to 3 units submitted
    rundir = RunDir(tmp_path / "speculated")
    rundir.create(yaml.safe_dump(to_plain(config), sort_keys=False), manifest(config, []))
    evolution = Evolution(config, rundir, None, backend)
    evolution.run()
    stats = evolution.scorer.stats
    assert evolution.scorer.pipeline is not None
    assert 0 < stats.speculative_used_steps < stats.speculative_steps  # guesses both used and dropped
    assert run_files(tmp_path / "speculated") == run_files(tmp_path / "plain")
    assert cached_results(tmp_path / "speculated") == cached_results(tmp_path / "plain")


@pytest.mark.slow
def test_sigkill_mid_generation_then_resume_equals_an_uninterrupted_run(tmp_path):
    config = tiny_config(tmp_path, **{"search.generations": 4, "fitness.budget": 900})
    start_run(load_config(config), tmp_path / "whole", progress=False)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "evolveopt.cli", "evolve", str(config), "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for generation 0 and 1 to be committed, then kill inside the next
        if (killed / "generations.jsonl").exists() and (killed / "generations.jsonl").read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = (killed / "generations.jsonl").read_text().count("\n")
    assert 2 <= done < 4, "the kill should land before the run ends"
    resume_run(killed, progress=False)
    assert run_files(killed) == run_files(tmp_path / "whole")


def test_damaged_checkpoint_names_the_file_and_falls_back(tmp_path, capsys):
    run = tmp_path / "run"
    start_run(load_config(tiny_config(tmp_path)), run, progress=False)
    (run / "checkpoint.json").write_text((run / "checkpoint.json").read_text()[:500])
    with pytest.raises(RunDirError, match="checkpoint.json: damaged"):
        _read_latest_only(run)
    checkpoint, warnings = RunDir(run).read_checkpoint()
    assert checkpoint["generation"] == 1 and "checkpoint.json: damaged" in warnings[0]
    before = run_files(run)
    summary = resume_run(run, progress=False)  # redoes generation 2 from the previous checkpoint
    assert summary.generations == 3 and run_files(run) == before


def _read_latest_only(run: Path) -> None:
    from evolveopt.run_directory import _verified

    _verified(run / "checkpoint.json")


def test_no_intact_checkpoint_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    start_run(load_config(tiny_config(tmp_path)), run, progress=False)
    for name in ("checkpoint.json", "checkpoint.prev.json"):
        (run / name).write_text("{}")
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.json: damaged" in err and "no intact checkpoint" in err


def test_an_exception_stops_the_run_uncached_and_resume_after_the_fix_equals_a_clean_run(tmp_path, monkeypatch):
    from evolveopt.compile import rule

    config = tiny_config(tmp_path, **{"search.seed_genomes": ["adam", "lion", "sgd"]})
    start_run(load_config(config), tmp_path / "clean", progress=False)
    original, checkpoints = rule.Rule.step, []

    def flaky(self, params, grads, state, ctx):
        if checkpoints and any(term.sign for term in self.genome.terms):
            raise RuntimeError("boom")  # from generation 1 on, every sign-taking structure fails
        return original(self, params, grads, state, ctx)

    write = RunDir.write_checkpoint
    monkeypatch.setattr(RunDir, "write_checkpoint", lambda self, state: (write(self, state), checkpoints.append(1)))
    monkeypatch.setattr(rule.Rule, "step", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        start_run(load_config(config), tmp_path / "run", progress=False)
    assert RunDir(tmp_path / "run").read_checkpoint()[0]["generation"] == 0
    monkeypatch.undo()  # the bug is fixed; nothing of the failure was cached, so resume equals a clean run
    resume_run(tmp_path / "run", progress=False)
    assert run_files(tmp_path / "run") == run_files(tmp_path / "clean")


def test_resume_with_both_checkpoints_gone_refuses_and_restart_starts_over_keeping_the_old_records(tmp_path, capsys):
    run = tmp_path / "run"
    start_run(load_config(tiny_config(tmp_path)), run, progress=False)
    before, log = run_files(run), (run / "generations.jsonl").read_bytes()
    for name in ("checkpoint.json", "checkpoint.prev.json"):
        (run / name).unlink()
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no checkpoint is left" in err and f"evolveopt resume {run} --restart" in err
    assert (run / "generations.jsonl").read_bytes() == log  # refused before touching anything
    assert main(["resume", str(run), "--restart"]) == 0
    assert "starting" in capsys.readouterr().err
    (backup,) = run.glob("replaced-*")
    assert (backup / "generations.jsonl").read_bytes() == log and (backup / "population" / "gen_0002.json").exists()
    assert run_files(run) == before and RunDir(run).read_checkpoint()[0]["generation"] == 2


def test_a_run_that_died_in_generation_0_resumes_from_generation_0_without_restart(tmp_path, capsys):
    run = tmp_path / "run"
    start_run(load_config(tiny_config(tmp_path)), run, progress=False)
    before = run_files(run)
    for name in ("checkpoint.json", "checkpoint.prev.json", "hall_of_fame.json", "population/gen_0001.json",
                 "population/gen_0002.json"):
        (run / name).unlink()
    (run / "generations.jsonl").write_text("")  # killed inside generation 0's commit: population file and
    lines = (run / "lineage.jsonl").read_text().splitlines(keepends=True)  # lineage written, no checkpoint yet
    (run / "lineage.jsonl").write_text("".join(lines[:6]))
    assert main(["resume", str(run)]) == 0
    assert run_files(run) == before and not list(run.glob("replaced-*"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished tiny run; tests damage copies of it."""
    folder = tmp_path_factory.mktemp("finished")
    start_run(load_config(tiny_config(folder)), folder / "run", progress=False)
    return folder / "run"


def _copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _runs_line(run: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["runs", str(run)]) == 0
    return capsys.readouterr().out


REPAIRABLE = {  # damage -> (file named in the one line, how it is repaired)
    "lineage.jsonl cut short": (lambda run: _cut(run / "lineage.jsonl", 0.5), "lineage.jsonl", "rebuilt from the population files"),
    "generations.jsonl cut mid-line": (lambda run: _cut(run / "generations.jsonl", 0.7), "generations.jsonl",
                                       "rebuilt from the checkpoint's logbook"),
    "generations.jsonl emptied": (lambda run: (run / "generations.jsonl").write_text(""), "generations.jsonl", "rebuilt"),
    "lineage.jsonl record edited": (lambda run: _edit_line(run / "lineage.jsonl", 3, '{"generation": 7}'), "lineage.jsonl",
                                    "rebuilt from the population files"),
    "garbage after the last checkpoint": (lambda run: _append(run / "lineage.jsonl", b"{garbage\n"), "lineage.jsonl",
                                          "cut back to the checkpoint"),
    "hall of fame garbage": (lambda run: (run / "hall_of_fame.json").write_text("[{]"), "hall_of_fame.json",
                             "rewritten from the checkpoint"),
    "hall of fame emptied": (lambda run: (run / "hall_of_fame.json").write_text("[]\n"), "hall_of_fame.json",
                             "rewritten from the checkpoint"),
    "last population file gone": (lambda run: (run / "population" / "gen_0002.json").unlink(), "gen_0002.json",
                                  "rewritten from the checkpoint"),
}


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def _append(path: Path, data: bytes) -> None:
    path.write_bytes(path.read_bytes() + data)


def _edit_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[index] = text + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize("case", sorted(REPAIRABLE))
def test_a_damaged_log_or_hall_of_fame_is_repairable_in_runs_and_repaired_by_resume_to_the_same_bytes(
        case, finished_run, tmp_path, capsys):
    damage, name, how = REPAIRABLE[case]
    run = _copy_of(finished_run, tmp_path)
    whole = {**run_files(run), "generations.jsonl": (run / "generations.jsonl").read_bytes()}
    damage(run)
    out = _runs_line(run, capsys)
    assert "complete" not in out and " repairable " in out and "3/3" in out
    (problem,) = [line for line in out.splitlines() if line.startswith("  ")]
    assert name in problem and how in problem and "`evolveopt resume` repairs it" in problem
    assert main(["resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == [f"warning: {problem.strip().split('; `')[0]}; "
                                                                                 f"{problem.split('repairs it (')[1][:-1]}"]
    assert {**run_files(run), "generations.jsonl": (run / "generations.jsonl").read_bytes()} == whole
    assert " complete " in _runs_line(run, capsys)
    assert main(["lineage", str(run)]) == 0


def test_history_that_cannot_be_rebuilt_is_damaged_in_runs_and_resume_refuses_touching_nothing(
        finished_run, tmp_path, capsys):
    run = _copy_of(finished_run, tmp_path)
    (run / "population" / "gen_0000.json").unlink()
    _cut(run / "lineage.jsonl", 0.5)
    (run / "hall_of_fame.json").write_text("{")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    out = _runs_line(run, capsys)
    assert " damaged " in out and "complete" not in out
    problems = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert len(problems) == 3 and "gen_0000.json: missing; cannot be rebuilt" in problems[0]
    assert "lineage.jsonl" in problems[1] and "cannot be rebuilt without every population file" in problems[1]
    assert "hall_of_fame.json" in problems[2] and problems[2].endswith("; repairable (rewritten from the checkpoint)")
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"evolveopt: error: {problems[0]}", problems[1]]
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_garbage_checkpoints_are_never_complete(finished_run, tmp_path, capsys):
    run = _copy_of(finished_run, tmp_path)
    (run / "checkpoint.json").write_text("garbage")
    out = _runs_line(run, capsys)
    assert " repairable " in out and "2/3" in out and "checkpoint.json: damaged" in out
    (run / "checkpoint.prev.json").write_text("{}")
    out = _runs_line(run, capsys)
    assert " damaged " in out and "0/3" in out and "no intact checkpoint" in out and "--restart" in out


def test_a_repaired_stopped_run_resumes_to_the_same_result_as_an_uninterrupted_one(finished_run, tmp_path, capsys):
    run = _copy_of(finished_run, tmp_path)
    (run / "checkpoint.json").write_text("garbage")  # falls back to generation 1, ...
    previous = json.loads((run / "checkpoint.prev.json").read_text())
    _cut(run / "lineage.jsonl", previous["files"]["lineage.jsonl"] / (run / "lineage.jsonl").stat().st_size / 2)
    (run / "population" / "gen_0001.json").write_text("")  # ... whose log and population file are damaged
    assert main(["resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "lineage.jsonl" in err and "rebuilt from the population files" in err and "gen_0001.json" in err
    assert run_files(run) == run_files(finished_run)


def test_what_a_kill_inside_a_generations_commit_leaves_is_no_problem(finished_run, tmp_path, capsys):
    """Killed while generation 2 was being committed: its population file, part of its lineage lines, its
    generation line and hall of fame written, its checkpoint not. That is a stopped run, which resume continues."""
    run = _copy_of(finished_run, tmp_path)
    os.replace(run / "checkpoint.prev.json", run / "checkpoint.json")
    previous = json.loads((run / "checkpoint.json").read_text())
    _cut(run / "lineage.jsonl", (previous["files"]["lineage.jsonl"] + 10) / (run / "lineage.jsonl").stat().st_size)
    out = _runs_line(run, capsys)
    assert " stopped " in out and "2/3" in out and "\n  " not in out
    assert main(["resume", str(run)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert run_files(run) == run_files(finished_run)


def test_generations_rebuilt_from_an_older_logbook_without_wall_time_reseal_the_checkpoint(finished_run, tmp_path, capsys):
    from evolveopt.run_directory import _digest, _verified, dumps

    run = _copy_of(finished_run, tmp_path)
    state = _verified(run / "checkpoint.json")
    state["logbook"] = [{k: v for k, v in row.items() if k != "wall_time"} for row in state["logbook"]]
    (run / "checkpoint.json").write_text(dumps({**state, "sha256": _digest(state)}) + "\n")
    _cut(run / "generations.jsonl", 0.5)
    assert main(["resume", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2] and all(r["wall_time"] is None for r in rows)
    assert _verified(run / "checkpoint.json")["files"]["generations.jsonl"] == (run / "generations.jsonl").stat().st_size
    out = _runs_line(run, capsys)
    assert " complete " in out and "  " + str(run) not in out


def test_resume_of_a_checkpoint_holding_a_null_fitness_is_one_clear_line(tmp_path, capsys):
    from evolveopt.run_directory import _digest, _verified, dumps

    run = tmp_path / "run"
    start_run(load_config(tiny_config(tmp_path)), run, progress=False)
    state = _verified(run / "checkpoint.json")
    state["hall_of_fame"][0]["fitness"][1] = None  # what an older version wrote for a NaN score
    (run / "checkpoint.json").write_text(dumps({**state, "sha256": _digest(state)}) + "\n")
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"individual #{state['hall_of_fame'][0]['id']} has fitness" in err and "null" in err


def test_runs_lists_status_and_best(tmp_path, capsys):
    start_run(load_config(tiny_config(tmp_path)), tmp_path / "runs" / "one", progress=False)
    (tmp_path / "runs" / "empty").mkdir()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "3/3" in out


# ----------------------------------------------------------------------------- bad configs


BAD_CONFIGS = {
    "unknown key": ({"search": {"populaton": 4}}, r"search\.populaton: unknown key \(allowed: population"),
    "population 0": ({"search": {"population": 0}}, r"search\.population: 0 is out of range \[2, 100000\]"),
    "missing genome": ({"search": {"seed_genomes": ["adamx"]}}, r"search\.seed_genomes\[0\]: no genome named 'adamx'"),
    "negative budget": ({"fitness": {"budget": -5}}, r"fitness\.budget: -5 is out of range"),
    "unknown task": ({"fitness": {"tasks": ["digitz"]}}, r"fitness\.tasks\[0\]: unknown task 'digitz'"),
    "bad backend": ({"backend": {"kind": "slurm"}}, r"backend\.kind: 'slurm' is not allowed \(allowed: local, ray\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_gives_one_line_and_exit_code_2(case, tmp_path, capsys):
    data, pattern = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=pattern):
        load_config(path)
    assert main(["evolve", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    assert not (tmp_path / "run").exists()


def test_set_overrides_are_validated(tmp_path, capsys):
    assert main(["evolve", str(tiny_config(tmp_path)), "--set", "search.population=1", "--out", str(tmp_path / "r")]) == 2
    assert "search.population: 1 is out of range" in capsys.readouterr().err


def test_missing_config_and_run_dir(tmp_path, capsys):
    assert main(["evolve", str(tmp_path / "nope.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "nothing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_quickstart_config_is_valid():
    config = load_config(Path(__file__).resolve().parent.parent / "experiments" / "quickstart.yaml")
    assert config.search.population >= 8


@pytest.mark.parametrize("name", ["quickstart", "paper", "large_batch", "gpu"])
def test_shipped_experiments_are_valid(name):
    load_config(Path(__file__).resolve().parent.parent / "experiments" / f"{name}.yaml")


@pytest.mark.slow
def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path):
    config = tiny_config(tmp_path, **{"search.generations": 6, "fitness.budget": 900})
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "evolveopt.cli", "evolve", str(config), "--out", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # generation 0 takes > 120 s on 2 busy cores
    while time.monotonic() < deadline and not (run / "checkpoint.json").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert f"resume with: evolveopt resume {run}" in err and "Traceback" not in err
    checkpoint, _ = RunDir(run).read_checkpoint()
    assert checkpoint["generation"] >= 0
    summary = resume_run(run, progress=False)
    assert summary.generations == 6


def test_mutations_stay_inside_a_restricted_search_space():
    config = load_config(Path(__file__).resolve().parent.parent / "experiments" / "paper.yaml")
    rng, space = np.random.default_rng(5), config.space
    population = [random_genome(rng, space) for _ in range(10)]
    for _ in range(300):
        a, b = (population[i] for i in rng.integers(len(population), size=2))
        child, _ = mutate_structure(rng, crossover(rng, a, b, space)[0], space)
        population[int(rng.integers(len(population)))] = child
        for term in child.terms:
            assert term.signal.kind == "grad"
            if term.precondition is not None:
                assert not term.precondition.rectify and term.precondition.eps_mode == "outside"
        assert child.layerwise is None and child.friction == "none" and child.adaptor is None
        assert child.weight_decay is not None and child.weight_decay.mode == "decoupled"
        assert buffers_per_param(child) <= config.space.max_buffers == 2


def test_ctrl_c_in_generation_0_does_not_claim_a_checkpoint(tmp_path):
    config = tiny_config(tmp_path, **{"fitness.budget": 3000})
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "evolveopt.cli", "evolve", str(config), "--out", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "run.lock").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # inside generation 0 (Adam's baseline tuning alone takes longer)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    assert not (run / "checkpoint.json").exists()
    assert "before any generation completed: no checkpoint yet" in err and "checkpoint kept" not in err


def test_the_run_lock_is_atomic_one_of_racing_processes_gets_it(tmp_path):
    """Processes that all try to take one run's lock at the same moment: exactly one gets it."""
    (tmp_path / "run").mkdir()
    code = ("import sys, time\nfrom evolveopt.run_directory import RunDir, RunDirError\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "try:\n    RunDir(sys.argv[1]).lock()\nexcept RunDirError as e:\n    print('refused', e)\n"
            "else:\n    print('locked')\n    time.sleep(2)\n")
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), str(start)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sum(o.startswith("locked") for o in outs) == 1, outs
    assert all(o.startswith("refused") and "another process is running this run" in o
               for o in outs if not o.startswith("locked")), outs
    # a lock left by a process that is gone is taken over
    rundir = RunDir(tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rundir.file("run.lock").write_text(dead.stdout.strip())
    rundir.lock()
    assert rundir.file("run.lock").read_text() == str(os.getpid())
    rundir.unlock()


def test_resume_and_report_of_a_finished_run_start_an_empty_cache_over_a_damaged_one(tmp_path, capsys):
    start_run(load_config(tiny_config(tmp_path)), tmp_path / "run", progress=False)
    run, cache = tmp_path / "run", tmp_path / "run" / "cache.sqlite"
    before = run_files(run)
    for n, command in enumerate((["resume", str(run)], ["report", str(run), "--checkup-seeds", "0"]), start=1):
        gc.collect()  # closes the last command's cache connection, which folds its WAL into the file, as an exit does
        assert not (run / "cache.sqlite-wal").exists()
        cache.write_bytes(os.urandom(cache.stat().st_size))
        capsys.readouterr()
        assert main(command) == 0
        err = capsys.readouterr().err
        assert f"warning: {cache}: damaged evaluation cache (file is not a database); moved to {cache}.corrupt-{n}," in err
        assert (run / f"cache.sqlite.corrupt-{n}").exists()
    assert (run / "report" / "report.md").exists()
    assert run_files(run) == before


@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_resume_with_a_warm_or_a_cold_cache_equals_an_uninterrupted_run(tmp_path, cache):
    """Redoing the last generation from the previous checkpoint reads its results from the cache
    (warm) or trains them again in that generation's units (cold: elites and promoted members then
    train beside other members than when they were first cached); the files are the same bytes."""
    config = load_config(tiny_config(tmp_path, **{"search.generations": 4}))
    start_run(config, tmp_path / "whole", progress=False)
    run = tmp_path / "run"
    start_run(config, run, progress=False)
    (run / "checkpoint.json").write_text("{}")  # damaged: resume redoes generation 3 from checkpoint.prev.json
    if cache == "cold":
        gc.collect()
        for path in run.glob("cache.sqlite*"):
            path.unlink()
    resume_run(run, progress=False)
    assert run_files(run) == run_files(tmp_path / "whole")


def test_results_a_run_cached_equal_the_same_genomes_trained_afresh_in_other_units(tmp_path):
    """What a cache hands out is what training would give: the run's full-budget members, each
    trained beside its own generation's members, trained again beside each other and a neighbour
    of their structure with another learning rate."""
    from evolveopt.evaluation.cache import ResultCache
    from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings
    from evolveopt.genome.schema import parse_genome

    run = tmp_path / "run"
    start_run(load_config(tiny_config(tmp_path)), run, progress=False)
    individuals = [ind for path in sorted((run / "population").iterdir())
                   for ind in json.loads(path.read_text())["individuals"] if ind["fitness"][0] == 2]  # the last rung
    genomes = [parse_genome(ind["genome"]) for ind in individuals]
    settings = FitnessSettings(tasks=TINY["fitness"]["tasks"], budget=TINY["fitness"]["budget"], seeds=[0], rungs=1)
    warm = FitnessScorer(settings, ResultCache(run / "cache.sqlite"))
    cold = FitnessScorer(settings, ResultCache())
    neighbours = [g.with_genes(lr=g.genes["lr"] / 2) for g in genomes]
    from_cache, afresh = warm.score(genomes), cold.score(genomes + neighbours)[:len(genomes)]
    assert len(genomes) >= 3 and warm.stats.cache_misses == 0 and cold.stats.cache_hits == 0
    assert [f.fitness for f in from_cache] == [f.fitness for f in afresh] == [ind["fitness"][1] for ind in individuals]
    assert [f.to_json() for f in from_cache] == [f.to_json() for f in afresh]


def test_every_repeated_set_flag_applies(tmp_path):
    """``--set a=1 --set b=2`` overrides both keys (argparse's default kept only the last flag)."""
    from evolveopt.cli import build_parser

    args = build_parser().parse_args(["evolve", "c.yaml", "--set", "search.population=6",
                                      "--set", "search.generations=1", "fitness.budget=9"])
    assert args.set == ["search.population=6", "search.generations=1", "fitness.budget=9"]
    args = build_parser().parse_args(["try", "adam", "--set", "lr=0.01", "--set", "beta1=0.8"])
    assert args.set == ["lr=0.01", "beta1=0.8"]
