"""Shared fixtures: a small float64 model with tensors of several shapes, and its data stream."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# The suite's property tests draw the same examples on every run (CI must not fail by chance);
# HYPOTHESIS_PROFILE=explore draws fresh ones each run, to hunt for new counterexamples.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


class TinyNet(nn.Module):
    """Conv (4-D weight) → tanh → linear: tensors of shapes [2,1,3,3], [2], [4,18], [4]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(18, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def tiny_net(dtype: torch.dtype = torch.float64, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().to(dtype)


def ademamix_with_schedulers(horizon: int):
    """The ademamix genome with pytorch-optimizer's ``t_alpha_beta3 = horizon`` as two gene schedules."""
    import evolveopt

    data = evolveopt.genome.to_dict(evolveopt.genome.load_genome("ademamix"))
    data["name"] = f"ademamix+schedulers{horizon}"
    data["gene_schedules"] = {"alpha": {"kind": "linear_warmup", "horizon": horizon},
                              "beta3": {"kind": "halflife_warmup", "horizon": horizon, "start": "beta1"}}
    return evolveopt.genome.parse_genome(data, source="ademamix with schedulers")


def tiny_batches(steps: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, 8, 1, 5, 5, generator=gen, dtype=dtype)
    y = torch.randn(steps, 8, 4, generator=gen, dtype=dtype)
    return list(zip(x, y))


def weight_and_bias_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return weights, biases


def train(model: nn.Module, optimizer: torch.optim.Optimizer, batches) -> list[float]:
    """Steps with a closure (so loss-feedback rules work); returns the losses."""
    losses = []
    for x, y in batches:
        def closure():
            optimizer.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        losses.append(float(torch.as_tensor(optimizer.step(closure)).detach()))
    return losses


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


_EXPORTED: dict[str, type] = {}


def exported_class(name: str) -> type:
    """The optimizer class of ``evolveopt export NAME`` (written once per test session, imported)."""
    if name not in _EXPORTED:
        import importlib.util
        import re
        import tempfile

        import evolveopt
        from evolveopt.export import export_text

        text = export_text(evolveopt.load_genome(name), "py", name, {"source": f"genomes/{name}.yaml"})
        folder = Path(tempfile.mkdtemp(prefix="evolveopt-export-"))
        module_name = "exported_" + re.sub(r"\W", "_", name)
        path = folder / f"{module_name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        class_name = re.search(r"^class (\w+)\(torch\.optim\.Optimizer\)", text, re.M).group(1)
        _EXPORTED[name] = getattr(module, class_name)
    return _EXPORTED[name]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> Path:
    """A fresh ``evolveopt evolve experiments/quickstart.yaml --out DIR`` with the config's own seed
    (~45 s on 2 quiet cores): the run the docs show."""
    from evolveopt.evolution import run_config_file

    out = tmp_path_factory.mktemp("quickstart") / "qs"
    run_config_file(ROOT / "experiments" / "quickstart.yaml", out=out, progress=False)
    return out
