"""Time ``optimizer.step()``: compiled genomes against torch.optim's multi-tensor and fused Adam.

Two models: (a) 10 tensors of 1,048,576 parameters (10.5M) and (b) 100 tensors of 2,048.
Gradients are fixed random tensors, so only the update is timed. Each optimizer runs in a fresh
process (the memory allocator's state otherwise depends on what ran before and swings
large-tensor timings by 2x); each figure is the best of ``rounds`` rounds of ``repeats``
steps after 10 warm-up steps. State memory is counted in bytes per parameter.

``--compile`` (:func:`run_compile_benchmark`) times an exported genome (the standalone file of
``evolveopt export``) and ``torch.optim.Adam`` with their default flags, each eager and under
``torch.compile(optimizer.step)``, and reports the seconds the first two compiled steps take.
"""

from __future__ import annotations

import multiprocessing
import platform
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
import importlib.util
import tempfile
from pathlib import Path
from typing import Callable

import torch

from evolveopt.compile import build_optimizer

MODELS = {"10x1M": (10, 1_048_576), "100x2k": (100, 2_048)}


def _params(count: int, size: int, device: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for _ in range(count):
        p = torch.randn(size, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(size, generator=gen).to(device) * 1e-2
        params.append(p)
    return params


def _candidates(device: str) -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    out: dict[str, Callable] = {
        "torch Adam foreach": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True),
        "evolveopt adam": lambda p: build_optimizer("adam", p),
        "evolveopt adam (per-tensor)": lambda p: build_optimizer("adam", p, foreach=False),
        "evolveopt adam (foreach)": lambda p: build_optimizer("adam", p, foreach=True),
        "torch AdamW foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        "evolveopt adamw": lambda p: build_optimizer("adamw", p),
        "torch Adam fused": lambda p: torch.optim.Adam(p, lr=1e-3, fused=True),
        "evolveopt lion": lambda p: build_optimizer("lion", p),
    }
    return out


def _measure(model: str, name: str, repeats: int, rounds: int, device: str) -> dict:
    """Seconds per step and state bytes of one optimizer (runs in its own process)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    count, size = MODELS[model]
    params = _params(count, size, device)
    try:
        optimizer = _candidates(device)[name](params)
        optimizer.step()
    except RuntimeError as exc:  # e.g. fused unsupported on this device or build
        return {"error": str(exc).splitlines()[0]}
    best = _best_seconds(optimizer.step, repeats, rounds, device)
    return {"seconds": best, "state_bytes_per_param": _state_bytes_per_param(optimizer, params)}


def _best_seconds(step: Callable[[], object], repeats: int, rounds: int, device: str) -> float:
    """Best of ``rounds`` mean times of ``repeats`` calls, after 10 warm-up calls."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(10):  # warm-up
        step()
    best = float("inf")
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        sync()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def _state_bytes_per_param(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> float:
    total = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor) and v.numel() > 1)
    return total / sum(p.numel() for p in params)


