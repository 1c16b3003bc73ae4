"""A short training run with any genome, next to Adam: the quickest look at what a rule does.

Trains a 64-128-10 MLP on scikit-learn's bundled 8x8 digits (1,797 images, no download) with a
fixed seed, batch 128, and reports training loss along the way and held-out accuracy at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from evolveopt.compile import build_optimizer
from evolveopt.genome.schema import Genome


@dataclass
class DemoResult:
    name: str
    losses: list[tuple[int, float]]
    accuracy: float
    seconds: float


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``digits_mlp`` task's data: the same fixed 75/25 split and standardization, so ``try``
    and the task see identical tensors (the seed of ``train_digits`` draws the init and batches)."""
    from evolveopt.tasks.datasets import sklearn_classification

    return sklearn_classification("digits")


def train_digits(genome: Genome | str, steps: int = 300, seed: int = 0, report_every: int = 50,
                 **overrides: float) -> DemoResult:
    """Train the digits MLP with ``genome``; the same seed gives the same init and batches."""
    x_train, y_train, x_test, y_test = digits_split()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = build_optimizer(genome, model.parameters(), total_steps=steps, **overrides)
    batches = torch.randint(0, len(x_train), (steps, 128), generator=torch.Generator().manual_seed(seed + 1))
    loss_fn = nn.CrossEntropyLoss()
    losses, start = [], time.perf_counter()
    for step, index in enumerate(batches, start=1):
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[index]), y_train[index])
            loss.backward()
            return loss

        loss = optimizer.step(closure).detach()
        if step % report_every == 0 or step == 1:
            losses.append((step, loss.item()))
    optimizer.eval()  # schedule-free averaging: measure at the evaluation point (a no-op for other rules)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    name = genome if isinstance(genome, str) else (genome.name or "genome")
    return DemoResult(name, losses, accuracy, time.perf_counter() - start)


def format_results(results: list[DemoResult]) -> str:
    steps = [s for s, _ in results[0].losses]
    header = "step  " + "".join(f"{r.name:>12}" for r in results)
    rows = [header]
    for i, step in enumerate(steps):
        rows.append(f"{step:>4}  " + "".join(f"{r.losses[i][1]:>12.4f}" for r in results))
    rows.append("acc   " + "".join(f"{r.accuracy:>12.3f}" for r in results))
    rows.append("secs  " + "".join(f"{r.seconds:>12.2f}" for r in results))
    return "\n".join(rows)
