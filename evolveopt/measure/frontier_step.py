"""Time ``optimizer.step()`` of the frontier genomes against their reference implementations.

Each row pairs a named genome with the package it mirrors (``PAIRS``), both at their defaults,
on three models of matrices (so matrix rules such as Muon apply): 10 × [1024, 1024] (10.5M
parameters), 100 × [32, 64] (205k) and a transformer-shaped stack of 4 blocks, each
[256, 1024] and [1024, 256] weights with their biases and a norm's weight and bias (2.1M).
Gradients are fixed random tensors; each optimizer runs in a fresh process, best of ``rounds``
rounds of ``repeats`` steps after 10 warm-up steps. State bytes count every state tensor of
more than one element (a reference's and a genome's alike).

:func:`run_population_benchmark` times one stacked step of P members of a genome (``[P, ...]``
tensors, per-member genes) against P separate optimizers of the same members.
"""

from __future__ import annotations

import multiprocessing
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch

from evolveopt.measure.step_time import _best_seconds, _state_bytes_per_param

_BLOCK = [(256, 1024), (1024,), (1024, 256), (256,), (256,), (256,)]
MODELS: dict[str, list[tuple[int, ...]]] = {
    "10x1M": [(1024, 1024)] * 10,
    "100x2k": [(32, 64)] * 100,
    "transformer": _BLOCK * 4,
}


def _params(shapes: list[tuple[int, ...]], device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=gen).to(device) * 1e-2
        params.append(p)
    return params


class _Pair:
    """Two optimizers stepped as one (a matrix rule for 2-D tensors, AdamW for the rest)."""

    def __init__(self, first: torch.optim.Optimizer, second: torch.optim.Optimizer | None):
        self.parts = [o for o in (first, second) if o is not None]
        self.state = {k: v for o in self.parts for k, v in o.state.items()}

    def step(self, closure=None):
        for optimizer in self.parts:
            optimizer.step()
        self.state = {k: v for o in self.parts for k, v in o.state.items()}


