"""Joining a separate Ray cluster, run inside a network namespace that has only loopback.

``tests/test_joining.py`` starts this file as PID 1 of new user, network, PID and mount namespaces
(``unshare ... --pid --fork --kill-child``): the ``ray start`` head it starts and every process
under it end with the namespace, and no packet leaves loopback. It starts a head with token
authentication (1 CPU, no GPU), runs ``evolveopt`` command lines against it, and writes what each
one did (exit code, stderr, the run folder's files) to the JSON file named on its command line.

``multinode`` (for ``tests/test_multinode.py``): a head and a second node (1 CPU each, token
authentication), a run that uses both, the second node's raylet killed mid-run (by the PID its
``ray start`` started), the driver killed mid-run and resumed, and a node lost with no retry left.

Usage: python tests/loopback_cluster.py [multinode] WORK_DIR RESULT_JSON
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PORT = 6379
TOKEN = "0123456789abcdef" * 4  # the head's token (Ray wants at least 32 characters)

SHIPPED_TASK = """from torch import nn

from evolveopt.tasks.datasets import sklearn_classification
from evolveopt.tasks.module import ModuleTask


def make(hidden=8):
    x, y, x_test, y_test = sklearn_classification("digits")
    model = lambda seed: nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))  # noqa: E731
    return ModuleTask("shipped_mlp", model, (x, y), nn.functional.cross_entropy, batch_size=32,
                      heldout=(x_test, y_test), version="1")
"""


def main(work: Path, result_path: Path) -> None:
    home, ray_tmp = work / "home", work / "rt"
    home.mkdir()
    ray_tmp.mkdir()
    token_file = work / "token"
    token_file.write_text(TOKEN)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base.update(HOME=str(home), RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    token_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    ray = str(Path(sys.executable).with_name("ray"))
    results: dict[str, object] = {}
    config = work / "tiny.yaml"
    config.write_text(json.dumps({
        "name": "tiny", "seed": 3,
        "search": {"population": 4, "generations": 1, "elites": 1, "tournament": 2,
                   "seed_genomes": ["adam", "sgd"], "seed_variants": 0, "hall_of_fame": 2},
        "space": {"max_terms": 2},
        "fitness": {"tasks": [{"name": "digits_mlp", "hidden": 8}], "budget": 9, "seeds": [0], "rungs": 1},
    }))
    address = f"127.0.0.1:{PORT}"

    def evolve(name: str, env: dict[str, str], *args: str) -> None:
        out = work / name
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "evolveopt.cli", "evolve", str(config), "--out", str(out),
                               *args], env={**base, **env}, capture_output=True, text=True, timeout=300)
        results[name] = {"rc": done.returncode, "err": done.stderr, "seconds": round(time.monotonic() - started, 1),
                         "files": sorted(p.name for p in out.iterdir()) if out.is_dir() else None,
                         "config": (out / "config.yaml").read_text() if (out / "config.yaml").is_file() else None,
                         "hall_of_fame": (out / "hall_of_fame.json").read_text()
                         if (out / "hall_of_fame.json").is_file() else None}

    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # what a crashed `ray start` leaves
    evolve("stale_session", {}, "--backend", "ray")
    head = subprocess.run([ray, "start", "--head", f"--port={PORT}", "--num-cpus=1", "--num-gpus=0",
                           "--include-dashboard=false", "--disable-usage-stats"],
                          env={**base, **token_env}, capture_output=True, text=True, timeout=120)
    results["head"] = {"rc": head.returncode, "err": head.stderr[-2000:]}
    if head.returncode == 0:
        session_file = ray_tmp / "ray" / "ray_current_cluster"
        results["session_file"] = session_file.read_text().strip() if session_file.is_file() else None
        evolve("no_auth_mode", {"RAY_AUTH_TOKEN_PATH": str(token_file)}, "--address", address)
        evolve("wrong_token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64}, "--address", address)
        evolve("no_token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(work / "missing")},
               "--address", address)
        evolve("too_many_threads", token_env, "--address", address, "--set", "backend.threads=2")
        evolve("no_gpu", token_env, "--address", address, "--set", "backend.gpus_per_actor=1")
        evolve("joined", token_env, "--address", address)
        evolve("own_cluster", {}, "--backend", "ray")  # the head's session file is there: not joined, not in the way
        # a task module only the driver has (the head's workers were started without it on their path)
        shipped = work / "shipped"
        shipped.mkdir()
        (shipped / "eo_shipped_tasks.py").write_text(SHIPPED_TASK)
        driver = {**token_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(shipped), base.get("PYTHONPATH")]))}
        task = "fitness.tasks=[{name: 'eo_shipped_tasks:make', hidden: 8}]"
        evolve("not_shipped", driver, "--address", address, "--set", task, "backend.max_retries=0")
        evolve("shipped", driver, "--address", address, "--set", task, "backend.max_retries=0",
               f"backend.runtime_env={{working_dir: '{shipped}'}}")
        results["head_after"] = _head_answers(address, {**base, **token_env})
    result_path.write_text(json.dumps(results, indent=1))


def _head_answers(address: str, env: dict[str, str]) -> bool:
    probe = "import ray._raylet as r, sys; r.InnerGcsClient.standalone(sys.argv[1], None, 5000)"
    return subprocess.run([sys.executable, "-c", probe, address], env=env, capture_output=True,
                          timeout=60).returncode == 0


# ----------------------------------------------------------------------------- two nodes (tests/test_multinode.py)

# The run every multi-node case makes: three generations of six (five new ones each: two units, one per node)
# Units of 400 steps run long enough (about a second) that a node killed while one runs is killed mid-unit:
# at 60 steps a unit could finish between being seen running and the kill.
MULTINODE_RUN = {
    "name": "two_nodes", "seed": 5,
    "search": {"population": 6, "generations": 3, "elites": 1, "tournament": 2,
               "seed_genomes": ["adam", "lion", "sgd"], "seed_variants": 0, "hall_of_fame": 3},
    "space": {"max_terms": 2},
    "fitness": {"tasks": [{"name": "digits_mlp", "hidden": 8}], "budget": 400, "seeds": [0], "rungs": 1},
}
# The head notices a lost node within about a second (Ray's default: 15 s); nothing else is changed
FAST_HEALTH_CHECK = {"RAY_health_check_period_ms": "300", "RAY_health_check_timeout_ms": "300",
                     "RAY_health_check_failure_threshold": "3"}


def _processes() -> dict[int, tuple[int, list[str]]]:
    """Every process of this PID namespace (all of them started here): pid -> (parent pid, argv)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry.name)] = (parent, argv)
    return found


