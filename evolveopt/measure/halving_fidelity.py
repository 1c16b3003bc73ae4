"""How well does the first rung of successive halving rank a random population?

Draws N random genomes, scores all of them at the full budget B and at the first rung B/η²,
and reports: the Spearman rank correlation of the two fitness vectors, the recall of the true
top-k (by full-budget fitness) among the top N/η promoted at rung 1, and the member-steps that
successive halving spends against training everyone at B.
"""

from __future__ import annotations

import math
import time

import numpy as np

from evolveopt.evaluation.halving import halving_cost, rung_budgets
from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings
from evolveopt.search.space import random_genome


def ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n with ties averaged."""
    array = np.asarray(values, dtype=float)
    order = array.argsort(kind="stable")
    out = np.empty(len(array))
    out[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        out[tied] = out[tied].mean()
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_recall(full: list[float], early: list[float], k: int, promoted: int) -> float:
    """Fraction of the true top-k (by ``full``) that the top ``promoted`` by ``early`` contain."""
    truth = set(np.argsort(full)[::-1][:k].tolist())
    kept = set(np.argsort(early)[::-1][:promoted].tolist())
    return len(truth & kept) / k


def run_fidelity_benchmark(population: int = 54, budget: int = 900, seeds: tuple[int, ...] = (0, 1),
                           task: str = "digits_mlp", eta: int = 3, rungs: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    genomes = [random_genome(rng) for _ in range(population)]
    scorer = FitnessScorer(FitnessSettings(tasks=[{"name": task}], budget=budget, seeds=list(seeds), eta=eta, rungs=rungs))
    first = rung_budgets(budget, eta, rungs)[0]
    start = time.perf_counter()
    full = [f.fitness for f in scorer.score(genomes, budget)]
    early = [f.fitness for f in scorer.score(genomes, first)]
    seconds = time.perf_counter() - start
    promoted = math.ceil(population / eta)
    k = max(1, population // eta**2)
    return {
        "task": task, "population": population, "budget": budget, "first_rung": first, "seeds": list(seeds),
        "spearman_rung1_vs_full": spearman(early, full),
        "top_k": k, "promoted_at_rung1": promoted,
        "top_k_recall_rung1": top_k_recall(full, early, k, promoted),
        "member_steps_full": population * budget * len(seeds),
        "member_steps_halving": halving_cost(population, budget, eta, rungs) * len(seeds),
        "diverged_or_stalled_full": sum(f <= -5.0 for f in full),
        "seconds": seconds,
    }


def format_fidelity(report: dict) -> str:
    saved = report["member_steps_full"] / report["member_steps_halving"]
    return "\n".join([
        f"{report['population']} random genomes on {report['task']}, seeds {report['seeds']}: "
        f"rung 1 = {report['first_rung']} steps, full = {report['budget']} steps",
        f"Spearman rho (rung 1 vs full fitness): {report['spearman_rung1_vs_full']:.3f}",
        f"top-{report['top_k']} recall among the {report['promoted_at_rung1']} promoted at rung 1: "
        f"{report['top_k_recall_rung1']:.2f}",
        f"member-steps: everyone at full budget {report['member_steps_full']:,}, successive halving "
        f"{report['member_steps_halving']:,} ({saved:.2f}x fewer)",
        f"genomes failing (diverged or static) at full budget: {report['diverged_or_stalled_full']}",
    ])
