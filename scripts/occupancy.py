"""How busy the workers are: generational vs steady-state search on a local Ray cluster.

    python scripts/occupancy.py --cpus 8 --population 16 --generations 4 --budget 300

Runs the same config in both modes (each in a fresh temporary run folder, on one local Ray
cluster of ``--cpus`` logical CPUs; more logical CPUs than cores is fine for occupancy) and
prints, for the evaluation phase (after Adam's baselines, which both modes tune the same way):
wall time, mean units running (sum of the units' run times / wall time), busy fraction (that / workers)
and, for the steady-state mode, the mean evaluations in flight at each arrival.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml


def measure(mode: str, args: argparse.Namespace, backend) -> dict:
    from evolveopt.config import parse_config, to_plain
    from evolveopt.evolution import Evolution, manifest
    from evolveopt.run_directory import RunDir
    from evolveopt.steady_state import SteadyStateEvolution

    config = parse_config({
        "name": f"occupancy-{mode}", "seed": args.seed,
        "search": {"mode": mode, "population": args.population, "generations": args.generations, "elites": 2,
                   "tournament": 3, "in_flight_per_worker": args.k, "seed_variants": 0},
        "space": {"max_terms": 2},
        "fitness": {"tasks": [{"name": "digits_mlp", "hidden": 32}], "budget": args.budget, "seeds": [0, 1],
                    "rungs": args.rungs},
        "backend": {"kind": "ray"},
    })
    folder = Path(tempfile.mkdtemp(prefix=f"occupancy-{mode}-"))
    rundir = RunDir(folder / "run")
    rundir.create(yaml.safe_dump(to_plain(config), sort_keys=False), manifest(config, []))
    busy: list[float] = []
    map_units, next_result = backend.map_units, backend.next_result

    def counted_map(units, on_done=None):
        results = map_units(units, on_done)
        busy.extend(r.seconds for r in results)
        return results

    def counted_next():
        ticket, result = next_result()
        busy.append(result.seconds)
        return ticket, result

    backend.map_units, backend.next_result = counted_map, counted_next
    backend.close = lambda: None  # one cluster for both runs
    engine = SteadyStateEvolution if mode == "steady_state" else Evolution
    evolution = engine(config, rundir, None, backend)
    evolution.scorer.baselines(args.budget)
    for budget in {max(1, args.budget // 3 ** (args.rungs - 1 - r)) for r in range(args.rungs)} if mode != "steady_state" else ():
        evolution.scorer.baselines(budget)  # every rung's baseline, before the clock starts
    busy.clear()
    start = time.monotonic()
    evolution.run()
    wall = time.monotonic() - start
    running = sum(busy) / wall
    out = {"mode": mode, "workers": backend.workers, "wall_s": round(wall, 1), "units": len(busy),
           "mean_units_running": round(running, 2), "busy_fraction": round(running / backend.workers, 3)}
    if mode == "steady_state":
        samples = [n for _, n in evolution.occupancy]
        out["mean_evaluations_in_flight"] = round(sum(samples) / len(samples), 2)
        out["in_flight_target"] = evolution.width
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=8)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--rungs", type=int, default=3)
    parser.add_argument("--k", type=int, default=2, help="search.in_flight_per_worker")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from evolveopt.backends import RayBackend
    from evolveopt.config import BackendConfig

    backend = RayBackend(BackendConfig(kind="ray", num_cpus=args.cpus))
    try:
        for mode in ("generational", "steady_state"):
            print(json.dumps(measure(mode, args, backend)), flush=True)
    finally:
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
