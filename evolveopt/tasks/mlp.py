"""Multi-layer perceptrons on bundled scikit-learn data, trained as a stacked population."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evolveopt.tasks.base import (
    Option, Task, TaskRun, accuracy_per_member, batch_indices, cross_entropy_per_member, epoch_orders,
    generator, linear_init, stack_members, stacked_linear,
)
from evolveopt.tasks.datasets import sklearn_classification, sklearn_digest


def mlp_init(gen: torch.Generator, sizes: Sequence[int]) -> list[Tensor]:
    """Weights ``[in, out]`` and biases of an MLP, in nn.Linear's default init."""
    tensors = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        tensors += [linear_init(gen, fan_in, (fan_in, fan_out)), linear_init(gen, fan_in, (fan_out,))]
    return tensors


def mlp_forward(params: list[Tensor], x: Tensor) -> Tensor:
    """ReLU MLP over stacked parameters: x ``[P, B, in]`` → ``[P, B, out]``."""
    h = x
    for i in range(0, len(params), 2):
        h = stacked_linear(h, params[i], params[i + 1])
        if i + 2 < len(params):
            h = torch.relu(h)
    return h


class ClassifierRun(TaskRun):
    def __init__(self, params, x_train, y_train, x_test, y_test, orders, batch_size, forward):
        self.params = params
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.orders, self.batch_size, self.forward = orders, batch_size, forward

    def loss(self, step: int) -> Tensor:
        index = batch_indices(self.orders, step, self.batch_size)
        return cross_entropy_per_member(self.forward(self.params, self.x_train[index]), self.y_train[index])

    @torch.no_grad()
    def heldout(self) -> dict[str, Tensor]:
        members = self.params[0].shape[0]
        x = self.x_test.expand(members, *self.x_test.shape)
        y = self.y_test.expand(members, *self.y_test.shape)
        logits = self.forward(self.params, x)
        return {"loss": cross_entropy_per_member(logits, y), "accuracy": accuracy_per_member(logits, y)}


class SklearnMLP(Task):
    """An MLP classifier on a bundled scikit-learn dataset (75/25 train/held-out split)."""

    name = "sklearn_mlp"
    description = "ReLU MLP on a bundled scikit-learn dataset, batch sampled without replacement per epoch"
    OPTIONS = {
        "dataset": Option("digits", ("digits", "breast_cancer", "wine")),
        "hidden": Option(128, (1, 4096), numeric=True, doc="width of each hidden layer"),
        "depth": Option(1, (1, 8), numeric=True, doc="number of hidden layers"),
        "batch_size": Option(128, (1, 4096), numeric=True, doc="examples per step"),
    }

    def dataset(self) -> str:
        return self.options["dataset"]

    def data_digest(self) -> str:
        return sklearn_digest(self.dataset())

    def sizes(self, n_in: int, n_out: int) -> list[int]:
        return [n_in] + [self.options["hidden"]] * self.options["depth"] + [n_out]

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> ClassifierRun:
        x_train, y_train, x_test, y_test = sklearn_classification(self.dataset())
        sizes = self.sizes(x_train.shape[1], int(y_train.max()) + 1)
        params = stack_members([mlp_init(generator(s), sizes) for s in seeds], device)
        orders = epoch_orders(seeds, len(x_train), device)
        return ClassifierRun(params, x_train.to(device), y_train.to(device), x_test.to(device), y_test.to(device),
                             orders, self.options["batch_size"], mlp_forward)

    def activation_bytes(self) -> int:
        return 4 * self.options["batch_size"] * self.options["hidden"] * self.options["depth"] * 3


class DigitsMLP(SklearnMLP):
    """The anchor's proxy: a 64-128-10 MLP on scikit-learn's 8×8 digits, batch 128."""

    name = "digits_mlp"
    description = "64-128-10 ReLU MLP on 8x8 digits, batch 128"
    OPTIONS = {k: v for k, v in SklearnMLP.OPTIONS.items() if k != "dataset"}

    def dataset(self) -> str:
        return "digits"
