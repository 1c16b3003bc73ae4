"""How many CPU threads a unit of work uses: the CPUs that are free to this process now.

torch's intra-op workers (OpenMP) meet at a barrier after every parallel kernel; when other
processes hold the CPUs, one descheduled worker stalls all the others, and they spin while
they wait. Measured on 2 cores beside two busy processes: a quickstart generation took
42-84 s instead of 2.2 s. So a unit runs as many threads as CPUs are left free (its affinity
set, less what other processes used of it lately). OpenMP's wait policy stays the default:
letting idle workers sleep (``OMP_WAIT_POLICY=PASSIVE``) made a quickstart generation alone 1.9x
slower on 2 cores while it gained little beside busy neighbours once the thread count is right
(``evolveopt bench neighbour``, docs/performance.md). A user who sets it (before torch loads
OpenMP: it is read once) gets it in Ray workers too; torch's thread count can change at any time.

Who decides, first that applies: ``backend.threads`` in the run's config, the environment
variable ``EVOLVEOPT_THREADS``, then :func:`choose_threads` over a fresh sample of the load.
Imports nothing from torch.
"""

from __future__ import annotations

import math
import os
import time

from evolveopt.errors import EvolveOptError

THREADS_ENV = "EVOLVEOPT_THREADS"
OPENMP_ENV = ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")  # OpenMP settings a user may set; passed on to workers
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}  # idle OpenMP workers sleep (measured, not the default)
FREE_SHARE = 0.75  # a CPU counts as free when other processes leave at least this share of it
MIN_WINDOW_S = 0.2  # shortest window of the load measurement (/proc/stat counts in 10 ms ticks)


def choose_threads(cpus: int, busy_elsewhere: float) -> int:
    """Threads for work on ``cpus`` CPUs (this process's affinity set) of which other processes
    kept ``busy_elsewhere`` CPUs' worth busy lately:

        threads = clamp(floor(cpus − busy_elsewhere + 1 − FREE_SHARE), 1, cpus)

    i.e. the CPUs left free, where a CPU counts if others use at most a quarter of it.
    """
    free = math.floor(cpus - max(0.0, busy_elsewhere) + (1 - FREE_SHARE))
    return max(1, min(free, cpus))


def unit_threads(requested: int | None = None) -> int:
    """The thread count of the next unit: ``requested`` (``backend.threads``), else
    ``$EVOLVEOPT_THREADS``, else :func:`choose_threads` on this process's CPUs and their load."""
    if requested:
        return requested
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise EvolveOptError(f"{THREADS_ENV}={env!r}: expected a whole number of threads >= 1")
        return int(env)
    return choose_threads(len(affinity()), LOAD.busy_elsewhere())


def affinity() -> set[int]:
    """The CPUs this process may run on (its affinity set, which containers and Ray restrict)."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def openmp_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The OpenMP settings ``environ`` (this process's by default) has, for workers to start with."""
    environ = os.environ if environ is None else environ
    return {key: environ[key] for key in OPENMP_ENV if key in environ}


class OtherLoad:
    """CPUs' worth of time that other processes used on this process's CPUs lately.

    From /proc/stat (busy jiffies of the affinity CPUs) minus this process's own CPU time, over
    the wall time since the last sample; a window shorter than ``MIN_WINDOW_S`` keeps the last
    estimate (so tiny units cost nothing), and only the first look waits that long. Without
    /proc/stat (not Linux), 0: only the affinity set counts.
    """

    def __init__(self) -> None:
        self._previous: tuple[float, float, float] | None = None
        self._estimate = 0.0

    def busy_elsewhere(self) -> float:
        if self._previous is None:
            self._previous = _sample()
            time.sleep(MIN_WINDOW_S)
        now = _sample()
        (wall0, busy0, own0), (wall1, busy1, own1) = self._previous, now
        if wall1 - wall0 >= MIN_WINDOW_S:
            self._previous = now
            if not (math.isnan(busy0) or math.isnan(busy1)):
                self._estimate = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0))
        return self._estimate


LOAD = OtherLoad()


def _sample() -> tuple[float, float, float]:
    """(monotonic wall s, busy CPU s of the affinity CPUs, this process's CPU s)."""
    times = os.times()
    return time.monotonic(), _busy_cpu_seconds(affinity()), times.user + times.system


def _busy_cpu_seconds(cpus: set[int]) -> float:
    """Seconds the CPUs in ``cpus`` were not idle since boot (user, nice, system, irq, softirq,
    steal), from /proc/stat; NaN where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return math.nan
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
            busy += user + nice + system + irq + softirq + steal
    return busy / os.sysconf("SC_CLK_TCK")
