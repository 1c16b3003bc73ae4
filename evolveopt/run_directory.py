"""The run directory: everything a run leaves behind, as plain files.

    config.yaml              the resolved configuration
    manifest.json            package versions, git commit, seed, hardware, command
    generations.jsonl        one line per completed generation (best, median, diversity, ...)
    population/gen_NNNN.json each generation's individuals with genomes and fitness
    lineage.jsonl            one line per individual ever born: id, parents, operators, fitness
    hall_of_fame.json        the best distinct genomes so far
    checkpoint.json          the state after the last completed generation, RNG states included
    checkpoint.prev.json     the one before (a fallback when the latest is damaged)
    arrivals.jsonl           steady-state mode only: every evaluation's result in the order it arrived
    cache.sqlite             the run's evaluation cache

Each generation is committed at its end: population file, lineage and generation lines, hall of
fame, then the checkpoint, each written atomically. The checkpoint records the byte sizes of the
JSONL files, so a resumed run cuts away anything written after it and continues from there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from evolveopt.errors import EvolveOptError

CHECKPOINT_FORMAT = 1
LOG_FILES = ("generations.jsonl", "lineage.jsonl")


class RunDirError(EvolveOptError, ValueError):
    """A run directory is missing, incomplete or damaged."""


class NoGenerationYet(RunDirError):
    """The run never completed a generation, so it never wrote a checkpoint: it starts from generation 0."""


class OutputError(EvolveOptError):
    """An output file or folder cannot be written where the user asked (missing folder, a file in the way,
    no permission, a read-only file system)."""


# ----------------------------------------------------------------------------- outputs
# Every file and folder a command writes goes through these, so a bad -o/--out is one line naming
# what and where (the CLI exits 2) and a failed command leaves nothing half-made behind.


def default_folder(name: str) -> Path:
    """Where a command writes when no --out is given: ``runs/NAME-YYYYMMDD-HHMMSS`` (local time)."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def make_folder(path: str | Path, what: str) -> Path:
    """``mkdir -p path``, or one :class:`OutputError` line saying why not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create {what} ({_reason(exc, path)})") from None
    return path


@contextmanager
def output_folder(path: str | Path, what: str) -> Iterator[Path]:
    """Make the folder ``path`` (parents too) for the block to fill.

    An OSError on a path inside it becomes an :class:`OutputError`; when the block fails (any exception,
    Ctrl-C included) the folders this call made are removed again, with whatever the block put there.
    """
    path = Path(path)
    made = _first_missing(path)
    make_folder(path, what)
    try:
        yield path
    except BaseException as exc:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(exc, OSError) and _inside(exc.filename, path):
            raise OutputError(f"{exc.filename}: cannot write {what} ({_reason(exc, path)})") from None
        raise


@contextmanager
def output_file(path: str | Path, what: str) -> Iterator[Path]:
    """Check that the file ``path`` can go where it is asked for, then let the block write it.

    An OSError in the block becomes an :class:`OutputError`; a file the block began is removed when it fails.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path}: cannot write {what} ({_reason(None, path.parent)})")
    existed = path.exists()
    try:
        yield path
    except BaseException as exc:
        if not existed and path.is_file():
            path.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write {what} ({_reason(exc, path.parent)})") from None
        raise


def _inside(filename: object, folder: Path) -> bool:
    return filename is not None and Path(os.fsdecode(filename)).resolve().is_relative_to(folder.resolve())


def _first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (what ``mkdir -p`` would make)."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return missing
        missing = candidate
    return missing


