"""Progress of a run on stderr: a live bar on a terminal, one plain line per generation otherwise."""

from __future__ import annotations
from evolveopt.extras import optional

import sys
import time
from typing import Any


class Progress:
    """Shows generation, evaluations per second, best fitness so far and the ETA."""

    def __init__(self, total: int, done: int = 0, label: str = "evolve", live: bool | None = None):
        self.total, self.done, self.initial, self.label = total, done, done, label
        self.live = sys.stderr.isatty() if live is None else live
        self.started = time.monotonic()
        self._bar = None
        if self.live and total > done:
            optional("rich", "search")
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._bar.add_task(f"{label} generations", total=total, completed=done, status="starting")
            self._bar.start()

    def phase(self, text: str) -> None:
        """What the run is doing inside a generation (shown on a terminal only)."""
        if self._bar is not None:
            self._bar.update(self._task, status=text)

    def generation(self, record: dict[str, Any]) -> None:
        self.done = record["generation"] + 1
        rate = record["evaluations"] / record["wall_time"] if record["wall_time"] else 0.0
        best = "n/a" if record["best"] is None else f"{record['best']:+.4f}"
        status = f"best {best} | {rate:.1f} evals/s | {record['diversity']} structures"
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, status=status)
            return
        per_generation = (time.monotonic() - self.started) / max(1, self.done - self.initial)
        eta = per_generation * (self.total - self.done)
        print(f"[{self.label}] generation {self.done}/{self.total}: {status} | "
              f"{record['member_steps']:,} member-steps in {record['wall_time']:.1f} s | ETA {eta:.0f} s",
              file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
