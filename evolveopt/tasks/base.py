"""Proxy tasks that train a population of P models at once.

A task builds a :class:`TaskRun` for a list of seeds: stacked parameters (each tensor
``[P, ...]``, member i's slice initialised from ``seeds[i]`` alone), data already on the
device, and a per-member data order drawn from the same seed. So member i of a stacked run sees
exactly what a run with ``seeds=[seeds[i]]`` sees, and trains identically when its optimizer
does (``tests/test_evaluate.py`` checks it).

``TaskRun.loss(step)`` returns the ``[P]`` training losses of step ``step`` (1-based) as a
differentiable function of ``run.params``; ``TaskRun.heldout()`` returns held-out metrics.
Nothing is downloaded: data ships with installed packages or is generated.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor

from evolveopt.errors import EvolveOptError


class TaskError(EvolveOptError, ValueError):
    """An unknown task or a bad task option."""


@dataclass(frozen=True)
class Option:
    """A task option: its default and what is allowed (a type, or a tuple of choices)."""

    default: Any
    allowed: Any = None  # tuple of choices, or (low, high) for numbers when ``numeric``
    numeric: bool = False
    doc: str = ""

    def check(self, task: str, name: str, value: Any) -> Any:
        if self.numeric:
            low, high = self.allowed
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise TaskError(f"task '{task}': option {name}={value!r} is out of range [{low}, {high}] ({self.doc})")
            return type(self.default)(value)
        if value not in self.allowed:
            raise TaskError(f"task '{task}': option {name}={value!r} is not allowed "
                            f"(allowed: {', '.join(map(str, self.allowed))})")
        return value


class TaskRun(ABC):
    """P models of one task in training: ``params`` (stacked, requires grad), ``loss``, ``heldout``."""

    params: list[Tensor]

    @abstractmethod
    def loss(self, step: int) -> Tensor:
        """``[P]`` mean training loss of each member on its minibatch of ``step`` (1-based)."""

    def heldout(self) -> dict[str, Tensor]:
        """``[P]`` held-out metrics (``loss``, ``accuracy``, ...); empty when the task has none."""
        return {}


class Task(ABC):
    """A proxy problem. Subclasses declare ``name``, ``OPTIONS`` and build runs."""

    name: ClassVar[str]
    OPTIONS: ClassVar[dict[str, Option]] = {}
    description: ClassVar[str] = ""

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            allowed = ", ".join(self.OPTIONS) or "none"
            raise TaskError(f"task '{self.name}': unknown option '{sorted(unknown)[0]}' (options: {allowed})")
        self.options = {k: opt.default for k, opt in self.OPTIONS.items()}
        for key, value in options.items():
            self.options[key] = self.OPTIONS[key].check(self.name, key, value)

    @property
    def spec(self) -> dict[str, Any]:
        """Plain-data identity of this task (name and every option), for caches and logs."""
        return {"name": self.name, **self.options}

    @property
    def label(self) -> str:
        changed = [f"{k}={v}" for k, v in self.options.items() if v != self.OPTIONS[k].default]
        return self.name + (f"[{','.join(changed)}]" if changed else "")

    @abstractmethod
    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> TaskRun:
        """Fresh stacked models for ``seeds`` (one member each), with their data order."""

    def data_digest(self) -> str:
        """A digest of the data this task trains on, for cache keys: a result depends on it as on the
        spec. Empty for data drawn from the seeds by torch (the keys hold torch's version)."""
        return ""

    def param_count(self) -> int:
        """Trainable parameters of one member."""
        run = self.start([0])
        return sum(p[0].numel() for p in run.params)

    def activation_bytes(self) -> int:
        """Rough bytes of activations per member per step (for sizing populations)."""
        return 0


# ----------------------------------------------------------------------------- helpers


def generator(seed: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for (seed, salt): init and data order draw from separate streams."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt) % (2**63 - 1))


def linear_init(gen: torch.Generator, fan_in: int, shape: Sequence[int]) -> Tensor:
    """torch.nn.Linear's default init: U(−1/√fan_in, 1/√fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(*shape, generator=gen) * 2 - 1) * bound


def stack_members(per_member: list[list[Tensor]], device: torch.device | str) -> list[Tensor]:
    """[[member 0 tensors], [member 1 tensors], ...] → stacked leaf tensors on ``device``."""
    return [torch.stack(ts).to(device).requires_grad_() for ts in zip(*per_member)]


def epoch_orders(seeds: Sequence[int], size: int, device: torch.device | str, salt: int = 1) -> Tensor:
    """``[P, size]`` permutations, one per member from its own seed."""
    return torch.stack([torch.randperm(size, generator=generator(s, salt)) for s in seeds]).to(device)


def batch_indices(orders: Tensor, step: int, batch_size: int) -> Tensor:
    """``[P, batch]`` indices of step ``step``: consecutive slices of each member's permutation."""
    size = orders.shape[1]
    positions = (torch.arange(batch_size, device=orders.device) + (step - 1) * batch_size) % size
    return orders[:, positions]


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x ``[P, B, in]`` @ weight ``[P, in, out]`` + bias ``[P, out]``."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight)


def cross_entropy_per_member(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of each member: logits ``[P, B, C]``, targets ``[P, B]`` → ``[P]``."""
    p, b, c = logits.shape
    losses = torch.nn.functional.cross_entropy(logits.reshape(p * b, c), targets.reshape(p * b), reduction="none")
    return losses.view(p, b).mean(1)


def accuracy_per_member(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(-1) == targets).float().mean(-1)


def stacked_embedding(table: Tensor, ids: Tensor) -> Tensor:
    """Row lookup per member: table ``[P, V, d]``, ids ``[P, ...]`` → ``[P, ..., d]``."""
    members, vocab, width = table.shape
    offsets = torch.arange(members, device=ids.device).view(-1, *([1] * (ids.ndim - 1))) * vocab
    return torch.nn.functional.embedding(ids + offsets, table.reshape(members * vocab, width))
