"""Teacher–student regression: a student MLP learns a fixed random teacher MLP on fresh data.

The teacher f* is a ReLU MLP (``in_dim`` → ``teacher_width`` → ``teacher_width`` → 4) with
He-normal weights (He et al., ICCV 2015) and zero biases, drawn from ``teacher_seed``; it is the
same for every member. Each step a member draws x ~ N(0, I) of its own (counter-based, so there is
no overfitting and no data order) and minimizes the mean squared error ‖f_θ(x) − f*(x)‖² / 4 of a
student ReLU MLP with ``depth`` hidden layers of ``width`` units. The setting follows the
teacher–student analyses of Saad and Solla (1995) and Goldt et al. (NeurIPS 2019). Held-out:
the MSE on 1,024 fixed inputs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from evolveopt.tasks.base import Option, Task, TaskRun, generator, stack_members
from evolveopt.tasks.mlp import mlp_forward, mlp_init
from evolveopt.tasks.noise import member_normal, seed_tensor

OUTPUTS = 4
HELDOUT_SIZE = 1024
TEACHER_SALT, INPUTS_SALT = 2, 3  # generator streams apart from init (0) and data order (1)


def teacher_init(gen: torch.Generator, sizes: Sequence[int]) -> list[Tensor]:
    """He-normal weights ``[in, out]`` and zero biases: unit-scale outputs at any depth."""
    tensors = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        tensors += [torch.randn(fan_in, fan_out, generator=gen) * math.sqrt(2.0 / fan_in), torch.zeros(fan_out)]
    return tensors


def fixed_inputs(count: int, dim: int, seed: int = 0) -> Tensor:
    """``[1, count, dim]`` standard normal inputs shared by every member."""
    return torch.randn(1, count, dim, generator=generator(seed, INPUTS_SALT))


def broadcast_members(tensors: list[Tensor], members: int) -> list[Tensor]:
    """The same tensors for every member: views ``[P, ...]``."""
    return [t.expand(members, *t.shape) for t in tensors]


def mean_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """``[P]`` mean over examples and outputs."""
    return ((prediction - target) ** 2).flatten(1).mean(1)


class TeacherStudentRun(TaskRun):
    def __init__(self, params: list[Tensor], teacher: list[Tensor], seeds: Tensor, batch_size: int,
                 in_dim: int, heldout_x: Tensor):
        self.params, self.seeds = params, seeds
        self.batch_shape = (batch_size, in_dim)
        members = len(seeds)
        self.teacher = broadcast_members(teacher, members)
        self.heldout_x = heldout_x.expand(members, *heldout_x.shape[1:])
        self.heldout_y = mlp_forward(self.teacher, self.heldout_x)

    def loss(self, step: int) -> Tensor:
        x = member_normal(self.seeds, step, self.batch_shape)
        with torch.no_grad():
            target = mlp_forward(self.teacher, x)
        return mean_squared_error(mlp_forward(self.params, x), target)

    @torch.no_grad()
    def heldout(self) -> dict[str, Tensor]:
        return {"loss": mean_squared_error(mlp_forward(self.params, self.heldout_x), self.heldout_y)}


class TeacherStudent(Task):
    """Student ReLU MLP regressing a fixed random teacher on fresh Gaussian inputs."""

    name = "teacher_student"
    description = "ReLU student MLP fits a fixed random ReLU teacher (4 outputs) on fresh N(0, I) inputs, MSE"
    OPTIONS = {
        "in_dim": Option(32, (1, 4096), numeric=True, doc="input dimension"),
        "width": Option(64, (1, 4096), numeric=True, doc="student hidden width"),
        "depth": Option(2, (1, 8), numeric=True, doc="student hidden layers"),
        "batch_size": Option(64, (1, 65536), numeric=True, doc="fresh inputs per step"),
        "teacher_width": Option(64, (1, 4096), numeric=True, doc="teacher hidden width (2 hidden layers)"),
        "teacher_seed": Option(0, (0, 2**31 - 1), numeric=True, doc="seed of the teacher's weights"),
    }

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> TeacherStudentRun:
        o = self.options
        student_sizes = [o["in_dim"]] + [o["width"]] * o["depth"] + [OUTPUTS]
        params = stack_members([mlp_init(generator(s), student_sizes) for s in seeds], device)
        teacher_sizes = [o["in_dim"], o["teacher_width"], o["teacher_width"], OUTPUTS]
        teacher = [t.to(device) for t in teacher_init(generator(o["teacher_seed"], TEACHER_SALT), teacher_sizes)]
        return TeacherStudentRun(params, teacher, seed_tensor(seeds, device), o["batch_size"], o["in_dim"],
                                 fixed_inputs(HELDOUT_SIZE, o["in_dim"]).to(device))

    def activation_bytes(self) -> int:
        o = self.options
        return 4 * o["batch_size"] * (o["in_dim"] + 3 * o["width"] * o["depth"] + 2 * o["teacher_width"])
