"""A persistent cache of member results (SQLite; one row per genome × task × budget × seed).

A key hashes everything a result depends on: the canonical genome hash, the task spec, a digest
of the task's data (text that ships with Python changes with its patch release), the budget,
the seed, the evaluator version and torch's version. So a repeated genome, an elite carried to
the next generation, or a rerun of a run is never trained twice, and a result is never read
back where it would not be recomputed the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from evolveopt.errors import EvolveOptError
from evolveopt.evaluation.results import MemberResult

if TYPE_CHECKING:
    from evolveopt.tasks import Task

EVALUATOR_VERSION = 5  # bump when anything changes what a result means (5: the schema-2 language; global-norm clip rounding)
# (2: loss curves; 3: errors are never results; 4: keys hold torch's version, data digests, the baseline's hash)


def code_versions() -> dict[str, Any]:
    """What every key holds besides its own parts: the evaluator's version and torch's (read at
    each call, so a key always names the torch that computes it)."""
    return {"evaluator": EVALUATOR_VERSION, "torch": str(torch.__version__)}


def digest_key(parts: dict[str, Any]) -> str:
    """sha256 of ``parts`` and :func:`code_versions` as canonical JSON."""
    text = json.dumps({**parts, **code_versions()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def task_identity(task: "Task") -> dict[str, Any]:
    """The task's spec and the digest of its data."""
    return {"task": task.spec, "data": task.data_digest()}


def result_key(genome_hash: str, task: "Task", budget: int, seed: int) -> str:
    return digest_key({"genome": genome_hash, **task_identity(task), "budget": budget, "seed": seed})


class ResultCache:
    """Key → :class:`MemberResult` in an SQLite file (``":memory:"`` for a throwaway cache).

    The cache is derived data: a file that is damaged (not SQLite, truncated, pages overwritten:
    an error on open or a failed ``PRAGMA quick_check``) is moved aside to ``NAME.corrupt-N``
    with its WAL, with a one-line warning on stderr, and an empty cache starts in its place.
    """

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        try:
            self._db = self._open()
        except sqlite3.OperationalError as exc:  # cannot open, locked, read-only: not the file's fault
            raise EvolveOptError(f"{self.path}: not a usable evaluation cache ({exc})") from None
        except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT, SQLITE_NOTADB, a failed quick_check
            moved = self._move_aside()
            reason = " ".join(str(exc).split())[:200]  # quick_check reports over several lines
            print(f"warning: {self.path}: damaged evaluation cache ({reason}); moved to {moved}, starting an empty one",
                  file=sys.stderr)
            self._db = self._open()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        try:
            if self.path != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
                # no fsync per commit (the WAL is synced at checkpoints): an OS crash may drop the last
                # results, never corrupt the file, and a dropped result is trained again, to the same bits
                db.execute("PRAGMA synchronous=NORMAL")
                problems = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError(f"quick_check: {problems[0]}")
            db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self) -> str:
        """Rename the file (and its -wal/-shm, which belong to it) to the first free ``.corrupt-N``."""
        n = 1
        while any(os.path.exists(f"{self.path}.corrupt-{n}{suffix}") for suffix in ("", "-wal", "-shm")):
            n += 1
        target = f"{self.path}.corrupt-{n}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, target + suffix)
        return target

    def get_many(self, keys: Iterable[str]) -> dict[str, MemberResult]:
        keys = list(keys)
        found: dict[str, MemberResult] = {}
        with self._lock:
            for chunk in range(0, len(keys), 500):
                part = keys[chunk:chunk + 500]
                rows = self._db.execute(
                    f"SELECT key, value FROM results WHERE key IN ({','.join('?' * len(part))})", part).fetchall()
                found.update({k: MemberResult.from_json(json.loads(v)) for k, v in rows})
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def stored(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` hold a result, without counting hits or misses (a look ahead, not a use)."""
        keys = list(keys)
        found: set[str] = set()
        with self._lock:
            for chunk in range(0, len(keys), 500):
                part = keys[chunk:chunk + 500]
                found.update(k for (k,) in self._db.execute(
                    f"SELECT key FROM results WHERE key IN ({','.join('?' * len(part))})", part).fetchall())
        return found

    def put_many(self, items: dict[str, MemberResult]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?)",
                                 [(k, json.dumps(r.to_json())) for k, r in items.items()])
            self._db.commit()

    def get_record(self, key: str) -> Any:
        """A free-form JSON record (tuned baselines live here)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_record(self, key: str, value: Any) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO records VALUES (?, ?)", (key, json.dumps(value)))
            self._db.commit()

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def close(self) -> None:
        self._db.close()
