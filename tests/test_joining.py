"""Joining Ray clusters: --address means the Ray backend; a cluster that cannot be joined (nothing answers,
no token, a wrong token, no CPU or GPU the config asks for) is one line and exit 2, before the run folder
exists; a run of its own starts its own cluster even where `ray start` left one. A separate head runs in a
network namespace with only loopback (tests/loopback_cluster.py)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from evolveopt.cli import main
from evolveopt.config import ConfigError, backend_flags, load_config

ROOT = Path(__file__).resolve().parent.parent


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("evolveopt: error: ") and err.count("\n") == 1, err
    return err


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def tiny(tmp_path) -> Path:
    from test_evolve import tiny_config

    return tiny_config(tmp_path)


@pytest.fixture
def empty_run(tmp_path, tiny) -> Path:
    """A run directory of 0 generations (config, manifest, empty logs): made in a second, resumable."""
    from evolveopt.evolution import start_run

    run = tmp_path / "run"
    start_run(load_config(tiny, ["search.generations=0"]), run, progress=False)
    return run


# ----------------------------------------------------------------------------- --address and --backend


def test_address_alone_means_the_ray_backend_and_backend_local_drops_a_configs_address(tmp_path, tiny):
    assert load_config(tiny, backend_flags(None, "10.0.0.5:6379")).backend.kind == "ray"
    assert load_config(tiny, backend_flags(None, "[::1]:6379")).backend.address == "[::1]:6379"  # not a YAML list
    joined = tmp_path / "joined.yaml"
    joined.write_text(tiny.read_text() + "backend: {address: 10.0.0.5:6379}\n")
    assert load_config(joined).backend.kind == "ray"
    local = load_config(joined, backend_flags("local", None)).backend
    assert (local.kind, local.address) == ("local", None)
    assert backend_flags("ray", None) == ["backend.kind=ray"] and backend_flags(None, None) == []


def test_address_next_to_backend_local_is_one_line_and_exit_2(tmp_path, tiny, empty_run, capsys):
    before = folder_bytes(empty_run)
    for argv in (["evolve", str(tiny), "--out", str(tmp_path / "r")], ["resume", str(empty_run)],
                 ["benchmark", "adam", "--task", "nqm", "--out", str(tmp_path / "b")]):
        assert main([*argv, "--address", "10.0.0.5:6379", "--backend", "local"]) == 2
        assert "--address 10.0.0.5:6379 joins a Ray cluster, --backend local runs in this process" in \
            one_line_error(capsys)
    assert not (tmp_path / "r").exists() and not (tmp_path / "b").exists()
    assert folder_bytes(empty_run) == before
    contradiction = tmp_path / "both.yaml"
    contradiction.write_text(tiny.read_text() + "backend: {kind: local, address: 10.0.0.5:6379}\n")
    with pytest.raises(ConfigError, match=r"both\.yaml: backend\.address: '10\.0\.0\.5:6379' is a Ray cluster to "
                                          r"join, but backend\.kind is local"):
        load_config(contradiction)


def test_an_unreachable_address_is_one_line_exit_2_and_leaves_no_run_folder(tmp_path, tiny, empty_run, capsys):
    pytest.importorskip("ray")
    port = closed_port()
    run = tmp_path / "new"
    assert main(["evolve", str(tiny), "--out", str(run), "--address", f"127.0.0.1:{port}"]) == 2
    err = one_line_error(capsys)
    assert f"cannot join the Ray cluster at 127.0.0.1:{port} (--address / backend.address): Connection refused" in err
    assert f"`ray start --head --port={port}`" in err
    assert not run.exists()
    assert main(["evolve", str(tiny), "--out", str(run), "--address", f"127.0.0.1:{port}"]) == 2  # not "already holds"
    assert "Connection refused" in one_line_error(capsys)
    before = folder_bytes(empty_run)
    assert main(["resume", str(empty_run), "--address", f"127.0.0.1:{port}"]) == 2
    assert "Connection refused" in one_line_error(capsys)
    assert folder_bytes(empty_run) == before  # no lock left, nothing repaired or set aside
    bench = tmp_path / "bench"
    assert main(["benchmark", "adam", "--task", "nqm", "--out", str(bench), "--address", f"127.0.0.1:{port}"]) == 2
    assert "Connection refused" in one_line_error(capsys) and not bench.exists()
    assert main(["evolve", str(tiny), "--out", str(run), "--address", "head-without-port"]) == 2
    assert "Ray address head-without-port (--address / backend.address): expected HOST:PORT" in one_line_error(capsys)


def test_ray_address_is_used_by_the_ray_backend_only(tmp_path, tiny, monkeypatch, capsys):
    pytest.importorskip("ray")
    port = closed_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    assert main(["evolve", str(tiny), "--out", str(tmp_path / "r"), "--backend", "ray"]) == 2
    assert f"127.0.0.1:{port} (RAY_ADDRESS): Connection refused" in one_line_error(capsys)
    assert not (tmp_path / "r").exists()
    config = load_config(tiny, ["search.generations=0"])  # the local backend: RAY_ADDRESS is not looked at
    from evolveopt.evolution import start_run

    assert start_run(config, tmp_path / "local", progress=False).generations == 0
    assert yaml.safe_load((tmp_path / "local" / "config.yaml").read_text())["backend"]["kind"] == "local"


# ----------------------------------------------------------------------------- a separate head, in a namespace


def loopback_namespace() -> list[str] | None:
    """The command prefix that runs a program as PID 1 of new user, network (loopback only, up), PID and
    mount namespaces, all killed when it ends; None where unshare cannot do that here."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return None
    prefix = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
    try:
        probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def separate_head() -> dict:
    """What tests/loopback_cluster.py saw: a `ray start --head` with token authentication (1 CPU, no GPU)
    and evolveopt runs against it, in a namespace of their own."""
    pytest.importorskip("ray")
    prefix = loopback_namespace()
    if prefix is None:
        pytest.skip("needs unshare with user and network namespaces (and ip) to keep a second cluster on loopback")
    work = Path(tempfile.mkdtemp(prefix="eo-join-", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        script = f"ip link set lo up && exec {sys.executable} {ROOT / 'tests' / 'loopback_cluster.py'} {work} " \
                 f"{work / 'result.json'}"
        done = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, timeout=900,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        results = json.loads((work / "result.json").read_text())
        assert results["head"]["rc"] == 0, results["head"]["err"]
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Ray's C++ core logs this once per process where no interface but loopback exists (in the namespace only)
NO_OUTWARD_INTERFACE = re.compile(r"^\[[^\]]*\] network_util\.cc:\d+: Failed to determine local IP via external "
                                  r"connectivity.*\n", re.M)


def refused(result: dict, *words: str) -> str:
    """The one line of a run that could not start, and that it left no run folder."""
    err = NO_OUTWARD_INTERFACE.sub("", result["err"])
    assert result["rc"] == 2 and err.startswith("evolveopt: error: ") and err.count("\n") == 1, err
    assert result["files"] is None, result["files"]
    for word in words:
        assert word in err, err
    return err


@pytest.mark.ray
@pytest.mark.slow
def test_a_token_cluster_joined_without_token_mode_says_what_to_set(separate_head):
    refused(separate_head["no_auth_mode"], "cannot join the Ray cluster at 127.0.0.1:6379",
            "it uses token authentication; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=", "RAY_AUTH_TOKEN_PATH=")


@pytest.mark.ray
@pytest.mark.slow
def test_a_wrong_token_is_named_with_where_it_came_from(separate_head):
    refused(separate_head["wrong_token"], "it refused this machine's token (from RAY_AUTH_TOKEN)")


@pytest.mark.ray
@pytest.mark.slow
def test_a_missing_token_is_one_line(separate_head):
    refused(separate_head["no_token"], "RAY_AUTH_MODE=token but this machine has no token (RAY_AUTH_TOKEN_PATH=",
            "missing: no such file, or empty); set RAY_AUTH_TOKEN=")


@pytest.mark.ray
@pytest.mark.slow
def test_a_cluster_without_the_cpus_or_gpus_asked_for_is_one_line(separate_head):
    refused(separate_head["too_many_threads"], "backend.threads=2: the Ray cluster at 127.0.0.1:6379 offers 1 CPU(s) "
            "on its largest node", "lower backend.threads")
    refused(separate_head["no_gpu"], "backend.gpus_per_actor=1: the Ray cluster at 127.0.0.1:6379 offers 0 GPU(s)")


@pytest.mark.ray
@pytest.mark.slow
def test_a_run_joins_a_token_cluster_by_address(separate_head):
    joined = separate_head["joined"]
    assert joined["rc"] == 0, joined["err"][-3000:]
    backend = yaml.safe_load(joined["config"])["backend"]
    assert (backend["kind"], backend["address"]) == ("ray", "127.0.0.1:6379")
    assert "checkpoint.json" in joined["files"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_stale_session_file_does_not_stop_a_ray_run_without_address(separate_head):
    stale = separate_head["stale_session"]  # ray_current_cluster names a head that is gone
    assert stale["rc"] == 0, stale["err"][-3000:]
    assert "checkpoint.json" in stale["files"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_run_without_address_starts_its_own_cluster_beside_a_ray_start_one(separate_head):
    assert separate_head["session_file"] == "127.0.0.1:6379"  # what plain ray.init() would join
    own = separate_head["own_cluster"]
    assert own["rc"] == 0, own["err"][-3000:]
    assert "object_store_memory must not be provided" not in own["err"]
    backend = yaml.safe_load(own["config"])["backend"]
    assert (backend["kind"], backend["address"]) == ("ray", None)
    assert separate_head["head_after"]  # the other cluster still runs: not stopped, not taken over
    assert own["hall_of_fame"] == separate_head["joined"]["hall_of_fame"]  # same results on either cluster


@pytest.mark.ray
@pytest.mark.slow
def test_code_the_nodes_lack_ships_with_backend_runtime_env(separate_head):
    """A task module only the driver has: the workers fail to import it, unless backend.runtime_env's
    working_dir ships it (the way evolveopt itself can reach nodes that do not have it installed)."""
    lacking = separate_head["not_shipped"]
    assert lacking["rc"] == 2 and "No module named 'eo_shipped_tasks'" in lacking["err"], lacking["err"][-3000:]
    shipped = separate_head["shipped"]
    assert shipped["rc"] == 0, shipped["err"][-3000:]
    assert "working_dir" in yaml.safe_load(shipped["config"])["backend"]["runtime_env"]
