"""How many members fit on a device, and how many CPU threads to use.

Per member, training holds the parameters, their gradients, the rule's state buffers and one
temporary per parameter for the update, plus the task's activations:

    bytes ≈ 4 · n_params · (3 + buffers_per_param) + activation_bytes
"""

from __future__ import annotations

import json
from typing import Sequence

import torch

from evolveopt.evaluation.threads import affinity
from evolveopt.genome.schema import Genome
from evolveopt.genome.slots import buffers_per_param
from evolveopt.tasks import Task


def member_bytes(task: Task, genomes: Sequence[Genome]) -> int:
    """Peak bytes one member needs on ``task``, for the most state-hungry genome given."""
    buffers = max((buffers_per_param(g) for g in genomes), default=2)
    return 4 * param_count(task) * (3 + buffers) + task.activation_bytes()


_PARAM_COUNTS: dict[tuple[str, str], int] = {}  # (task class, spec) -> trainable parameters of a member


def param_count(task: Task) -> int:
    """``task.param_count()``, remembered for a built-in task by its class and spec (which decide its
    model): counting builds the model, and the steady-state search plans one evaluation at a time. A
    module task's model comes from the user's code, which its spec does not pin: counted every time."""
    from evolveopt.tasks.module import ModuleTask

    if isinstance(task, ModuleTask):
        return task.param_count()
    key = (f"{type(task).__module__}.{type(task).__qualname__}", json.dumps(task.spec, sort_keys=True, default=str))
    if key not in _PARAM_COUNTS:
        _PARAM_COUNTS[key] = task.param_count()
    return _PARAM_COUNTS[key]


def max_members(task: Task, genomes: Sequence[Genome], device: str = "cpu", fraction: float = 0.5) -> int:
    """Members that fit in ``fraction`` of the device's free memory (at least 1)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        free = _available_host_bytes()
    return max(1, int(free * fraction) // max(1, member_bytes(task, genomes)))


def configure_host(threads: int) -> None:
    """Run torch on ``threads`` CPU threads (:func:`~evolveopt.evaluation.threads.unit_threads`
    decides) and keep large temporaries in the malloc heap (:func:`keep_temporaries_in_heap`)."""
    torch.set_num_threads(threads)
    keep_temporaries_in_heap()


def keep_temporaries_in_heap() -> None:
    """Raise glibc's mmap threshold so large temporaries reuse heap memory.

    glibc serves every allocation above its mmap threshold (≤ 32 MB) with a fresh mmap, so each
    step's multi-megabyte activations and gradients page-fault anew; raising the threshold lets
    them reuse heap memory, at the price of a higher peak RSS. Measured by ``evolveopt bench heap``
    (docs/performance.md). A no-op where glibc is absent.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from glibc's malloc.h


CPU_MEMBERS = 256  # members per stacked run on CPU: past this, throughput stops rising (docs/performance.md)


def default_max_members(task: Task, genomes: Sequence[Genome], device: str = "cpu") -> int:
    """Members per stacked run: a fixed 256 on CPU (so runs chunk the same on every machine and
    stay bit-for-bit reproducible) unless memory allows fewer; on CUDA, what fits in half the
    free memory."""
    fit = max_members(task, genomes, device)
    return fit if device.startswith("cuda") else min(CPU_MEMBERS, fit)


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity set, which containers and Ray restrict)."""
    return len(affinity())


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3
