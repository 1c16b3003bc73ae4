"""Reading finished runs: what a run claims, checked against its checkpoint (`verify_run`, used by `runs` and
`resume`), their status (``evolveopt runs``), individuals and genomes by reference."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from evolveopt.errors import GenomeError
from evolveopt.genome.canonical import canonical_form
from evolveopt.genome.io import load_genome
from evolveopt.genome.schema import Genome, parse_genome
from evolveopt.run_directory import NoGenerationYet, RunDir, RunDirError, atomic_write, dumps, lineage_record


# ----------------------------------------------------------------------------- what a run claims


@dataclass
class Problem:
    """One thing wrong in a run directory, naming the file; ``repair`` says how it is rebuilt (None: it cannot be)."""

    text: str
    repair: str | None = None
    fix: Callable[[], None] | None = None


@dataclass
class RunCheck:
    """What a run directory claims, checked against its newest intact checkpoint (the one source of truth:
    checksummed, it holds the population, hall of fame, logbook and the byte sizes of the JSONL logs)."""

    rundir: RunDir
    checkpoint: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def generations(self) -> int:
        """Completed generations the run stands on (the checkpoint's)."""
        return self.checkpoint["generation"] + 1 if self.checkpoint else 0

    @property
    def trusted(self) -> bool:
        return all(p.repair is not None for p in self.problems)

    def repair(self) -> list[str]:
        """Rebuild what can be (population file, logs, hall of fame: in that order), one line per problem."""
        for problem in self.problems:
            if problem.fix:
                problem.fix()
        return [f"{p.text}; {p.repair}" for p in self.problems]


def verify_run(path: str | Path, total_generations: int) -> RunCheck:
    """Check a run that is not running: checkpoints (checksums), the fitness they hold, every population
    file up to the checkpoint's generation, the JSONL logs up to the checkpoint's offsets (records per
    generation as its logbook counts them; bytes after them only as an interrupted next generation
    leaves them) and the hall of fame (equal to the checkpoint's)."""
    rundir = RunDir(path)
    check = RunCheck(rundir)
    try:
        check.checkpoint, warnings = rundir.read_checkpoint()
    except NoGenerationYet:
        return check
    except RunDirError as exc:
        check.problems.append(Problem(str(exc)))
        return check
    generation = check.generations - 1
    check.problems += [Problem(w, f"resuming from checkpoint.prev.json (generation {generation}) redoes generation "
                                  f"{generation + 1}") for w in warnings]
    check.problems += _fitness_problems(check)
    interrupted = check.generations < total_generations and rundir.file(
        f"population/gen_{generation + 1:04d}.json").exists()  # a commit of the next generation had begun
    history = _check_population(check)
    _check_log(check, "generations.jsonl", _generation_records_problem, _generations_from_logbook,
               "rebuilt from the checkpoint's logbook", interrupted)
    _check_log(check, "lineage.jsonl", _lineage_records_problem, _lineage_from_population if history else None,
               "rebuilt from the population files", interrupted)
    _check_hall_of_fame(check, interrupted)
    return check


def _fitness_problems(check: RunCheck) -> list[Problem]:
    """Every fitness the checkpoint holds is a finite number (selection compares them)."""
    for data in check.checkpoint["population"] + check.checkpoint["hall_of_fame"]:
        values = data.get("fitness") or []
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return [Problem(f"{check.rundir.path}: the checkpoint's individual #{data.get('id')} has fitness "
                            f"{json.dumps(values)} (null: a NaN score written by an older evolveopt); the run "
                            f"cannot continue from it")]
    return []


def _check_population(check: RunCheck) -> bool:
    """Population files 0..g; the last is rebuilt from the checkpoint, earlier ones cannot be. True: all there."""
    rundir, last, whole = check.rundir, check.generations - 1, True
    for generation in range(last + 1):
        name = f"population/gen_{generation:04d}.json"
        try:
            data = rundir.read_json(name)
            wrong = None if _holds_generation(data, generation) else \
                f"{rundir.file(name)}: does not hold generation {generation}"
        except RunDirError as exc:
            wrong = str(exc)
        if generation < last:
            if wrong:
                whole = False
                check.problems.append(Problem(f"{wrong}; cannot be rebuilt (a checkpoint holds only its own "
                                              f"generation's population)"))
            continue
        if wrong is None and data["individuals"] != check.checkpoint["population"]:
            wrong = f"{rundir.file(name)}: does not match the checkpoint's population"
        if wrong:
            check.problems.append(Problem(wrong, "rewritten from the checkpoint", lambda name=name: rundir.write_json(
                name, {"generation": last, "individuals": check.checkpoint["population"]})))
    return whole


def _holds_generation(data: Any, generation: int) -> bool:
    individuals = data.get("individuals") if isinstance(data, dict) else None
    return isinstance(individuals, list) and data.get("generation") == generation and all(
        isinstance(d, dict) and isinstance(d.get("generation"), int) for d in individuals)


def _check_log(check: RunCheck, name: str, records_problem: Callable[[RunCheck, Path, list], str | None],
               rebuild: Callable[[RunCheck], str] | None, how: str, interrupted: bool) -> None:
    """The log up to the checkpoint's offset holds what the checkpoint says; after it only an interrupted
    generation's lines (resume cuts them away)."""
    rundir, path = check.rundir, check.rundir.file(name)
    size = check.checkpoint["files"][name]
    actual = path.stat().st_size if path.is_file() else None
    if actual is None:
        wrong = f"{path}: missing"
    elif actual < size:
        wrong = f"{path}: {actual} bytes where the checkpoint of generation {check.generations - 1} saw {size} (truncated)"
    else:
        with open(path, "rb") as f:
            wrong = _jsonl_problem(check, path, f.read(size), records_problem)
    if wrong is None:
        if actual > size and not interrupted:
            check.problems.append(Problem(f"{path}: {actual - size} bytes after what the last checkpoint saw",
                                          "cut back to the checkpoint", lambda: rundir.truncate_logs({name: size})))
        return
    if rebuild is None:
        check.problems.append(Problem(f"{wrong}; cannot be rebuilt without every population file"))
        return

    def fix() -> None:
        text = rebuild(check)
        atomic_write(path, text)
        if len(text.encode()) != check.checkpoint["files"][name]:  # a logbook of an older evolveopt: no wall_time
            check.checkpoint = rundir.reseal_checkpoint(check.checkpoint,
                                                        {**check.checkpoint["files"], name: len(text.encode())})

    check.problems.append(Problem(wrong, how, fix))


def _jsonl_problem(check: RunCheck, path: Path, data: bytes, records_problem) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{path}: damaged (not UTF-8)"
    if text and not text.endswith("\n"):
        return f"{path}: damaged (a line is cut where the checkpoint's offset falls)"
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            return f"{path}: line {number} is not valid JSON"
        if not isinstance(records[-1], dict):
            return f"{path}: line {number} is not a record"
    return records_problem(check, path, records)


def _without_wall_time(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "wall_time"}


def _generation_records_problem(check: RunCheck, path: Path, rows: list[dict]) -> str | None:
    logbook = check.checkpoint["logbook"]
    if len(rows) != len(logbook):
        return f"{path}: {len(rows)} generation records where the checkpoint has {len(logbook)}"
    for number, (row, logged) in enumerate(zip(rows, logbook), start=1):
        if _without_wall_time(row) != _without_wall_time(logged):
            return f"{path}: line {number} differs from the checkpoint's record of generation {number - 1}"
    return None


def _lineage_records_problem(check: RunCheck, path: Path, rows: list[dict]) -> str | None:
    """One lineage line per birth: as many per generation as its logbook record has evaluations."""
    logbook = check.checkpoint["logbook"]
    counts = Counter(row.get("generation") if isinstance(row.get("generation"), int) else None for row in rows)
    for generation, logged in enumerate(logbook):
        if counts[generation] != logged["evaluations"]:
            return (f"{path}: {counts[generation]} records of generation {generation} where the checkpoint "
                    f"counts {logged['evaluations']} births")
    stray = sum(n for generation, n in counts.items() if generation not in range(len(logbook)))
    return f"{path}: {stray} records of no generation the checkpoint has" if stray else None


def _generations_from_logbook(check: RunCheck) -> str:
    return "".join(dumps({"wall_time": None, **row}) + "\n" for row in check.checkpoint["logbook"])


def _lineage_from_population(check: RunCheck) -> str:
    """Each generation's births (its individuals born in it: every one but the elites) in population order."""
    from evolveopt.search.individual import Individual

    lines = []
    for generation in range(check.generations):
        data = check.rundir.read_json(f"population/gen_{generation:04d}.json")
        lines += [dumps(lineage_record(Individual.from_json(d))) + "\n" for d in data["individuals"]
                  if d["generation"] == generation]
    return "".join(lines)


def _check_hall_of_fame(check: RunCheck, interrupted: bool) -> None:
    rundir = check.rundir
    try:
        fame = rundir.read_json("hall_of_fame.json")
        wrong = None if interrupted or fame == check.checkpoint["hall_of_fame"] else \
            f"{rundir.file('hall_of_fame.json')}: does not match the checkpoint's hall of fame"
    except RunDirError as exc:
        wrong = str(exc)
    if wrong:
        check.problems.append(Problem(wrong, "rewritten from the checkpoint", lambda: rundir.write_json(
            "hall_of_fame.json", check.checkpoint["hall_of_fame"])))


# ----------------------------------------------------------------------------- evolveopt runs


@dataclass
class RunStatus:
    path: Path
    name: str
    status: str  # complete | running | stopped | no generation yet | repairable | damaged
    generations: int
    total: int
    best: float | None
    checkup: str | None = None  # wins/ties/losses against AdamW, once ``evolveopt report`` has run
    problems: list[str] = field(default_factory=list)  # one line each, from ``verify_run``


def run_status(path: Path) -> RunStatus:
    rundir = RunDir(path)
    try:
        config = yaml.safe_load(rundir.file("config.yaml").read_text())
        total = int(config["search"]["generations"])
        name = str(config.get("name", path.name))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return RunStatus(path, path.name, "damaged", 0, 0, None, problems=[f"{rundir.file('config.yaml')}: unreadable"])
    if rundir.is_running():  # its files change under us: count, do not judge
        done = rundir.file("generations.jsonl").read_bytes().count(b"\n") if rundir.file("generations.jsonl").exists() else 0
        return RunStatus(path, name, "running", done, total, None)
    check = verify_run(path, total)
    done = check.generations
    bests = [row["best"] for row in check.checkpoint["logbook"] if row.get("best") is not None] if check.checkpoint else []
    if not check.trusted:
        status = "damaged"
    elif check.problems:
        status = "repairable"
    elif done >= total:
        status = "complete"
    elif done == 0:
        status = "no generation yet"
    else:
        status = "stopped"
    repairs = "`evolveopt resume` repairs it" if check.trusted else "repairable"
    problems = [p.text if p.repair is None else f"{p.text}; {repairs} ({p.repair})" for p in check.problems]
    return RunStatus(path, name, status, done, total, max(bests) if bests else None, _checkup(rundir), problems)


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
    lines += [f"  {problem}" for s in statuses for problem in s.problems]
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
        **({"funnel (stage: fitness)": {s["stage"] + 1: s["fitness"] for s in result["funnel"]}}
           if result.get("funnel") else {}),
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
