"""Statistics of a benchmark: steps to target, bootstrap intervals, performance profiles.

* **Target** of a task: the median final training loss of tuned AdamW over the fresh seeds
  (the upper middle value for an even count, so at least half of AdamW's seeds reach it).
* **Steps to target** of a run: the first step at which its loss curve (EMA, 32 points) falls
  to the target, interpolated linearly between recorded points; ∞ if it never does.
* **Speed ratio** of an optimizer on a task: its median steps to target over AdamW's (< 1:
  faster). The headline is the median ratio over tasks, with a 95% bootstrap interval that
  resamples tasks and, within each, the paired seeds (2,000 resamples, fixed seed); an AdamW
  run that misses its own target counts as reaching it at the budget.
* **Performance profile** (Dolan & Moré 2002; AlgoPerf): for each task, each optimizer's
  steps to target over the best optimizer's; ρ(τ) is the fraction of tasks within a factor τ;
  the score is the mean of ρ over τ ∈ [1, 4] (1 = best everywhere, 0 = never within 4x).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
PROFILE_MAX_RATIO = 4.0


def steps_to_target(curve: Sequence[float], steps: Sequence[int], target: float) -> float:
    """First (interpolated) step where ``curve`` ≤ ``target``; ∞ if never."""
    previous_step, previous_value = 0, math.inf
    for step, value in zip(steps, curve):
        if value is not None and math.isfinite(value) and value <= target:
            if math.isfinite(previous_value) and previous_value > value:
                fraction = (previous_value - target) / (previous_value - value)
                return previous_step + fraction * (step - previous_step)
            return float(step)
        previous_step, previous_value = step, value if value is not None else math.inf
    return math.inf


def median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float))) if len(values) else math.nan


def upper_median(values: Sequence[float]) -> float:
    """The median, taking the upper middle value for an even count (a target at least half reach)."""
    return float(np.percentile(np.asarray(values, dtype=float), 50, method="higher")) if len(values) else math.nan


def iqr(values: Sequence[float]) -> tuple[float, float]:
    """25th and 75th percentiles (nearest observations, so ∞ and NaN-free values stay exact)."""
    array = np.asarray(values, dtype=float)
    if not len(array):
        return math.nan, math.nan
    low, high = np.percentile(array, [25, 75], method="nearest")
    return float(low), float(high)


def ratio_of_medians(a: Sequence[float], b: Sequence[float]) -> float:
    ma, mb = median(a), median(b)
    if math.isinf(ma) and math.isinf(mb):
        return math.nan
    return ma / mb if mb > 0 else math.inf


def bootstrap_median_ratio(per_task: Sequence[tuple[Sequence[float], Sequence[float]]], seed: int = 0,
                           resamples: int = BOOTSTRAP_RESAMPLES,
                           budgets: Sequence[float] | None = None) -> tuple[float, float, float]:
    """(median over tasks of the speed ratio, 2.5th and 97.5th percentiles of its bootstrap).

    ``per_task`` holds (candidate, reference) steps to target per fresh seed; seeds are paired
    (the same seed gives both runs the same init and data), so they are resampled together.
    A reference run that never reached the target counts as reaching it at the task's budget
    (``budgets``): the conservative choice, which never makes a candidate look faster.
    """
    if budgets is not None:
        per_task = [(a, [min(x, cap) for x in b]) for (a, b), cap in zip(per_task, budgets)]
    point = median([ratio_of_medians(a, b) for a, b in per_task])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        ratios = []
        for t in rng.integers(len(per_task), size=len(per_task)):
            a, b = (np.asarray(x, dtype=float) for x in per_task[t])
            pick = rng.integers(len(a), size=len(a))
            ratios.append(ratio_of_medians(a[pick], b[pick]))
        ratios = [r for r in ratios if not math.isnan(r)]
        if ratios:
            draws.append(median(ratios))
    if not draws:
        return point, math.nan, math.nan
    low, high = np.percentile(np.asarray(draws), [2.5, 97.5], method="nearest")
    return point, float(low), float(high)


def bootstrap_log_loss_difference(a: Sequence[float], b: Sequence[float], seed: int = 0,
                                  resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float, float]:
    """Median over paired seeds of log(a_s) − log(b_s), with a 95% bootstrap interval."""
    x = np.log(np.maximum(np.asarray(a, dtype=float), 1e-30)) - np.log(np.maximum(np.asarray(b, dtype=float), 1e-30))
    if not np.isfinite(x).all():
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = [np.median(x[rng.integers(len(x), size=len(x))]) for _ in range(resamples)]
    low, high = np.percentile(np.asarray(draws), [2.5, 97.5], method="nearest")
    return float(np.median(x)), float(low), float(high)


def performance_profile(steps: dict[str, list[float]], taus: Sequence[float] | None = None
                        ) -> tuple[list[float], dict[str, list[float]], dict[str, float]]:
    """``steps[optimizer][task]`` → (τ grid, ρ(τ) per optimizer, score per optimizer)."""
    taus = list(taus) if taus is not None else list(np.linspace(1.0, PROFILE_MAX_RATIO, 121))
    names = list(steps)
    n_tasks = len(next(iter(steps.values()))) if steps else 0
    best = [min(steps[n][k] for n in names) for k in range(n_tasks)]
    ratios = {n: [steps[n][k] / best[k] if math.isfinite(steps[n][k]) and math.isfinite(best[k]) and best[k] > 0
                  else math.inf for k in range(n_tasks)] for n in names}
    rho = {n: [sum(r <= tau for r in ratios[n]) / n_tasks if n_tasks else 0.0 for tau in taus] for n in names}
    scores = {n: float(np.mean(rho[n])) if n_tasks else 0.0 for n in names}
    return taus, rho, scores
