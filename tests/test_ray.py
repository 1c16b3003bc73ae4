"""The Ray backend on a real local cluster (2 CPUs): same fitness as in-process, worker death retried."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import evolveopt  # noqa: E402
from evolveopt.backends import LocalBackend, RayBackend  # noqa: E402
from evolveopt.config import BackendConfig, load_config  # noqa: E402
from evolveopt.evaluation import ResultCache, evaluate  # noqa: E402
from evolveopt.evaluation.evaluator import plan_units  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

GENOMES = ["adam", "lion", "adan", "ga2025", "sgd"]


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,  # the GPU is logical: actors
             object_store_memory=100 * 1024 * 1024)                               # hold shares of it, run on CPU
    backend = RayBackend(BackendConfig(kind="ray", max_retries=3, unit_timeout=300))
    yield backend
    ray.shutdown()


def plain(results) -> str:
    """Results as JSON (NaN of diverged members becomes null, so equal results compare equal)."""
    return json.dumps([[[r.to_json() for r in seeds] for seeds in tasks] for tasks in results], sort_keys=True)


def test_ray_gives_the_same_results_as_in_process(cluster):
    local = evaluate(GENOMES, ["digits_mlp", "nqm"], 40, [0, 1], cache=ResultCache(), max_members=4)
    events = []
    remote = evaluate(GENOMES, ["digits_mlp", "nqm"], 40, [0, 1], cache=ResultCache(), map_units=cluster.map_units,
                      max_members=4, on_progress=events.append)
    assert plain(remote.results) == plain(local.results)
    total = remote.units  # 10 members per task in units of 4: 3 per task
    assert total == 6 and [e.done for e in events] == list(range(total + 1))  # one event per unit, as each finishes
    assert events[0].finished is None and all(e.total == total for e in events)
    assert [e.finished for e in events[1:]].count("nqm") == 3


def test_ray_workers_run_one_thread_per_reserved_cpu(cluster):
    """Tasks reserve backend.threads CPUs (default 1) and torch in the worker runs that many threads;
    actors run backend.threads, or what the rule finds free."""
    units = plan_units([evolveopt.load_genome("adam")], [{"name": "nqm"}, {"name": "digits_mlp"}], 5, [0, 1],
                       skip=set(), max_members=8)
    assert [r.threads for r in cluster.map_units(units)] == [1, 1]
    two = RayBackend(BackendConfig(kind="ray", threads=2, max_retries=0, unit_timeout=300))
    assert two.workers == 1 and [r.threads for r in two.map_units(units)] == [2, 2]
    actors = RayBackend(BackendConfig(kind="ray", gpus_per_actor=0.5, threads=2, max_retries=0, unit_timeout=300))
    assert [r.threads for r in actors.map_units(units)] == [2, 2]
    for actor in actors._actors:
        ray.kill(actor)


def test_gpu_actor_path_gives_the_same_results(cluster):
    actors = RayBackend(BackendConfig(kind="ray", gpus_per_actor=0.5, max_retries=2, unit_timeout=300), device="cpu")
    assert actors.use_gpus and actors.workers == 2
    local = evaluate(GENOMES, ["digits_mlp", "nqm"], 30, [0, 1], cache=ResultCache())
    done = []
    remote = evaluate(GENOMES, ["digits_mlp", "nqm"], 30, [0, 1], cache=ResultCache(), map_units=actors.map_units,
                      on_progress=lambda event: done.append(event.done))
    assert plain(remote.results) == plain(local.results)
    assert done == list(range(remote.units + 1))  # actors report each unit as it finishes
    for actor in actors._actors:
        ray.kill(actor)


def _worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if cmdline.startswith(b"ray::_execute"):
                pids.append(int(entry.name))
    return pids


def test_a_killed_worker_is_retried_and_nothing_is_lost(cluster):
    genomes = [evolveopt.load_genome("adam").with_genes(lr=1e-3 * (i + 1)) for i in range(4)] + ["lion", "adan"]
    units = plan_units([evolveopt.load_genome(g) if isinstance(g, str) else g for g in genomes],
                       [{"name": "digits_mlp"}], 600, [0, 1], skip=set(), max_members=64)
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(results=cluster.map_units(units)))
    worker.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:
        pids = _worker_pids()
        if pids:
            time.sleep(0.5)  # let it get into training
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    worker.join(timeout=300)
    assert killed is not None, "no running worker was found to kill"
    results = outcome["results"]
    got = {key: r for unit in results for key, r in zip(unit.keys, unit.results)}
    assert set(got) == {key for unit in units for key in unit.keys}
    assert not any(r.diverged for r in got.values())
    expected = {k: r for u in LocalBackend().map_units(units) for k, r in zip(u.keys, u.results)}
    assert {k: r.to_json() for k, r in expected.items()} == {k: r.to_json() for k, r in got.items()}


def test_an_evolution_run_on_ray_equals_the_local_run(cluster, tmp_path):
    from test_evolve import TINY, run_files, tiny_config  # noqa: F401

    from evolveopt.evolution import start_run

    config = tiny_config(tmp_path)
    start_run(load_config(config), tmp_path / "local", progress=False)
    start_run(load_config(config, ["backend.kind=ray"]), tmp_path / "ray", progress=False)
    assert run_files(tmp_path / "ray") == run_files(tmp_path / "local")


def test_rungs_overlapping_on_ray_by_speculative_promotion_give_the_local_run(cluster, tmp_path):
    """Issue 14: the generational mode on 2 Ray workers starts likely promotions' next rung while a rung is
    in flight (pipeline.py); records and cache equal the in-process run's, rungs one after another."""
    from test_evolve import SPECULATED, cached_results, run_files, tiny_config

    import yaml

    from evolveopt.config import to_plain
    from evolveopt.evolution import Evolution, manifest, start_run
    from evolveopt.run_directory import RunDir

    config = load_config(tiny_config(tmp_path, **SPECULATED))
    start_run(config, tmp_path / "local", progress=False)
    on_ray = load_config(tiny_config(tmp_path, **SPECULATED), ["backend.kind=ray"])
    rundir = RunDir(tmp_path / "ray")
    rundir.create(yaml.safe_dump(to_plain(on_ray), sort_keys=False), manifest(on_ray, []))
    evolution = Evolution(on_ray, rundir, None, cluster)  # close() leaves the module's cluster running
    evolution.run()
    assert evolution.scorer.pipeline is not None and evolution.scorer.stats.speculative_steps > 0
    assert run_files(tmp_path / "ray") == run_files(tmp_path / "local")
    assert cached_results(tmp_path / "ray") == cached_results(tmp_path / "local")


