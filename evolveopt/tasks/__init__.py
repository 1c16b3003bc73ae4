"""Proxy tasks, each training a stacked population of models (see ``base.py``).

``make_task("digits_mlp")`` or ``make_task({"name": "sklearn_mlp", "dataset": "wine"})`` builds
one; ``SEARCH_SUITE`` is the default fitness suite and ``HELDOUT_SUITE`` is never used for
search by default.
"""

from __future__ import annotations

from typing import Any

from evolveopt.tasks.base import Option, Task, TaskError, TaskRun
from evolveopt.tasks.charlm import CharLM
from evolveopt.tasks.charrnn import CharRNN
from evolveopt.tasks.cnn import DigitsCNN
from evolveopt.tasks.functions2d import Beale, Rosenbrock
from evolveopt.tasks.large_batch import LargeBatch
from evolveopt.tasks.mlp import DigitsMLP, SklearnMLP
from evolveopt.tasks.quadratic import NoisyQuadratic
from evolveopt.tasks.teacher_student import TeacherStudent

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    NoisyQuadratic, Rosenbrock, Beale, DigitsMLP, SklearnMLP, DigitsCNN, TeacherStudent, CharLM, LargeBatch, CharRNN,
)}

SEARCH_SUITE: list[dict[str, Any]] = [
    {"name": "nqm"},
    {"name": "digits_mlp"},
    {"name": "teacher_student"},
    {"name": "char_lm"},
]
HELDOUT_SUITE: list[dict[str, Any]] = [  # other data, other architectures, and scale-ups of search tasks
    {"name": "sklearn_mlp", "dataset": "breast_cancer"},
    {"name": "digits_mlp", "hidden": 512, "depth": 2},
    {"name": "digits_cnn"},
    {"name": "char_rnn"},
    {"name": "teacher_student", "depth": 4, "width": 256, "in_dim": 64},
]


def make_task(spec: str | dict[str, Any] | Task) -> Task:
    """A task from its name, a mapping ``{"name": ..., option: value}``, or a Task (returned as is)."""
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise TaskError(f"a task is a name or a mapping with 'name', got {spec!r}")
    options = dict(spec)
    name = options.pop("name")
    if name not in TASKS:
        raise TaskError(f"unknown task '{name}' (tasks: {', '.join(sorted(TASKS))})")
    return TASKS[name](**options)


__all__ = ["HELDOUT_SUITE", "SEARCH_SUITE", "TASKS", "Option", "Task", "TaskError", "TaskRun", "make_task"]