def _reason(exc: OSError | None, folder: Path) -> str:
    """Why nothing can be written in ``folder``, in words: a file where a folder must be, the OS's reason,
    or (without one) a missing folder."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    if exc is not None:
        return exc.strerror or str(exc)
    return f"no folder {folder}"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dumps(data: Any) -> str:
    """Stable JSON (sorted keys), so equal states write equal bytes; NaN and ±inf become null."""
    return json.dumps(_finite(data), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------ files
    def file(self, name: str) -> Path:
        return self.path / name

    def check_new(self) -> None:
        """Refuse a folder that already holds a run (before anything is started for a new one)."""
        if self.file("checkpoint.json").exists() or self.file("config.yaml").exists():
            raise RunDirError(f"{self.path}: already holds a run (use 'evolveopt resume {self.path}' or another --out)")

    def create(self, config_yaml: str, manifest: dict[str, Any]) -> None:
        self.check_new()
        with output_folder(self.path, "the run folder"):
            (self.path / "population").mkdir(exist_ok=True)
            atomic_write(self.file("config.yaml"), config_yaml)
            atomic_write(self.file("manifest.json"), json.dumps(manifest, indent=2, sort_keys=True))
            for name in LOG_FILES:
                self.file(name).touch()

    def check_exists(self) -> None:
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run directory")
        if not self.file("config.yaml").is_file():
            raise RunDirError(f"{self.path}: not a run directory (config.yaml is missing)")

    def read_config(self) -> Any:
        """The run's resolved config (a ``RunConfig``). An empty ``config.yaml`` is damage here, not the
        defaults it means in a user's config file."""
        from evolveopt.config import load_config

        self.check_exists()
        path = self.file("config.yaml")
        if not path.read_text(encoding="utf-8", errors="replace").strip():
            raise RunDirError(f"{path}: empty (a run's config.yaml holds the config it ran with; damaged run)")
        return load_config(path, recorded=True)

    def append_lines(self, name: str, records: list[dict[str, Any]]) -> None:
        with open(self.file(name), "a", encoding="utf-8") as f:
            for record in records:
                f.write(dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_lines(self, name: str) -> list[dict[str, Any]]:
        path = self.file(name)
        if not path.exists():
            return []
        out = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    raise RunDirError(f"{path}: line {number} is not valid JSON") from None
        return out

    def write_json(self, name: str, data: Any) -> None:
        atomic_write(self.file(name), dumps(data) + "\n")

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{path}: missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{path}: damaged ({exc})") from None

    def log_sizes(self) -> dict[str, int]:
        return {name: self.file(name).stat().st_size for name in LOG_FILES}

    # ------------------------------------------------------------------ checkpoints
    def write_checkpoint(self, state: dict[str, Any]) -> None:
        """Keep the previous checkpoint as ``checkpoint.prev.json``, then write the new one."""
        body = {**state, "format": CHECKPOINT_FORMAT, "files": self.log_sizes(), "written": time.time()}
        text = dumps({**body, "sha256": _digest(body)}) + "\n"
        latest = self.file("checkpoint.json")
        if latest.exists():
            os.replace(latest, self.file("checkpoint.prev.json"))
        atomic_write(latest, text)

    def reseal_checkpoint(self, checkpoint: dict[str, Any], files: dict[str, int]) -> dict[str, Any]:
        """Rewrite ``checkpoint.json`` as ``checkpoint`` with new JSONL sizes (a repair rebuilt a log)."""
        body = {k: v for k, v in checkpoint.items() if k != "sha256"} | {"files": files}
        atomic_write(self.file("checkpoint.json"), dumps({**body, "sha256": _digest(body)}) + "\n")
        return body

    def read_checkpoint(self) -> tuple[dict[str, Any], list[str]]:
        """The newest intact checkpoint and warnings about any damaged one skipped."""
        warnings = []
        for name in ("checkpoint.json", "checkpoint.prev.json"):
            path = self.file(name)
            if not path.exists():
                continue
            try:
                return _verified(path), warnings
            except RunDirError as exc:
                warnings.append(str(exc))
        restart = (f"`evolveopt resume {self.path} --restart` starts the run over from generation 0 in this folder "
                   f"(the old records are moved to {self.path}/replaced-TIMESTAMP/)")
        if warnings:
            raise RunDirError("; ".join(warnings) + f"; no intact checkpoint to resume from; {restart}")
        evidence = self.completed_generation_records()
        if evidence:
            raise RunDirError(f"{self.path}: no checkpoint is left (checkpoint.json and checkpoint.prev.json are "
                              f"missing) although {evidence} completed generations; {restart}")
        raise NoGenerationYet(f"{self.path}: no completed generation yet (checkpoint.json is missing)")

    def completed_generation_records(self) -> str | None:
        """Which files say that a generation was completed, hence that a checkpoint was written (None: none do).

        A generation commits population file, lineage, generation line, hall of fame, then checkpoint; so
        a generation line, a hall of fame or a population file of generation >= 1 exists only once a
        checkpoint has been written (gen_0000.json or lineage lines alone: the run died inside generation
        0's commit, before its checkpoint)."""
        found = []
        if self.file("generations.jsonl").is_file() and self.file("generations.jsonl").stat().st_size:
            found.append("generations.jsonl")
        if self.file("hall_of_fame.json").exists():
            found.append("hall_of_fame.json")
        if any(p.name != "gen_0000.json" for p in (self.path / "population").glob("gen_*.json")):
            found.append("population/")
        if not found:
            return None
        return ", ".join(found[:-1]) + (" and " if len(found) > 1 else "") + found[-1] + (" record" if len(found) > 1 else " records")

    def set_aside(self) -> Path:
        """Move the records of the run (logs, population, hall of fame, checkpoints, report) into a new
        ``replaced-TIMESTAMP/`` folder and leave empty logs, so the run starts over from generation 0.
        The config, manifest and evaluation cache stay (the cache answers by genome hash: same results)."""
        backup = self.file(f"replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        suffix = 1
        while backup.exists():
            backup, suffix = self.file(f"replaced-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"), suffix + 1
        backup.mkdir()
        for name in (*LOG_FILES, "arrivals.jsonl", "hall_of_fame.json", "checkpoint.json", "checkpoint.prev.json",
                     "population", "report"):
            if self.file(name).exists():
                os.replace(self.file(name), backup / name)
        (self.path / "population").mkdir()
        for name in LOG_FILES:
            self.file(name).touch()
        _fsync_dir(self.path)
        return backup

    def truncate_logs(self, sizes: dict[str, int]) -> None:
        """Cut the JSONL files back to what the checkpoint saw."""
        for name, size in sizes.items():
            path = self.file(name)
            if path.exists() and path.stat().st_size > size:
                with open(path, "r+b") as f:
                    f.truncate(size)

    def lock(self) -> None:
        """Take ``run.lock`` atomically (``O_CREAT | O_EXCL``): of two processes only one gets it. A lock
        left by a dead process is moved aside (an atomic rename, so again only one racer wins)."""
        path = self.file("run.lock")
        for _ in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._lock_holder()
                if holder is not None:
                    raise RunDirError(f"{self.path}: another process is running this run (run.lock, pid {holder})")
                try:
                    os.rename(path, self.file(f"run.lock.stale-{os.getpid()}"))
                    self.file(f"run.lock.stale-{os.getpid()}").unlink()
                except FileNotFoundError:
                    pass  # another process moved it first; try again
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return
        raise RunDirError(f"{self.path}: could not take run.lock (other processes keep taking it)")

    def unlock(self) -> None:
        try:
            self.file("run.lock").unlink()
        except FileNotFoundError:
            pass

    def is_running(self) -> bool:
        return self._lock_holder() is not None

    def _lock_holder(self) -> int | None:
        """The pid in ``run.lock`` if that process is alive (a lock being written counts as held)."""
        try:
            text = self.file("run.lock").read_text()
            age = time.time() - self.file("run.lock").stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            pid = int(text)
        except ValueError:
            return -1 if not text and age < 10 else None  # just created, not yet written: its owner is alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid


def lineage_record(ind: Any) -> dict[str, Any]:
    """The ``lineage.jsonl`` line of an individual (an ``Individual``: id, ancestry, hash, result)."""
    return {
        "id": ind.id, "parents": list(ind.parents), "operators": list(ind.operators), "details": ind.details,
        "generation": ind.generation, "hash": ind.hash, "structure": ind.structure,
        "fitness": ind.result.get("fitness"), "rung": ind.result.get("rung"), "budget": ind.result.get("budget"),
    }


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(body).encode()).hexdigest()


def _verified(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunDirError(f"{path}: damaged (not valid JSON; truncated?)") from None
    if not isinstance(data, dict) or "sha256" not in data:
        raise RunDirError(f"{path}: damaged (no checksum)")
    digest = data.pop("sha256")
    if digest != _digest(data):
        raise RunDirError(f"{path}: damaged (checksum mismatch)")
    if data.get("format") != CHECKPOINT_FORMAT:
        raise RunDirError(f"{path}: checkpoint format {data.get('format')!r} is not supported")
    return data
