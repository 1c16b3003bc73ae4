"""Which fitness objective transfers: rank correlation of search fitness with held-out scores.

The same genomes (every named genome, plus random genomes of the default search space) are
scored twice:

* **search fitness** on the search suite (``SEARCH_SUITE``, seeds 0..S−1), once per objective of
  ``fitness.objective`` (train_loss, heldout_loss, combined): what selection would see;
* **held-out score** on the held-out suite (``HELDOUT_SUITE``: other data, other architectures,
  scale-ups), from fresh seeds (1000, 1001, ...), which no search uses: by training loss and by
  held-out loss against tuned Adam, as in the fitness (signed log of the mean log loss ratio).

For each (objective, held-out score) pair it prints Spearman's ρ over the genomes with a 95%
bootstrap interval (genomes resampled), and its difference from the train_loss objective's ρ with
a paired interval (the same resamples). The objective with the higher ρ is the one whose winners
keep winning where they were not searched.

With a learning-rate sweep (``lr_sweep``, :func:`run_lr_sweep_transfer`) the search fitness is the
default objective's three ways instead, on the same genomes: without a sweep (each genome at its
own lr), and over the sweep with ``best`` and with ``soft_min`` (``fitness.lr_sweep``); the Δ
columns are paired against no sweep. The held-out scores are those above (each genome at its own
lr) and one more: the held-out loss score at each task's best multiplier of the sweep, a coarse
stand-in for a benchmark that tunes every rule's learning rate.

With a funnel (``funnel``, :func:`run_funnel_transfer`; default ``tasks.FUNNEL_STAGES``) the same
genomes are ordered twice: by search fitness (default objective), and as a funnel run's hall of
fame orders them (evaluation/funnel.py: the top of the search climb stages of larger tasks). ρ of
each order with the held-out scores, the held-out rank of each order's top genomes (as many as the
funnel's last stage takes) and of its champion, and the funnel's training cost against the search's.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SEARCH_SEEDS = (0, 1)
FRESH_SEEDS = (1000, 1001)
HELDOUT_SCORES = ("train_loss", "heldout_loss")


def candidate_genomes(random_count: int, seed: int = 0) -> dict[str, Any]:
    """Every named genome, then ``random_count`` random genomes of the default search space."""
    from evolveopt.genome import load_genome
    from evolveopt.genome.io import named_genomes
    from evolveopt.search.space import SearchSpace, random_genome

    genomes = {name: load_genome(name) for name in named_genomes()}
    rng = np.random.default_rng(seed)
    for i in range(random_count):
        genomes[f"random-{i}"] = random_genome(rng, SearchSpace())
    return genomes


def spearman_with_interval(x: list[float], y: list[float], versus: list[float] | None = None,
                           resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Spearman's ρ(x, y) and its 95% percentile-bootstrap interval over the pairs; with ``versus``
    (other scores of the same genomes) also ρ(x, y) − ρ(versus, y), bootstrapped on the same resamples."""
    from scipy.stats import spearmanr

    x_arr, y_arr = np.asarray(x), np.asarray(y)
    v_arr = np.asarray(versus) if versus is not None else x_arr
    out = {"rho": float(spearmanr(x_arr, y_arr).statistic),
           "delta": float(spearmanr(x_arr, y_arr).statistic - spearmanr(v_arr, y_arr).statistic)}
    rng = np.random.default_rng(seed)
    draws, deltas = [], []
    for _ in range(resamples):
        index = rng.integers(0, len(x_arr), len(x_arr))
        if min(len(set(a[index])) for a in (x_arr, y_arr, v_arr)) > 1:
            rho = spearmanr(x_arr[index], y_arr[index]).statistic
            draws.append(rho)
            deltas.append(rho - spearmanr(v_arr[index], y_arr[index]).statistic)
    for name, values in (("", draws), ("delta_", deltas)):
        low, high = np.percentile(values, [2.5, 97.5]) if values else (math.nan, math.nan)
        out[f"{name}low"], out[f"{name}high"] = float(low), float(high)
    return out


def _fitness_of(genomes: dict[str, Any], cache: Any, budget: int, device: str, tasks: Any, seeds: tuple[int, ...],
                objective: str, **sweep: Any) -> list[float]:
    """Each genome's fitness on ``tasks`` from ``seeds`` (no successive halving), in order."""
    from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings

    settings = FitnessSettings(tasks=list(tasks), budget=budget, seeds=list(seeds), rungs=1, device=device,
                               objective=objective, **sweep)
    return [s.fitness for s in FitnessScorer(settings, cache).score(list(genomes.values()))]


