"""Progress on stderr: a live rich display on a terminal, plain lines otherwise.

Both displays render the :class:`~evolveopt.evaluation.evaluator.UnitProgress` events the scorer
sends (``units``); the evaluation layer knows nothing of them.

* ``evolve`` (:class:`Progress`): on a terminal, a row for the generations (done/total, elapsed,
  ETA), a row for the work units of the evaluation under way (its rung, done/total, elapsed) and a
  status line. Otherwise exactly one line per generation: nothing per unit or rung, so a log
  has one line per generation.
* ``eval`` (:class:`TaskProgress`): on a terminal, one row per task with the units done/total of
  the stage under way (Adam's learning-rate grid, then the genomes); otherwise one line per task
  and stage once its units are done, with the seconds since the display started.

Columns follow the terminal's width at every refresh: below ``WIDE`` columns the elapsed time
goes, below ``NARROW`` the unit words, below ``TINY`` the bar; names are cut with an ellipsis,
numbers are not (down to about 30 columns).
"""

from __future__ import annotations
from evolveopt.extras import optional

import sys
import time
from typing import Any

# Terminal widths (columns) below which a column goes: elapsed time, then unit words, then the bar.
WIDE, NARROW, TINY = 72, 56, 40
STAGES = {"baseline": "Adam lr grid", "genomes": "genomes"}


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _live_display(console: Any = None) -> Any:
    """A started rich Progress on stderr (or on ``console``) with width-aware columns and a status line."""
    optional("rich", "search")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn
    from rich.table import Column
    from rich.text import Text

    def columns(width: int) -> tuple:
        name = TextColumn("{task.description}", style="bold", markup=False,  # labels hold [...]: not markup
                          table_column=Column(no_wrap=True, overflow="ellipsis", max_width=max(10, width // 2)))
        counts = MofNCompleteColumn(table_column=Column(no_wrap=True))
        unit = TextColumn("{task.fields[unit]}", table_column=Column(no_wrap=True))
        note = TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True))
        if width < TINY:
            return name, counts, note
        bar = BarColumn(bar_width=None)
        if width < NARROW:
            return name, bar, counts, note
        if width < WIDE:
            return name, bar, counts, unit, note
        return name, bar, counts, unit, TimeElapsedColumn(table_column=Column(no_wrap=True)), note

    class LiveDisplay(RichProgress):
        """rich's Progress whose columns are chosen by the console's width at each refresh."""

        status = ""

        def get_renderables(self):  # noqa: ANN202 - rich's own signature
            width = console.width  # self.console is not there yet while rich's __init__ renders
            if width not in by_width:
                by_width[width] = columns(width)
            self.columns = by_width[width]
            yield self.make_tasks_table(self.tasks)
            if self.status:
                yield Text(self.status, no_wrap=True, overflow="ellipsis")

    by_width: dict[int, tuple] = {}
    console = console or Console(stderr=True)
    display = LiveDisplay(*columns(console.width), console=console, transient=False)
    display.start()
    return display


class Progress:
    """``evolve``: generations, the units of the rung under way, best fitness, evaluations/s, ETA."""

    def __init__(self, total: int, done: int = 0, label: str = "evolve", live: bool | None = None,
                 console: Any = None):
        self.total, self.done, self.initial, self.label = total, done, done, label
        self.live = sys.stderr.isatty() if live is None else live
        self.started = time.monotonic()
        self._phase = self._summary = ""
        self._bar = None
        if self.live and total > done:
            self._bar = _live_display(console)
            self._generations = self._bar.add_task(label, total=total, completed=done, unit="generations",
                                                   note="ETA ?")
            self._units = self._bar.add_task("starting", total=None, unit="units", note="")
            self._show_status()

    def phase(self, text: str) -> None:
        """What the run is doing inside a generation (shown on a terminal only)."""
        self._phase = text
        self._show_status()

    def units(self, event: Any) -> None:
        """A :class:`~evolveopt.evaluation.evaluator.UnitProgress` from the scorer (terminal only)."""
        if self._bar is None:
            return
        if event.finished is None:  # a new evaluation: its own count and clock
            rung = f"rung {event.rung + 1}/{event.rungs} " if event.rung is not None and event.rungs > 1 else ""
            self._bar.reset(self._units, total=event.total, completed=0, description=rung + STAGES[event.stage],
                            unit="units", note=f"{event.budget} steps")  # reset replaces every field
        else:
            self._bar.update(self._units, completed=event.done)

    def generation(self, record: dict[str, Any]) -> None:
        self.done = record["generation"] + 1
        rate = record["evaluations"] / record["wall_time"] if record["wall_time"] else 0.0
        best = "n/a" if record["best"] is None else f"{record['best']:+.4f}"
        status = f"best {best} | {rate:.1f} evals/s | {record['diversity']} structures"
        # our own ETA: rich's TimeRemainingColumn forgets progress older than 30 s, so a slow run never gets one
        per_generation = (time.monotonic() - self.started) / max(1, self.done - self.initial)
        eta = per_generation * (self.total - self.done)
        if self._bar is not None:
            self._summary, self._phase = status, ""
            self._bar.update(self._generations, completed=self.done, note=f"ETA {_clock(eta)}")
            self._show_status()
            return
        print(f"[{self.label}] generation {self.done}/{self.total}: {status} | "
              f"{record['member_steps']:,} member-steps in {record['wall_time']:.1f} s | ETA {eta:.0f} s",
              file=sys.stderr, flush=True)

    def _show_status(self) -> None:
        if self._bar is not None:
            self._bar.status = " | ".join(part for part in (self._phase, self._summary) if part)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class TaskProgress:
    """``eval``: units done/total per task, for the stage under way (Adam's grid, then the genomes)."""

    def __init__(self, label: str = "eval", live: bool | None = None, console: Any = None):
        self.label = label
        self.live = sys.stderr.isatty() if live is None else live
        self._bar = _live_display(console) if self.live else None
        self._rows: dict[str, Any] = {}
        self.started = time.monotonic()

    def units(self, event: Any) -> None:
        """A :class:`~evolveopt.evaluation.evaluator.UnitProgress` from the scorer."""
        stage = STAGES[event.stage]
        if event.finished is None:
            for task in event.tasks:
                self._reset_row(task, stage, event.budget)
            return
        task = next(t for t in event.tasks if t.label == event.finished)
        if self._bar is not None:
            self._bar.update(self._rows[task.label], completed=task.done)
        elif task.done == task.total:
            print(f"[{self.label}] {task.label}: {stage} {task.done}/{task.total} units "
                  f"(t={time.monotonic() - self.started:.1f} s)", file=sys.stderr, flush=True)

    def _reset_row(self, task: Any, stage: str, budget: int) -> None:
        if self._bar is None or not task.total:
            return
        description, note = f"{task.label} {stage}", f"{budget} steps"
        if task.label not in self._rows:
            self._rows[task.label] = self._bar.add_task(description, total=task.total, unit="units", note=note)
        else:
            self._bar.reset(self._rows[task.label], total=task.total, completed=0, description=description,
                            unit="units", note=note)  # reset replaces every field

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
