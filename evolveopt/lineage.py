"""Genealogy of a run: the ancestry DAG of an individual in text, DOT, ALife CSV, JSON, PNG or HTML.

Nodes come from ``lineage.jsonl`` (one record per individual ever born: id, parent ids,
operators, generation, fitness). Crossover gives a child two parents, so an ancestry is a DAG,
not a tree. Everything is iterative (no recursion), so long mutation chains are fine.
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from evolveopt.errors import EvolveOptError
from evolveopt.run_directory import RunDir, RunDirError, output_file
from evolveopt.extras import optional

FORMATS = ("text", "dot", "csv", "json", "png", "svg", "html")
FILE_FORMATS = ("png", "svg", "html")  # the command line writes these only with -o FILE
PICTURES = ("png", "svg")  # drawn by matplotlib straight into a file


@dataclass(frozen=True)
class Node:
    id: int
    parents: tuple[int, ...]
    operators: tuple[str, ...]
    generation: int
    fitness: float | None
    rung: int | None
    hash: str

    @property
    def label(self) -> str:
        fitness = "n/a" if self.fitness is None else f"{self.fitness:+.4f}"
        return f"#{self.id} gen {self.generation} fitness {fitness} rung {self.rung} [{', '.join(self.operators)}]"


class Lineage:
    """Every individual of a run and its parents."""

    def __init__(self, nodes: Iterable[Node]):
        self.nodes = {n.id: n for n in nodes}

    @classmethod
    def from_run(cls, path: str | Path) -> "Lineage":
        rundir = RunDir(path)
        rundir.check_exists()
        records = rundir.read_lines("lineage.jsonl")
        if not records:
            raise RunDirError(f"{rundir.path}: no completed generation yet (lineage.jsonl is empty)")
        return cls(Node(r["id"], tuple(r["parents"]), tuple(r["operators"]), r["generation"], r.get("fitness"),
                        r.get("rung"), r["hash"]) for r in records)

    def ancestry(self, ident: int, depth: int | None = None) -> list[Node]:
        """The individual and its ancestors up to ``depth`` generations of descent, newest first."""
        if ident not in self.nodes:
            raise EvolveOptError(f"no individual #{ident} in this run (ids run {min(self.nodes)}..{max(self.nodes)})")
        seen, frontier, order = {ident}, [(ident, 0)], [ident]
        while frontier:
            current, level = frontier.pop()
            if depth is not None and level >= depth:
                continue
            for parent in self.nodes[current].parents:
                if parent not in seen and parent in self.nodes:
                    seen.add(parent)
                    order.append(parent)
                    frontier.append((parent, level + 1))
        return sorted((self.nodes[i] for i in order), key=lambda n: (-n.generation, n.id))


# ----------------------------------------------------------------------------- formats


def to_text(lineage: Lineage, ident: int, depth: int | None = None) -> str:
    """An indented tree from the individual back to its ancestors; a shared ancestor is
    expanded once and referred to afterwards."""
    keep = {n.id for n in lineage.ancestry(ident, depth)}
    lines, expanded = [], set()
    stack = [(ident, "", "")]
    while stack:
        current, prefix, branch = stack.pop()
        if current in expanded:
            lines.append(f"{prefix}{branch}#{current} (shown above)")
            continue
        expanded.add(current)
        lines.append(f"{prefix}{branch}{lineage.nodes[current].label}")
        parents = [p for p in lineage.nodes[current].parents if p in keep]
        child_prefix = prefix + ("" if not branch else ("    " if branch == "└── " else "│   "))
        for i, parent in reversed(list(enumerate(parents))):
            stack.append((parent, child_prefix, "└── " if i == len(parents) - 1 else "├── "))
    return "\n".join(lines)


def to_dot(lineage: Lineage, ident: int, depth: int | None = None) -> str:
    """Graphviz DOT, edges from parent to child labelled with the child's operators."""
    nodes = lineage.ancestry(ident, depth)
    keep = {n.id for n in nodes}
    out = ["digraph lineage {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica"];']
    for n in sorted(nodes, key=lambda n: n.id):
        fitness = "n/a" if n.fitness is None else f"{n.fitness:+.4f}"
        color = ', style=filled, fillcolor="#ffd966"' if n.id == ident else ""
        out.append(f'  "{n.id}" [label="#{n.id}\\ngen {n.generation}\\nfitness {fitness}"{color}];')
    for n in sorted(nodes, key=lambda n: n.id):
        for parent in n.parents:
            if parent in keep:
                out.append(f'  "{parent}" -> "{n.id}" [label="{_escape(" + ".join(n.operators))}"];')
    out.append("}")
    return "\n".join(out) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


CSV_COLUMNS = ("id", "ancestor_list", "origin_time", "operators", "fitness", "rung", "hash")


def to_csv(lineage: Lineage, ident: int | None = None, depth: int | None = None) -> str:
    """The ALife phylogeny data standard: ``id``, ``ancestor_list`` (``[none]`` for roots),
    ``origin_time`` (the generation), plus our columns."""
    nodes = lineage.ancestry(ident, depth) if ident is not None else sorted(lineage.nodes.values(), key=lambda n: n.id)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for n in sorted(nodes, key=lambda n: n.id):
        ancestors = "[" + ",".join(str(p) for p in n.parents) + "]" if n.parents else "[none]"
        writer.writerow([n.id, ancestors, n.generation, "|".join(n.operators),
                         "" if n.fitness is None else repr(n.fitness), "" if n.rung is None else n.rung, n.hash])
    return buffer.getvalue()


