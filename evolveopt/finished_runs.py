"""Reading finished runs: their status (``evolveopt runs``), individuals and genomes by reference."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from evolveopt.errors import GenomeError
from evolveopt.genome.canonical import canonical_form
from evolveopt.genome.io import load_genome
from evolveopt.genome.schema import Genome, parse_genome
from evolveopt.run_directory import RunDir, RunDirError


@dataclass
class RunStatus:
    path: Path
    name: str
    status: str  # complete | running | stopped | no generation yet | damaged
    generations: int
    total: int
    best: float | None
    checkup: str | None = None  # wins/ties/losses against AdamW, once ``evolveopt report`` has run


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
    return RunStatus(path, name, status, done, total, max(bests) if bests else None, _checkup(rundir))


def _checkup(rundir: RunDir) -> str | None:
    """The report's champion checkup in one line (``benchmark/checkup.py``), or None if absent or unreadable."""
    from evolveopt.benchmark.checkup import summary_line

    try:
        return summary_line(json.loads(rundir.file("report/checkup.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_runs(folder: str | Path) -> list[RunStatus]:
    root = Path(folder)
    if not root.is_dir():
        raise RunDirError(f"{root}: no such folder")
    candidates = [root] if (root / "config.yaml").exists() else sorted(p for p in root.iterdir() if (p / "config.yaml").exists())
    return [run_status(p) for p in candidates]


def format_runs(statuses: list[RunStatus]) -> str:
    if not statuses:
        return "no runs"
    lines = [f"{'run':<40} {'status':<18} {'generations':>11} {'best':>9}  champion vs AdamW (win/tie/loss)"]
    for s in statuses:
        best = "n/a" if s.best is None else f"{s.best:+.4f}"
        checkup = s.checkup or "run `evolveopt report` to check"
        lines.append(f"{str(s.path)[-40:]:<40} {s.status:<18} {f'{s.generations}/{s.total}':>11} {best:>9}  {checkup}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- individuals of a run


def read_individuals(path: str | Path) -> dict[int, dict]:
    """Every individual stored in a run's population files (the latest record of each id)."""
    rundir = RunDir(path)
    rundir.check_exists()
    files = sorted((rundir.path / "population").glob("gen_*.json"))
    if not files:
        raise RunDirError(f"{rundir.path}: no completed generation yet (population/ is empty)")
    individuals: dict[int, dict] = {}
    for file in files:
        data = rundir.read_json(f"population/{file.name}")
        for ind in data.get("individuals", []):
            individuals[ind["id"]] = ind
    return individuals


def hall_of_fame(path: str | Path) -> list[dict]:
    rundir = RunDir(path)
    rundir.check_exists()
    if not rundir.file("hall_of_fame.json").exists():
        raise RunDirError(f"{rundir.path}: no completed generation yet (hall_of_fame.json is missing)")
    return rundir.read_json("hall_of_fame.json")


def select_individual(path: str | Path, rank: int | None = None, ident: int | None = None) -> dict:
    """An individual of a run: by hall-of-fame rank (1 = champion) or by id."""
    if ident is not None:
        individuals = read_individuals(path)
        if ident not in individuals:
            known = f"{min(individuals)}..{max(individuals)}" if individuals else "none"
            raise RunDirError(f"{path}: no individual #{ident} (ids run {known})")
        return individuals[ident]
    fame = hall_of_fame(path)
    rank = rank or 1
    if not 1 <= rank <= len(fame):
        raise RunDirError(f"{path}: rank {rank} is out of range (hall of fame holds {len(fame)})")
    return fame[rank - 1]


def run_name(path: str | Path) -> str:
    try:
        return str(yaml.safe_load(RunDir(path).file("config.yaml").read_text()).get("name") or Path(path).name)
    except (OSError, yaml.YAMLError, AttributeError):
        return Path(path).name


def provenance(path: str | Path, individual: dict) -> dict:
    result = individual.get("result", {})
    return {
        "run": str(path), "run name": run_name(path), "generation": individual.get("generation"),
        "individual": f"#{individual['id']}", "fitness": result.get("fitness"),
        "rung": result.get("rung"), "budget (steps)": result.get("budget"),
        "task scores": result.get("task_scores"),
    }


def resolve_genome(ref: str, rank: int | None = None, ident: int | None = None) -> tuple[Genome, str, dict]:
    """(genome, label, provenance) for a genome name, a YAML file, a run (its champion, or
    ``--rank``/``--id``) or ``RUN#ID``."""
    run_part, hash_sign, id_part = ref.rpartition("#")
    if hash_sign and run_part and (Path(run_part) / "config.yaml").exists():
        if not id_part.isdigit():
            raise RunDirError(f"{ref}: expected RUN#ID with a numeric id")
        ref, ident = run_part, int(id_part)
    if (Path(ref) / "config.yaml").exists():
        individual = select_individual(ref, rank, ident)
        genome = canonical_form(parse_genome(individual["genome"], source=f"{ref}#{individual['id']}"))
        label = f"{run_name(ref)} {individual['id']}"
        return replace(genome, name=genome.name or f"{run_name(ref)}-{individual['id']}",
                       description=genome.description or f"Discovered by evolveopt run '{run_name(ref)}', "
                                                         f"individual #{individual['id']}."), label, provenance(ref, individual)
    if Path(ref).is_dir():
        raise RunDirError(f"{ref}: not a run directory (config.yaml is missing)")
    if rank is not None or ident is not None:
        raise RunDirError(f"{ref}: --rank and --id need a run directory")
    try:
        genome = load_genome(ref)
    except GenomeError:
        if os.sep in ref and not Path(ref).exists() and not ref.endswith((".yaml", ".yml")):
            raise RunDirError(f"{ref}: no such run directory or genome file") from None
        raise
    return genome, genome.name or Path(ref).stem, {"source": str(ref)}
