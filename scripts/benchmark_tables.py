"""Print the compact tables of docs/results.md from a benchmark's JSON.

    python scripts/benchmark_tables.py runs/bench_heldout/benchmark.json
"""

from __future__ import annotations

import json
import math
import sys


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "∞" if value is None or math.isinf(value) else format(value, spec)


def main(path: str) -> None:
    report = json.load(open(path))
    tasks = report["tasks"]
    names = report["optimizers"]
    print("| optimizer | " + " | ".join(t["task"] for t in tasks) + " | median (95% CI) | profile | bytes/param |")
    print("|---|" + "---:|" * len(tasks) + "---|---:|---:|")
    for name in names:
        ratios = [fmt(t["optimizers"][name]["speed_ratio_vs_adamw"]) for t in tasks]
        s = report["summary"]["optimizers"][name]
        low, high = s["ci95"]
        print(f"| {name} | " + " | ".join(ratios) + f" | {fmt(s['median_speed_ratio_vs_adamw'])} "
              f"({fmt(low)}–{fmt(high)}) | {s['profile_score']:.2f} | {s['state_bytes_per_param']} |")
    print()
    print("| optimizer | " + " | ".join(t["task"] for t in tasks) + " |")
    print("|---|" + "---:|" * len(tasks))
    for name in names:
        cells = []
        for t in tasks:
            held = t["optimizers"][name]["heldout_median"]
            value = held.get("accuracy", held.get("loss"))
            cells.append("n/a" if value is None else f"{value:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for t in tasks:
        diverged = {n: o["diverged_seeds"] for n, o in t["optimizers"].items() if o["diverged_seeds"]}
        if diverged:
            print(f"diverged seeds on {t['task']}: {diverged}")


if __name__ == "__main__":
    main(sys.argv[1])
