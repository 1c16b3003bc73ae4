"""The genome: an optimizer update rule as plain, validated, immutable data.

A genome is *structure* (which terms, signals, statistics, normalizers, schedule, decay mode;
every field below except ``genes``) plus *genes* (named floats). Structure fields refer to genes
by name, so genomes with one structure differ only in their gene values and can be trained
together, one gene tensor per name.

The update it describes, in the order the compiler applies it (η_t = lr · schedule(t)):

    g  ← ±∇f(θ)                                 (maximize flips the sign)
    g  ← clip(g)                                 clip: value | tensor_norm | global_norm
    g  ← g + λθ                                  weight_decay.mode = l2
    ĝ  ← g + α·EMA_β(g_t − g_{t−1})              adaptor (ALTO's "E")
    ĝ  ← d·ĝ, η_t ← d·η_t, ε ← d'·ε              estimator (Prodigy: d from sums over every parameter)
    θ  ← θ(1 − η_t λ)                            weight_decay.mode = decoupled
    u  ← Σ_k w_k · T_k(ĝ)                        terms: signal → momentum → precondition → sign
    u  ← u + λθ                                  weight_decay.mode = in_direction
    u  ← τ(θ, u)·u                               layerwise: trust_ratio | rms_norm
    u  ← ξ·u                                     friction (diffGrad)
    θ  ← θ − η_t u   or (θ − η_t u)/(1 + η_t λ)  weight_decay.mode = proximal

Loss feedback (Eve) scales every precondition denominator: d_t·√v̂ + ε.

This module imports nothing from torch: genomes travel as plain data.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from evolveopt.errors import GenomeError
from evolveopt.genome.genes import as_written_number, gene_spec, known_gene_names, range_problem, role_problem
from evolveopt.genome.registry import (HORIZON_SCHEDULES, LOCI, Adaptor, Cautious, Clip, Layerwise, Locus,
                                       LossFeedback, Schedule, WeightDecay, locus_genes)

SCHEMA_VERSION = 2  # files say the lowest version that expresses them (1 unless a v2 locus is used)
READABLE_VERSIONS = (1, 2)

SIGNALS = ("grad", "grad_diff", "nesterov_grad", "residual")
TERM_SIGNALS = ("grad", "grad_diff", "nesterov_grad")
MOMENTUM_KINDS = ("ema", "nesterov", "interp", "nadam")
PRECONDITION_KINDS = ("ema", "max", "sum", "belief")
EPS_MODES = ("outside", "raw", "inside")
# The whole-genome loci around the terms, in registry order (diff and crossover use it): registry.py.
CLIP_MODES = LOCI["clip"].kinds
LAYERWISE_KINDS = LOCI["layerwise"].kinds
TRUST_NORMS = LOCI["layerwise"].variant("trust_ratio").fields[2].options
FRICTIONS = ("none", *LOCI["friction"].kinds)
DECAY_MODES = LOCI["weight_decay"].kinds
SCHEDULES = LOCI["schedule"].kinds
MAX_TERMS = 6


@dataclass(frozen=True)
class Signal:
    """The quantity a statistic averages.

    grad: ĝ;  grad_diff: d_t = ĝ_t − ĝ_{t−1} (d_1 = 0);  nesterov_grad: ĝ + β·d_t (Adan);
    residual: ĝ − m_t, the gradient around its prediction m (AdaBelief; precondition only).
    """

    kind: str = "grad"
    beta: str | None = None


@dataclass(frozen=True)
class Momentum:
    """First-moment statistic of a term's signal x, buffer m.

    ema:      m ← βm + (1−β)x (dampening) or βm + x;  out m, or m/(1−β^t) with bias_correction
    nesterov: same buffer;  out (1−β)x + βm (dampening) or x + βm  (torch SGD nesterov)
    interp:   out c = μ·m_{t−1} + (1−μ)x with μ = mix, then m ← βm + (1−β)x  (Lion)
    nadam:    m ← βm + (1−β)x;  μ_t = β(1 − ½·0.96^{tψ});
              out (1−μ_t)/(1−Πμ)·x + μ_{t+1}/(1−Πμ·μ_{t+1})·m  (Dozat; torch NAdam)
    """

    kind: str
    beta: str
    dampening: bool = True
    bias_correction: bool = False
    mix: str | None = None
    decay: str | None = None


@dataclass(frozen=True)
class Precondition:
    """Second-moment statistic v of ``signal`` and the division by its root.

    ema:    v ← βv + (1−β)x²            max: v as ema, v̄ ← max(v̄, v) (AMSGrad)
    sum:    v ← v + x² (Adagrad)         belief: v ← βv + (1−β)x² + ε (AdaBelief)
    eps_mode outside: y/(√v̂ + ε);  raw: y·√(1−β^t)/(√v + ε);  inside: y/√(v̂ + ε)
    rectify: RAdam's r_t·(normalized y) when ρ_t > 5, else the unnormalized y.
    """

    kind: str
    eps: str
    beta: str | None = None
    signal: Signal = field(default_factory=Signal)
    eps_mode: str = "outside"
    bias_correction: bool = False
    rectify: bool = False


@dataclass(frozen=True)
class Term:
    """One weighted term T_k of the direction: signal → momentum → precondition → sign."""

    signal: Signal = field(default_factory=Signal)
    weight: str | None = None  # gene name; None means a fixed weight of 1
    momentum: Momentum | None = None
    precondition: Precondition | None = None
    sign: bool = False


@dataclass(frozen=True)
class Genome:
    """A complete update rule. Build with :func:`parse_genome`; it validates everything.

    ``loci`` holds the whole-genome primitives the rule has (registry.py; keys in registry
    order, defaults left out); each is also an attribute: ``genome.clip``, ``genome.schedule``...
    """

    genes: dict[str, float]
    terms: tuple[Term, ...]
    loci: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    description: str = ""

    def __getattr__(self, name: str) -> Any:
        locus = LOCI.get(name)
        if locus is None or name.startswith("__"):
            raise AttributeError(name)
        return self.loci.get(name, locus.default)

    def with_genes(self, **values: float) -> "Genome":
        """A copy with some gene values replaced (names must exist; ranges are checked)."""
        genes = dict(self.genes)
        for key, value in values.items():
            if key not in genes:
                raise GenomeError(
                    f"{self.label}: genes.{key}: this genome has no gene '{key}' "
                    f"(genes: {', '.join(self.genes)})"
                )
            genes[key] = value
        return parse_genome(to_dict(replace(self, genes=genes)), source=self.label)

    @property
    def label(self) -> str:
        return f"genome '{self.name}'" if self.name else "genome"

    @property
    def uses_loss(self) -> bool:
        return self.loss_feedback is not None


# ----------------------------------------------------------------------------- parsing


class _Node:
    """A value inside the genome document, with its path for error messages."""

    def __init__(self, value: Any, path: str, source: str):
        self.value, self.path, self.source = value, path, source

    def fail(self, problem: str) -> GenomeError:
        where = f"{self.source}: {self.path}" if self.path else self.source
        return GenomeError(f"{where}: {problem}")

    def child(self, key: str | int) -> "_Node":
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        else:
            path = f"{self.path}.{key}" if self.path else key
        value = self.value[key] if isinstance(key, int) else self.value.get(key)
        return _Node(value, path, self.source)

    def mapping(self, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> "_Node":
        if not isinstance(self.value, dict):
            raise self.fail(f"expected a mapping, got {_type_name(self.value)}")
        for key in self.value:
            if key not in allowed:
                raise self.fail(f"unknown key '{key}' (allowed: {', '.join(allowed)})")
        for key in required:
            if key not in self.value:
                raise self.fail(f"missing required key '{key}'")
        return self

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and key in self.value

    def is_none(self) -> bool:
        return self.value is None or self.value == "none"

    def choice(self, options: tuple[str, ...]) -> str:
        if not isinstance(self.value, str) or self.value not in options:
            shown = repr(self.value) if isinstance(self.value, str) else _type_name(self.value)
            raise self.fail(f"unknown value {shown} (allowed: {', '.join(options)})")
        return self.value

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            raise self.fail(f"expected true or false, got {_type_name(self.value)}")
        return self.value

    def text(self) -> str:
        if self.value is None:
            return ""
        if not isinstance(self.value, str):
            raise self.fail(f"expected a string, got {_type_name(self.value)}")
        return self.value

    def gene_ref(self, genes: dict[str, float], role: str | tuple[str, ...], optional: bool = False) -> str | None:
        """The name of a gene of this genome that can fill a field of ``role`` (see genes.py)."""
        if self.value is None and optional:
            return None
        if not isinstance(self.value, str):
            raise self.fail(f"expected the name of a gene, got {_type_name(self.value)}")
        if self.value not in genes:
            raise self.fail(f"unknown gene '{self.value}' (genes of this genome: {', '.join(genes)})")
        problem = role_problem(self.value, (role,) if isinstance(role, str) else role)
        if problem:
            raise self.fail(problem)
        return self.value


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _kind_node(node: _Node, allowed: tuple[str, ...], tag: str = "kind") -> tuple[str, _Node]:
    """Accept either ``kind`` or ``{kind: kind, ...}``; return the kind and the mapping node."""
    if isinstance(node.value, str):
        return node.value, _Node({tag: node.value}, node.path, node.source)
    node.mapping(allowed, required=(tag,))
    return node.value[tag], node


def _parse_genes(node: _Node) -> dict[str, float]:
    if not isinstance(node.value, dict) or not node.value:
        raise node.fail(f"expected a mapping of gene names to numbers (at least 'lr'), got {_type_name(node.value)}")
    genes: dict[str, float] = {}
    for name, value in node.value.items():
        item = node.child(name)
        spec = gene_spec(name) if isinstance(name, str) else None
        if spec is None:
            raise item.fail(f"unknown gene '{name}' (allowed: {known_gene_names()})")
        value = as_written_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise item.fail(f"expected a number, got {_type_name(value)}")
        problem = range_problem(name, value)
        if problem:
            raise item.fail(problem)
        genes[name] = float(value)
    if "lr" not in genes:
        raise node.fail("missing required gene 'lr'")
    return genes


def _parse_signal(node: _Node, genes: dict[str, float], allowed: tuple[str, ...]) -> Signal:
    if node.value is None:
        return Signal()
    kind, node = _kind_node(node, ("kind", "beta"))
    node.child("kind").choice(allowed)
    if kind == "nesterov_grad":
        return Signal(kind, node.child("beta").gene_ref(genes, "rate"))
    if node.has("beta"):
        raise node.child("beta").fail(f"signal '{kind}' takes no beta")
    return Signal(kind)


def _parse_momentum(node: _Node, genes: dict[str, float]) -> Momentum | None:
    if node.is_none():
        return None
    keys = ("kind", "beta", "dampening", "bias_correction", "mix", "decay")
    node.mapping(keys, required=("kind", "beta"))
    kind = node.child("kind").choice(MOMENTUM_KINDS)
    allowed = {
        "ema": ("dampening", "bias_correction"),
        "nesterov": ("dampening", "bias_correction"),
        "interp": ("mix",),
        "nadam": ("decay",),
    }[kind]
    for key in ("dampening", "bias_correction", "mix", "decay"):
        if node.has(key) and key not in allowed:
            raise node.child(key).fail(f"momentum '{kind}' takes no '{key}' (it takes: beta, {', '.join(allowed)})")
    momentum = Momentum(
        kind=kind,
        beta=node.child("beta").gene_ref(genes, "rate"),
        dampening=node.child("dampening").boolean(True),
        bias_correction=node.child("bias_correction").boolean(False),
        mix=node.child("mix").gene_ref(genes, "rate", optional=kind != "interp"),
        decay=node.child("decay").gene_ref(genes, "momentum_decay", optional=kind != "nadam"),
    )
    if momentum.bias_correction and not momentum.dampening:
        raise node.child("bias_correction").fail("bias correction needs dampening: true")
    return momentum


def _parse_precondition(node: _Node, genes: dict[str, float], has_momentum: bool) -> Precondition | None:
    if node.is_none():
        return None
    keys = ("kind", "beta", "eps", "signal", "eps_mode", "bias_correction", "rectify")
    node.mapping(keys, required=("kind", "eps"))
    kind = node.child("kind").choice(PRECONDITION_KINDS)
    if kind == "sum":
        for key in ("beta", "bias_correction", "rectify"):
            if node.has(key):
                raise node.child(key).fail(f"precondition 'sum' takes no '{key}'")
    elif not node.has("beta"):
        raise node.fail(f"precondition '{kind}' needs a beta")
    signal = _parse_signal(node.child("signal"), genes, SIGNALS)
    if signal.kind == "residual" and not has_momentum:
        raise node.child("signal").fail("signal 'residual' needs the term to have a momentum")
    return Precondition(
        kind=kind,
        eps=node.child("eps").gene_ref(genes, "eps"),
        beta=node.child("beta").gene_ref(genes, "rate", optional=kind == "sum"),
        signal=signal,
        eps_mode=node.child("eps_mode").choice(EPS_MODES) if node.has("eps_mode") else "outside",
        bias_correction=node.child("bias_correction").boolean(False),
        rectify=node.child("rectify").boolean(False),
    )


def _parse_term(node: _Node, genes: dict[str, float]) -> Term:
    node.mapping(("weight", "signal", "momentum", "precondition", "sign"))
    momentum = _parse_momentum(node.child("momentum"), genes)
    return Term(
        signal=_parse_signal(node.child("signal"), genes, TERM_SIGNALS),
        weight=node.child("weight").gene_ref(genes, ("weight", "rate"), optional=True),
        momentum=momentum,
        precondition=_parse_precondition(node.child("precondition"), genes, momentum is not None),
        sign=node.child("sign").boolean(False),
    )


def _parse_terms(node: _Node, genes: dict[str, float]) -> tuple[Term, ...]:
    if not isinstance(node.value, list) or not node.value:
        raise node.fail("expected a non-empty list of terms")
    if len(node.value) > MAX_TERMS:
        raise node.fail(f"{len(node.value)} terms; at most {MAX_TERMS} are allowed")
    terms = tuple(_parse_term(node.child(i), genes) for i in range(len(node.value)))
    weights = [genes[t.weight] if t.weight else 1.0 for t in terms]
    if all(w == 0.0 for w in weights):
        raise node.fail("every term has weight 0, so the rule never moves the parameters")
    return terms


def _parse_locus(node: _Node, genes: dict[str, float], locus: Locus) -> Any:
    """A locus value from its YAML node, validated against its registry row."""
    if node.is_none():
        return locus.default
    if locus.value_type is None:  # the value is the kind itself
        return node.choice(locus.kinds)
    variant_keys = {f.name for v in locus.variants for f in v.fields}
    allowed = tuple(([locus.tag] if locus.tag else []) + sorted(variant_keys, key=_field_order(locus)))
    if locus.tag and locus.bare:
        kind, node = _kind_node(node, allowed, locus.tag)
    else:
        node.mapping(allowed, required=(locus.tag,) if locus.tag else ())
        kind = node.value[locus.tag] if locus.tag else locus.variants[0].kind
    if locus.tag:
        node.child(locus.tag).choice(locus.kinds)
    variant = locus.variant(kind)
    own = {f.name for f in variant.fields}
    for key in allowed:
        if key != locus.tag and node.has(key) and key not in own:
            raise node.child(key).fail(f"{locus.key} '{kind}' takes no '{key}'")
    values: dict[str, Any] = {locus.tag: kind} if locus.tag else {}
    for f in variant.fields:
        child = node.child(f.name)
        if f.required and not node.has(f.name):
            raise node.fail(f"{locus.key} '{kind}' needs '{f.name}'" if locus.tag else f"missing required key '{f.name}'")
        if f.is_gene:
            values[f.name] = child.gene_ref(genes, f.roles, optional=not f.required)
        elif f.options:
            values[f.name] = child.choice(f.options) if node.has(f.name) else f.default
        else:
            values[f.name] = child.boolean(f.default)
    return locus.value_type(**values)


def _field_order(locus: Locus):
    order = [f.name for v in locus.variants for f in v.fields]
    return order.index


TOP_LEVEL_KEYS = ("schema_version", "name", "description", "genes", "terms", *LOCI)


def parse_genome(data: Any, source: str = "genome", allow_unused_genes: bool = False) -> Genome:
    """Validate plain data (as loaded from YAML) into a :class:`Genome`.

    Raises :class:`GenomeError` naming ``source``, the field and what is allowed. Genes that
    nothing refers to are an error unless ``allow_unused_genes`` (used to probe a structure).
    """
    root = _Node(data, "", source)
    if not isinstance(data, dict):
        raise root.fail(f"a genome must be a mapping at the top level, got {_type_name(data)}")
    root.mapping(TOP_LEVEL_KEYS, required=("schema_version", "genes", "terms"))
    version = data["schema_version"]
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise root.child("schema_version").fail(
            f"unsupported schema version {version!r} (this evolveopt reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    genes = _parse_genes(root.child("genes"))
    terms = _parse_terms(root.child("terms"), genes)
    loci = {}
    for key, locus in LOCI.items():
        if root.has(key) and locus.since_schema > version:
            raise root.child(key).fail(f"'{key}' needs schema_version {locus.since_schema} (this file says {version})")
        value = _parse_locus(root.child(key), genes, locus)
        if locus.present(value):
            loci[key] = value
    genome = Genome(genes=genes, terms=terms, loci=loci, name=root.child("name").text(),
                    description=root.child("description").text())
    unused = sorted(set(genes) - referenced_genes(genome))
    if unused and not allow_unused_genes:
        raise root.child("genes").fail(
            f"gene '{unused[0]}' is not used by any part of the rule (remove it or refer to it)"
        )
    return genome


def referenced_genes(genome: Genome) -> set[str]:
    """Every gene name the structure refers to (``lr`` always)."""
    refs: list[str | None] = ["lr"]
    for term in genome.terms:
        refs += [term.weight, term.signal.beta]
        if term.momentum is not None:
            refs += [term.momentum.beta, term.momentum.mix, term.momentum.decay]
        if term.precondition is not None:
            refs += [term.precondition.eps, term.precondition.beta, term.precondition.signal.beta]
    for key, value in genome.loci.items():
        refs += locus_genes(LOCI[key], value)
    return {name for name in refs if name is not None}


# ----------------------------------------------------------------------------- dumping


def to_dict(genome: Genome) -> dict[str, Any]:
    """Plain data for YAML/JSON; fields at their defaults are left out. Round-trips via parse."""
    out: dict[str, Any] = {"schema_version": schema_version_of(genome)}
    if genome.name:
        out["name"] = genome.name
    if genome.description:
        out["description"] = genome.description
    out["genes"] = dict(genome.genes)
    out["terms"] = [term_to_dict(t) for t in genome.terms]
    for key, value in genome.loci.items():
        out[key] = locus_to_data(LOCI[key], value)
    return out


def schema_version_of(genome: Genome) -> int:
    """The lowest schema version that expresses ``genome`` (so v1 rules keep their files and hashes)."""
    return max([1, *(LOCI[key].since_schema for key in genome.loci)])


def locus_to_data(locus: Locus, value: Any) -> Any:
    if locus.value_type is None:
        return value
    return _kind_or_mapping(value) if locus.bare else _compact(value)


def _compact(obj: Any) -> dict[str, Any]:
    """Dataclass fields that differ from their defaults, nested values compacted too."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default_factory is MISSING else f.default_factory()
        if value == default and f.name not in ("kind", "mode"):
            continue
        if isinstance(value, Signal):
            value = _kind_or_mapping(value)
        out[f.name] = value
    return out


def _kind_or_mapping(obj: Any) -> str | dict[str, Any]:
    data = _compact(obj)
    return data["kind"] if list(data) == ["kind"] else data


def term_to_dict(term: Term) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if term.weight is not None:
        out["weight"] = term.weight
    out["signal"] = _kind_or_mapping(term.signal)
    if term.momentum is not None:
        out["momentum"] = _compact(term.momentum)
    if term.precondition is not None:
        out["precondition"] = _compact(term.precondition)
    if term.sign:
        out["sign"] = True
    return out
