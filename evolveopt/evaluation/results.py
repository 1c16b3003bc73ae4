"""Plain-data results of evaluations (JSON in and out; no torch)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MemberResult:
    """One genome trained on one task at one budget from one seed.

    ``ema_loss`` is the bias-corrected EMA (β = 0.9) of the training loss at the last step, the
    selection metric; ``curve`` is the same EMA at 32 evenly spaced steps (for steps-to-target). A diverged member is frozen at the step it failed; ``reason`` says why.
    """

    final_loss: float
    ema_loss: float
    initial_loss: float = math.nan  # the loss of step 1
    heldout: dict[str, float] = field(default_factory=dict)
    diverged: bool = False
    reason: str = ""
    steps: int = 0  # steps trained before the end or the freeze
    moved: bool = True  # False when the parameters never changed (an all-zero update)
    curve: list[float] = field(default_factory=list)  # the EMA loss at runner.curve_steps(budget)

    @property
    def stalled(self) -> bool:
        """The update was all zeros: the parameters never moved."""
        return not self.diverged and not self.moved

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("final_loss", "ema_loss", "initial_loss"):
            data[key] = _finite_or_none(data[key])
        data["heldout"] = {k: _finite_or_none(v) for k, v in self.heldout.items()}
        data["curve"] = [_finite_or_none(v) for v in self.curve]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MemberResult":
        values = dict(data)
        for key in ("final_loss", "ema_loss", "initial_loss"):
            values[key] = math.nan if values.get(key) is None else values[key]
        values["heldout"] = {k: math.nan if v is None else v for k, v in values.get("heldout", {}).items()}
        values["curve"] = [math.nan if v is None else v for v in values.get("curve", [])]
        return cls(**values)


def _finite_or_none(value: float) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
