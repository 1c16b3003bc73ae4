"""Progress displays: readable live bars at 80 columns, fed by the scorer's real events."""

from __future__ import annotations

import io
import re

import pytest

import evolveopt
from evolveopt.backends import LocalBackend
from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings
from evolveopt.progress import Progress, TaskProgress

Console = pytest.importorskip("rich.console").Console

RECORD = {"generation": 3, "evaluations": 20, "wall_time": 5.0, "best": 0.1234, "diversity": 12,
          "member_steps": 1000}


def terminal(width: int):
    return Console(width=width, file=io.StringIO(), force_terminal=True, record=True)


def last_frame(display, width: int) -> list[str]:
    """What the live display shows now, rendered alone at ``width`` columns."""
    out = Console(width=width, file=io.StringIO(), record=True)
    out.print(display.get_renderable())
    return out.export_text().splitlines()


@pytest.fixture(scope="module")
def events() -> list:
    """The events of a real two-task, three-rung evaluation in this process (recorded once, replayed)."""
    settings = FitnessSettings(tasks=[{"name": "nqm"}, {"name": "digits_mlp", "hidden": 16}], budget=27, seeds=[0],
                               rungs=3, max_members=2)
    recorded: list = []
    scorer = FitnessScorer(settings, map_units=LocalBackend().map_units, on_progress=recorded.append)
    scorer.score_with_halving([evolveopt.load_genome(n) for n in ("lion", "sgd", "nesterov", "momentum")])
    return recorded


def replay(events: list, on_progress) -> None:
    for event in events:
        on_progress(event)


def test_the_run_bar_keeps_its_numbers_whole_at_80_columns(events):
    console = terminal(80)
    progress = Progress(16, 3, label="quickstart", live=True, console=console)
    progress.phase("generation 4: 20 new genomes")
    replay(events, progress.units)
    progress.generation(RECORD)
    generations, units, status = last_frame(progress._bar, 80)
    progress.close()
    shown = console.export_text()  # every frame the live display drew
    assert "…" not in shown  # rich's ellipsis: what cut "4/16" to "4…" and the ETA to "-:…"
    assert re.search(r"^quickstart +━+ +4/16 generations \d:\d\d:\d\d ETA \d:\d\d:\d\d\s*$", generations)
    assert re.search(r"^rung 3/3 genomes +━+ +2/2 +units +\d:\d\d:\d\d 27 steps\s*$", units)
    assert status.strip() == "best +0.1234 | 4.0 evals/s | 12 structures"


@pytest.mark.parametrize("width", [40, 56, 72, 120])
def test_narrower_terminals_drop_columns_not_digits(events, width):
    progress = Progress(16, 3, label="quickstart", live=True, console=terminal(width))
    replay(events, progress.units)
    progress.generation(RECORD)
    generations, units, _ = last_frame(progress._bar, width)
    progress.close()
    assert "4/16" in generations and "ETA 0:00:" in generations and "2/2" in units and "27 steps" in units
    assert ("generations" in generations) == (width >= 56) and ("0:00:0" in units) == (width >= 72)


def test_eval_shows_units_per_task_at_80_columns(events):
    console = terminal(80)
    progress = TaskProgress(live=True, console=console)
    replay(events, progress.units)
    rows = last_frame(progress._bar, 80)
    progress.close()
    assert "…" not in console.export_text()
    assert [re.sub(r" *━+ *", " | ", re.sub(r"\d:\d\d:\d\d", "H:MM:SS", row)).rstrip() for row in rows] == [
        "nqm genomes | 1/1 units H:MM:SS 27 steps", "digits_mlp[hidden=16] genomes | 1/1 units H:MM:SS 27 steps"]
