"""CPU threads per unit: the rule, who overrides it, that units run with it, and that the
thread count never changes a result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given, strategies as st

from evolveopt.backends import LocalBackend
from evolveopt.config import load_config
from evolveopt.errors import EvolveOptError
from evolveopt.evaluation import threads
from evolveopt.evaluation.evaluator import execute_unit, plan_units
from evolveopt.evaluation.threads import THREADS_ENV, OtherLoad, choose_threads, unit_threads
from evolveopt.genome import load_genome
from evolveopt.tasks import TASKS
from evolveopt.tasks.quadratic import NoisyQuadratic

from conftest import ROOT

cpus = st.integers(1, 256)
load = st.floats(0.0, 300.0, allow_nan=False)


@given(cpus, st.floats(0.0, 0.25))
def test_idle_cpus_all_get_a_thread_and_a_full_machine_leaves_one(n, idle_noise):
    assert choose_threads(n, idle_noise) == n  # up to a quarter CPU of others' noise still counts as free
    assert choose_threads(n, n + idle_noise) == 1 and choose_threads(n, 10.0 * n) == 1


@given(cpus, load, load)
def test_more_load_elsewhere_never_means_more_threads(n, a, b):
    assert choose_threads(n, max(a, b)) <= choose_threads(n, min(a, b))


@given(cpus, st.floats(0.0, 0.999).filter(lambda f: abs(f - 0.25) > 1e-9))
def test_each_cpu_taken_by_others_takes_one_thread_away(n, fraction):
    """k whole CPUs busy elsewhere plus up to a quarter of one: n - k threads; more: one fewer."""
    for k in range(n):
        expected = n - k if fraction < 0.25 else n - k - 1
        assert choose_threads(n, k + fraction) == max(1, expected)


@pytest.mark.parametrize("n, busy, threads", [
    (1, 0.0, 1), (2, 0.0, 2), (2, 0.25, 2), (2, 0.3, 1), (2, 2.0, 1), (2, 5.0, 1), (16, 3.1, 13), (16, 3.3, 12),
])
def test_examples_of_the_rule(n, busy, threads):
    assert choose_threads(n, busy) == threads


def test_the_config_wins_over_the_environment_which_wins_over_the_rule(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert unit_threads(requested=5) == 5
    assert unit_threads() == 3
    monkeypatch.delenv(THREADS_ENV)
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads.LOAD, "busy_elsewhere", lambda: 0.0)  # a known load: the rule's input
    assert unit_threads() == cpus
    monkeypatch.setattr(threads.LOAD, "busy_elsewhere", lambda: float(cpus))
    assert unit_threads() == 1


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_thread_variable_is_a_one_line_error(monkeypatch, value):
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(EvolveOptError, match=f"{THREADS_ENV}='{value}': expected a whole number of threads >= 1"):
        unit_threads()


def spinners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


def test_the_load_of_another_busy_process_is_seen_and_our_own_work_is_not():
    """A process spinning on one CPU shows as about one CPU busy elsewhere; our own spinning does not."""
    sampler = OtherLoad()
    sampler.busy_elsewhere()  # first window
    procs = spinners(1)
    try:
        import time

        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass  # this process busy too: subtracted
        with_neighbour = sampler.busy_elsewhere()
    finally:
        stop(procs)
    print(f"busy elsewhere beside one spinning process: {with_neighbour:.2f} CPUs")
    assert with_neighbour >= 0.5  # at least half of its CPU (the machine is shared; it may get less)


class ThreadProbe(NoisyQuadratic):
    """The noisy quadratic, with torch's thread count during training as a held-out metric."""

    name = "thread_probe"

    def start(self, seeds, device="cpu"):
        run = super().start(seeds, device)
        seen = []
        loss = run.loss

        def counting_loss(step):
            seen.append(torch.get_num_threads())
            return loss(step)

        run.loss = counting_loss
        run.heldout = lambda: {"most_threads": torch.full((len(seeds),), float(max(seen))),
                               "fewest_threads": torch.full((len(seeds),), float(min(seen)))}
        return run


def probe_units(budget: int = 5):
    return plan_units([load_genome("adam")], [{"name": "thread_probe"}], budget, [0, 1], skip=set(), max_members=8)


def test_beside_a_busy_process_per_cpu_units_run_on_one_thread(monkeypatch):
    """The bug of issue 10.16: torch's default (one thread per CPU) beside busy neighbours."""
    import time

    from evolveopt.evaluation.threads import LOAD

    monkeypatch.setitem(TASKS, "thread_probe", ThreadProbe)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    procs = spinners(len(os.sched_getaffinity(0)))
    try:
        time.sleep(0.5)
        LOAD.busy_elsewhere()  # start a window in which only the neighbours run
        time.sleep(0.5)
        [result] = LocalBackend().map_units(probe_units())
    finally:
        stop(procs)
    assert result.threads == 1
    assert all(m.heldout == {"most_threads": 1, "fewest_threads": 1} for m in result.results)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_units_train_with_the_thread_count_asked_for(monkeypatch, threads):
    monkeypatch.setitem(TASKS, "thread_probe", ThreadProbe)
    [result] = LocalBackend(threads=threads).map_units(probe_units())
    assert result.threads == threads
    assert all(m.heldout == {"most_threads": threads, "fewest_threads": threads} for m in result.results)


