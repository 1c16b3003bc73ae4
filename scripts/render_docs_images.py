"""Regenerate the pictures of docs/cli/*.md and the names README.md and docs/cli quote, from the current code:

    python scripts/render_docs_images.py [RUN]        # RUN: runs/qs, the run the docs show

Without a finished RUN it first runs ``evolveopt evolve experiments/quickstart.yaml --out RUN`` (the
config's seed fixes the champion; ~45 s on 2 quiet cores); a finished RUN is reused, so delete it
to rerun after a code change. Terminal output is drawn as an image with matplotlib; the lineage
and fitness pictures are the files the commands themselves write. Then the champion's exported
class name (``Quickstart<ID>``) is written wherever README.md and docs/cli/*.md quote it, and the
champion is printed for docs/performance.md. ``tests/test_docs.py`` checks the names and paths.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evolveopt.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
DOCS_RUN = "runs/qs"
QUICKSTART = "experiments/quickstart.yaml"
CLASS_QUOTED = re.compile(r"\bQuickstart\d+\b")  # the exported class of the quickstart champion, as the docs name it


def quoting_docs() -> list[Path]:
    """The pages that quote the quickstart champion's class name."""
    return [ROOT / "README.md", *sorted((ROOT / "docs" / "cli").glob("*.md"))]


def capture(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"evolveopt {' '.join(argv)} failed with {code}")
    return out.getvalue()


def terminal_png(command: str, text: str, path: Path, max_lines: int = 48) -> None:
    lines = [f"$ {command}"] + text.rstrip("\n").splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["..."]
    width = max(len(line) for line in lines)
    fig = plt.figure(figsize=(max(6.0, width * 0.075), 0.2 * len(lines) + 0.4), dpi=110)
    fig.patch.set_facecolor("#1e1e1e")
    fig.text(0.01, 0.98, "\n".join(lines), family="DejaVu Sans Mono", fontsize=9, color="#e8e8e8", va="top")
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)


def finished_run(run: str) -> None:
    """Run the quickstart into ``run`` unless a finished run is there."""
    from evolveopt.finished_runs import run_status

    if Path(run).is_dir() and run_status(Path(run)).status == "complete":
        print(f"reusing {run} (delete it to rerun with the current code)", file=sys.stderr)
        return
    if Path(run).exists():
        raise SystemExit(f"{run} holds an unfinished or damaged run: delete it first")
    capture(["evolve", QUICKSTART, "--out", run])


def render_pictures(run: str) -> str:
    """Every picture of docs/cli; returns the exported champion's class name."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    terminal_png("evolveopt show adan", capture(["show", "adan"]), IMAGES / "show.png")
    terminal_png(f"evolveopt diff adam {run}", capture(["diff", "adam", run]), IMAGES / "diff.png")
    terminal_png(f"evolveopt lineage {run} --depth 2", capture(["lineage", run, "--depth", "2"]),
                 IMAGES / "lineage_text.png")
    capture(["lineage", run, "--format", "png", "-o", str(IMAGES / "lineage.png")])
    with tempfile.TemporaryDirectory() as tmp:
        module = Path(tmp) / "champion.py"
        capture(["export", run, "-o", str(module)])
        text = module.read_text()
        found = re.search(r"^class (\w+)\(torch\.optim\.Optimizer\)", text, re.M)
        doc = text[found.start():text.index("    def __init__", found.start())]
        terminal_png(f"evolveopt export {run} -o champion.py; sed -n '/^class/,/__init__/p' champion.py", doc,
                     IMAGES / "export.png", max_lines=60)
    capture(["report", run, "--checkup-seeds", "0"])  # the picture only; the checkup adds minutes, no picture
    shutil.copy(Path(run) / "report" / "fitness.png", IMAGES / "report_fitness.png")
    return found.group(1)


def quote_class_name(name: str) -> None:
    """Write the champion's class name wherever the docs quote one."""
    for page in quoting_docs():
        text = page.read_text(encoding="utf-8")
        if CLASS_QUOTED.search(text):
            page.write_text(CLASS_QUOTED.sub(name, text), encoding="utf-8")
            print(f"{page.relative_to(ROOT)}: quotes {name}", file=sys.stderr)


def main_cli(run: str = DOCS_RUN) -> None:
    os.chdir(ROOT)  # the commands drawn name paths as the docs do, relative to the repository
    finished_run(run)
    quote_class_name(render_pictures(run))
    print(capture(["show", run]), end="")  # the champion for docs/performance.md's quickstart paragraph


if __name__ == "__main__":
    main_cli(*sys.argv[1:2])
