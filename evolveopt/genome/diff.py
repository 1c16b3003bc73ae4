"""What differs between two genomes: terms, loci and genes of their canonical forms."""

from __future__ import annotations

import json
from typing import Any

from evolveopt.genome.canonical import canonical_form
from evolveopt.genome.registry import LOCI
from evolveopt.genome.schema import Genome, locus_to_data, term_to_dict, to_dict


def _term_key(term: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in term.items() if k != "weight"}, sort_keys=True)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def diff_genomes(a: Genome, b: Genome, names: tuple[str, str] = ("A", "B")) -> list[str]:
    """Lines describing how ``b`` differs from ``a`` (empty when they are the same rule)."""
    ca, cb = canonical_form(a), canonical_form(b)
    da, db = to_dict(ca), to_dict(cb)
    lines = []
    terms_a = {_term_key(term_to_dict(t)): t for t in ca.terms}
    terms_b = {_term_key(term_to_dict(t)): t for t in cb.terms}
    for key in terms_a.keys() - terms_b.keys():
        lines.append(f"term only in {names[0]}: {_show(json.loads(key))}")
    for key in terms_b.keys() - terms_a.keys():
        lines.append(f"term only in {names[1]}: {_show(json.loads(key))}")
    for key in terms_a.keys() & terms_b.keys():
        wa, wb = _weight(ca, terms_a[key]), _weight(cb, terms_b[key])
        if wa != wb:
            lines.append(f"term weight {wa:g} → {wb:g}: {_show(json.loads(key))}")
    for key, locus in LOCI.items():
        if da.get(key) != db.get(key):
            default = "none" if locus.default is None else locus_to_data(locus, locus.default)
            lines.append(f"{key}: {_show(da.get(key, default))} → {_show(db.get(key, default))}")
    if da.get("fallback") != db.get("fallback"):
        lines.append(f"fallback: {_show(da.get('fallback'))} → {_show(db.get('fallback'))}")
    if da.get("gene_schedules") != db.get("gene_schedules"):
        lines.append(f"gene_schedules: {_show(da.get('gene_schedules'))} → {_show(db.get('gene_schedules'))}")
    weights = {t.weight for t in ca.terms + cb.terms if t.weight and t.weight.startswith("w")}
    for gene in sorted((set(ca.genes) | set(cb.genes)) - weights):
        va, vb = ca.genes.get(gene), cb.genes.get(gene)
        if va != vb:
            lines.append(f"gene {gene}: {'absent' if va is None else f'{va:g}'} → {'absent' if vb is None else f'{vb:g}'}")
    return lines


def _weight(genome: Genome, term) -> float:
    return 1.0 if term.weight is None else genome.genes[term.weight]
