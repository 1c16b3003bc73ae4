"""Canonical form, content hash and structure key of a genome.

Two genomes that describe the same rule get the same canonical form, hence the same hash:

1. gene values are rounded to the canonical grid (4 significant digits; on 1 − β for rates);
   a term that takes the sign of a preconditioned value drops the preconditioner, since
   sign(y/(√v + ε)) = sign(y) for a positive denominator (its buffers would be wasted memory),
   unless the preconditioner is stale (its term is 0 at t = 1), clips (a scheduled threshold may be 0),
   scales its output by a scheduled gene (atan2's a·atan2(y, b·√v̂) is 0 while a warms up from 0)
   or comes before the momentum;
2. every term gets an explicit weight gene (a missing weight is a gene of value 1);
3. terms of weight 0 are dropped, and terms equal up to their (untied) weight are merged
   into one term whose weight is the sum;
4. terms are sorted by their structure and weight genes renamed w1, w2, ... in that order;
5. genes nothing refers to, schedules of genes nothing refers to, the name and the description are dropped;
6. a fallback sub-rule's terms (weightless) are sorted, with rule 1 applied to them, and an lr
   ratio of 1 is dropped.

The *structure key* hashes the canonical form without gene values: genomes with equal keys
compile to the same rule and train together with per-member gene tensors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Mapping

from evolveopt.genome.genes import WEIGHT_GENE, round_gene
from evolveopt.genome.schema import Fallback, Genome, Term, referenced_genes, term_to_dict, to_dict


def canonical_form(genome: Genome) -> Genome:
    """The canonical representative of ``genome``'s rule (see module docstring)."""
    genes = {name: round_gene(name, value) for name, value in genome.genes.items()}
    entries: list[list[Any]] = []  # [term without weight, weight value, tied gene or None]
    untied_index: dict[str, int] = {}
    for term in genome.terms:
        bare = replace(term, weight=None, precondition=None if _sign_drops_precondition(term, genome.gene_schedules)
                       else term.precondition)
        value = 1.0 if term.weight is None else genes[term.weight]
        tied = term.weight is not None and not WEIGHT_GENE.match(term.weight)
        key = _sort_key(bare)
        if not tied and key in untied_index:
            entries[untied_index[key]][1] += value
            continue
        if not tied:
            untied_index[key] = len(entries)
        entries.append([bare, value, term.weight if tied else None])
    entries = sorted((e for e in entries if e[1] != 0.0), key=lambda e: (_sort_key(e[0]), e[2] or ""))
    if not entries:  # every weight cancelled: keep the rule as given, it is valid data
        fallback = _canonical_fallback(genome.fallback, genes, genome.gene_schedules)
        return replace(genome, genes=genes, name="", description="", fallback=fallback)
    out_genes = {k: v for k, v in genes.items() if not WEIGHT_GENE.match(k)}
    terms = []
    for index, (bare, value, tied) in enumerate(entries, start=1):
        name = tied or f"w{index}"
        if tied is None:
            out_genes[name] = round_gene(name, value)
        terms.append(replace(bare, weight=name))
    canonical = replace(genome, genes=out_genes, terms=tuple(terms), name="", description="",
                        fallback=_canonical_fallback(genome.fallback, genes, genome.gene_schedules), gene_schedules={})
    used = referenced_genes(canonical)
    canonical = replace(canonical, gene_schedules={k: s for k, s in genome.gene_schedules.items() if k in used})
    used = referenced_genes(canonical)
    return replace(canonical, genes={k: out_genes[k] for k in sorted(out_genes) if k in used})


def _canonical_fallback(fb: Fallback | None, genes: dict[str, float], scheduled: Mapping[str, Any]) -> Fallback | None:
    """A fallback's terms (which carry no weight) sorted, sign terms without a preconditioner (rule 1);
    an lr ratio of 1 is no ratio."""
    if fb is None:
        return None
    terms = [replace(t, precondition=None) if _sign_drops_precondition(t, scheduled) else t for t in fb.terms]
    ratio = None if fb.lr_ratio is not None and genes[fb.lr_ratio] == 1.0 else fb.lr_ratio
    return replace(fb, terms=tuple(sorted(terms, key=_sort_key)), lr_ratio=ratio)


def _sign_drops_precondition(term: Term, scheduled: Mapping[str, Any]) -> bool:
    pre = term.precondition
    return (term.sign and pre is not None and not pre.stale and pre.clip is None  # a scheduled clip may be 0
            and pre.a not in scheduled  # a scheduled atan2 scale may be 0
            and term.order == "momentum_first")


def canonical_dict(genome: Genome) -> dict[str, Any]:
    return to_dict(canonical_form(genome))


def genome_hash(genome: Genome) -> str:
    """Stable content hash: equal rules hash equal (16 hex digits of SHA-256)."""
    return _digest(canonical_dict(genome))


def structure_key(genome: Genome) -> str:
    """Hash of the canonical structure alone (gene names kept, values dropped)."""
    data = canonical_dict(genome)
    data["genes"] = sorted(data["genes"])
    return _digest(data)


def _digest(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sort_key(term: Term) -> str:
    return json.dumps(term_to_dict(term), sort_keys=True)
