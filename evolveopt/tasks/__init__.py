"""Proxy tasks, each training a stacked population of models (see ``base.py``).

``make_task("digits_mlp")`` or ``make_task({"name": "sklearn_mlp", "dataset": "wine"})`` builds
one; ``SEARCH_SUITE`` is the default fitness suite and ``HELDOUT_SUITE`` is never used for
search by default.

A user's task (typically a :class:`~evolveopt.tasks.module.ModuleTask`) comes from a factory
``factory(**options) -> Task`` found, in this order, among the built-in tasks, those given to
:func:`register` in this process, the ``evolveopt.tasks`` entry points of installed packages, or
an import path ``package.module:factory`` of a module on the path. Nothing in a file is evaluated
and no file path is executed: only installed (importable) modules the user names are imported.
A Task object passed to :func:`make_task` is remembered by its spec, so work units (plain data)
find it again in this process; other processes (Ray workers) rebuild it from its name.
"""

from __future__ import annotations

import importlib
import json
import re
from importlib.metadata import entry_points
from typing import Any, Callable

from evolveopt.tasks.base import Option, Task, TaskError, TaskRun
from evolveopt.tasks.charlm import CharLM
from evolveopt.tasks.charrnn import CharRNN
from evolveopt.tasks.cnn import DigitsCNN
from evolveopt.tasks.functions2d import Beale, Rosenbrock
from evolveopt.tasks.gpt import GPTStdlib
from evolveopt.tasks.large_batch import LargeBatch
from evolveopt.tasks.mlp import DigitsMLP, SklearnMLP
from evolveopt.tasks.quadratic import NoisyQuadratic
from evolveopt.tasks.teacher_student import TeacherStudent

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (
    NoisyQuadratic, Rosenbrock, Beale, DigitsMLP, SklearnMLP, DigitsCNN, TeacherStudent, CharLM, LargeBatch, CharRNN,
    GPTStdlib,
)}

SEARCH_SUITE: list[dict[str, Any]] = [
    {"name": "nqm"},
    {"name": "digits_mlp"},
    {"name": "teacher_student"},
    {"name": "char_lm"},
    {"name": "gpt"},  # 2 blocks, width 32, context 32
]
HELDOUT_SUITE: list[dict[str, Any]] = [  # other data, other architectures, and scale-ups of search tasks
    {"name": "sklearn_mlp", "dataset": "breast_cancer"},
    {"name": "digits_mlp", "hidden": 512, "depth": 2},
    {"name": "digits_cnn"},
    {"name": "char_rnn"},
    {"name": "teacher_student", "depth": 4, "width": 256, "in_dim": 64},
    {"name": "gpt", "layers": 3, "width": 48, "context": 64, "batch_size": 8},  # deeper, wider, longer context
]

FUNNEL_STAGES: list[dict[str, Any]] = [  # fitness.funnel of experiments/funnel.yaml and `bench transfer --funnel`:
    {"tasks": [{"name": "digits_mlp", "hidden": 256, "depth": 2},  # larger than the search suite's tasks, and
               {"name": "teacher_student", "depth": 3, "width": 128},  # none of them a held-out task
               {"name": "char_lm", "d_model": 64, "layers": 2},
               {"name": "gpt", "layers": 2, "width": 48, "context": 48}], "top": 16},
    {"tasks": [{"name": "gpt", "layers": 4, "width": 64, "context": 48},
               {"name": "digits_mlp", "hidden": 256, "depth": 3},
               {"name": "nqm", "dim": 1000, "condition": 1e5}], "top": 6},
]

ENTRY_POINT_GROUP = "evolveopt.tasks"
_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_REGISTERED: dict[str, Callable[..., Task]] = {}
_LIVE: dict[str, Task] = {}  # Task objects given to make_task, by their spec


def register(name: str, factory: Callable[..., Task]) -> None:
    """Make ``make_task({"name": name, **options})`` call ``factory(**options)`` in this process."""
    if name in TASKS:
        raise TaskError(f"task '{name}' is a built-in task; register yours under another name")
    if not callable(factory):
        raise TaskError(f"task '{name}': register() needs a callable factory, got {type(factory).__name__}")
    _REGISTERED[name] = factory


def make_task(spec: str | dict[str, Any] | Task) -> Task:
    """A task from its name, a mapping ``{"name": ..., option: value}``, or a Task (returned as is)."""
    if isinstance(spec, Task):
        _LIVE[_spec_key(spec.spec)] = spec
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise TaskError(f"a task is a name or a mapping with 'name', got {spec!r}")
    if _spec_key(spec) in _LIVE:
        return _LIVE[_spec_key(spec)]
    options = dict(spec)
    name = options.pop("name")
    if name in TASKS:
        return TASKS[name](**options)
    version = options.pop("task_version", None)
    task = _build(name, _user_factory(name), options)
    if version is not None and task.spec.get("task_version") != version:
        raise TaskError(f"task '{name}': this process builds version {task.spec.get('task_version')!r}, the "
                        f"work was planned with version {version!r} (install the same version everywhere)")
    return task


def _user_factory(name: str) -> Callable[..., Task]:
    if name in _REGISTERED:
        return _REGISTERED[name]
    found = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == name]
    if found:
        return _load(name, found[0].load, f"entry point {found[0].value}")
    if _IMPORT_PATH.fullmatch(name):
        module, attribute = name.split(":")

        def load() -> Any:
            return getattr(importlib.import_module(module), attribute)
        return _load(name, load, "import path")
    raise TaskError(f"unknown task '{name}' (tasks: {', '.join(sorted([*TASKS, *_REGISTERED]))}; or register one, "
                    f"install an '{ENTRY_POINT_GROUP}' entry point, or give an import path package.module:factory)")


def _load(name: str, load: Callable[[], Any], how: str) -> Callable[..., Task]:
    try:
        factory = load()
    except Exception as exc:  # noqa: BLE001 - the user's module: name it, keep the cause
        raise TaskError(f"task '{name}': loading its {how} failed: {type(exc).__name__}: {exc}") from exc
    if not callable(factory):
        raise TaskError(f"task '{name}': its {how} names {type(factory).__name__}, not a task factory")
    return factory


def _build(name: str, factory: Callable[..., Task], options: dict[str, Any]) -> Task:
    try:
        task = factory(**options)
    except TaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory
        raise TaskError(f"task '{name}': its factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskError(f"task '{name}': its factory returned {type(task).__name__}, not an evolveopt Task")
    task.origin = {"name": name, **options}  # how another process builds it again
    return task


def _spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


__all__ = ["FUNNEL_STAGES", "HELDOUT_SUITE", "SEARCH_SUITE", "TASKS", "Option", "Task", "TaskError", "TaskRun", "make_task", "register"]