def test_an_evolution_run_on_a_user_module_task_on_ray_equals_the_local_run(cluster, tmp_path):
    """The installed examples' entry-point task: workers rebuild it by name; same populations and lineage."""
    from test_evolve import run_files, tiny_config

    from evolveopt.evolution import start_run

    config = tiny_config(tmp_path, **{"fitness.tasks": [{"name": "digits_cnn_bn", "channels": 4}],
                                      "fitness.budget": 12})
    start_run(load_config(config), tmp_path / "local", progress=False)
    start_run(load_config(config, ["backend.kind=ray"]), tmp_path / "ray", progress=False)
    assert run_files(tmp_path / "ray") == run_files(tmp_path / "local")


def test_the_benchmark_runs_on_ray_with_the_same_results(cluster):
    from evolveopt.benchmark.protocol import BenchmarkSettings, run_benchmark

    genomes = {n: evolveopt.load_genome(n) for n in ("adamw", "lion")}
    settings = BenchmarkSettings(tasks=({"name": "digits_mlp", "hidden": 16},), budget=20, trials=2, seeds=2)
    local = run_benchmark(genomes, settings, cache=ResultCache())
    remote = run_benchmark(genomes, settings, cache=ResultCache(), map_units=cluster.map_units)
    for name in genomes:
        a, b = local[0].optimizers[name], remote[0].optimizers[name]
        assert a.setting == b.setting
        assert [r.to_json() for r in a.results] == [r.to_json() for r in b.results]


def test_a_cluster_without_the_gpus_asked_for_is_a_clear_error(cluster, monkeypatch):
    import evolveopt.backends as backends

    monkeypatch.setattr(backends, "GPU_WAIT_S", 1.0)
    started = time.monotonic()
    with pytest.raises(backends.BackendError, match=r"gpus_per_actor=2: the Ray cluster offers 1 GPU\(s\)"):
        RayBackend(BackendConfig(kind="ray", gpus_per_actor=2.0), device="cpu")
    assert time.monotonic() - started < 30
    assert ray.is_initialized()  # a cluster this process did not start is left running


def _cached_results(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]


