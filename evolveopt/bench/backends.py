"""One generation of a run through each backend: wall time and member-steps per second.

Runs generation 0 of a config (the quickstart by default) in a fresh temporary run directory,
once in-process and once on a local Ray cluster (its start-up is timed apart), and reports both.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from evolveopt.config import RunConfig, load_config
from evolveopt.rundir import RunDir
from evolveopt.run import Evolution


def one_generation(config: RunConfig, backend: str) -> dict:
    config = replace(config, search=replace(config.search, generations=1),
                     backend=replace(config.backend, kind=backend))
    with tempfile.TemporaryDirectory() as tmp:
        rundir = RunDir(Path(tmp) / "run")
        rundir.create("", {})
        started = time.perf_counter()
        evolution = Evolution(config, rundir)
        startup = time.perf_counter() - started
        evolution.run()
        total = time.perf_counter() - started
        row = evolution.logbook[-1] if len(evolution.logbook) else {}
    steps = row.get("member_steps", 0)
    work = total - startup
    return {"backend": backend, "startup_s": startup, "generation_s": work, "member_steps": steps,
            "member_steps_per_s": steps / work if work else 0.0, "evaluations": row.get("evaluations", 0),
            "best_fitness": row.get("max")}


def run_backend_benchmark(config_path: str = "experiments/quickstart.yaml") -> list[dict]:
    config = load_config(config_path)
    return [one_generation(config, "local"), one_generation(config, "ray")]


def format_backends(rows: list[dict]) -> str:
    lines = [f"{'backend':<8} {'startup s':>10} {'generation s':>13} {'member-steps':>13} {'per s':>8} {'best':>8}"]
    for r in rows:
        lines.append(f"{r['backend']:<8} {r['startup_s']:>10.1f} {r['generation_s']:>13.1f} {r['member_steps']:>13,} "
                     f"{r['member_steps_per_s']:>8,.0f} {r['best_fitness']:>8.3f}")
    return "\n".join(lines)
