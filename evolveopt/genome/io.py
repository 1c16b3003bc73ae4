"""Reading and writing genome files (YAML, ``yaml.safe_load`` only) and resolving named genomes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from evolveopt.errors import GenomeError
from evolveopt.genome.schema import Genome, parse_genome, to_dict

MAX_GENOME_BYTES = 1_000_000
GENOMES_ENV = "EVOLVEOPT_GENOMES"


def bundled_genome_dir() -> Path:
    """The ``genomes/`` folder that ships with evolveopt (repository root, or inside the package)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "genomes", package / "genomes"):
        if candidate.is_dir():
            return candidate
    return package.parent / "genomes"


def genome_dirs() -> list[Path]:
    """Where bare names are looked up, in order: $EVOLVEOPT_GENOMES, ./genomes, the bundled set."""
    dirs = [Path(p) for p in os.environ.get(GENOMES_ENV, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "genomes", bundled_genome_dir()]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def named_genomes() -> list[str]:
    """Names of every genome file found in :func:`genome_dirs` (``discovered/x`` for subfolders)."""
    names: set[str] = set()
    for d in genome_dirs():
        for path in d.rglob("*.yaml"):
            names.add(path.relative_to(d).with_suffix("").as_posix())
    return sorted(names)


def resolve_genome_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A path as given if it exists, else ``<genome dir>/NAME.yaml`` for a bare name."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    if not text.endswith((".yaml", ".yml")):
        for d in genome_dirs():
            candidate = d / f"{text}.yaml"
            if candidate.is_file():
                return candidate
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        raise GenomeError(f"{text}: no such genome file")
    known = ", ".join(named_genomes()) or "none found"
    raise GenomeError(f"no genome named '{text}' (named genomes: {known})")


def read_genome_file(path: str | os.PathLike[str]) -> Genome:
    """Load and validate one genome file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise GenomeError(f"{path}: cannot read: {exc.strerror}") from None
    if size > MAX_GENOME_BYTES:
        raise GenomeError(
            f"{path}: file is {size / 1e6:.1f} MB; genome files are limited to {MAX_GENOME_BYTES / 1e6:.0f} MB"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise GenomeError(f"{path}: cannot read as UTF-8 text: {exc}") from None
    return parse_genome_text(text, source=str(path))


def parse_genome_text(text: str, source: str = "genome") -> Genome:
    """Validate genome YAML text."""
    if not text.strip():
        raise GenomeError(f"{source}: file is empty (a genome needs schema_version, genes and terms)")
    return parse_genome(_safe_yaml(text, source), source=source)


def _safe_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as exc:
        line = f"line {exc.problem_mark.line + 1}: " if exc.problem_mark else ""
        raise GenomeError(
            f"{source}: {line}YAML tag is not allowed ({exc.problem}); genome files hold plain data only"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GenomeError(f"{source}: {line}not valid YAML: {problem}") from None


def load_genome(genome: str | os.PathLike[str] | Genome | dict[str, Any]) -> Genome:
    """A genome from a bare name (``"adan"`` → ``genomes/adan.yaml``), a file path, a dict or a Genome."""
    if isinstance(genome, Genome):
        return genome
    if isinstance(genome, dict):
        return parse_genome(genome)
    return read_genome_file(resolve_genome_path(genome))


def dump_genome(genome: Genome, header: str = "") -> str:
    """YAML text that :func:`parse_genome_text` reads back to an equal genome."""
    body = yaml.safe_dump(to_dict(genome), sort_keys=False, allow_unicode=True, width=100)
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + body


def save_genome(genome: Genome, path: str | os.PathLike[str], header: str = "") -> Path:
    """Write a genome file atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_genome(genome, header), encoding="utf-8")
    os.replace(tmp, path)
    return path
