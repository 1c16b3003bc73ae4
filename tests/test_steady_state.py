"""The steady-state (asynchronous, regularized-evolution) search: records, determinism, exact resume."""

from __future__ import annotations

import json
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evolveopt.cli import main
from evolveopt.config import load_config
from evolveopt.evolution import resume_run, start_run
from evolveopt.run_directory import RunDir
from evolveopt.search.algorithm import GAConfig, GeneticSearch
from evolveopt.search.space import SearchSpace
from test_evolve import run_files, tiny_config

STEADY = {"search.mode": "steady_state"}


def steady_config(tmp_path: Path, **changes) -> Path:
    return tiny_config(tmp_path, **{**STEADY, **changes})


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_steady_state_run_writes_the_records_of_a_generational_one(tmp_path, capsys):
    summary = start_run(load_config(steady_config(tmp_path)), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    log = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in log] == [f"[tiny] generation {g}/3" for g in (1, 2, 3)]
    assert summary.generations == 3 and summary.best is not None
    rows = lines(run / "generations.jsonl")
    assert [r["generation"] for r in rows] == [0, 1, 2] and all(r["evaluations"] == 6 for r in rows)
    assert all(r["in_flight"] == 2 for r in rows)  # one in-process worker × in_flight_per_worker 2
    lineage = lines(run / "lineage.jsonl")
    arrivals = lines(run / "arrivals.jsonl")
    assert len(lineage) == len(arrivals) == 18  # 3 epochs × population 6, each evaluation once
    assert [r["id"] for r in lineage] == [a["id"] for a in arrivals] == list(range(18))  # in-process: in order
    assert [a["n"] for a in arrivals] == list(range(18))
    ids = {r["id"] for r in lineage}
    assert all(set(r["parents"]) <= ids for r in lineage)
    assert all(r["rung"] == 2 and r["budget"] == 27 for r in lineage)  # full budget, the last rung's
    for epoch in range(3):  # the queue after each epoch holds exactly that epoch's arrivals, oldest first
        population = json.loads((run / f"population/gen_{epoch:04d}.json").read_text())["individuals"]
        assert [d["id"] for d in population] == [r["id"] for r in lineage[6 * epoch: 6 * epoch + 6]]
    children = [r for r in lineage if r["id"] >= 6]
    assert children and all(r["parents"] and r["operators"] for r in children)
    # every parent was in the queue when its child was bred: born no later than the child's arrival epoch
    born = {r["id"]: r["generation"] for r in lineage}
    assert all(born[p] <= r["generation"] for r in children for p in r["parents"])
    assert main(["runs", str(tmp_path)]) == 0
    assert "complete" in capsys.readouterr().out


def test_same_seed_same_steady_state_run_and_it_differs_from_the_generational_one(tmp_path):
    start_run(load_config(steady_config(tmp_path)), tmp_path / "a", progress=False)
    start_run(load_config(steady_config(tmp_path)), tmp_path / "b", progress=False)
    assert run_files(tmp_path / "a") == run_files(tmp_path / "b")
    assert (tmp_path / "a" / "arrivals.jsonl").read_bytes() == (tmp_path / "b" / "arrivals.jsonl").read_bytes()
    start_run(load_config(tiny_config(tmp_path)), tmp_path / "gen", progress=False)
    assert not (tmp_path / "gen" / "arrivals.jsonl").exists()
    assert run_files(tmp_path / "gen") != run_files(tmp_path / "a")


def test_tournament_children_draw_only_from_the_numpy_generator():
    config = GAConfig(population=8, seed_genomes=("adam", "lion", "sgd"), tournament=3)
    children = []
    for _ in range(2):
        search = GeneticSearch(config, SearchSpace(max_terms=2), np.random.default_rng(5))
        population = search.initial_population()
        for i, ind in enumerate(population):
            ind.fitness.values = (0.0, float(i % 5))
        seen = {ind.hash for ind in population}
        children.append([search.tournament_child(population, 1, seen).to_json() for _ in range(5)])
    assert children[0] == children[1]
    assert all(set(c["parents"]) <= set(range(8)) and c["hash"] for c in children[0])


def test_steady_state_options_are_validated(tmp_path, capsys):
    assert main(["evolve", str(steady_config(tmp_path)), "--set", "search.mode=async", "--out", str(tmp_path / "r")]) == 2
    assert "search.mode: 'async' is not allowed (allowed: generational, steady_state)" in capsys.readouterr().err
    assert main(["evolve", str(steady_config(tmp_path)), "--set", "search.in_flight_per_worker=0",
                 "--out", str(tmp_path / "r")]) == 2
    assert "search.in_flight_per_worker: 0 is out of range" in capsys.readouterr().err


