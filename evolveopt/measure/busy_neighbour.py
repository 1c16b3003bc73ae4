"""One generation's worth of units, alone and beside busy neighbours, under two thread policies.

The work: the quickstart's first population (seed genomes, their variants, random genomes), as
successive halving trains it: all of it at the first rung, the first third at the second, the
first ninth at the full budget, on every task and seed (the real run promotes the best instead
of the first; the cost is the same). Each measurement runs in a fresh process, so OpenMP's
settings are read as a run would read them:

* old: torch's default, as many threads as the affinity set and OpenMP's default (spinning) wait;
* new: what evolveopt does, its thread count (``evolveopt/evaluation/threads.py``: the CPUs free now)
  and OpenMP's default wait;
* passive: that thread count and OpenMP's passive wait (``OMP_WAIT_POLICY=PASSIVE``, opt-in).

Neighbours are processes this benchmark starts: endless float32 matmuls with torch's default
threads (as another torch job would run), stopped by their PIDs when the measurement is done.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

from evolveopt.evaluation.threads import OPENMP_ENV, PASSIVE_WAIT, THREADS_ENV, affinity

POLICIES = ("old", "new", "passive")


def generation_units(config_path: str, budget: int | None = None) -> list:
    """The work units of one generation of ``config_path`` (see the module docstring)."""
    import numpy as np

    from evolveopt.config import load_config
    from evolveopt.evaluation.evaluator import plan_units
    from evolveopt.evaluation.halving import rung_budgets
    from evolveopt.evaluation.sizing import CPU_MEMBERS
    from evolveopt.search.algorithm import GeneticSearch

    config = load_config(config_path)
    fitness = config.fitness if budget is None else replace(config.fitness, budget=budget)
    genomes = [ind.genome for ind in GeneticSearch(config.search, config.space, np.random.default_rng(config.seed))
               .initial_population()]
    units = []
    for rung, steps in enumerate(rung_budgets(fitness.budget, fitness.eta, fitness.rungs)):
        alive = genomes[: max(1, len(genomes) // fitness.eta ** rung)]
        units += plan_units(alive, list(fitness.tasks), steps, list(fitness.seeds), skip=set(),
                            max_members=fitness.max_members or CPU_MEMBERS)
    return units


def policy_env(policy: str) -> dict[str, str]:
    """The environment a measurement process starts with under ``policy``."""
    env = {k: v for k, v in os.environ.items() if k not in (THREADS_ENV, *OPENMP_ENV)}
    if policy == "old":
        return {**env, THREADS_ENV: str(len(affinity()))}
    return {**env, **PASSIVE_WAIT} if policy == "passive" else env


def _measure(config_path: str, budget: int | None) -> dict:
    """Seconds to train the generation's units in this process (after one warm-up unit)."""
    from evolveopt.backends import LocalBackend

    units = generation_units(config_path, budget)
    backend = LocalBackend()
    backend.map_units([replace(units[0], budget=1)])  # imports, data sets, first load sample
    start = time.perf_counter()
    results = backend.map_units(units)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "units": len(units), "member_steps": sum(r.member_steps for r in results),
            "threads": sorted({r.threads for r in results})}


def _neighbour(threads: int) -> None:
    """Multiply matrices for ever on ``threads`` threads (a busy torch job); 'ready' after the first."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(512, 512)
    print("ready", flush=True)
    while True:
        a = torch.tanh(a @ a)


def _start_neighbours(count: int, threads: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-m", __name__, "--neighbour", str(threads)], stdout=subprocess.PIPE, text=True,
                              env={k: v for k, v in os.environ.items() if k not in (THREADS_ENV, *OPENMP_ENV)})
             for _ in range(count)]
    for proc in procs:
        proc.stdout.readline()
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_policy(policy: str, config_path: str, budget: int | None) -> dict:
    command = [sys.executable, "-m", __name__, "--measure", config_path]
    if budget is not None:
        command += ["--budget", str(budget)]
    out = subprocess.run(command, env=policy_env(policy), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def run_neighbour_benchmark(neighbours: int | None = None, neighbour_threads: int = 1,
                            config_path: str = "experiments/quickstart.yaml", budget: int | None = None) -> dict:
    """Timings of both policies alone and beside ``neighbours`` busy processes of ``neighbour_threads``
    threads each (default: one single-threaded neighbour per CPU, so together they fill the machine)."""
    neighbours = len(affinity()) if neighbours is None else neighbours
    timings: dict[str, dict[str, dict]] = {p: {} for p in POLICIES}
    for condition in ("alone", "beside"):
        procs = _start_neighbours(neighbours, neighbour_threads) if condition == "beside" else []
        try:
            for policy in POLICIES:
                timings[policy][condition] = _run_policy(policy, config_path, budget)
        finally:
            _stop(procs)
    rows = [{"policy": p, "threads_alone": t["alone"]["threads"], "threads_beside": t["beside"]["threads"],
             "alone_s": t["alone"]["seconds"], "beside_s": t["beside"]["seconds"],
             "ratio": t["beside"]["seconds"] / t["alone"]["seconds"]} for p, t in timings.items()]
    first = timings["new"]["alone"]
    return {"neighbours": neighbours, "neighbour_threads": neighbour_threads, "cpus": len(affinity()),
            "config": config_path, "units": first["units"], "member_steps": first["member_steps"], "rows": rows}


def format_neighbour(report: dict) -> str:
    lines = [f"{report['units']} units, {report['member_steps']:,} member-steps ({report['config']}); "
             f"{report['cpus']} CPUs, {report['neighbours']} busy neighbour(s) of {report['neighbour_threads']} thread(s)",
             f"{'policy':<7} {'threads alone':>13} {'alone s':>8} {'threads beside':>14} {'beside s':>9} {'beside/alone':>12}"]
    for r in report["rows"]:
        lines.append(f"{r['policy']:<7} {','.join(map(str, r['threads_alone'])):>13} {r['alone_s']:>8.2f} "
                     f"{','.join(map(str, r['threads_beside'])):>14} {r['beside_s']:>9.2f} {r['ratio']:>11.2f}x")
    old, new = report["rows"][0], report["rows"][1]
    lines.append(f"beside neighbours, new/old: {new['beside_s'] / old['beside_s']:.2f}x; "
                 f"alone, new/old: {new['alone_s'] / old['alone_s']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--neighbour", type=int, metavar="THREADS")
    parser.add_argument("--measure", metavar="CONFIG")
    parser.add_argument("--budget", type=int)
    args = parser.parse_args()
    if args.neighbour:
        _neighbour(args.neighbour)
    else:
        print(json.dumps(_measure(args.measure, args.budget)))