def to_json(lineage: Lineage, ident: int, depth: int | None = None) -> str:
    nodes = lineage.ancestry(ident, depth)
    return json.dumps([{"id": n.id, "parents": list(n.parents), "operators": list(n.operators),
                        "generation": n.generation, "fitness": n.fitness, "rung": n.rung, "hash": n.hash}
                       for n in nodes], indent=1) + "\n"


def draw(lineage: Lineage, ident: int, path: Path, depth: int | None = None, title: str = "") -> Path:
    """Fitness of every individual over generations (grey), the ancestry of ``ident`` in colour."""
    matplotlib = optional("matplotlib", "plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    nodes = list(lineage.nodes.values())
    scored = [n for n in nodes if n.fitness is not None]
    ancestry = lineage.ancestry(ident, depth)
    keep = {n.id for n in ancestry}
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    ax.scatter([n.generation for n in scored], [n.fitness for n in scored], s=6, c="#bbbbbb", lw=0,
               label="every individual")
    segments = [((lineage.nodes[p].generation, lineage.nodes[p].fitness), (n.generation, n.fitness))
                for n in ancestry for p in n.parents
                if p in keep and n.fitness is not None and lineage.nodes[p].fitness is not None]
    ax.add_collection(LineCollection(segments, colors="#d62728", linewidths=1.0, alpha=0.8))
    points = [n for n in ancestry if n.fitness is not None]
    ax.scatter([n.generation for n in points], [n.fitness for n in points], s=18, c="#d62728", zorder=3,
               label=f"ancestry of #{ident}")
    me = lineage.nodes[ident]
    if me.fitness is not None:
        ax.scatter([me.generation], [me.fitness], s=120, marker="*", c="#ffbf00", edgecolors="black", zorder=4,
                   label=f"#{ident}")
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness at the rung reached (vs tuned Adam)")
    ax.set_title(title or f"lineage of #{ident}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def to_html(lineage: Lineage, ident: int, depth: int | None = None, title: str = "") -> str:
    """One self-contained HTML page: the picture as inline SVG and a table of the ancestry."""
    svg = io.StringIO()
    _draw_to(svg, lineage, ident, depth, title)
    rows = "\n".join(
        f"<tr><td>#{n.id}</td><td>{n.generation}</td><td>{'' if n.fitness is None else f'{n.fitness:+.4f}'}</td>"
        f"<td>{', '.join('#' + str(p) for p in n.parents)}</td><td>{html.escape(', '.join(n.operators))}</td></tr>"
        for n in lineage.ancestry(ident, depth))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title or 'lineage')}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
            f"<h1>{html.escape(title or f'Lineage of #{ident}')}</h1>{svg.getvalue()}"
            "<table><tr><th>id</th><th>generation</th><th>fitness</th><th>parents</th><th>operators</th></tr>"
            f"{rows}</table></body></html>\n")


def _draw_to(stream: io.StringIO, lineage: Lineage, ident: int, depth: int | None, title: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = draw(lineage, ident, Path(tmp) / "lineage.svg", depth, title)
        text = path.read_text()
    stream.write(text[text.index("<svg"):])


def render(lineage: Lineage, ident: int, fmt: str, depth: int | None = None, title: str = "") -> str:
    """The text of ``text``, ``dot``, ``csv``, ``json`` or ``html`` (``png``/``svg`` are only written: :func:`write`)."""
    if fmt not in FORMATS:
        raise EvolveOptError(f"unknown lineage format '{fmt}' (formats: {', '.join(FORMATS)})")
    if fmt in PICTURES:
        raise EvolveOptError(f"lineage --format {fmt} writes a file: give -o FILE")
    writers = {"text": lambda: to_text(lineage, ident, depth) + "\n", "dot": lambda: to_dot(lineage, ident, depth),
               "csv": lambda: to_csv(lineage, ident, depth), "json": lambda: to_json(lineage, ident, depth),
               "html": lambda: to_html(lineage, ident, depth, title)}
    return writers[fmt]()


def write(lineage: Lineage, ident: int, fmt: str, out: str | Path, depth: int | None = None, title: str = "") -> Path:
    """Any format into the file ``out``; one :class:`OutputError` line if it cannot be written there."""
    with output_file(out, f"the {fmt} lineage") as path:
        if fmt in PICTURES:
            draw(lineage, ident, path, depth, title)
        else:
            path.write_text(render(lineage, ident, fmt, depth, title), encoding="utf-8")
    return path


def champion_id(path: str | Path) -> int:
    from evolveopt.finished_runs import select_individual

    return int(select_individual(path)["id"])


def lineage_summary(lineage: Lineage, ident: int) -> dict[str, Any]:
    ancestry = lineage.ancestry(ident)
    operators: dict[str, int] = {}
    for node in ancestry:
        for op in node.operators:
            operators[op] = operators.get(op, 0) + 1
    return {"ancestors": len(ancestry) - 1, "operators": operators,
            "first_generation": min(n.generation for n in ancestry)}