def _torch_muon(params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """torch.optim.Muon for the matrices, torch.optim.AdamW for the other tensors (as pytorch-optimizer
    routes them)."""
    matrices = [p for p in params if p.ndim == 2]
    rest = [p for p in params if p.ndim != 2]
    return _Pair(torch.optim.Muon(matrices), torch.optim.AdamW(rest) if rest else None)


def _schedulefree(params):
    import schedulefree

    optimizer = schedulefree.AdamWScheduleFree(params)
    optimizer.train()
    return optimizer


def _adopt(params):
    from adopt import ADOPT

    return ADOPT(params)


def _prodigy(params):
    from prodigyopt import Prodigy

    return Prodigy(params)


def _kozistr_lion_cautious(params):
    import pytorch_optimizer

    return pytorch_optimizer.Lion(params, cautious=True)


# genome -> (reference label, reference factory); a pair runs where both are installed
PAIRS: dict[str, tuple[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]] = {
    "muon": ("torch Muon + AdamW", _torch_muon),
    "adafactor": ("torch Adafactor", lambda p: torch.optim.Adafactor(p)),
    "schedulefree_adamw": ("schedulefree AdamWScheduleFree", _schedulefree),
    "adopt": ("torch-adopt ADOPT", _adopt),
    "cautious_lion": ("pytorch-optimizer Lion cautious", _kozistr_lion_cautious),
    "prodigy": ("prodigyopt Prodigy", _prodigy),
    "cautious_adamw": ("torch AdamW foreach (no mask)", lambda p: torch.optim.AdamW(p, foreach=True)),
}


def _make(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if name.startswith("evolveopt "):
        from evolveopt.compile import build_optimizer

        genome = name.split()[1]
        optimizer = build_optimizer(genome, params)
        if hasattr(optimizer, "train"):
            optimizer.train()
        return optimizer
    label_to_factory = {label: factory for label, factory in PAIRS.values()}
    return label_to_factory[name](params)


def _measure(model: str, name: str, repeats: int, rounds: int, device: str) -> dict:
    """Seconds per step and state bytes of one optimizer (runs in its own process)."""
    params = _params(MODELS[model], device)
    try:
        optimizer = _make(name, params)
        optimizer.step()
    except (RuntimeError, ImportError, ValueError, AttributeError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return {"seconds": _best_seconds(optimizer.step, repeats, rounds, device),
            "state_bytes_per_param": _state_bytes_per_param(optimizer, params)}


def available_pairs() -> dict[str, tuple[str, Callable]]:
    from evolveopt.genome.io import named_genomes

    names = set(named_genomes())
    return {genome: pair for genome, pair in PAIRS.items() if genome in names}


def run_frontier_step_benchmark(repeats: int = 20, rounds: int = 5, device: str = "cpu") -> list[dict]:
    """Rows of {model, genome, reference, ms_genome, ms_reference, ratio, state bytes of both}."""
    rows = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for model, shapes in MODELS.items():
            size = sum(torch.Size(s).numel() for s in shapes)
            steps = repeats if size < 1_000_000 else max(5, repeats // 4)
            for genome, (label, _) in available_pairs().items():
                ours = pool.submit(_measure, model, f"evolveopt {genome}", steps, rounds, device).result()
                theirs = pool.submit(_measure, model, label, steps, rounds, device).result()
                row = {"model": model, "genome": genome, "reference": label, "device": device,
                       "threads": torch.get_num_threads()}
                if "error" in ours or "error" in theirs:
                    row["error"] = ours.get("error") or theirs.get("error")
                else:
                    row.update(ms_genome=ours["seconds"] * 1e3, ms_reference=theirs["seconds"] * 1e3,
                               ratio=ours["seconds"] / theirs["seconds"],
                               bytes_genome=ours["state_bytes_per_param"],
                               bytes_reference=theirs["state_bytes_per_param"])
                rows.append(row)
    return rows


def format_frontier_table(rows: list[dict]) -> str:
    from evolveopt.measure import cpu_model

    lines = [f"device: {rows[0].get('device', '?') if rows else '?'}, {cpu_model()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads",
             f"{'model':<12} {'genome':<20} {'reference':<32} {'ms genome':>10} {'ms ref':>9} {'ratio':>7} "
             f"{'B/param':>8} {'ref B/param':>11}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<12} {r['genome']:<20} {r['reference']:<32} n/a ({r['error']})")
            continue
        lines.append(f"{r['model']:<12} {r['genome']:<20} {r['reference']:<32} {r['ms_genome']:>10.3f} "
                     f"{r['ms_reference']:>9.3f} {r['ratio']:>6.2f}x {r['bytes_genome']:>8.1f} "
                     f"{r['bytes_reference']:>11.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- population


def run_population_benchmark(genome: str = "muon", members: int = 64, repeats: int = 10, rounds: int = 3,
                             device: str = "cpu", shapes: list[tuple[int, ...]] | None = None) -> dict:
    """One stacked step of ``members`` members against ``members`` separate optimizers (same genes)."""
    from evolveopt.compile import build_optimizer
    from evolveopt.compile.population import PopulationOptimizer, stack_genes
    from evolveopt.genome.io import load_genome

    shapes = shapes or [(64, 256), (256,), (256, 64), (64,)]
    base = load_genome(genome)
    gen = torch.Generator().manual_seed(0)
    stacked = [torch.randn(members, *s, generator=gen).to(device) for s in shapes]
    grads = [torch.randn_like(p) * 1e-2 for p in stacked]
    population = PopulationOptimizer(base, stacked, stack_genes([base] * members, dtype=torch.float32),
                                     total_steps=10_000)
    together = _best_seconds(lambda: population.step(grads), repeats, rounds, device)
    alone = []
    for i in range(members):
        params = [p[i].clone().requires_grad_() for p in stacked]
        for p, g in zip(params, grads):
            p.grad = g[i].clone()
        alone.append(build_optimizer(base, params, total_steps=10_000))
    separate = _best_seconds(lambda: [o.step() for o in alone], repeats, rounds, device)
    return {"genome": genome, "members": members, "shapes": [list(s) for s in shapes], "device": device,
            "ms_stacked": together * 1e3, "ms_separate": separate * 1e3, "speedup": separate / together,
            "threads": torch.get_num_threads(), "machine": platform.machine()}


def format_population(report: dict) -> str:
    return (f"{report['genome']}: {report['members']} members of {report['shapes']} on {report['device']}: "
            f"stacked step {report['ms_stacked']:.2f} ms, {report['members']} separate steps "
            f"{report['ms_separate']:.2f} ms ({report['speedup']:.1f}x)")
