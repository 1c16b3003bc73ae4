"""Does a run's champion generalize? It and AdamW under the benchmark protocol, on fresh seeds.

Training fitness alone cannot say: the search saw its tasks and seeds many times. The checkup
trains the champion and AdamW on two suites, both with the benchmark protocol (the same
quasi-random tuning trials for learning rate and weight decay, then fresh seeds, see
``protocol.py``):

* **search tasks, fresh seeds**: the run's own tasks from seeds no search ever used;
* **held-out suite**: other data, other architectures and scale-ups (``HELDOUT_SUITE``).

Per task and optimizer: the final training loss (EMA) median [IQR] over the fresh seeds, the
log-loss difference to AdamW, median of ``log L_champion − log L_AdamW`` over seed pairs with a
bootstrap 95% interval (< 0: the champion's loss is lower; undefined when a seed diverged, and then the side that
diverged more often loses), and the task's held-out metrics
(validation loss, accuracy) median [IQR]. A task counts as a **win** when the whole interval is
below 0 and a **loss** when it is above; otherwise it is a tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from evolveopt.benchmark.protocol import BenchmarkSettings, TaskBenchmark, run_benchmark
from evolveopt.benchmark.stats import bootstrap_log_loss_difference, iqr, median
from evolveopt.evaluation.cache import ResultCache
from evolveopt.genome.schema import Genome

REFERENCE = "adamw"
CHAMPION = "champion"


@dataclass(frozen=True)
class CheckupSettings:
    trials: int = 4
    seeds: int = 5
    max_members: int = 512
    device: str = "cpu"


def _interval(values: list[float]) -> dict[str, float]:
    low, high = iqr(values)
    return {"median": median(values), "iqr": [low, high]}


def _optimizer_row(bench: TaskBenchmark, name: str) -> dict[str, Any]:
    results = bench.optimizers[name].results
    losses = [math.inf if r.diverged else r.ema_loss for r in results]
    metrics = sorted({k for r in results for k in r.heldout})
    return {"setting": bench.optimizers[name].setting, "final_loss": _interval(losses),
            "diverged_seeds": sum(r.diverged for r in results),
            "heldout": {k: _interval([r.heldout.get(k, math.nan) for r in results if not r.diverged]) for k in metrics}}


def task_row(bench: TaskBenchmark, suite: str) -> dict[str, Any]:
    """One task's checkup: both optimizers' rows and the champion's log-loss difference to AdamW."""
    rows = {name: _optimizer_row(bench, name) for name in (CHAMPION, REFERENCE)}
    mine = [math.inf if r.diverged else r.ema_loss for r in bench.optimizers[CHAMPION].results]
    ref = [math.inf if r.diverged else r.ema_loss for r in bench.optimizers[REFERENCE].results]
    diff, low, high = bootstrap_log_loss_difference(mine, ref)
    verdict = "win" if high < 0 else "loss" if low > 0 else "tie"
    if math.isnan(diff):  # a diverged seed: the side that diverged more often loses
        gap = rows[CHAMPION]["diverged_seeds"] - rows[REFERENCE]["diverged_seeds"]
        verdict = "loss" if gap > 0 else "win" if gap < 0 else "tie"
    return {"suite": suite, "task": bench.label, "spec": bench.task, "budget": bench.budget, "optimizers": rows,
            "log_loss_vs_adamw": [diff, low, high], "verdict": verdict}


def run_checkup(champion: Genome, search_tasks: list[dict[str, Any]], budget: int, settings: CheckupSettings,
                cache: ResultCache | None = None, map_units: Callable | None = None,
                on_task: Callable[[TaskBenchmark], None] | None = None) -> dict[str, Any]:
    """The champion against tuned AdamW on the run's search tasks (fresh seeds) and the held-out suite."""
    from evolveopt.genome.io import load_genome
    from evolveopt.tasks import HELDOUT_SUITE

    genomes = {REFERENCE: load_genome(REFERENCE), CHAMPION: champion}
    suites = [("search", task) for task in search_tasks] + [("heldout", task) for task in HELDOUT_SUITE]
    bench = BenchmarkSettings(tasks=tuple(task for _, task in suites), budget=budget, trials=settings.trials,
                              seeds=settings.seeds, max_members=settings.max_members, device=settings.device)
    runs = run_benchmark(genomes, bench, cache=cache, map_units=map_units, on_task=on_task)
    tasks = [task_row(run, suite) for (suite, _), run in zip(suites, runs)]
    return {"settings": {"budget": budget, "trials": settings.trials, "seeds": settings.seeds,
                         "fresh_seeds": bench.fresh_seeds}, "tasks": tasks, "summary": summarize(tasks)}


def summarize(tasks: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Wins, ties and losses against AdamW per suite."""
    out: dict[str, dict[str, int]] = {}
    for task in tasks:
        counts = out.setdefault(task["suite"], {"win": 0, "tie": 0, "loss": 0})
        counts[task["verdict"]] += 1
    return out


def summary_line(checkup: dict[str, Any]) -> str:
    """``search 2/0/0, held-out 1/3/1`` (wins/ties/losses against tuned AdamW)."""
    names = {"search": "search", "heldout": "held-out"}
    return ", ".join(f"{names.get(s, s)} {c['win']}/{c['tie']}/{c['loss']}" for s, c in checkup["summary"].items())


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else "n/a" if math.isnan(x) else f"{x:.4g}"


def _cell(interval: dict[str, Any]) -> str:
    low, high = interval["iqr"]
    return f"{_fmt(interval['median'])} [{_fmt(low)}, {_fmt(high)}]"


def markdown_rows(checkup: dict[str, Any]) -> list[str]:
    """The checkup as a markdown table, one row per task."""
    rows = ["| suite | task | champion loss [IQR] | AdamW loss [IQR] | log-loss diff (95% CI) | champion held-out | "
            "AdamW held-out | verdict |", "|---|---|---|---|---|---|---|---|"]
    for task in checkup["tasks"]:
        mine, ref = task["optimizers"][CHAMPION], task["optimizers"][REFERENCE]
        diff, low, high = task["log_loss_vs_adamw"]
        held = [", ".join(f"{k} {_cell(v)}" for k, v in o["heldout"].items()) or "n/a" for o in (mine, ref)]
        rows.append(f"| {task['suite']} | {task['task']} | {_cell(mine['final_loss'])} | {_cell(ref['final_loss'])} | "
                    f"{diff:+.3f} ({low:+.3f}, {high:+.3f}) | {held[0]} | {held[1]} | {task['verdict']} |")
    return rows
