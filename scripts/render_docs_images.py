"""Render the pictures of docs/cli/*.md from a real run: python scripts/render_docs_images.py RUN

Terminal output is drawn as an image with matplotlib; the lineage and fitness pictures are the
files the commands themselves write.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evolveopt.cli import main  # noqa: E402

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


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


def main_cli(run: str) -> None:
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
        start = re.search(r"^class \w+\(torch\.optim\.Optimizer\)", text, re.M).start()
        doc = text[start:text.index("    def __init__", start)]
        terminal_png(f"evolveopt export {run} -o champion.py; sed -n '/^class/,/__init__/p' champion.py", doc,
                     IMAGES / "export.png", max_lines=60)
    capture(["report", run])
    shutil.copy(Path(run) / "report" / "fitness.png", IMAGES / "report_fitness.png")


if __name__ == "__main__":
    main_cli(sys.argv[1])
