"""Packaging claims: the local Ray cluster evolveopt starts has token auth on; the library path is torch-only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

RAY_AUTH_PROBE = """
import os
from evolveopt.backends import RayBackend
from evolveopt.config import BackendConfig
backend = RayBackend(BackendConfig(kind="ray", num_cpus=1, object_store_mb=80))
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode
worker_mode = ray.get(ray.remote(lambda: os.environ.get("RAY_AUTH_MODE")).remote())
print(get_authentication_mode() == AuthenticationMode.TOKEN, worker_mode)
backend.close()
"""


@pytest.mark.ray
@pytest.mark.slow
def test_the_local_ray_cluster_has_token_auth_even_when_the_environment_disables_it():
    pytest.importorskip("ray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", RAY_AUTH_PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "token"]
