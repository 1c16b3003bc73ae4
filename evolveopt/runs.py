"""``evolveopt runs``: the runs under a folder, with status and best fitness."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from evolveopt.rundir import RunDir, RunDirError


@dataclass
class RunStatus:
    path: Path
    name: str
    status: str  # complete | running | stopped | no generation yet | damaged
    generations: int
    total: int
    best: float | None


def run_status(path: Path) -> RunStatus:
    rundir = RunDir(path)
    try:
        config = yaml.safe_load(rundir.file("config.yaml").read_text())
        total = int(config["search"]["generations"])
        name = str(config.get("name", path.name))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return RunStatus(path, path.name, "damaged", 0, 0, None)
    rows = []
    try:
        rows = rundir.read_lines("generations.jsonl")
    except RunDirError:
        return RunStatus(path, name, "damaged", 0, total, None)
    done = len(rows)
    bests = [r["best"] for r in rows if r.get("best") is not None]
    if rundir.is_running():
        status = "running"
    elif done >= total:
        status = "complete"
    elif done == 0:
        status = "no generation yet"
    else:
        status = "stopped"
    return RunStatus(path, name, status, done, total, max(bests) if bests else None)


def list_runs(folder: str | Path) -> list[RunStatus]:
    root = Path(folder)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such folder")
    candidates = [root] if (root / "config.yaml").exists() else sorted(p for p in root.iterdir() if (p / "config.yaml").exists())
    return [run_status(p) for p in candidates]


def format_runs(statuses: list[RunStatus]) -> str:
    if not statuses:
        return "no runs"
    lines = [f"{'run':<40} {'status':<18} {'generations':>11} {'best':>9}"]
    for s in statuses:
        best = "n/a" if s.best is None else f"{s.best:+.4f}"
        lines.append(f"{str(s.path)[-40:]:<40} {s.status:<18} {f'{s.generations}/{s.total}':>11} {best:>9}")
    return "\n".join(lines)