def _kill_after(config: Path, out: Path, arrivals: int) -> None:
    """Start a run in a subprocess and SIGKILL it once ``arrivals`` results are logged."""
    process = subprocess.Popen([sys.executable, "-m", "evolveopt.cli", "evolve", str(config), "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    log = out / "arrivals.jsonl"
    while time.monotonic() < deadline:
        if log.exists() and log.read_bytes().count(b"\n") >= arrivals:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("islands", [{}, {"search.islands": 2, "search.migration_interval": 4, "search.migrants": 1}],
                         ids=["one_queue", "islands"])
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, islands):
    config = steady_config(tmp_path, **{"search.generations": 4, "fitness.budget": 600, **islands})
    start_run(load_config(config), tmp_path / "whole", progress=False)
    killed = tmp_path / "killed"
    _kill_after(config, killed, 8)  # epoch 0 committed, epoch 1 under way
    logged = (killed / "arrivals.jsonl").read_bytes().count(b"\n")
    assert 8 <= logged < 24, "the kill should land before the run ends"
    assert logged % 6, "the kill should land inside an epoch (arrivals after the checkpoint to replay)"
    resume_run(killed, progress=False)
    assert run_files(killed) == run_files(tmp_path / "whole")
    assert (killed / "arrivals.jsonl").read_bytes() == (tmp_path / "whole" / "arrivals.jsonl").read_bytes()
    ended, whole = (json.loads((run / "checkpoint.json").read_text()) for run in (killed, tmp_path / "whole"))
    assert ended["population"] == whole["population"]
    assert ended["steady_state"] == whole["steady_state"]  # with islands: every queue, member by member


def _as_killed_while_logging(run: Path, arrival: int) -> None:
    """Leave a finished 3-epoch run as a SIGKILL while writing arrival ``arrival`` (in epoch 2) leaves it:
    epoch 1's checkpoint, its logs, population files and hall of fame, arrivals up to there, half a line."""
    rundir = RunDir(run)
    checkpoint = json.loads((run / "checkpoint.prev.json").read_text())
    (run / "checkpoint.prev.json").replace(run / "checkpoint.json")
    (run / "population" / "gen_0002.json").unlink()
    rundir.truncate_logs(checkpoint["files"])
    rundir.write_json("hall_of_fame.json", checkpoint["hall_of_fame"])
    logged = (run / "arrivals.jsonl").read_bytes().splitlines(keepends=True)
    (run / "arrivals.jsonl").write_bytes(b"".join(logged[:arrival]) + logged[arrival][:40])


ISLANDS = {"search.islands": 2, "search.migration_interval": 4, "search.migrants": 1}


@pytest.mark.parametrize("islands", [{}, ISLANDS], ids=["one_queue", "islands"])
def test_a_resume_replays_the_arrivals_after_the_checkpoint_drops_a_torn_line_and_ends_as_the_whole_run(
        tmp_path, islands):
    config = steady_config(tmp_path, **islands)
    whole = tmp_path / "whole"
    start_run(load_config(config), whole, progress=False)
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    _as_killed_while_logging(killed, 15)
    assert json.loads((killed / "checkpoint.json").read_text())["steady_state"]["arrived"] == 12
    resume_run(killed, progress=False)
    assert run_files(killed) == run_files(whole)
    assert (killed / "arrivals.jsonl").read_bytes() == (whole / "arrivals.jsonl").read_bytes()
    ended, uninterrupted = (json.loads((run / "checkpoint.json").read_text()) for run in (killed, whole))
    assert ended["population"] == uninterrupted["population"]
    assert ended["steady_state"] == uninterrupted["steady_state"]  # with islands: every queue, member by member
    assert ("islands" in ended["steady_state"]) == bool(islands)


def replayed(run: Path, out: Path) -> Path:
    """A new run folder holding only ``run``'s config and arrival log, resumed in-process: it replays every
    arrival from the seed's initial state, evaluating nothing but the baselines. Equal files mean that
    ``run`` is exactly what its seed and its arrival order make (whatever backend ran it, however often
    it was killed and resumed)."""
    from evolveopt.config import to_plain
    from evolveopt.evolution import manifest

    import yaml

    config = load_config(run / "config.yaml", ["backend.kind=local", "backend.address=null"])
    rundir = RunDir(out)
    rundir.create(yaml.safe_dump(to_plain(config), sort_keys=False), manifest(config, []))
    shutil.copy(run / "arrivals.jsonl", out / "arrivals.jsonl")
    resume_run(out, progress=False)
    return out


def test_replaying_a_runs_arrival_log_from_its_seed_rebuilds_the_run(tmp_path):
    run = tmp_path / "run"
    start_run(load_config(steady_config(tmp_path)), run, progress=False)
    assert run_files(replayed(run, tmp_path / "again")) == run_files(run)
    assert json.loads((tmp_path / "again" / "generations.jsonl").read_text().splitlines()[-1])["member_steps"] == 0


def test_a_damaged_arrival_line_inside_the_log_is_one_clear_line(tmp_path, capsys):
    config = steady_config(tmp_path)
    run = tmp_path / "run"
    start_run(load_config(config, ["search.generations=1"]), run, progress=False)
    text = (run / "arrivals.jsonl").read_text().splitlines(keepends=True)
    text[2] = text[2].replace('"n":2', '"n":3')
    (run / "arrivals.jsonl").write_text("".join(text))
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("generations: 1", "generations: 2"))
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "arrivals.jsonl: line 3 is damaged" in err[0]


