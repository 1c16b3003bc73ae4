"""Turn benchmark runs into metrics, JSON, a markdown table and pictures."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from evolveopt.benchmark.protocol import BenchmarkSettings, TaskBenchmark
from evolveopt.benchmark.stats import (
    bootstrap_log_loss_difference, bootstrap_median_ratio, iqr, median, performance_profile, steps_to_target,
    upper_median,
)
from evolveopt.evaluation.runner import curve_steps
from evolveopt.genome.schema import Genome
from evolveopt.genome.slots import buffers_per_param
from evolveopt.extras import optional

REFERENCE = "adamw"


def step_milliseconds(genome: Genome, task: dict[str, Any], repeats: int = 30) -> float:
    """Median wall time of one ``optimizer.step()`` on one model of ``task`` (fixed random gradients)."""
    from evolveopt.compile import build_optimizer
    from evolveopt.tasks import make_task

    run = make_task(task).start([0])
    params = [p.detach()[0].clone().requires_grad_() for p in run.params]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = build_optimizer(genome, params, total_steps=10_000)
    closure = (lambda: torch.tensor(1.0)) if genome.uses_loss else None
    times = []
    for i in range(repeats + 5):
        start = time.perf_counter()
        optimizer.step(closure)
        if i >= 5:
            times.append(time.perf_counter() - start)
    return 1e3 * median(times)


def task_metrics(bench: TaskBenchmark, genomes: dict[str, Genome]) -> dict[str, Any]:
    steps = curve_steps(bench.budget)
    reference = bench.optimizers[REFERENCE]
    target = upper_median([r.ema_loss for r in reference.results])
    out: dict[str, Any] = {"task": bench.label, "spec": bench.task, "budget": bench.budget, "target_loss": target,
                           "seconds": bench.seconds, "optimizers": {}}
    reference_steps = [steps_to_target(r.curve, steps, target) for r in reference.results]
    for name, run in bench.optimizers.items():
        losses = [r.ema_loss if not r.diverged else math.inf for r in run.results]
        to_target = [steps_to_target(r.curve, steps, target) if not r.diverged else math.inf for r in run.results]
        heldout = {k: median([r.heldout.get(k, math.nan) for r in run.results if not r.diverged])
                   for k in sorted({k for r in run.results for k in r.heldout})}
        ratio = median(to_target) / median(reference_steps) if median(reference_steps) > 0 else math.nan
        out["optimizers"][name] = {
            "setting": run.setting, "final_loss_median": median(losses), "final_loss_iqr": iqr(losses),
            "heldout_median": heldout, "steps_to_target": to_target, "steps_to_target_median": median(to_target),
            "speed_ratio_vs_adamw": ratio,
            "log_loss_vs_adamw": bootstrap_log_loss_difference(losses, [r.ema_loss for r in reference.results]),
            "diverged_seeds": sum(r.diverged for r in run.results),
            "state_bytes_per_param": 4 * buffers_per_param(genomes[name]),
            "step_ms": step_milliseconds(genomes[name], bench.task),
            "curves": [r.curve for r in run.results], "curve_steps": steps,
        }
    return out


def _never_as_inf(values: list[float | None]) -> list[float]:
    """Steps to target read back from JSON: null (never reached) is ∞."""
    return [math.inf if v is None else float(v) for v in values]


def summarize(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(tasks[0]["optimizers"]) if tasks else []
    budgets = [t["budget"] for t in tasks]
    reference = [_never_as_inf(t["optimizers"][REFERENCE]["steps_to_target"]) for t in tasks]
    summary: dict[str, Any] = {}
    for name in names:
        if name == REFERENCE:
            point, low, high = 1.0, 1.0, 1.0
        else:
            pairs = [(_never_as_inf(t["optimizers"][name]["steps_to_target"]), ref) for t, ref in zip(tasks, reference)]
            point, low, high = bootstrap_median_ratio(pairs, budgets=budgets)
        summary[name] = {"median_speed_ratio_vs_adamw": point, "ci95": [low, high],
                         "state_bytes_per_param": tasks[0]["optimizers"][name]["state_bytes_per_param"],
                         "step_ms_median": median([t["optimizers"][name]["step_ms"] for t in tasks])}
    medians = {n: [median(_never_as_inf(t["optimizers"][n]["steps_to_target"])) for t in tasks] for n in names}
    taus, rho, scores = performance_profile(medians)
    for name in names:
        summary[name]["profile_score"] = scores[name]
    return {"optimizers": summary, "profile": {"taus": taus, "rho": rho}}


def resummarize(folder: Path) -> Path:
    """Recompute the summary, markdown and pictures of a finished benchmark from its JSON."""
    report = json.loads((folder / "benchmark.json").read_text())
    report["summary"] = summarize(report["tasks"])
    return write_report(report, folder)


def _fmt(x: float | None, spec: str = ".3g", none: str = "n/a") -> str:
    if x is None:
        return none
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return format(x, spec)


def markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [f"# Benchmark: {', '.join(report['optimizers'])}", "",
             f"{len(report['tasks'])} task(s), {settings['budget']} steps, {settings['trials']} shared quasi-random "
             f"tuning trials (lr in {settings['lr_range']}, weight decay in {settings['wd_range']}) from "
             f"{settings['tuning_seeds']} tuning seed(s), then {settings['seeds']} fresh seeds at the best setting. "
             "Target = tuned AdamW's median final training loss.", "",
             "## Summary", "",
             "| optimizer | median speed ratio vs AdamW (95% CI) | profile score | state bytes/param | "
             "step ms (median over tasks) |",
             "|---|---|---:|---:|---:|"]
    for name in report["optimizers"]:
        s = report["summary"]["optimizers"][name]
        low, high = s["ci95"]
        lines.append(f"| {name} | {_fmt(s['median_speed_ratio_vs_adamw'], '.3g', '∞')} ({_fmt(low, '.3g', '∞')}–"
                     f"{_fmt(high, '.3g', '∞')}) | "
                     f"{s['profile_score']:.3f} | {s['state_bytes_per_param']} | "
                     f"{_fmt(s.get('step_ms_median'), '.3f')} |")
    lines += ["", "Speed ratio: steps to reach the target over AdamW's (< 1 is faster); ∞: never reached it. "
              "State bytes per parameter at float32; step ms: one optimizer step on one model of the task.",
              "", "![speed against memory](pareto.png)", ""]
    for task in report["tasks"]:
        lines += [f"## {task['task']}", "", f"Target loss {task['target_loss']:.4g}.", "",
                  "| optimizer | lr | wd | final loss, median [IQR] | held-out | steps to target | vs AdamW | "
                  "log-loss diff vs AdamW (95% CI) | step ms |", "|---|---:|---:|---|---|---:|---:|---|---:|"]
        for name in report["optimizers"]:
            o = task["optimizers"][name]
            low, high = o["final_loss_iqr"]
            held = ", ".join(f"{k} {_fmt(v, '.4g')}" for k, v in o["heldout_median"].items())
            diff, dlo, dhi = o["log_loss_vs_adamw"]
            lines.append(
                f"| {name} | {_fmt(o['setting'].get('lr'))} | {_fmt(o['setting'].get('weight_decay', math.nan))} | "
                f"{_fmt(o['final_loss_median'], '.4g')} [{_fmt(low, '.3g')}, {_fmt(high, '.3g')}] | {held} | "
                f"{_fmt(o['steps_to_target_median'], '.0f', '∞')} | {_fmt(o['speed_ratio_vs_adamw'], '.2f', '∞')} | "
                f"{_fmt(diff, '+.3f')} ({_fmt(dlo, '+.3f')}, {_fmt(dhi, '+.3f')}) | {o['step_ms']:.3f} |")
        lines.append("")
    lines += ["![loss curves](curves.png)", "", "![performance profile](profile.png)", ""]
    return "\n".join(lines)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    matplotlib = optional("matplotlib", "plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = report["tasks"]
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), dpi=100, squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for name, o in task["optimizers"].items():
            curves = np.array([c for c in o["curves"] if c], dtype=float)
            if not len(curves):
                continue
            steps = o["curve_steps"]
            mid = np.nanmedian(curves, 0)
            line, = ax.plot(steps, mid, label=name, lw=1.4)
            ax.fill_between(steps, np.nanpercentile(curves, 25, 0), np.nanpercentile(curves, 75, 0),
                            color=line.get_color(), alpha=0.2)
        ax.axhline(task["target_loss"], color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_title(task["task"], fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("training loss (EMA): median over fresh seeds, IQR band; dashed: target", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_profile(report: dict[str, Any], path: Path) -> None:
    matplotlib = optional("matplotlib", "plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = report["summary"]["profile"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for name, rho in profile["rho"].items():
        ax.step(profile["taus"], rho, where="post", label=f"{name} ({report['summary']['optimizers'][name]['profile_score']:.2f})")
    ax.set_xlabel("τ: steps to target within a factor τ of the best optimizer")
    ax.set_ylabel("fraction of tasks")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated in (state bytes, speed ratio), both lower-is-better, by memory ascending."""
    front = [n for n, (b, r) in points.items()
             if not any(b2 <= b and r2 <= r and (b2, r2) != (b, r) for b2, r2 in points.values())]
    return sorted(front, key=lambda n: points[n])


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Median speed ratio vs AdamW against optimizer-state bytes per parameter, the Pareto front joined."""
    matplotlib = optional("matplotlib", "plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = report["summary"]["optimizers"]
    points = {n: (float(s["state_bytes_per_param"]), float(s["median_speed_ratio_vs_adamw"] or math.inf))
              for n, s in summary.items()}
    finite = [r for _, r in points.values() if math.isfinite(r)] or [1.0]
    ceiling = max(finite) * 1.5  # where "never reached the target" is drawn
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    shown: dict[tuple[float, float], list[str]] = {}  # optimizers at one point share one label
    for name, (nbytes, ratio) in points.items():
        shown.setdefault((nbytes, ratio if math.isfinite(ratio) else ceiling), []).append(name)
    for (nbytes, y), names in shown.items():
        ax.scatter([nbytes], [y], marker="o" if y < ceiling else "^", s=24)
        ax.annotate("\n".join(names), (nbytes, y), fontsize=7, xytext=(3, 3), textcoords="offset points",
                    va="top" if y >= ceiling else "bottom")
    front = [points[n] for n in pareto_front(points) if math.isfinite(points[n][1])]
    if front:
        ax.step([b for b, _ in front], [r for _, r in front], where="post", color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.margins(x=0.15)
    ax.set_xlabel("optimizer state, bytes per parameter (float32)")
    ax.set_ylabel("median steps to target / AdamW's")
    ax.set_title("speed against memory (lower left is better; ▲: never reached the target)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_report(runs: list[TaskBenchmark], genomes: dict[str, Genome], settings: BenchmarkSettings) -> dict[str, Any]:
    tasks = [task_metrics(run, genomes) for run in runs]
    return {"settings": {"budget": settings.budget, "trials": settings.trials, "seeds": settings.seeds,
                         "tuning_seeds": settings.tuning_seeds, "lr_range": list(settings.lr_range),
                         "wd_range": list(settings.wd_range), "fresh_seeds": settings.fresh_seeds},
            "optimizers": list(genomes), "tasks": tasks, "summary": summarize(tasks)}


def write_report(report: dict[str, Any], out: Path) -> Path:
    from evolveopt.run_directory import dumps, output_folder

    with output_folder(out, "the benchmark report") as out:
        (out / "benchmark.json").write_text(json.dumps(json.loads(dumps(report)), indent=1) + "\n")
        plot_curves(report, out / "curves.png")
        plot_profile(report, out / "profile.png")
        plot_pareto(report, out / "pareto.png")
        (out / "benchmark.md").write_text(markdown(report), encoding="utf-8")
    return out / "benchmark.md"
