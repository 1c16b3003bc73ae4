"""Joining a separate Ray cluster, run inside a network namespace that has only loopback.

``tests/test_joining.py`` starts this file as PID 1 of new user, network, PID and mount namespaces
(``unshare ... --pid --fork --kill-child``): the ``ray start`` head it starts and every process
under it end with the namespace, and no packet leaves loopback. It starts a head with token
authentication (1 CPU, no GPU), runs ``evolveopt`` command lines against it, and writes what each
one did (exit code, stderr, the run folder's files) to the JSON file named on its command line.

Usage: python tests/loopback_cluster.py WORK_DIR RESULT_JSON
"""

from __future__ import annotations

import json
import os
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
    x, y, _, _ = sklearn_classification("digits")
    model = lambda seed: nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))  # noqa: E731
    return ModuleTask("shipped_mlp", model, (x, y), nn.functional.cross_entropy, batch_size=32, version="1")
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


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
