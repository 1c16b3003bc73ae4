"""The docs quote what the commands produce: the quickstart champion they name, and run folders
that a command they show makes (``scripts/render_docs_images.py`` regenerates both)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from evolveopt.cli import main
from evolveopt.run_directory import default_folder

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_FOLDER = re.compile(r"(?<![\w/.])runs/([A-Za-z0-9_.-]*)")
DEFAULT_PATTERN = re.compile(r"runs/([a-z0-9_]+)-YYYYMMDD-HHMMSS")


def render_script():
    spec = importlib.util.spec_from_file_location("render_docs_images", ROOT / "scripts" / "render_docs_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_docs_name_the_champion_a_fresh_quickstart_run_exports(quickstart_run, tmp_path, capsys):
    from evolveopt.finished_runs import select_individual

    assert main(["export", str(quickstart_run), "-o", str(tmp_path / "champion.py")]) == 0
    exported = re.search(r"^class (\w+)\(torch\.optim\.Optimizer\)", (tmp_path / "champion.py").read_text(), re.M)[1]
    script = render_script()
    quoted = {page.relative_to(ROOT).as_posix(): set(script.CLASS_QUOTED.findall(page.read_text()))
              for page in script.quoting_docs()}
    assert quoted["README.md"] and quoted["docs/cli/export.md"], quoted
    assert {name for names in quoted.values() for name in names} == {exported}, (quoted, exported)

    champion = select_individual(quickstart_run)
    perf = " ".join((ROOT / "docs" / "performance.md").read_text().split())  # line breaks are spaces
    said = re.search(r"champion[^(]*\(#(\d+): [^)]*\) scores ([+-][\d.]+) against Adam tuned per task \(([+-][\d.]+) on "
                     r"digits, ([+-][\d.]+) on the\s+quadratic\)", perf, re.S)
    scores = champion["result"]["task_scores"]
    digits, nqm = (next(v for k, v in scores.items() if k.startswith(prefix)) for prefix in ("digits_mlp", "nqm"))
    assert said.groups() == (str(champion["id"]), f"{champion['result']['fitness']:+.2f}", f"{digits:+.2f}",
                             f"{nqm:+.2f}"), said.groups()


def test_every_run_folder_the_docs_use_is_made_by_a_command_they_show():
    """A ``runs/X`` on a page is the ``--out runs/X`` of a command on that page, or the default folder
    as the code names it (``runs/NAME-YYYYMMDD-HHMMSS``)."""
    for default in DEFAULT_PATTERN.finditer("\n".join(page.read_text() for page in PAGES)):
        made = default_folder(default[1]).as_posix()
        assert re.fullmatch(default[0].replace("YYYYMMDD", r"\d{8}").replace("HHMMSS", r"\d{6}"), made), made
    for page in PAGES:
        text = page.read_text()
        made = set(re.findall(r"--out runs/([A-Za-z0-9_.-]+)", text))
        for use in RUN_FOLDER.finditer(text):
            folder = use[1].rstrip(".")
            ok = folder in ("", "...") or folder in made or DEFAULT_PATTERN.match(text, use.start())
            line = text.count("\n", 0, use.start()) + 1
            assert ok, f"{page.relative_to(ROOT)}:{line}: runs/{folder} is no --out of a command on this page"
    assert DEFAULT_PATTERN.search((ROOT / "docs" / "evolution.md").read_text()), "the default folder is documented"