def run_step_benchmark(repeats: int = 50, rounds: int = 5, device: str = "cpu") -> list[dict]:
    """Rows of {model, optimizer, ms_per_step, ratio_to_foreach, state_bytes_per_param}."""
    rows = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for model, (_, size) in MODELS.items():
            steps = repeats if size < 100_000 else max(5, repeats // 5)
            results = {name: pool.submit(_measure, model, name, steps, rounds, device).result()
                       for name in _candidates(device)}
            for name, result in results.items():
                if "error" in result:
                    rows.append({"model": model, "optimizer": name, "error": result["error"]})
                    continue
                reference = results["torch AdamW foreach" if "adamw" in name.lower() else "torch Adam foreach"]
                rows.append({
                    "model": model, "optimizer": name, "ms_per_step": result["seconds"] * 1e3,
                    "ratio_to_foreach": result["seconds"] / reference["seconds"],
                    "state_bytes_per_param": result["state_bytes_per_param"],
                    "device": device, "threads": torch.get_num_threads(),
                })
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"device: {rows[0].get('device', '?')}, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads",
             f"{'model':<8} {'optimizer':<30} {'ms/step':>9} {'vs foreach':>10} {'state B/param':>13}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<8} {r['optimizer']:<30} {'n/a':>9}  ({r['error']})")
            continue
        lines.append(f"{r['model']:<8} {r['optimizer']:<30} {r['ms_per_step']:>9.3f} {r['ratio_to_foreach']:>9.2f}x "
                     f"{r['state_bytes_per_param']:>13.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- --compile

COMPILE_CANDIDATES = ("torch Adam", "exported adam")


def _exported_optimizer_class(name: str) -> type:
    """The optimizer class of ``evolveopt export NAME``, written to a temporary file and imported
    (registered in ``sys.modules``: torch.compile imports the module of every function it traces)."""
    from evolveopt.export import export_text
    from evolveopt.genome.io import load_genome

    text = export_text(load_genome(name), "py", name, {"source": f"genomes/{name}.yaml"})
    path = Path(tempfile.mkdtemp(prefix="evolveopt-bench-")) / f"exported_{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return getattr(module, re.search(r"^class (\w+)\(torch\.optim\.Optimizer\)", text, re.M).group(1))


def _measure_compiled(count: int, size: int, name: str, compiled: bool, repeats: int, rounds: int,
                      device: str) -> dict:
    """Seconds per step, eager or compiled, and the seconds of the first two steps (own process)."""
    params = _params(count, size, device)
    if name == "torch Adam":
        optimizer = torch.optim.Adam(params, lr=1e-3)
    else:
        optimizer = _exported_optimizer_class(name.split()[-1])(params, lr=1e-3)
    step = torch.compile(optimizer.step) if compiled else optimizer.step
    start = time.perf_counter()
    step()
    step()  # a compiled step compiles twice: the step that creates the state, then the steady one
    first = time.perf_counter() - start
    return {"seconds": _best_seconds(step, repeats, rounds, device), "first_two_steps_s": first}


def run_compile_benchmark(repeats: int = 50, rounds: int = 5, device: str = "cpu",
                          models: dict[str, tuple[int, int]] | None = None) -> list[dict]:
    """Rows of {model, optimizer, mode (eager/compiled), ms_per_step, first_two_steps_s,
    ratio_to_torch_eager}, one fresh process per row."""
    rows = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, max_tasks_per_child=1) as pool:
        for model, (count, size) in (models or MODELS).items():
            steps = repeats if size < 100_000 else max(5, repeats // 5)
            results = {(name, mode): pool.submit(_measure_compiled, count, size, name, mode == "compiled",
                                                 steps, rounds, device).result()
                       for name in COMPILE_CANDIDATES for mode in ("eager", "compiled")}
            reference = results[("torch Adam", "eager")]["seconds"]
            for (name, mode), result in results.items():
                rows.append({"model": model, "optimizer": name, "mode": mode, "ms_per_step": result["seconds"] * 1e3,
                             "first_two_steps_s": result["first_two_steps_s"],
                             "ratio_to_torch_eager": result["seconds"] / reference,
                             "device": device, "threads": torch.get_num_threads()})
    return rows


def format_compile_table(rows: list[dict]) -> str:
    lines = [f"device: {rows[0].get('device', '?')}, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads",
             f"{'model':<8} {'optimizer':<15} {'mode':<9} {'ms/step':>9} {'vs torch eager':>14} "
             f"{'first 2 steps s':>15}"]
    for r in rows:
        lines.append(f"{r['model']:<8} {r['optimizer']:<15} {r['mode']:<9} {r['ms_per_step']:>9.3f} "
                     f"{r['ratio_to_torch_eager']:>13.2f}x {r['first_two_steps_s']:>15.2f}")
    return "\n".join(lines)