@pytest.mark.parametrize("gpus", [0.0, 0.5])
def test_an_exception_on_a_worker_is_retried_then_raised_as_itself_and_never_cached(cluster, tmp_path, gpus):
    backend = RayBackend(BackendConfig(kind="ray", max_retries=1, unit_timeout=300, gpus_per_actor=gpus),
                         device="bogus")  # torch raises inside training on the worker
    cache = ResultCache(tmp_path / "cache.sqlite")
    with pytest.raises(RuntimeError, match="bogus"):
        evaluate(["adam"], ["nqm"], 5, [0], cache=cache, max_members=8, map_units=backend.map_units)
    assert _cached_results(tmp_path / "cache.sqlite") == 0


def test_a_unit_over_its_timeout_is_retried_then_stops_with_an_error_and_is_never_cached(cluster, tmp_path):
    from evolveopt.backends import BackendError

    backend = RayBackend(BackendConfig(kind="ray", max_retries=1, unit_timeout=0.5))
    cache = ResultCache(tmp_path / "cache.sqlite")
    with pytest.raises(BackendError, match=r"ran over unit_timeout=0.5 s 2 times"):
        evaluate(["adam"], ["digits_mlp"], 5000, [0], cache=cache, max_members=8, map_units=backend.map_units)
    assert _cached_results(tmp_path / "cache.sqlite") == 0


def test_a_user_module_task_from_an_installed_entry_point_trains_on_ray_as_in_process(cluster):
    """Workers rebuild the user's task from its spec (entry point of the installed examples package)."""
    task = {"name": "digits_cnn_bn", "channels": 4}
    local = evaluate(["adam", "lion"], [task], 20, [0, 1], cache=ResultCache())
    remote = evaluate(["adam", "lion"], [task], 20, [0, 1], cache=ResultCache(), map_units=cluster.map_units)
    assert local.tasks[0]["task_version"] == "1"
    assert plain(remote.results) == plain(local.results)


# ----------------------------------------------------------------------------- the steady-state search on Ray


@pytest.mark.parametrize("gpus", [0.0, 0.5])
def test_a_steady_state_run_on_ray_keeps_its_records_and_scores_as_in_process(cluster, tmp_path, gpus):
    """Tasks (gpus 0) and GPU actors (two on the logical GPU): every evaluation arrives once, the records
    hold exactly what its arrival log says, and each fitness is the in-process fitness of the genome."""
    from test_evolve import run_files
    from test_steady_state import replayed, steady_config

    from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings
    from evolveopt.evolution import start_run
    from evolveopt.genome.schema import parse_genome

    config = load_config(steady_config(tmp_path), ["backend.kind=ray", f"backend.gpus_per_actor={gpus}"])
    run = tmp_path / "ray"
    start_run(config, run, progress=False)
    arrivals = [json.loads(line) for line in (run / "arrivals.jsonl").read_text().splitlines()]
    lineage = [json.loads(line) for line in (run / "lineage.jsonl").read_text().splitlines()]
    assert sorted(a["id"] for a in arrivals) == list(range(18)) and [r["id"] for r in lineage] == [a["id"] for a in arrivals]
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert [r["in_flight"] for r in rows] == [4, 4, 4]  # 2 workers (CPUs, or GPU halves) × 2
    assert run_files(replayed(run, tmp_path / "replayed")) == run_files(run)
    individuals = [d for epoch in range(3)
                   for d in json.loads((run / f"population/gen_{epoch:04d}.json").read_text())["individuals"]]
    fit = config.fitness
    scorer = FitnessScorer(FitnessSettings(tasks=list(fit.tasks), budget=fit.budget, seeds=list(fit.seeds)))
    fresh = scorer.score([parse_genome(d["genome"]) for d in individuals])
    assert [d["result"]["fitness"] for d in individuals] == [f.fitness for f in fresh]


def test_a_steady_state_run_with_islands_on_ray_is_rebuilt_by_replaying_its_log_in_process(cluster, tmp_path):
    """Islands share the Ray workers (one backend); their queues, migrations included, follow from the seed
    and the arrival order alone: the log replayed in-process rebuilds the records and every queue."""
    from test_evolve import run_files
    from test_steady_state import ISLANDS, replayed, steady_config

    from evolveopt.evolution import start_run

    config = load_config(steady_config(tmp_path, **ISLANDS), ["backend.kind=ray"])
    run = tmp_path / "ray"
    start_run(config, run, progress=False)
    arrivals = [json.loads(line) for line in (run / "arrivals.jsonl").read_text().splitlines()]
    assert sorted(a["id"] for a in arrivals) == list(range(18))
    again = replayed(run, tmp_path / "replayed")
    assert run_files(again) == run_files(run)
    ray_state, replay_state = (json.loads((r / "checkpoint.json").read_text())["steady_state"] for r in (run, again))
    assert ray_state["islands"]["queues"] == replay_state["islands"]["queues"] and len(ray_state["islands"]["queues"]) == 2


