"""Benchmarks that print a comparison measured in one run (``evolveopt bench NAME``).

``BENCHMARKS`` is the one list of them: a row names the module (imported only when run), what it
compares, how the command line's options reach it and how its report prints.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Benchmark:
    module: str  # evolveopt.measure.<module>
    help: str
    run: Callable[[Any, argparse.Namespace], Any]  # (module, args) -> report (JSON-able)
    format: Callable[[Any, Any], str]  # (module, report) -> table

    def __call__(self, args: argparse.Namespace) -> tuple[Any, str]:
        module = importlib.import_module(f"evolveopt.measure.{self.module}")
        report = self.run(module, args)
        return report, self.format(module, report)


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, as lscpu shows it) and core count, for tables."""
    import os
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} logical CPUs"


def _lr_sweep(args: argparse.Namespace) -> tuple[float, ...]:
    """``--lr-sweep``, checked as ``fitness.lr_sweep`` is in a config."""
    from evolveopt.config import parse_config

    return parse_config({"fitness": {"lr_sweep": list(args.lr_sweep)}}, source="--lr-sweep").fitness.lr_sweep


def _eval_sizes(args: argparse.Namespace) -> tuple[int, ...]:
    if args.sizes:
        return tuple(args.sizes)
    return (1, 8, 64, 256, 1024, 2048) if args.device.startswith("cuda") else (1, 8, 64, 256)


BENCHMARKS: dict[str, Benchmark] = {
    "step": Benchmark("step_time", "optimizer step() vs torch.optim (--compile: eager vs torch.compile)",
                      lambda m, a: {"compile": a.compile, "rows": (m.run_compile_benchmark if a.compile else
                                                                   m.run_step_benchmark)(repeats=a.repeats,
                                                                                         device=a.device)},
                      lambda m, r: (m.format_compile_table if r["compile"] else m.format_table)(r["rows"])),
    "frontier": Benchmark("frontier_step", "frontier genomes' step() vs the packages they mirror; a stacked "
                                           "population step vs separate optimizers",
                          lambda m, a: {"rows": m.run_frontier_step_benchmark(repeats=a.repeats, device=a.device),
                                        "population": [m.run_population_benchmark(name, device=a.device)
                                                       for name in ("muon", "cautious_adamw")
                                                       if name in m.available_pairs()]},
                          lambda m, r: "\n".join([m.format_frontier_table(r["rows"]),
                                                  *map(m.format_population, r["population"])])),
    "eval": Benchmark("batched_training", "batched vs one-at-a-time training",
                      lambda m, a: m.run_eval_benchmark(sizes=_eval_sizes(a), device=a.device),
                      lambda m, r: m.format_eval_table(r)),
    "heap": Benchmark("heap_memory", "speed and peak memory with glibc's default allocator and with "
                                     "temporaries kept in the heap",
                      lambda m, a: m.run_heap_benchmark(members=max(a.sizes or [256])),
                      lambda m, r: m.format_heap_table(r)),
    "fidelity": Benchmark("halving_fidelity", "rank quality of successive halving's first rung",
                          lambda m, a: m.run_fidelity_benchmark(), lambda m, r: m.format_fidelity(r)),
    "backends": Benchmark("backend_throughput", "one generation in-process and on Ray",
                          lambda m, a: {"rows": m.run_backend_benchmark()}, lambda m, r: m.format_backends(r["rows"])),
    "lineage": Benchmark("lineage_render", "rendering a 20,000-individual run",
                         lambda m, a: {"rows": m.run_lineage_benchmark()},
                         lambda m, r: m.format_lineage_bench(r["rows"])),
    "neighbour": Benchmark("busy_neighbour", "a quickstart generation alone and beside busy processes, old and "
                                             "new thread policy",
                           lambda m, a: m.run_neighbour_benchmark(a.neighbours, a.neighbour_threads, budget=a.budget),
                           lambda m, r: m.format_neighbour(r)),
    "transfer": Benchmark("fitness_transfer", "rank correlation of each fitness objective's search fitness (with "
                                              "--lr-sweep: without and with that sweep; with --funnel: search order vs "
                                              "funnel order) with held-out-suite scores from fresh seeds",
                          lambda m, a: m.run_funnel_transfer(budget=a.budget or 150, device=a.device) if a.funnel
                          else m.run_lr_sweep_transfer(_lr_sweep(a), budget=a.budget or 150, device=a.device)
                          if a.lr_sweep else m.run_transfer_benchmark(budget=a.budget or 150, device=a.device),
                          lambda m, r: m.format_transfer_table(r)),
    "cluster": Benchmark("cluster_occupancy", "a config's search, generational and steady state, on local Ray "
                                              "clusters of N logical workers: in flight, busy, dispatch, genomes/s",
                         lambda m, a: m.run_cluster_benchmark(
                             workers=a.workers or (2, 8, 32, 64), generations=a.generations or 4,
                             config_path=a.config or "experiments/paper.yaml", budget=a.budget or 30,
                             population=a.population, in_flight_per_worker=a.in_flight_per_worker,
                             on_row=None if a.json else _progress_row),
                         lambda m, r: m.format_cluster(r)),
}


def _progress_row(row: dict[str, Any]) -> None:
    """A finished row of a long benchmark, on stderr while the others run."""
    import json
    import sys

    print(json.dumps(row), file=sys.stderr, flush=True)
