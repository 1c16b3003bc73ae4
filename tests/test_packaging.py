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


EXTRAS_BLOCKED = "import sys\nfor name in ('ray', 'sklearn', 'matplotlib', 'rich', 'deap'):\n    sys.modules[name] = None\n"

LIBRARY_PATH = EXTRAS_BLOCKED + """
import importlib.util, pathlib, tempfile, torch
import evolveopt
from evolveopt.export import export_text
model = torch.nn.Linear(3, 2)
for name in ("adam", "lion", "adan"):
    opt = evolveopt.build_optimizer(evolveopt.load_genome(name), model.parameters(), lr=1e-2)
    model(torch.randn(4, 3)).square().sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.weight), name
path = pathlib.Path(tempfile.mkdtemp()) / "exported_adan.py"
path.write_text(export_text(evolveopt.load_genome("adan"), "py", "adan", {"source": "genomes/adan.yaml"}))
spec = importlib.util.spec_from_file_location("exported_adan", path)
module = importlib.util.module_from_spec(spec)
sys.modules["exported_adan"] = module
spec.loader.exec_module(module)
cls = next(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
           and v is not torch.optim.Optimizer)
cls(model.parameters(), lr=1e-2).step()
print("ok", sorted(n for n in ("ray", "sklearn", "matplotlib", "rich", "deap") if sys.modules.get(n) is not None))
"""


def test_build_optimizer_and_an_exported_module_need_only_torch_numpy_and_pyyaml():
    """``pip install evolveopt`` (no extras) must be enough to build, step and export."""
    out = subprocess.run([sys.executable, "-c", LIBRARY_PATH], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["ok", "[]"]


def test_the_search_layer_imports_with_torch_blocked():
    """docs/architecture.md: the genome and search layers are plain data (no torch)."""
    code = ("import sys\nsys.modules['torch'] = None\nimport pkgutil, importlib, evolveopt.search, evolveopt.genome\n"
            "for pkg in (evolveopt.search, evolveopt.genome):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ok"]


def test_the_core_install_is_torch_numpy_pyyaml_and_the_rest_are_extras():
    import tomllib

    from conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["numpy", "pyyaml", "torch"]
    extras = project["optional-dependencies"]
    assert {"search", "ray", "plots", "all"} <= set(extras)
    assert extras["all"] == ["evolveopt[search,ray,plots]"]


def test_a_missing_extra_is_one_line_naming_it():
    code = EXTRAS_BLOCKED + "import evolveopt.search.algorithm"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "pip install 'evolveopt[search]'" in out.stderr.strip().splitlines()[-1]


def test_the_readme_test_command_is_what_ci_runs_and_it_includes_the_slow_tests():
    import re

    from conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    install, command = re.search(r"pip install (-e '\.\[all,test\]'[^&]*)&& (python -m pytest[^\n]*)", readme).groups()
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"pip install -q {install}&& {command}\n" in ci and "-m ''" in command
    slow = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-m", "slow", str(ROOT / "tests")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert re.search(r"^([1-9]\d*)/\d+ tests collected", slow.stdout, re.M), slow.stdout[-500:]
