"""Large-batch classification, the regime of layer-wise trust ratios (LARS, You et al. 2017,
arXiv 1708.03888; LAMB, You et al., ICLR 2020, arXiv 1904.00962).

A fixed random ReLU teacher (``in_dim`` → 64 → 64 → 10, He-normal, from ``teacher_seed``) labels
x ~ N(0, I) with y = argmax f*(x); its output bias is set to minus the mean logit on a
calibration sample so the ten classes are roughly balanced. Each step a member draws
``batch_size`` (≥ 1024) fresh inputs of its own and minimizes the cross-entropy of a deep
student ReLU MLP (``depth`` hidden layers of ``width``). With little gradient noise the step size
is limited by curvature, whose scale differs from layer to layer — what per-layer update
normalization addresses. Held-out: loss and accuracy on 4,096 fixed inputs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evolveopt.tasks.base import (
    Option, Task, TaskRun, accuracy_per_member, cross_entropy_per_member, generator, stack_members,
)
from evolveopt.tasks.mlp import mlp_forward, mlp_init
from evolveopt.tasks.noise import member_normal, seed_tensor
from evolveopt.tasks.teacher_student import TEACHER_SALT, broadcast_members, fixed_inputs, teacher_init

CLASSES = 10
TEACHER_WIDTH = 64
HELDOUT_SIZE = 4096
CALIBRATION_SEED = 1


def balanced_teacher(seed: int, in_dim: int) -> list[Tensor]:
    """Teacher weights whose logits have zero mean per class on a calibration sample."""
    teacher = teacher_init(generator(seed, TEACHER_SALT), [in_dim, TEACHER_WIDTH, TEACHER_WIDTH, CLASSES])
    logits = mlp_forward(broadcast_members(teacher, 1), fixed_inputs(HELDOUT_SIZE, in_dim, CALIBRATION_SEED))
    teacher[-1] = -logits[0].mean(0)
    return teacher


class LargeBatchRun(TaskRun):
    def __init__(self, params: list[Tensor], teacher: list[Tensor], seeds: Tensor, batch_size: int,
                 in_dim: int, heldout_x: Tensor):
        self.params, self.seeds = params, seeds
        self.batch_shape = (batch_size, in_dim)
        self.teacher = broadcast_members(teacher, len(seeds))
        self.heldout_x = heldout_x.expand(len(seeds), *heldout_x.shape[1:])
        self.heldout_y = self.labels(self.heldout_x)

    def labels(self, x: Tensor) -> Tensor:
        return mlp_forward(self.teacher, x).argmax(-1)

    def loss(self, step: int) -> Tensor:
        x = member_normal(self.seeds, step, self.batch_shape)
        return cross_entropy_per_member(mlp_forward(self.params, x), self.labels(x))

    @torch.no_grad()
    def heldout(self) -> dict[str, Tensor]:
        logits = mlp_forward(self.params, self.heldout_x)
        return {"loss": cross_entropy_per_member(logits, self.heldout_y),
                "accuracy": accuracy_per_member(logits, self.heldout_y)}


class LargeBatch(Task):
    """Deep student MLP on teacher-labelled Gaussian inputs, 4,096 fresh examples per step."""

    name = "large_batch"
    description = "deep ReLU MLP classifies teacher-labelled N(0, I) inputs (10 classes), batch 4096"
    OPTIONS = {
        "in_dim": Option(16, (1, 1024), numeric=True, doc="input dimension"),
        "width": Option(64, (1, 4096), numeric=True, doc="student hidden width"),
        "depth": Option(4, (1, 16), numeric=True, doc="student hidden layers"),
        "batch_size": Option(4096, (1024, 262_144), numeric=True, doc="fresh inputs per step"),
        "teacher_seed": Option(0, (0, 2**31 - 1), numeric=True, doc="seed of the teacher's weights"),
    }

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> LargeBatchRun:
        o = self.options
        sizes = [o["in_dim"]] + [o["width"]] * o["depth"] + [CLASSES]
        params = stack_members([mlp_init(generator(s), sizes) for s in seeds], device)
        teacher = [t.to(device) for t in balanced_teacher(o["teacher_seed"], o["in_dim"])]
        return LargeBatchRun(params, teacher, seed_tensor(seeds, device), o["batch_size"], o["in_dim"],
                             fixed_inputs(HELDOUT_SIZE, o["in_dim"]).to(device))

    def activation_bytes(self) -> int:
        o = self.options
        return 4 * o["batch_size"] * (o["in_dim"] + 3 * o["width"] * o["depth"] + 2 * TEACHER_WIDTH + CLASSES)
