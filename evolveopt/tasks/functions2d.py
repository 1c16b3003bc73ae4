"""Two-dimensional test functions, the sanity problems of DeepOBS (Schneider et al., ICLR 2019).

Rosenbrock (1960): f(x, y) = (1 − x)² + 100 (y − x²)², minimum 0 at (1, 1), start (−1.5, 2).
Beale (1958): f(x, y) = (1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)², minimum 0 at
(3, 0.5), start (1, 1). Each member starts at the customary point plus N(0, jitter²) noise drawn
from its seed; the loss is deterministic, and the held-out metric is the distance to the minimum.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor

from evolveopt.tasks.base import Option, Task, TaskRun, generator, stack_members


def rosenbrock(x: Tensor, y: Tensor) -> Tensor:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(x: Tensor, y: Tensor) -> Tensor:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


class FunctionRun(TaskRun):
    def __init__(self, params: list[Tensor], function: Callable[[Tensor, Tensor], Tensor], optimum: Tensor):
        self.params, self.function, self.optimum = params, function, optimum

    def loss(self, step: int) -> Tensor:
        point = self.params[0]
        return self.function(point[:, 0], point[:, 1])

    @torch.no_grad()
    def heldout(self) -> dict[str, Tensor]:
        return {"loss": (self.params[0] - self.optimum).norm(dim=1)}


class Function2D(Task):
    """A deterministic 2-D function; params ``[P, 2]``."""

    function: ClassVar[Callable[[Tensor, Tensor], Tensor]]
    start_point: ClassVar[tuple[float, float]]
    optimum: ClassVar[tuple[float, float]]
    OPTIONS = {"jitter": Option(0.1, (0.0, 1.0), numeric=True, doc="std of the per-seed offset of the start")}

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> FunctionRun:
        start_point = torch.tensor(self.start_point)
        points = [[start_point + self.options["jitter"] * torch.randn(2, generator=generator(s))] for s in seeds]
        return FunctionRun(stack_members(points, device), self.function,
                           torch.tensor(self.optimum, device=device))

    def activation_bytes(self) -> int:
        return 64


class Rosenbrock(Function2D):
    name = "rosenbrock"
    description = "Rosenbrock's banana valley, start (-1.5, 2), minimum at (1, 1)"
    function = staticmethod(rosenbrock)
    start_point = (-1.5, 2.0)
    optimum = (1.0, 1.0)


class Beale(Function2D):
    name = "beale"
    description = "Beale's function, start (1, 1), minimum at (3, 0.5)"
    function = staticmethod(beale)
    start_point = (1.0, 1.0)
    optimum = (3.0, 0.5)
