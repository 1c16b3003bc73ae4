"""Lineage rendering time on a synthetic run of 200 individuals × 100 generations (20,000 nodes).

Each generation's individuals get one or two parents from the previous generation (crossover
with probability ½) and a random fitness; the champion is the best of the last generation.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from evolveopt.lineage import FILE_FORMATS, Lineage, render, write


def synthetic_run(folder: Path, population: int = 200, generations: int = 100, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    (folder / "config.yaml").write_text("name: synthetic\nsearch: {generations: %d}\n" % generations)
    lines, previous, next_id = [], [], 0
    for generation in range(generations):
        current = []
        for _ in range(population):
            parents = [] if not previous else sorted({int(rng.choice(previous)) for _ in range(1 + (rng.random() < 0.5))})
            ops = ["random"] if not previous else (["crossover"] if len(parents) == 2 else []) + ["mutate:genes"]
            fitness = float(rng.normal(generation / generations, 0.5))
            lines.append(json.dumps({"id": next_id, "parents": parents, "operators": ops, "generation": generation,
                                     "fitness": fitness, "rung": 2, "hash": f"{next_id:016x}"}))
            current.append(next_id)
            next_id += 1
        previous = current
    (folder / "lineage.jsonl").write_text("\n".join(lines) + "\n")
    return next_id - 1


def run_lineage_benchmark() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ident = synthetic_run(folder)
        start = time.perf_counter()
        lineage = Lineage.from_run(folder)
        rows.append({"format": "load lineage.jsonl", "seconds": time.perf_counter() - start})
        for fmt in ("text", "dot", "csv", "json", "png", "html"):
            start = time.perf_counter()
            if fmt in FILE_FORMATS:
                write(lineage, ident, fmt, folder / f"lineage.{fmt}")
            else:
                render(lineage, ident, fmt)
            rows.append({"format": fmt, "seconds": time.perf_counter() - start,
                         "ancestors": len(lineage.ancestry(ident)) - 1})
    return rows


def format_lineage_bench(rows: list[dict]) -> str:
    lines = ["200 individuals x 100 generations (20,000 nodes), champion's full ancestry"]
    lines += [f"{r['format']:<20} {r['seconds']:>7.3f} s" for r in rows]
    return "\n".join(lines)