def test_a_steady_state_run_on_ray_killed_mid_epoch_resumes_from_the_state_its_log_records(cluster, tmp_path):
    from test_evolve import run_files
    from test_steady_state import _kill_after, replayed, steady_config

    from evolveopt.evolution import resume_run

    config = steady_config(tmp_path, **{"search.generations": 4, "fitness.budget": 600, "backend.kind": "ray",
                                        "backend.num_cpus": 2})
    killed = tmp_path / "killed"
    _kill_after(config, killed, 8)  # its own local cluster, in a subprocess
    before = (killed / "arrivals.jsonl").read_bytes()
    before = before[: before.rfind(b"\n") + 1]
    assert 8 <= before.count(b"\n") < 24, "the kill should land before the run ends"
    resume_run(killed, progress=False)  # on this test's cluster
    after = (killed / "arrivals.jsonl").read_bytes()
    assert after.startswith(before) and after.count(b"\n") == 24
    assert run_files(replayed(killed, tmp_path / "replayed")) == run_files(killed)


@pytest.mark.parametrize("gpus", [0.0, 0.5])
def test_submitted_units_come_back_with_their_tickets_and_an_exception_is_retried_then_raised(cluster, gpus):
    """The steady-state form of a backend (submit / next_result): tasks and actors."""
    units = plan_units([evolveopt.load_genome(g) for g in ("adam", "lion", "sgd")], [{"name": "nqm"}], 10, [0, 1],
                       skip=set(), max_members=2)
    backend = RayBackend(BackendConfig(kind="ray", max_retries=1, unit_timeout=300, gpus_per_actor=gpus))
    tickets = [backend.submit(unit) for unit in units]
    got = dict(backend.next_result() for _ in units)
    assert sorted(got) == sorted(tickets)
    expected = LocalBackend().map_units(units)
    assert [[r.to_json() for r in got[t].results] for t in tickets] == \
        [[r.to_json() for r in e.results] for e in expected]
    backend.close()  # its actors hold the whole logical GPU
    broken = RayBackend(BackendConfig(kind="ray", max_retries=1, unit_timeout=300, gpus_per_actor=gpus),
                        device="bogus")
    broken.submit(units[0])
    with pytest.raises(RuntimeError, match="bogus"):
        broken.next_result()
    broken.close()


def test_a_submitted_unit_over_its_timeout_is_retried_then_stops_with_an_error(cluster):
    from evolveopt.backends import BackendError

    units = plan_units([evolveopt.load_genome("adam")], [{"name": "digits_mlp"}], 5000, [0], skip=set(), max_members=8)
    backend = RayBackend(BackendConfig(kind="ray", max_retries=1, unit_timeout=0.5))
    backend.submit(units[0])
    with pytest.raises(BackendError, match=r"ran over unit_timeout=0.5 s 2 times"):
        backend.next_result()
    backend.cancel_all()


@pytest.mark.parametrize("mode", ["generational", "steady_state"])
def test_a_funnel_run_on_ray_equals_the_run_in_process(cluster, tmp_path, mode):
    """The funnel's stages train on the run's backend: a generational run's files are the local run's;
    a steady-state run's are those its arrival log rebuilds in-process, funnel results included."""
    from test_evolve import run_files, tiny_config
    from test_funnel import FUNNEL
    from test_steady_state import replayed

    from evolveopt.evolution import start_run

    config = tiny_config(tmp_path, **FUNNEL, **{"search.mode": mode})
    run = tmp_path / "ray"
    start_run(load_config(config, ["backend.kind=ray"]), run, progress=False)
    if mode == "generational":
        start_run(load_config(config), tmp_path / "local", progress=False)
        assert run_files(run) == run_files(tmp_path / "local")
    else:
        assert run_files(replayed(run, tmp_path / "replayed")) == run_files(run)
    fame = json.loads((run / "hall_of_fame.json").read_text())
    assert len(fame[0]["result"]["funnel"]) == 2
