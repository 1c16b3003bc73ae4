"""Generations of a run through each backend: wall time and member-steps per second.

Runs generations 0 and 1 of a config (the quickstart by default) in a fresh temporary run
directory, once in-process and once on a local Ray cluster (its start-up timed apart).
Generation 0 includes tuning Adam's baselines and, on Ray, the workers' first imports of torch;
generation 1 shows the warm rate.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from evolveopt.config import RunConfig, load_config
from evolveopt.run_directory import RunDir
from evolveopt.evolution import Evolution


def two_generations(config: RunConfig, backend: str) -> list[dict]:
    config = replace(config, search=replace(config.search, generations=2),
                     backend=replace(config.backend, kind=backend))
    with tempfile.TemporaryDirectory() as tmp:
        rundir = RunDir(Path(tmp) / "run")
        rundir.create("", {})
        started = time.perf_counter()
        evolution = Evolution(config, rundir)
        startup = time.perf_counter() - started
        evolution.run()
        records = rundir.read_lines("generations.jsonl")
    return [{"backend": backend, "generation": r["generation"], "startup_s": startup if r["generation"] == 0 else 0.0,
             "generation_s": r["wall_time"], "member_steps": r["member_steps"],
             "member_steps_per_s": r["member_steps"] / r["wall_time"], "best_fitness": r["max"]} for r in records]


def run_backend_benchmark(config_path: str = "experiments/quickstart.yaml") -> list[dict]:
    config = load_config(config_path)
    return two_generations(config, "local") + two_generations(config, "ray")


def format_backends(rows: list[dict]) -> str:
    lines = [f"{'backend':<8} {'gen':>3} {'startup s':>10} {'generation s':>13} {'member-steps':>13} {'per s':>8} {'best':>8}"]
    for r in rows:
        lines.append(f"{r['backend']:<8} {r['generation']:>3} {r['startup_s']:>10.1f} {r['generation_s']:>13.1f} "
                     f"{r['member_steps']:>13,} {r['member_steps_per_s']:>8,.0f} {r['best_fitness']:>8.3f}")
    return "\n".join(lines)
