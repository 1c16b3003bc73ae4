"""Where units of evaluation work run: in this process, or on a Ray cluster.

A backend maps a list of :class:`~evolveopt.evaluation.evaluator.WorkUnit` s (plain data: a
task, a budget, genome dicts and seeds) to their results, in order, and calls ``on_done(index)``
as each unit's result comes in (in-process: in order; Ray: in the order units finish, from
``ray.wait``). The unit is the same on every backend and each member's result depends only on
its genome and seed, so a run gives the same fitness in-process and on Ray.

Ray: CPU units are Ray tasks (one CPU each, or ``backend.threads``, and as many threads); GPU units go to long-lived actors holding a share
of a GPU (``gpus_per_actor``), restarted when they die. A unit whose worker dies, that raises,
or that outlives ``unit_timeout`` (then cancelled) is retried up to ``max_retries`` times; after
that the error stops the run (an exception as itself, with the worker's traceback; a lost
worker or node as one :class:`BackendError` line). Only numerical divergence is a result, so a
failure never reaches a cache. GPUs (or, for CPU units,
the CPUs of one unit) a run asks for are checked up front (no GPU on this machine for a local
cluster; no node with one actor's share, or one unit's CPUs, on a joined cluster after
``GPU_WAIT_S``) instead of tasks and actors waiting for ever.

Which cluster: ``backend.address`` (``--address``), else ``RAY_ADDRESS``, is joined, after
:func:`evolveopt.ray_join.check_join` found a head answering there with this driver's token;
without either, a new local cluster of the run's own starts (``ray.init(address="local")``), even
where ``ray start`` left a cluster or a stale session file: evolveopt never joins a cluster
nobody named, and never stops one it did not start. A local cluster starts with the dashboard off
and a small object store; Ray's own servers listen on the machine's interfaces behind Ray's token
authentication, which evolveopt turns on explicitly (``RAY_AUTH_MODE=token``, whatever the
environment says) for every local cluster it starts. The default backend (in-process) listens
on nothing.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import replace
from typing import Any, Sequence

from evolveopt.config import BackendConfig, RunConfig
from evolveopt.errors import EvolveOptError
from evolveopt.evaluation.evaluator import OnDone, UnitResult, WorkUnit, execute_unit, run_here
from evolveopt.evaluation.threads import openmp_env
from evolveopt.extras import optional
from evolveopt.ray_join import check_join


GPU_WAIT_S = 10.0  # how long a joined cluster may take to show the GPUs (or CPUs) a run asks for


class BackendError(EvolveOptError, RuntimeError):
    """A backend could not start or lost its work beyond the retry budget."""


class LocalBackend:
    """Runs every unit in this process, one after another; an exception stops the run."""

    name = "local"
    ordered = True  # next_result: in submission order

    def __init__(self, device: str = "cpu", threads: int | None = None):
        self.device, self.threads = device, threads
        self.workers = 1
        self._queue: list[tuple[int, WorkUnit]] = []
        self._tickets = -1

    def map_units(self, units: Sequence[WorkUnit], on_done: OnDone | None = None) -> list[UnitResult]:
        return run_here(units, self.device, self.threads, on_done=on_done)

    # the steady-state form: submit units one at a time, take results as they come (here: in order)
    def submit(self, unit: WorkUnit) -> int:
        """Queue ``unit``; its ticket comes back with its result from :meth:`next_result`."""
        self._tickets += 1
        self._queue.append((self._tickets, unit))
        return self._tickets

    def next_result(self) -> tuple[int, UnitResult]:
        """Run the oldest queued unit: results come back in the order units were submitted."""
        ticket, unit = self._queue.pop(0)
        return ticket, execute_unit(unit, self.device, self.threads)

    def cancel_all(self) -> None:
        self._queue = []

    def close(self) -> None:
        pass


class RayBackend:
    """Runs units on a Ray cluster (a local one unless an address is given)."""

    name = "ray"
    ordered = False  # next_result: whichever unit finishes first

    def __init__(self, config: BackendConfig, device: str = "cpu"):
        ray = optional("ray", "ray")

        self.ray, self.config, self.device = ray, config, device
        self.blocked_s = 0.0  # seconds this driver spent blocked in ray.wait
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address, source = ray_address(config)
        self.address = address
        self._started_here = not ray.is_initialized()
        if self._started_here:
            if address:
                check_join(address, source)  # nothing answers, or a token is missing or refused: one line, fast
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                             runtime_env=workers_runtime_env(config))
                else:
                    os.environ["RAY_AUTH_MODE"] = "token"  # a local cluster is this run's alone: never unauthenticated
                    ray._raylet.Config.initialize("")  # re-read the mode, as Ray's own default-on path does
                    # "local": a new cluster of this run's own, even where `ray start` left a session file
                    # (plain ray.init() would join that cluster, or fail on it if it is gone)
                    ray.init(address="local", num_cpus=config.num_cpus, include_dashboard=False,
                             log_to_driver=False, logging_level=logging.WARNING,
                             object_store_memory=config.object_store_mb * 1024 * 1024,
                             runtime_env=workers_runtime_env(config))
            except Exception as exc:  # Ray raises many types; all mean "no cluster"
                raise BackendError(f"could not {'join Ray at ' + address if address else 'start a local Ray cluster'}: "
                                   f"{str(exc).splitlines()[0]}") from None
        self.use_gpus = config.gpus_per_actor > 0
        try:
            if self.use_gpus:
                self._wait_for("GPU", config.gpus_per_actor, "backend.gpus_per_actor",
                               "join a cluster with GPUs or set backend.gpus_per_actor=0")
            else:
                self._wait_for("CPU", self._cpus_per_task, "backend.threads" if config.threads else "a CPU unit",
                               "lower backend.threads or add nodes with more CPUs (`ray start --num-cpus N`)"
                               if config.threads else "add nodes with CPUs (`ray start --num-cpus N`)")
        except BaseException:
            self.close()
            raise
        resources = ray.cluster_resources()
        if self.use_gpus:
            self.workers = max(1, int(resources.get("GPU", 0) / config.gpus_per_actor))
            self._actor_class = ray.remote(num_gpus=config.gpus_per_actor, max_restarts=config.max_retries,
                                           max_task_retries=0)(UnitActor)
            self._actors = [self._actor_class.remote(device, config.threads) for _ in range(self.workers)]
        else:
            self.workers = max(1, int(resources.get("CPU", 1)) // self._cpus_per_task)
            self._task = ray.remote(num_cpus=self._cpus_per_task, max_retries=config.max_retries,
                                    retry_exceptions=True)(_execute)

    def _wait(self, refs: list[Any]) -> list[Any]:
        """``ray.wait`` for the first of ``refs`` to finish (1 s at most); the time spent blocked here is
        summed in ``blocked_s`` (the driver's idle time: what ``evolveopt bench cluster`` leaves out of
        the dispatch overhead)."""
        start = time.perf_counter()
        done, _ = self.ray.wait(refs, num_returns=1, timeout=1.0)
        self.blocked_s += time.perf_counter() - start
        return done

    @property
    def _cpus_per_task(self) -> int:
        """CPUs Ray reserves for a unit: ``backend.threads`` if set, else 1 (and one thread)."""
        return self.config.threads or 1

    def _largest_node(self, resource: str) -> float:
        """The most of ``resource`` one live node offers (a task or actor runs on one node)."""
        return max((node.get("Resources", {}).get(resource, 0.0) for node in self.ray.nodes() if node.get("Alive")),
                   default=0.0)

    def _wait_for(self, resource: str, amount: float, what: str, advice: str) -> None:
        """Return once some node offers ``amount`` of ``resource`` (nodes may still be joining); a one-line
        :class:`BackendError` after ``GPU_WAIT_S`` s otherwise, since a task or actor asking for what no
        node has waits for ever."""
        deadline = time.monotonic() + GPU_WAIT_S
        while (largest := self._largest_node(resource)) < amount and time.monotonic() < deadline:
            time.sleep(0.5)
        if largest >= amount:
            return
        resources = self.ray.cluster_resources()
        where = f" at {self.address}" if self.address else ""
        setting = f"{what}={amount:g}" if what.startswith("backend.") else f"{what} needs {amount:g} {resource}"
        raise BackendError(f"{setting}: the Ray cluster{where} offers {largest:g} {resource}(s) on its largest "
                           f"node (in all: {resources.get('GPU', 0):g} GPU, {resources.get('CPU', 0):g} CPU) after "
                           f"{GPU_WAIT_S:g} s; {advice}")

    def map_units(self, units: Sequence[WorkUnit], on_done: OnDone | None = None) -> list[UnitResult]:
        """Results in the order of ``units``; ``on_done(index)`` as each one comes in (``ray.wait``).
        The grain was planned for this backend's ``workers`` (``evaluator.plan_units``); a member's
        result does not depend on it, so Ray gives the fitness the in-process backend gives."""
        results: dict[int, UnitResult] = {}
        done = on_done or (lambda index: None)
        if self.use_gpus:
            self._run_on_actors(units, results, done)
        else:
            self._run_as_tasks(units, results, done)
        return [results[i] for i in range(len(units))]

    def _run_as_tasks(self, units: Sequence[WorkUnit], results: dict[int, UnitResult], on_done: OnDone) -> None:
        ray = self.ray
        attempts = [0] * len(units)
        refs = {self._task.remote(unit, self.device, self._cpus_per_task): (i, time.monotonic()) for i, unit in enumerate(units)}
        try:
            while refs:
                done = self._wait(list(refs))
                for ref in done:
                    index, _ = refs.pop(ref)
                    results[index] = self._get(ref, index, units[index])
                    on_done(index)
                now = time.monotonic()
                for ref, (index, started) in list(refs.items()):
                    if now - started > self.config.unit_timeout:
                        ray.cancel(ref, force=True)
                        refs.pop(ref)
                        self._count(attempts, index, units[index], self._overtime)
                        refs[self._task.remote(units[index], self.device, self._cpus_per_task)] = (index, time.monotonic())
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)

    def _run_on_actors(self, units: Sequence[WorkUnit], results: dict[int, UnitResult], on_done: OnDone) -> None:
        ray = self.ray
        queue = list(enumerate(units))
        running: dict[Any, tuple[int, int, float]] = {}  # ref -> (unit index, actor index, start)
        idle = list(range(len(self._actors)))
        attempts = [0] * len(units)
        while queue or running:
            while queue and idle:
                index, unit = queue.pop(0)
                actor = idle.pop()
                running[self._actors[actor].run.remote(unit)] = (index, actor, time.monotonic())
            done = self._wait(list(running))
            for ref in done:
                index, actor, _ = running.pop(ref)
                idle.append(actor)
                try:
                    results[index] = ray.get(ref)
                    on_done(index)
                    continue
                except ray.exceptions.RayActorError:
                    self._count(attempts, index, units[index], "lost its actor")
                    self._actors[actor] = self._actor_class.remote(self.device, self.config.threads)
                except ray.exceptions.RayTaskError as exc:
                    if attempts[index] >= self.config.max_retries:
                        raise exc.as_instanceof_cause() from None
                    attempts[index] += 1
                queue.insert(0, (index, units[index]))
            now = time.monotonic()
            for ref, (index, actor, started) in list(running.items()):
                if now - started > self.config.unit_timeout:
                    ray.kill(self._actors[actor])
                    running.pop(ref)
                    self._actors[actor] = self._actor_class.remote(self.device, self.config.threads)
                    idle.append(actor)
                    self._count(attempts, index, units[index], self._overtime)
                    queue.insert(0, (index, units[index]))

    # the steady-state form: submit units one at a time, take results as they finish (ray.wait)
    def submit(self, unit: WorkUnit) -> int:
        """Start ``unit`` (a Ray task, or the next free GPU actor's); its ticket comes back with its
        result from :meth:`next_result`. Retries and timeouts as in :meth:`map_units`."""
        if not hasattr(self, "_flight"):
            self._flight: dict[Any, tuple[int, float, int]] = {}  # ref -> (ticket, start, actor or -1)
            self._waiting: list[int] = []  # tickets queued for a free actor
            self._units: dict[int, WorkUnit] = {}
            self._attempts: dict[int, int] = {}
            self._idle = list(range(len(self._actors))) if self.use_gpus else []
            self._tickets = -1
        self._tickets += 1
        self._units[self._tickets] = unit
        self._attempts[self._tickets] = 0
        self._waiting.append(self._tickets)
        self._dispatch()
        return self._tickets

    def _dispatch(self) -> None:
        while self._waiting and (not self.use_gpus or self._idle):
            ticket = self._waiting.pop(0)
            unit = self._units[ticket]
            if self.use_gpus:
                actor = self._idle.pop()
                self._flight[self._actors[actor].run.remote(unit)] = (ticket, time.monotonic(), actor)
            else:
                self._flight[self._task.remote(unit, self.device, self._cpus_per_task)] = (ticket, time.monotonic(), -1)

    def next_result(self) -> tuple[int, UnitResult]:
        """The next unit to finish, whichever it is: (its ticket, its result)."""
        ray = self.ray
        while True:
            done = self._wait(list(self._flight))
            for ref in done:
                ticket, _, actor = self._flight.pop(ref)
                unit = self._units[ticket]
                if actor < 0:
                    result = self._get(ref, ticket, unit)
                else:
                    self._idle.append(actor)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        self._count_ticket(ticket, "lost its actor")
                        self._actors[actor] = self._actor_class.remote(self.device, self.config.threads)
                        self._waiting.insert(0, ticket)
                        self._dispatch()
                        continue
                    except ray.exceptions.RayTaskError as exc:
                        if self._attempts[ticket] >= self.config.max_retries:
                            raise exc.as_instanceof_cause() from None
                        self._attempts[ticket] += 1
                        self._waiting.insert(0, ticket)
                        self._dispatch()
                        continue
                    self._dispatch()
                del self._units[ticket], self._attempts[ticket]
                return ticket, result
            now = time.monotonic()
            for ref, (ticket, started, actor) in list(self._flight.items()):
                if now - started > self.config.unit_timeout:
                    self._flight.pop(ref)
                    if actor < 0:
                        ray.cancel(ref, force=True)
                    else:
                        ray.kill(self._actors[actor])
                        self._actors[actor] = self._actor_class.remote(self.device, self.config.threads)
                        self._idle.append(actor)
                    self._count_ticket(ticket, self._overtime)
                    self._waiting.insert(0, ticket)
            self._dispatch()

    def _count_ticket(self, ticket: int, what: str) -> None:
        attempts = [self._attempts[ticket]]
        self._count(attempts, ticket, self._units[ticket], what)
        self._attempts[ticket] = attempts[0]

    def cancel_all(self) -> None:
        """Drop every submitted unit (the run is over or stopping)."""
        for ref, (_, _, actor) in getattr(self, "_flight", {}).items():
            if actor < 0:
                self.ray.cancel(ref, force=True)
        if hasattr(self, "_flight"):
            self._flight.clear()
            self._waiting.clear()
            self._units.clear()
            self._idle = list(range(len(self._actors))) if self.use_gpus else []

    @property
    def _overtime(self) -> str:
        return f"ran over unit_timeout={self.config.unit_timeout:g} s"

    def _count(self, attempts: list[int], index: int, unit: WorkUnit, what: str) -> None:
        """One more try of a unit, or a BackendError once ``max_retries`` retries are spent."""
        attempts[index] += 1
        if attempts[index] > self.config.max_retries:
            raise BackendError(f"unit {index} ({unit.task.get('name')}, {unit.members} members, {unit.budget} steps) "
                               f"{what} {attempts[index]} times; nothing of it was cached")

    def _get(self, ref: Any, index: int, unit: WorkUnit) -> UnitResult:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.WorkerCrashedError:  # Ray retried it max_retries times already
            raise self._lost(index, unit, "its worker") from None
        except self.ray.exceptions.NodeDiedError as exc:  # its node was lost (likewise retried)
            node = re.search(r"node ID: (\w+)", str(exc))
            raise self._lost(index, unit, "the Ray node it ran on" + (f" ({node[1]})" if node else "")) from None
        except self.ray.exceptions.RayTaskError as exc:  # retried max_retries times by Ray already
            raise exc.as_instanceof_cause() from None

    def _lost(self, index: int, unit: WorkUnit, what: str) -> BackendError:
        """One line for a unit whose worker or node died once more than ``max_retries`` allows."""
        retries = self.config.max_retries
        return BackendError(f"unit {index} ({unit.task.get('name')}, {unit.members} members, {unit.budget} steps) "
                            f"lost {what} {retries + 1} times (backend.max_retries={retries}); nothing of it was "
                            "cached; `evolveopt resume` continues from the last committed generation")

    def close(self) -> None:
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()
        elif self.ray.is_initialized():  # a cluster that outlives the run: give back the GPU shares
            for actor in getattr(self, "_actors", []):
                self.ray.kill(actor)
            self._actors = []


def _execute(unit: WorkUnit, device: str, cpus: int) -> UnitResult:
    return _on_this_node(execute_unit(unit, device, threads=cpus))  # as many threads as Ray reserved CPUs


def _on_this_node(result: UnitResult) -> UnitResult:
    """``result`` marked with the Ray node ID of the worker running it (what generations.jsonl's ``nodes`` lists)."""
    import ray

    return replace(result, node=ray.get_runtime_context().get_node_id())


class UnitActor:
    """A long-lived evaluator on one GPU share: torch and CUDA start once, not per unit. Its CPU
    threads: ``threads`` if given, else the CPUs free to it before each unit."""

    def __init__(self, device: str, threads: int | None = None):
        self.device, self.threads = device, threads

    def run(self, unit: WorkUnit) -> UnitResult:
        return _on_this_node(execute_unit(unit, self.device, self.threads))


def workers_runtime_env(config: BackendConfig) -> dict[str, Any]:
    """Workers' Ray ``runtime_env``: the config's ``backend.runtime_env`` (``working_dir``, ``py_modules``,
    ``pip``, ...: what ships code to nodes that lack it), with ``env_vars`` of no usage stats and the
    OpenMP settings the user set for this process, under the config's own ``env_vars``."""
    env = dict(config.runtime_env)
    env["env_vars"] = {"RAY_USAGE_STATS_ENABLED": "0", **openmp_env(), **dict(env.get("env_vars") or {})}
    return env


def check_device(device: str) -> None:
    """Refuse a device torch cannot use in this process, before anything is created."""
    if not device.startswith("cuda"):
        return
    import torch

    try:
        index = torch.device(device).index
    except (RuntimeError, ValueError):
        raise BackendError(f"device '{device}': not a device torch knows (cpu, cuda, cuda:N)") from None
    if not torch.cuda.is_available():
        why = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA device"
        raise BackendError(f"device '{device}': torch {torch.__version__} {why}; use device cpu")
    if index is not None and index >= torch.cuda.device_count():
        raise BackendError(f"device '{device}': only {torch.cuda.device_count()} CUDA device(s) here")


def ray_address(config: BackendConfig) -> tuple[str | None, str]:
    """The cluster a Ray backend joins and where that was said: ``backend.address`` (the config or
    ``--address``), else ``RAY_ADDRESS``; ``(None, ...)``: a new local cluster of its own."""
    if config.address:
        return config.address, "--address / backend.address"
    env = os.environ.get("RAY_ADDRESS", "")
    if env and env != "local":
        return env, "RAY_ADDRESS"
    return None, "a local cluster"


def check_resources(config: RunConfig) -> None:
    """What a run needs from this machine, checked before its directory is created. Units on a
    Ray cluster given by address run elsewhere: the cluster is checked when it is joined."""
    backend = config.backend
    if backend.kind == "ray" and ray_address(backend)[0]:
        return
    check_device(config.device)
    if backend.kind == "ray" and backend.gpus_per_actor > 0:
        import ray
        import torch

        if not ray.is_initialized() and torch.cuda.device_count() == 0:
            raise BackendError(f"backend.gpus_per_actor={backend.gpus_per_actor:g} asks for GPUs, but this machine "
                               "has none for a local Ray cluster; give --address of a cluster with GPUs, or set "
                               "backend.gpus_per_actor=0")


def make_backend(config: BackendConfig, device: str = "cpu") -> LocalBackend | RayBackend:
    if config.kind == "ray":
        return RayBackend(config, device)
    return LocalBackend(device, config.threads)