def _heldout_scores(genomes: dict[str, Any], cache: Any, budget: int, device: str) -> dict[str, list[float]]:
    from evolveopt.tasks import HELDOUT_SUITE

    return {obj: _fitness_of(genomes, cache, budget, device, HELDOUT_SUITE, FRESH_SEEDS, obj) for obj in HELDOUT_SCORES}


def _report(budget: int, names: list[str], search: dict[str, list[float]], heldout: dict[str, list[float]],
            versus: str, column: str) -> dict[str, Any]:
    from evolveopt.tasks import HELDOUT_SUITE, SEARCH_SUITE

    rows = [{column: name, "heldout_score": target, "genomes": len(names),
             **spearman_with_interval(search[name], heldout[target], versus=search[versus])}
            for name in search for target in heldout]
    return {"budget": budget, "genomes": names, "search": search, "heldout": heldout, "rows": rows,
            "versus": versus, "column": column,
            "search_tasks": [t["name"] for t in SEARCH_SUITE], "heldout_tasks": [t["name"] for t in HELDOUT_SUITE]}


def run_transfer_benchmark(budget: int = 150, random_count: int = 24, device: str = "cpu") -> dict[str, Any]:
    """Score every candidate on both suites under every objective; correlate (module docstring)."""
    from evolveopt.config import RULES
    from evolveopt.evaluation import ResultCache
    from evolveopt.tasks import SEARCH_SUITE

    genomes = candidate_genomes(random_count)
    cache = ResultCache()  # one cache: each suite trains once, scored several ways
    search = {obj: _fitness_of(genomes, cache, budget, device, SEARCH_SUITE, SEARCH_SEEDS, obj)
              for obj in RULES["fitness.objective"]}
    return _report(budget, list(genomes), search, _heldout_scores(genomes, cache, budget, device), "train_loss",
                   "objective")


def run_lr_sweep_transfer(lr_sweep: tuple[float, ...] = (0.5, 1.0, 2.0), budget: int = 150, random_count: int = 24,
                          device: str = "cpu") -> dict[str, Any]:
    """Search fitness (default objective) without a sweep and over ``lr_sweep`` by each aggregate, on
    the same genomes; correlate with the held-out scores (module docstring)."""
    from evolveopt.config import RULES, FitnessConfig
    from evolveopt.evaluation import ResultCache
    from evolveopt.tasks import HELDOUT_SUITE, SEARCH_SUITE

    genomes = candidate_genomes(random_count)
    cache = ResultCache()  # the sweep's multiplier 1 is the no-sweep evaluation: trained once
    objective = FitnessConfig.objective
    sweep_label = "×(" + ", ".join(f"{m:g}" for m in lr_sweep) + ")"
    search = {"no sweep": _fitness_of(genomes, cache, budget, device, SEARCH_SUITE, SEARCH_SEEDS, objective)}
    for how in RULES["fitness.lr_aggregate"]:
        search[f"{how} {sweep_label}"] = _fitness_of(genomes, cache, budget, device, SEARCH_SUITE, SEARCH_SEEDS,
                                                     objective, lr_sweep=tuple(lr_sweep), lr_aggregate=how)
    heldout = _heldout_scores(genomes, cache, budget, device)
    heldout[f"{objective}, best lr {sweep_label}"] = _fitness_of(genomes, cache, budget, device, HELDOUT_SUITE,
                                                                FRESH_SEEDS, objective, lr_sweep=tuple(lr_sweep),
                                                                lr_aggregate="best")  # as if tuned per task
    report = _report(budget, list(genomes), search, heldout, "no sweep", "lr sweep")
    return {**report, "objective": objective, "lr_sweep": list(lr_sweep)}


def format_transfer_table(report: dict[str, Any]) -> str:
    from evolveopt.measure import cpu_model

    column, versus = report["column"], report["versus"]
    objective = f"fitness objective {report['objective']}; " if "objective" in report else ""
    lines = [f"{objective}{len(report['genomes'])} genomes, {report['budget']} steps; search suite "
             f"({', '.join(report['search_tasks'])}) seeds {list(SEARCH_SEEDS)}; held-out suite "
             f"({', '.join(report['heldout_tasks'])}) fresh seeds {list(FRESH_SEEDS)}; {cpu_model()}", "",
             f"| search {column} | held-out score by | Spearman ρ | 95% CI | ρ − ρ({versus}) | 95% CI (paired) |",
             "|---|---|---:|---|---:|---|"]
    for row in report["rows"]:
        lines.append(f"| {row[column]} | {row['heldout_score']} | {row['rho']:+.3f} | "
                     f"[{row['low']:+.3f}, {row['high']:+.3f}] | {row['delta']:+.3f} | "
                     f"[{row['delta_low']:+.3f}, {row['delta_high']:+.3f}] |")
    if "picks" in report:
        lines += _format_picks(report)
    return "\n".join(lines)