def _running_unit(raylet: int | None = None) -> int | None:
    """The pid of a Ray worker running an evaluation unit (on the node of ``raylet``, its parent, if given)."""
    for pid, (parent, argv) in _processes().items():
        if argv[0].startswith("ray::_execute") and (raylet is None or parent == raylet):
            return pid
    return None


class Cluster:
    """A `ray start` head and second nodes, all in this namespace; a second node is stopped by killing the
    raylet its own `ray start` started (found as the one raylet that start added), never by name."""

    def __init__(self, work: Path):
        self.work = work
        home, ray_tmp = work / "home", work / "rt"
        home.mkdir()
        ray_tmp.mkdir()
        token_file = work / "token"
        token_file.write_text(TOKEN)
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        base.update(HOME=str(home), RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                    RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
        self.env = base
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.address = f"127.0.0.1:{PORT}"

    def _start(self, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
        """`ray start ARGS`; the raylet it added: its pid and node ID (from its --node_id argument)."""
        before = set(_processes())
        done = subprocess.run([self.ray, "start", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", *args],
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)}: {done.stderr[-2000:]}")
        raylets = [(pid, argv) for pid, (_, argv) in _processes().items()
                   if pid not in before and Path(argv[0]).name == "raylet"]
        if len(raylets) != 1:
            raise RuntimeError(f"ray start {' '.join(args)} added {len(raylets)} raylets")
        pid, argv = raylets[0]
        node = next(a.split("=", 1)[1] for a in argv if a.startswith("--node_id="))
        return {"pid": pid, "node": node}

    def start_head(self) -> dict[str, object]:
        return self._start("--head", f"--port={PORT}", "--include-dashboard=false", env=FAST_HEALTH_CHECK)

    def start_node(self) -> dict[str, object]:
        node = self._start(f"--address={self.address}")
        self.wait_nodes(2)
        return node

    def kill(self, node: dict[str, object]) -> None:
        """SIGKILL the raylet of ``node`` (a child of this process, PID 1 here, since `ray start` exited)."""
        pid = int(node["pid"])
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    def alive_nodes(self) -> list[str]:
        probe = ("import json, logging, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False, "
                 "logging_level=logging.ERROR); print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
        done = subprocess.run([sys.executable, "-c", probe, self.address], env=self.env, capture_output=True,
                              text=True, timeout=120)
        return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else []

    def wait_nodes(self, count: int) -> list[str]:
        deadline = time.monotonic() + 60
        while len(alive := self.alive_nodes()) != count and time.monotonic() < deadline:
            time.sleep(0.5)
        return alive

    def evolve(self, config: Path, out: Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "evolveopt.cli", "evolve", str(config), "--out", str(out),
                                 "--address", self.address, *args], env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    def resume(self, run: Path) -> dict[str, object]:
        done = subprocess.run([sys.executable, "-m", "evolveopt.cli", "resume", str(run), "--address", self.address],
                              env=self.env, capture_output=True, text=True, timeout=300)
        return {"rc": done.returncode, "err": done.stderr, "run": run_record(run)}


def committed(run: Path) -> int:
    """Generations the run directory has committed (lines of generations.jsonl)."""
    log = run / "generations.jsonl"
    return log.read_text().count("\n") if log.is_file() else 0


def run_record(run: Path) -> dict[str, object] | None:
    """What a run directory holds: its results (hall of fame, lineage, every population) as text, each
    generation's record (generations.jsonl), and every file's name."""
    if not run.is_dir():
        return None
    population = sorted((run / "population").glob("*.json")) if (run / "population").is_dir() else []
    results = {name: (run / name).read_text() for name in ("hall_of_fame.json", "lineage.jsonl")
               if (run / name).is_file()}
    results.update({f"population/{p.name}": p.read_text() for p in population})
    log = run / "generations.jsonl"
    return {"files": sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()), "results": results,
            "generations": [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []}


def wait_for(what, timeout: float = 240.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := what()):
            return found
        time.sleep(every)
    return None


def multinode(work: Path, result_path: Path) -> None:
    cluster = Cluster(work)
    results: dict[str, object] = {}
    config = work / "two_nodes.yaml"
    config.write_text(json.dumps(MULTINODE_RUN))

    def finish(name: str, process: subprocess.Popen, run: Path, **seen: object) -> None:
        _, err = process.communicate(timeout=300)
        results[name] = {"rc": process.returncode, "err": err, "run": run_record(run), **seen}

    def kill_node_mid_run(name: str, node: dict[str, object], *args: str) -> None:
        """A run whose second node's raylet is killed while it runs a unit, after generation 0 is committed."""
        run = work / name
        process = cluster.evolve(config, run, *args)
        wait_for(lambda: committed(run) >= 1 or process.poll() is not None)
        unit = wait_for(lambda: process.poll() is None and _running_unit(int(node["pid"])) or None)
        at_kill = committed(run)
        if unit is not None:
            cluster.kill(node)
        finish(name, process, run, killed_during_unit=unit is not None, committed_at_kill=at_kill)

    head = cluster.start_head()
    second = cluster.start_node()
    results["nodes"] = {"head": head["node"], "second": second["node"], "alive": cluster.wait_nodes(2)}

    # 1. an uninterrupted run on both nodes
    run = work / "both"
    finish("both", cluster.evolve(config, run), run)

    # 2. the second node lost while it runs a unit: its units run again on the head
    kill_node_mid_run("node_killed", second)
    results["alive_after_node_killed"] = cluster.wait_nodes(1)

    # 3. the driver SIGKILLed mid-run (a new second node has joined), then resumed against the cluster
    third = cluster.start_node()
    run = work / "driver_killed"
    process = cluster.evolve(config, run)
    wait_for(lambda: committed(run) >= 1 or process.poll() is not None)
    unit = wait_for(lambda: process.poll() is None and _running_unit() or None)
    process.kill()  # the evolve process this function started
    process.wait()
    results["nodes"]["third"] = third["node"]
    results["driver_killed"] = {"killed_during_unit": unit is not None, "committed_at_kill": committed(run),
                                "rc": process.returncode, "run": run_record(run)}
    results["driver_resumed"] = cluster.resume(run)

    # 4. no retry left (backend.max_retries=0) when the second node is lost: one line, exit 2; then resumed
    kill_node_mid_run("retries_spent", third, "--set", "backend.max_retries=0")
    shutil.copytree(work / "retries_spent", work / "retries_spent_as_left")  # for the test: before the resume
    results["retries_spent_resumed"] = cluster.resume(work / "retries_spent")
    result_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if sys.argv[1] == "multinode":
        multinode(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
