"""Speed and peak memory of batched training with glibc's default allocator and with large
temporaries kept in the heap (``keep_temporaries_in_heap``, what every evaluation worker does).

Each setting runs in a fresh interpreter (``python -m evolveopt.measure.heap_memory SETTING P STEPS``),
so its peak RSS (``getrusage``'s maximum resident set) is its own: the digits MLP of
``evolveopt bench eval`` at P members, Adam genomes with per-member genes.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

from evolveopt.measure import cpu_model

SETTINGS = {"glibc default": "default", "temporaries in heap": "heap"}


def run_heap_benchmark(members: int = 256, steps: int = 100) -> dict:
    rows = []
    for label, setting in SETTINGS.items():
        done = subprocess.run([sys.executable, "-m", __name__, setting, str(members), str(steps)],
                              capture_output=True, text=True, check=True)
        rows.append({"setting": label, **json.loads(done.stdout.strip().splitlines()[-1])})
    return {"members": members, "steps": steps, "machine": cpu_model(),
            "rows": rows}


def format_heap_table(report: dict) -> str:
    base = report["rows"][0]
    lines = [f"digits MLP, P = {report['members']}, {report['steps']} steps, {report['rows'][0]['threads']} "
             f"thread(s), {report['machine']}",
             f"{'allocator':<22} {'member-steps/s':>15} {'vs default':>10} {'peak RSS MB':>12} {'vs default':>10}"]
    for r in report["rows"]:
        lines.append(f"{r['setting']:<22} {r['member_steps_per_s']:>15,.0f} "
                     f"{r['member_steps_per_s'] / base['member_steps_per_s']:>9.2f}x {r['peak_rss_mb']:>12,.0f} "
                     f"{r['peak_rss_mb'] / base['peak_rss_mb']:>9.2f}x")
    return "\n".join(lines)


def _child(setting: str, members: int, steps: int) -> None:
    import torch

    from evolveopt.evaluation.sizing import cpu_threads, keep_temporaries_in_heap
    from evolveopt.measure.batched_training import batched_rate

    torch.set_num_threads(cpu_threads())
    if setting == "heap":
        keep_temporaries_in_heap()
    rate = batched_rate(members, steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"member_steps_per_s": rate, "peak_rss_mb": peak, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
