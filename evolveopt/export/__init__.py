"""Export genomes: a standalone Python optimizer (torch only) or a genome YAML file.

``evolveopt export RUN|GENOME [--rank K | --id ID] [--format py|yaml] -o FILE``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolveopt.errors import EvolveOptError
from evolveopt.genome.canonical import genome_hash
from evolveopt.genome.io import dump_genome
from evolveopt.genome.schema import Genome
from evolveopt.run_directory import output_file


def export_text(genome: Genome, fmt: str, label: str, provenance: dict[str, Any]) -> str:
    """The exported file's text: ``py`` (a module with one Optimizer subclass) or ``yaml``."""
    provenance = {**provenance, "canonical hash": genome_hash(genome)}
    if fmt == "yaml":
        header = "\n".join([f"{label}: exported by evolveopt"] + [f"{k}: {v}" for k, v in provenance.items()])
        return dump_genome(genome, header=header)
    if fmt == "py":
        from evolveopt.export.pymodule import class_name_for, export_python

        return export_python(genome, class_name_for(label), provenance)
    raise EvolveOptError(f"unknown export format '{fmt}' (formats: py, yaml)")


def write_export(text: str, path: str | Path) -> Path:
    with output_file(path, "the export") as out:
        out.write_text(text, encoding="utf-8")
    return out