def _format_picks(report: dict[str, Any]) -> list[str]:
    stages = "; ".join(f"stage {j + 1}: top {s['top']} (entered {n}) on "
                       + ", ".join(_task_label(t) for t in s["tasks"]) + f", {s.get('budget', report['budget'])} steps"
                       for j, (s, n) in enumerate(zip(report["stages"], report["entrants"])))
    lines = ["", f"funnel: {stages}", "",
             f"| selection | held-out score by | mean held-out rank of its top {report['top']} | its champion's "
             f"held-out rank |", "|---|---|---:|---:|"]
    for name, by in report["picks"].items():
        for target, value in by.items():
            lines.append(f"| {name} | {target} | {value['top_mean_rank']:.1f} | {value['champion_rank']} |")
    search, funnel = report["search_member_steps"], report["funnel_member_steps"]
    lines += ["", f"training cost: search {search:,} member-steps ({report['search_seconds']:.0f} s), funnel "
                  f"{funnel:,} ({report['funnel_seconds']:.0f} s) = {funnel / max(search, 1):.2f}x the search's "
                  f"(of {len(report['genomes'])} genomes; ranks out of {len(report['genomes'])})"]
    return lines


def _task_label(task: dict[str, Any]) -> str:
    options = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in task.items() if k != "name")
    return f"{task['name']}({options})" if options else task["name"]


def run_funnel_transfer(stages: list[dict[str, Any]] | None = None, budget: int = 150, random_count: int = 24,
                        device: str = "cpu") -> dict[str, Any]:
    """Search-fitness order vs funnel order of the same genomes against the held-out scores (module docstring)."""
    from evolveopt.config import FitnessConfig
    from evolveopt.evaluation import ResultCache
    from evolveopt.evaluation.funnel import Funnel, FunnelStage
    from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings, ScorerStats
    from evolveopt.search.individual import fame_key
    from evolveopt.tasks import FUNNEL_STAGES, SEARCH_SUITE

    stages = FUNNEL_STAGES if stages is None else stages
    genomes = candidate_genomes(random_count)
    cache = ResultCache()
    settings = FitnessSettings(tasks=list(SEARCH_SUITE), budget=budget, seeds=list(SEARCH_SEEDS), rungs=1,
                               device=device, objective=FitnessConfig.objective)
    searcher = FitnessScorer(settings, cache)
    search = [s.fitness for s in searcher.score(list(genomes.values()))]
    funnel_stats = ScorerStats()
    funnel = Funnel([FunnelStage.from_config(s) for s in stages], settings, cache, stats=funnel_stats)
    climbed = funnel.climb(list(genomes.values()), search)
    keys = [fame_key(0, f, [{"fitness": s.fitness} for s in c]) for f, c in zip(search, climbed)]
    order = sorted(range(len(keys)), key=lambda i: keys[i], reverse=True)  # the funnel's hall of fame
    position = {i: -rank for rank, i in enumerate(order)}  # larger is better, as a fitness
    selections = {"search fitness": search, "funnel": [float(position[i]) for i in range(len(keys))]}
    heldout = _heldout_scores(genomes, cache, budget, device)
    report = _report(budget, list(genomes), selections, heldout, "search fitness", "selection")
    top = stages[-1]["top"]
    picks = {name: _held_out_ranks(score, heldout, top) for name, score in selections.items()}
    return {**report, "objective": FitnessConfig.objective, "stages": stages, "picks": picks, "top": top,
            "entrants": funnel.entrants(climbed),
            "search_member_steps": searcher.stats.member_steps, "funnel_member_steps": funnel_stats.member_steps,
            "search_seconds": searcher.stats.seconds, "funnel_seconds": funnel_stats.seconds}


def _held_out_ranks(selection: list[float], heldout: dict[str, list[float]], top: int) -> dict[str, dict[str, float]]:
    """For each held-out score: the mean held-out rank (1 = best) of the ``top`` genomes the selection
    ranks first, and its champion's held-out rank."""
    chosen = sorted(range(len(selection)), key=lambda i: -selection[i])[:top]  # stable, as the funnel's order
    out = {}
    for name, scores in heldout.items():
        rank = {i: r + 1 for r, i in enumerate(sorted(range(len(scores)), key=lambda i: -scores[i]))}
        out[name] = {"top_mean_rank": sum(rank[i] for i in chosen) / len(chosen), "champion_rank": rank[chosen[0]]}
    return out
