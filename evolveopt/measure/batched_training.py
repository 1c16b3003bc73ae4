"""Member-steps per second on the digits MLP: one-at-a-time loops against the batched evaluator.

Task: 64-128-10 ReLU MLP on scikit-learn's digits, batch 128, Adam-structured genomes with
different learning rates and betas. Three ways to train P genomes:

(a) sequential: each genome alone, ``torch.optim.Adam(foreach=True)``, pre-indexed batches;
(b) anchor loop: each genome alone, a ``DataLoader`` and a per-parameter Python-loop Adam update
    (the style of the published GA's notebook);
(c) batched: all P genomes stacked in one run (``evolveopt.evaluation.runner``), on the
    hand-written stacked task and on the same MLP as an ``nn.Module`` task (``ModuleTask``: vmap).

(a) and (b) do not depend on P (one model at a time), so they are timed once on a few genomes,
each at its best thread count (1 or all cores: tiny models often run faster on one thread).
Everything runs in one process after ``configure_host`` (the evaluator's allocator setting).
"""

from __future__ import annotations

import platform
import time

import torch
from torch import nn

import evolveopt
from evolveopt.evaluation.runner import train_population
from evolveopt.measure import module_tasks
from evolveopt.evaluation.sizing import configure_host, cpu_threads
from evolveopt.tasks import make_task
from evolveopt.tasks.datasets import sklearn_classification

BATCH = 128


def _genes(i: int) -> dict[str, float]:
    return {"lr": 1e-3 * (1 + i % 7), "beta1": 0.8 + 0.01 * (i % 10), "beta2": 0.99 + 0.0009 * (i % 10)}


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def sequential_rate(genomes: int, steps: int, device: str = "cpu") -> float:
    x, y, _, _ = (t.to(device) for t in sklearn_classification("digits"))
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for i in range(genomes):
        torch.manual_seed(i)
        model = _mlp().to(device)
        g = _genes(i)
        optimizer = torch.optim.Adam(model.parameters(), lr=g["lr"], betas=(g["beta1"], g["beta2"]), foreach=True)
        index = torch.randint(0, len(x), (steps, BATCH), device=device)
        for step in range(steps):
            optimizer.zero_grad()
            loss_fn(model(x[index[step]]), y[index[step]]).backward()
            optimizer.step()
    _sync(device)
    return genomes * steps / (time.perf_counter() - start)


def anchor_rate(genomes: int, steps: int) -> float:
    x, y, _, _ = sklearn_classification("digits")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for i in range(genomes):
        torch.manual_seed(i)
        model, g = _mlp(), _genes(i)
        state = {p: (torch.zeros_like(p), torch.zeros_like(p)) for p in model.parameters()}
        done, t = 0, 0
        while done < steps:
            for xb, yb in loader:
                loss_fn(model(xb), yb).backward()
                t += 1
                with torch.no_grad():
                    for p in model.parameters():  # the anchor's per-parameter update
                        m, v = state[p]
                        m.mul_(g["beta1"]).add_(p.grad, alpha=1 - g["beta1"])
                        v.mul_(g["beta2"]).addcmul_(p.grad, p.grad, value=1 - g["beta2"])
                        m_hat, v_hat = m / (1 - g["beta1"] ** t), v / (1 - g["beta2"] ** t)
                        p -= g["lr"] * m_hat / (v_hat.sqrt() + 1e-8)
                        p.grad.zero_()
                done += 1
                if done == steps:
                    break
    return genomes * steps / (time.perf_counter() - start)


def batched_rate(members: int, steps: int, device: str = "cpu", task=None) -> float:
    adam = evolveopt.load_genome("adam")
    genomes = [adam.with_genes(**_genes(i)) for i in range(members)]
    task = task or make_task("digits_mlp")
    train_population(task, genomes[:2], [0, 1], 3, device)  # warm-up
    _sync(device)
    start = time.perf_counter()
    train_population(task, genomes, list(range(members)), steps, device)
    _sync(device)
    return members * steps / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best_over_threads(measure) -> tuple[float, int]:
    results = []
    for threads in sorted({1, cpu_threads()}):
        torch.set_num_threads(threads)
        results.append((measure(), threads))
    torch.set_num_threads(cpu_threads())
    return max(results)


def run_eval_benchmark(sizes: tuple[int, ...] = (1, 8, 64, 256), steps: int = 100, device: str = "cpu") -> dict:
    configure_host(cpu_threads())
    sequential, sequential_threads = _best_over_threads(lambda: sequential_rate(4, 2 * steps, device))
    anchor, anchor_threads = _best_over_threads(lambda: anchor_rate(4, 2 * steps))
    rows = []
    for p in sizes:
        batched = batched_rate(p, steps if p >= 8 else 4 * steps, device)
        module = batched_rate(p, steps if p >= 8 else 4 * steps, device, task=module_tasks.digits_mlp())
        rows.append({"P": p, "sequential_member_steps_per_s": sequential, "anchor_loop_member_steps_per_s": anchor,
                     "batched_member_steps_per_s": batched, "batched_vs_sequential": batched / sequential,
                     "batched_vs_anchor": batched / anchor, "module_member_steps_per_s": module,
                     "module_vs_batched": module / batched})
    char_rows = []
    for p in sizes:
        if p >= 8:
            stacked = batched_rate(p, steps // 4, device, task=make_task("char_lm"))
            char_rows.append({"P": p, "stacked_member_steps_per_s": stacked, **{
                f"{kind}_member_steps_per_s": batched_rate(p, steps // 4, device, task=module_tasks.char_lm(kind))
                for kind in ("matmul", "sdpa")}})
    return {"task": "digits_mlp (64-128-10, batch 128), Adam genomes with per-member lr/betas",
            "char_lm": char_rows,
            "device": device, "sequential_threads": sequential_threads, "anchor_threads": anchor_threads, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "rows": rows}


def format_eval_table(report: dict) -> str:
    lines = [report["task"], f"device {report['device']}: {report['machine']}; one-at-a-time loops best at "
             f"{report['sequential_threads']} (sequential) and {report['anchor_threads']} (anchor) thread(s)",
             f"{'P':>6} {'sequential/s':>13} {'anchor/s':>10} {'batched/s':>11} {'vs seq':>7} {'vs anchor':>9} "
             f"{'nn.Module/s':>12} {'vs batched':>10}"]
    for r in report["rows"]:
        lines.append(f"{r['P']:>6} {r['sequential_member_steps_per_s']:>13.0f} {r['anchor_loop_member_steps_per_s']:>10.0f} "
                     f"{r['batched_member_steps_per_s']:>11.0f} {r['batched_vs_sequential']:>6.2f}x {r['batched_vs_anchor']:>8.2f}x "
                     f"{r['module_member_steps_per_s']:>12.0f} {r['module_vs_batched']:>9.2f}x")
    if report.get("char_lm"):
        lines += ["char_lm (1 block, d=32, context 32, batch 16) as an nn.Module task, member-steps/s",
                  f"{'P':>6} {'stacked':>9} {'matmul attention':>17} {'vs stacked':>10} {'torch SDPA layer':>17} "
                  f"{'vs stacked':>10}"]
        for r in report["char_lm"]:
            base = r["stacked_member_steps_per_s"]
            lines.append(f"{r['P']:>6} {base:>9.0f} {r['matmul_member_steps_per_s']:>17.0f} "
                         f"{r['matmul_member_steps_per_s'] / base:>9.2f}x {r['sdpa_member_steps_per_s']:>17.0f} "
                         f"{r['sdpa_member_steps_per_s'] / base:>9.2f}x")
    return "\n".join(lines)