@pytest.mark.slow
def test_ctrl_c_mid_epoch_exits_130_and_the_resume_equals_an_uninterrupted_run(tmp_path):
    config = steady_config(tmp_path, **{"search.generations": 3, "fitness.budget": 600})
    start_run(load_config(config), tmp_path / "whole", progress=False)
    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "evolveopt.cli", "evolve", str(config), "--out", str(run)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        log = run / "arrivals.jsonl"
        if log.exists() and log.read_bytes().count(b"\n") >= 8:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert f"resume with: evolveopt resume {run}" in err and "Traceback" not in err
    assert (run / "arrivals.jsonl").read_bytes().count(b"\n") < 18
    resume_run(run, progress=False)
    assert run_files(run) == run_files(tmp_path / "whole")


# ----------------------------------------------------------------------------- islands


def _queues(run: Path) -> list[list[int]]:
    return json.loads((run / "checkpoint.json").read_text())["steady_state"]["islands"]["queues"]


def test_islands_are_sub_populations_with_migration_and_repeat_from_the_seed(tmp_path):
    runs = {}
    for name, changes in {"a": ISLANDS, "b": ISLANDS, "isolated": {**ISLANDS, "search.migration_interval": 10**6},
                          "every": {**ISLANDS, "search.migration_interval": 1}}.items():
        start_run(load_config(steady_config(tmp_path, **changes)), tmp_path / name, progress=False)
        runs[name] = run_files(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert (tmp_path / "a" / "arrivals.jsonl").read_bytes() == (tmp_path / "b" / "arrivals.jsonl").read_bytes()
    start_run(load_config(steady_config(tmp_path)), tmp_path / "one", progress=False)
    assert runs["a"] != run_files(tmp_path / "one") and runs["a"] != runs["isolated"]  # islands and migration matter
    for name in runs:
        run = tmp_path / name
        checkpoint = json.loads((run / "checkpoint.json").read_text())
        queues = _queues(run)
        assert len(queues) == 2 and all(1 <= len(q) <= 3 for q in queues)  # population 6 over 2 islands
        union = list(dict.fromkeys(i for q in queues for i in q))
        assert [d["id"] for d in checkpoint["population"]] == union  # the population file is the islands' union
        population = json.loads((run / "population/gen_0002.json").read_text())["individuals"]
        assert [d["id"] for d in population] == union
        arrivals = lines(run / "arrivals.jsonl")
        assert len(arrivals) == 18 and sorted(a["id"] for a in arrivals) == list(range(18))
    assert not set(_queues(tmp_path / "isolated")[0]) & set(_queues(tmp_path / "isolated")[1])
    shared = set(_queues(tmp_path / "every")[0]) & set(_queues(tmp_path / "every")[1])
    assert shared, "migrating after every arrival puts an island's best in the next island too"


def test_island_options_are_validated_in_one_line(tmp_path, capsys):
    cases = [
        (["search.islands=0"], "search.islands: 0 is out of range"),
        (["search.islands=2", "search.mode=generational"], "search.islands: 2 islands need search.mode: steady_state"),
        (["search.islands=3", "search.migrants=3"], "search.migrants: 3 exceeds search.population / search.islands"),
        (["search.islands=7"], "search.islands: 7 exceeds search.population (6)"),
        (["search.migration_interval=-1"], "search.migration_interval: -1 is out of range"),
    ]
    for overrides, message in cases:
        assert main(["evolve", str(steady_config(tmp_path)), "--set", *overrides, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (overrides, err)
    assert not (tmp_path / "r").exists()


def test_resuming_with_another_island_count_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    start_run(load_config(steady_config(tmp_path, **ISLANDS), ["search.generations=1"]), run, progress=False)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("islands: 2", "islands: 3").replace("generations: 1", "generations: 2"))
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the checkpoint holds 2 island(s), the config search.islands=3" in err[0]
