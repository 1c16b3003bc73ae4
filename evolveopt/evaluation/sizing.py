"""How many members fit on a device, and how many CPU threads to use.

Per member, training holds the parameters, their gradients, the rule's state buffers and one
temporary per parameter for the update, plus the task's activations:

    bytes ≈ 4 · n_params · (3 + buffers_per_param) + activation_bytes
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from evolveopt.genome.schema import Genome
from evolveopt.genome.slots import buffers_per_param
from evolveopt.tasks import Task


def member_bytes(task: Task, genomes: Sequence[Genome]) -> int:
    """Peak bytes one member needs on ``task``, for the most state-hungry genome given."""
    buffers = max((buffers_per_param(g) for g in genomes), default=2)
    return 4 * task.param_count() * (3 + buffers) + task.activation_bytes()


def max_members(task: Task, genomes: Sequence[Genome], device: str = "cpu", fraction: float = 0.5) -> int:
    """Members that fit in ``fraction`` of the device's free memory (at least 1)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        free = _available_host_bytes()
    return max(1, int(free * fraction) // max(1, member_bytes(task, genomes)))


def cpu_threads() -> int:
    """The CPUs this process may run on (its affinity set, which containers and Ray restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3
