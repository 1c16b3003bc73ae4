"""A persistent cache of member results (SQLite; one row per genome × task × budget × seed).

Keys hash (canonical genome hash, task spec, budget, seed, evaluator version), so a repeated
genome, an elite carried to the next generation, or a rerun of a run is never trained twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from evolveopt.errors import EvolveOptError
from evolveopt.evaluation.results import MemberResult

EVALUATOR_VERSION = 3  # bump when anything changes what a result means (2: loss curves; 3: errors are never results)


def result_key(genome_hash: str, task_spec: dict[str, Any], budget: int, seed: int) -> str:
    text = json.dumps({"genome": genome_hash, "task": task_spec, "budget": budget, "seed": seed,
                       "evaluator": EVALUATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class ResultCache:
    """Key → :class:`MemberResult` in an SQLite file (``":memory:"`` for a throwaway cache)."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL") if self.path != ":memory:" else None
            self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise EvolveOptError(f"{self.path}: not a usable evaluation cache ({exc})") from None
        self._lock = threading.Lock()
        self.hits = self.misses = 0

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