def test_without_an_override_units_train_with_the_count_the_rule_chose(monkeypatch):
    monkeypatch.setitem(TASKS, "thread_probe", ThreadProbe)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setattr(threads.LOAD, "busy_elsewhere", lambda: cpus - 1.0)  # all CPUs but one busy elsewhere
    [result] = LocalBackend().map_units(probe_units())
    assert result.threads == 1
    monkeypatch.setattr(threads.LOAD, "busy_elsewhere", lambda: 0.0)
    [result] = LocalBackend().map_units(probe_units())
    assert result.threads == cpus
    assert all(m.heldout == {"most_threads": result.threads, "fewest_threads": result.threads}
               for m in result.results)


def test_backend_threads_reaches_the_in_process_backend_from_the_config():
    from evolveopt.backends import make_backend

    config = load_config(ROOT / "experiments" / "quickstart.yaml", ["backend.threads=1"])
    assert config.backend.threads == 1 and make_backend(config.backend).threads == 1


def test_a_run_records_the_thread_counts_it_used(tmp_path):
    from test_evolve import tiny_config

    from evolveopt.evolution import start_run

    start_run(load_config(tiny_config(tmp_path), ["backend.threads=1", "search.generations=1"]), tmp_path / "run",
              progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [r["threads"] for r in rows] == [[1]]
    assert manifest["hardware"]["cpus_allowed"] == len(os.sched_getaffinity(0))
    assert set(manifest["hardware"]["thread_settings"]) == {THREADS_ENV, "OMP_WAIT_POLICY", "KMP_BLOCKTIME"}


@pytest.mark.parametrize("value, message", [("0", "0 is out of range [1, 4096]"),
                                             ("two", "expected an integer, got 'two'")])
def test_a_bad_backend_threads_names_the_file_and_key(value, message):
    with pytest.raises(EvolveOptError, match=re.escape(f"quickstart.yaml: backend.threads: {message}")):
        load_config(ROOT / "experiments" / "quickstart.yaml", [f"backend.threads={value}"])


def plain(result) -> str:
    return json.dumps([m.to_json() for m in result.results], sort_keys=True)


@pytest.mark.parametrize("task", [{"name": "digits_mlp"}, {"name": "nqm", "batch_size": 16}])
def test_results_are_bit_identical_whatever_the_thread_count(task):
    genomes = [load_genome(n) for n in ("adam", "lion", "adan", "ga2025", "sgd")]
    [unit] = plan_units(genomes, [task], 40, [0, 1], skip=set(), max_members=256)
    first, *others = [plain(execute_unit(unit, threads=t)) for t in (1, 2, 3)]
    assert all(other == first for other in others)


def test_the_openmp_wait_policy_is_the_users_and_reaches_ray_workers(monkeypatch):
    """evolveopt leaves OpenMP's wait policy alone (passive measured slower alone) and hands on what the user set."""
    from evolveopt.backends import workers_runtime_env
    from evolveopt.config import BackendConfig

    code = ("import os, sys; from evolveopt.cli import main; main(['show', 'adam']); "
            "print(os.environ.get('OMP_WAIT_POLICY'), file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stderr.split()[-1] == "None"
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert "OMP_WAIT_POLICY" not in workers_runtime_env(BackendConfig(kind="ray"))["env_vars"]
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert workers_runtime_env(BackendConfig(kind="ray"))["env_vars"]["OMP_WAIT_POLICY"] == "PASSIVE"


def children() -> set[int]:
    """PIDs of this process's living children."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(entry))
    return found


@pytest.mark.slow
def test_the_neighbour_benchmark_prints_every_policy_alone_and_beside_and_stops_its_neighbours():
    from evolveopt.measure.busy_neighbour import POLICIES, format_neighbour, run_neighbour_benchmark

    before = children()
    report = run_neighbour_benchmark(neighbours=1, budget=3, config_path=str(ROOT / "experiments" / "quickstart.yaml"))
    print(format_neighbour(report))
    assert [r["policy"] for r in report["rows"]] == list(POLICIES)
    assert all(r["alone_s"] > 0 and r["beside_s"] > 0 for r in report["rows"])
    assert report["rows"][0]["threads_alone"] == [len(os.sched_getaffinity(0))]  # old: one per CPU
    assert children() == before
