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
    u  ← NS(u); s = shape factor                 orthogonalize (Muon; the step becomes η_t·s·u)
    u  ← u⊙M/scale                               cautious
    u  ← u + λθ                                  weight_decay.mode = in_direction
    u  ← τ(θ, u)·u                               layerwise: trust_ratio | rms_norm
    u  ← ξ·u                                     friction (diffGrad)
    θ  ← θ − η_t u   or (θ − η_t u)/(1 + η_t λ)  weight_decay.mode = proximal
       (averaging: θ = y ← lerp(y, z, c) + η_t(β(1−c) − 1)u, z ← z − η_t u in place of θ − η_t u)

Loss feedback (Eve) scales every precondition denominator: d_t·√v̂ + ε.

With a ``fallback`` (schema 2), tensors of fewer than 2 dims per member and param groups with
``matrix_rule: False`` follow the fallback's own terms and loci instead, at η_t·ρ (see Fallback).

This module imports nothing from torch: genomes travel as plain data.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from evolveopt.errors import GenomeError
from evolveopt.genome.genes import as_written_number, gene_spec, known_gene_names, range_problem, role_problem
from evolveopt.genome.registry import (HORIZON_SCHEDULES, LOCI, Adaptor, Cautious, Clip, Layerwise, Locus,
                                       LossFeedback, PARTS, Schedule, WeightDecay, locus_genes)

SCHEMA_VERSION = 2  # files say the lowest version that expresses them (1 unless a v2 locus is used)
READABLE_VERSIONS = (1, 2)

# The term-level parts and gene schedules, declared in registry.PARTS (kinds, fields, schema versions).
SIGNALS = PARTS["signal"].kinds
TERM_SIGNALS = PARTS["signal"].kinds_without("precondition_only")
MOMENTUM_KINDS = PARTS["momentum"].kinds
PRECONDITION_KINDS = PARTS["precondition"].kinds
EPS_MODES = PARTS["eps_mode"].kinds
TERM_ORDERS = PARTS["order"].kinds
GENE_SCHEDULE_KINDS = PARTS["gene_schedule"].kinds
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
    residual: ĝ − m_t, the gradient around its prediction m (AdaBelief; precondition only);
    corrected_grad (schema 2): MARS's variance-reduced c = ĝ + γ·β/(1−β)·(ĝ_t − ĝ_{t−1}) with ĝ_0 = 0
    (γ the gene ``gamma`` names), then, with ``clip``, c ← c·min(1, τ/‖c‖) per tensor (per member).
    """

    kind: str = "grad"
    beta: str | None = None
    gamma: str | None = None  # corrected_grad's correction strength γ
    clip: str | None = None  # corrected_grad's per-tensor norm bound τ


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
    factored (Adafactor; schema 2): for a tensor of ≥ 2 dims per member, row and column EMAs of x²
            over its last two dims, R ← βR + (1−β)·mean_cols(x²), C ← βC + (1−β)·mean_rows(x²), and
            v̂ = R·C/max(mean(R), ε) (an outer product per leading index); other tensors keep a full v as ema.
    eps_mode outside: y/(√v̂ + ε);  raw: y·√(1−β^t)/(√v + ε);  inside: y/√(v̂ + ε)
             clamp: y/max(√v̂, ε) (ADOPT);  atan2: a·atan2(y, b·√v̂), no ε (Adam-atan2)
    rectify: RAdam's r_t·(normalized y) when ρ_t > 5, else the unnormalized y.
    stale:   divide by v_{t−1} and advance v after use; v_0 = x_1², and the term gives 0 at t = 1 (ADOPT).
    clip:    clamp(normalized, −c, c) elementwise (ADOPT's clip of the normalized gradient).
    """

    kind: str
    eps: str | None  # None only with eps_mode atan2
    beta: str | None = None
    signal: Signal = field(default_factory=Signal)
    eps_mode: str = "outside"
    bias_correction: bool = False
    rectify: bool = False
    a: str | None = None  # atan2 output scale
    b: str | None = None  # atan2 denominator scale
    stale: bool = False
    clip: str | None = None


@dataclass(frozen=True)
class Term:
    """One weighted term T_k of the direction: signal → momentum → precondition → sign, or with
    ``order: normalize_first`` signal → precondition → momentum → sign (the momentum averages the
    normalized signal: LaProp, ADOPT)."""

    signal: Signal = field(default_factory=Signal)
    weight: str | None = None  # gene name; None means a fixed weight of 1
    momentum: Momentum | None = None
    precondition: Precondition | None = None
    sign: bool = False
    order: str = "momentum_first"


@dataclass(frozen=True)
class GeneSchedule:
    """A gene that varies with the step t = 1, 2, ... (x is the gene's value, T = ``horizon``):

    linear_warmup:   x_t = x·min(1, max(t − k, 0)/T), k = ``offset``      (AdEMAMix's α; k = 1, T = 1: off at
                     t = 1 only, torch-adopt's decoupled decay)
    halflife_warmup: β_t = min(exp(ln β_s·ln β/((1 − s)·ln β + s·ln β_s)), β), s = min(1, t/T),
                     β_s the ``start`` gene: 1/ln β_t moves linearly from β_s's to β's (AdEMAMix's β3)
    power:           x_t = x·max(t − k, 0)^p, k = ``offset``; on a rate it scales 1 − β:
                     β_t = 1 − (1 − β)·max(t − k, 0)^p  (ADOPT's clip (t − 1)^¼; Adafactor's β2_t = 1 − t^−0.8)
    """

    kind: str
    horizon: int | None = None
    start: str | None = None
    power: float | None = None
    offset: int = 0

    @property
    def genes(self) -> list[str]:
        return [self.start] if self.start else []


@dataclass(frozen=True)
class Fallback:
    """The sub-rule for the tensors the genome's own rule does not take: those with fewer than 2
    dims per member (biases, norm gains), and every tensor of a param group with ``matrix_rule:
    False`` (embeddings, an output head). Its terms and loci refer to the genome's genes; it steps
    with η_t·ρ, ρ the gene ``lr_ratio`` names (1 without one). Its terms take no weight.
    """

    terms: tuple[Term, ...]
    loci: dict[str, Any] = field(default_factory=dict)
    lr_ratio: str | None = None


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
    fallback: Fallback | None = None  # the rule of the non-matrix tensors (schema 2)
    gene_schedules: dict[str, GeneSchedule] = field(default_factory=dict)  # gene -> schedule, sorted by gene

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

    def integer(self, minimum: int, default: int | None) -> int:
        if self.value is None:
            return default
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise self.fail(f"expected an integer >= {minimum}, got {_type_name(self.value)}")
        if self.value < minimum:
            raise self.fail(f"{self.value} is out of range (an integer >= {minimum})")
        return self.value

    def boolean(self, default: bool) -> bool:
        if self.value is None:
            return default
        if not isinstance(self.value, bool):
            raise self.fail(f"expected true or false, got {_type_name(self.value)}")
        return self.value

    def number(self) -> float:
        value = as_written_number(self.value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise self.fail(f"expected a number, got {_type_name(value)}")
        return float(value)

    def whole(self, minimum: int) -> int:
        value = as_written_number(self.value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"expected a whole number of steps, got {_type_name(value)}")
        if value < minimum:
            raise self.fail(f"{value} is out of range (at least {minimum})")
        return value

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


def _part_values(node: _Node, genes: dict[str, float], part: Any, kind: str, version: int, takes_no,
                 needs=None, keys: tuple[str, ...] | None = None, tag: str = "kind") -> dict[str, Any]:
    """The field values of a term-level part of ``kind`` from its mapping node, checked against its
    registry.PARTS row: the schema version of the kind and of each field set, keys the kind does not
    take (``takes_no(key, own names, kinds taking it)`` words the error), required fields (``needs(name)``)."""
    variant = part.variant(kind)
    if variant.since_schema > version:
        _needs_version(node.child(tag), version, variant.since_schema)
    own = part.fields_of(kind)
    names = [f.name for f in own]
    for key in keys if keys is not None else part.keys()[1:]:
        if node.has(key) and key not in names:
            takers = [v.kind for v in part.variants if key in [f.name for f in part.fields_of(v.kind)]]
            raise node.child(key).fail(takes_no(key, names, takers))
    values: dict[str, Any] = {}
    for f in own:
        child = node.child(f.name)
        if f.since_schema > version and node.has(f.name):
            _needs_version(child, version, f.since_schema)
        if f.required and not node.has(f.name):
            raise node.fail(needs(f.name) if needs else f"{part.key} '{kind}' needs '{f.name}'")
        if f.is_gene:
            values[f.name] = child.gene_ref(genes, f.roles, optional=not f.required)
        elif f.flag:
            values[f.name] = child.boolean(f.default)
    return values


def _parse_signal(node: _Node, genes: dict[str, float], allowed: tuple[str, ...], version: int = SCHEMA_VERSION
                  ) -> Signal:
    if node.value is None:
        return Signal()
    part = PARTS["signal"]
    kind, node = _kind_node(node, part.keys())
    node.child("kind").choice(allowed)
    values = _part_values(node, genes, part, kind, version, lambda key, own, takers: f"signal '{kind}' takes no {key}"
                          + (f" ({takers[0]} does)" if len(takers) == 1 else ""))
    return Signal(kind, **values)


def _parse_momentum(node: _Node, genes: dict[str, float], version: int = SCHEMA_VERSION) -> Momentum | None:
    if node.is_none():
        return None
    part = PARTS["momentum"]
    node.mapping(part.keys(), required=("kind", "beta"))
    kind = node.child("kind").choice(part.kinds)
    values = _part_values(node, genes, part, kind, version, lambda key, own, takers:
                          f"momentum '{kind}' takes no '{key}' (it takes: {', '.join(own)})")
    momentum = Momentum(kind=kind, **values)
    if momentum.bias_correction and not momentum.dampening:
        raise node.child("bias_correction").fail("bias correction needs dampening: true")
    return momentum


def _parse_precondition(node: _Node, genes: dict[str, float], has_momentum: bool, version: int
                        ) -> Precondition | None:
    if node.is_none():
        return None
    part, modes = PARTS["precondition"], PARTS["eps_mode"]
    keys = (*part.keys(), *modes.keys()[1:], "signal", "eps_mode")
    node.mapping(keys, required=("kind",))
    kind = node.child("kind").choice(part.kinds)
    eps_mode = node.child("eps_mode").choice(modes.kinds) if node.has("eps_mode") else modes.default
    values = _part_values(node, genes, part, kind, version, lambda key, own, takers:
                          f"precondition '{kind}' takes no '{key}'", lambda name: f"precondition '{kind}' needs a {name}",
                          keys=part.keys()[1:])
    excluded, why = part.variant(kind).excludes.get("eps_mode", (None, ""))
    if eps_mode == excluded:
        raise node.child("eps_mode").fail(f"precondition '{kind}' {why}")
    values |= _part_values(
        node, genes, modes, eps_mode, version,
        lambda key, own, takers: (f"'{key}' is a gene of eps_mode '{takers[0]}' only (this eps_mode is '{eps_mode}')"
                                  if len(takers) == 1 else
                                  f"eps_mode '{eps_mode}' takes no {key} (it takes {' and '.join(own)})"),
        lambda name: f"eps_mode '{eps_mode}' needs '{name}'" if node.has("eps_mode") else
        f"missing required key '{name}'", keys=modes.keys()[1:], tag="eps_mode")
    signal = _parse_signal(node.child("signal"), genes, SIGNALS, version)
    if signal.kind == "residual" and not has_momentum:
        raise node.child("signal").fail("signal 'residual' needs the term to have a momentum")
    if values.get("stale"):
        for key in ("bias_correction", "rectify"):
            if values.get(key):
                raise node.child(key).fail(f"a stale precondition takes no {key} (v_0 = x_1² is unbiased)")
    return Precondition(kind=kind, eps=values.pop("eps", None), signal=signal, eps_mode=eps_mode, **values)


def _needs_version(node: _Node, version: int, since: int) -> None:
    if version < since:
        raise node.fail(f"'{node.path.rsplit('.', 1)[-1]}: {node.value}' needs schema_version {since} "
                        f"(this file says {version})")


def _needs_v2(node: _Node, version: int) -> None:
    _needs_version(node, version, 2)


def _parse_term(node: _Node, genes: dict[str, float], version: int) -> Term:
    node.mapping(("weight", "signal", "momentum", "precondition", "sign", "order"))
    momentum = _parse_momentum(node.child("momentum"), genes, version)
    precondition = _parse_precondition(node.child("precondition"), genes, momentum is not None, version)
    order = node.child("order").choice(TERM_ORDERS) if node.has("order") else "momentum_first"
    if node.has("order"):
        _needs_v2(node.child("order"), version)
    if order == "normalize_first":
        if momentum is None or precondition is None:
            raise node.child("order").fail("order 'normalize_first' needs a momentum and a precondition")
        if precondition.signal.kind == "residual":
            raise node.child("order").fail("order 'normalize_first' takes no 'residual' precondition signal")
    return Term(
        signal=_parse_signal(node.child("signal"), genes, TERM_SIGNALS, version),
        weight=node.child("weight").gene_ref(genes, ("weight", "rate", "coefficient") if version >= 2 else
                                             ("weight", "rate"), optional=True),
        momentum=momentum,
        precondition=precondition,
        sign=node.child("sign").boolean(False),
        order=order,
    )


def _parse_terms(node: _Node, genes: dict[str, float], version: int) -> tuple[Term, ...]:
    if not isinstance(node.value, list) or not node.value:
        raise node.fail("expected a non-empty list of terms")
    if len(node.value) > MAX_TERMS:
        raise node.fail(f"{len(node.value)} terms; at most {MAX_TERMS} are allowed")
    terms = tuple(_parse_term(node.child(i), genes, version) for i in range(len(node.value)))
    weights = [genes[t.weight] if t.weight else 1.0 for t in terms]
    if all(w == 0.0 for w in weights):
        raise node.fail("every term has weight 0, so the rule never moves the parameters")
    return terms


# Genes a schedule may not vary: lr has the schedule locus; term weights are renamed and merged by
# canonicalization; and genes read outside the rule's step (outside_step_genes).
_UNSCHEDULABLE_ROLES = ("lr", "weight")


def outside_step_genes(genome: Genome) -> set[str]:
    """Genes the optimizer reads once per step outside the rule's terms and stages (the lr schedule's,
    the global-norm clip's threshold, loss feedback's): a gene schedule cannot vary them."""
    out = {g for g in (genome.schedule.warmup, genome.schedule.gamma) if g}
    if genome.clip is not None and genome.clip.mode == "global_norm":
        out.add(genome.clip.threshold)
    if genome.loss_feedback is not None:
        out |= set(locus_genes(LOCI["loss_feedback"], genome.loss_feedback))
    return out


def _parse_gene_schedules(node: _Node, genes: dict[str, float], version: int) -> dict[str, GeneSchedule]:
    if node.value is None:
        return {}
    if not isinstance(node.value, dict):
        raise node.fail(f"expected a mapping of gene names to schedules, got {_type_name(node.value)}")
    _needs_v2_key(node, version)
    out = {}
    for name in node.value:
        item = node.child(name)
        if not isinstance(name, str) or name not in genes:
            raise item.fail(f"unknown gene '{name}' (genes of this genome: {', '.join(genes)})")
        role = gene_spec(name).role
        if role in _UNSCHEDULABLE_ROLES:
            raise item.fail(f"gene '{name}' cannot have a schedule ({_why_unschedulable(role)})")
        part = PARTS["gene_schedule"]
        kind, item = _kind_node(item, part.keys())
        item.child("kind").choice(part.kinds)
        own = part.fields_of(kind)
        for key in part.keys()[1:]:
            if item.has(key) and key not in [f.name for f in own]:
                raise item.child(key).fail(f"schedule '{kind}' takes no '{key}' (it takes: "
                                           f"{', '.join(f.name for f in own)})")
        for f in own:
            if f.required and not item.has(f.name):
                raise item.fail(f"schedule '{kind}' needs '{f.name}'")
        is_rate = gene_spec(name).scale == "beta"
        if kind == "halflife_warmup" and not is_rate:
            raise item.fail(f"schedule 'halflife_warmup' is for a rate (beta1..beta3), not '{name}'")
        power = item.child("power").number() if kind == "power" else None
        offset = item.child("offset").whole(minimum=0) if item.has("offset") else 0
        if power is not None:
            if power == 0:
                raise item.child("power").fail("power 0 leaves the gene constant (drop the schedule)")
            if power > 0 and is_rate:
                raise item.child("power").fail(f"a power schedule on a rate needs a negative power "
                                               f"(β_t = 1 − (1 − β)·t^p stays in [β, 1)), got {power!r}")
            if power < 0 and offset > 0:
                raise item.child("offset").fail(f"a negative power needs offset 0 (t − {offset} is 0 at step {offset})")
        out[name] = GeneSchedule(
            kind=kind,
            horizon=item.child("horizon").whole(minimum=1) if kind != "power" else None,
            start=item.child("start").gene_ref(genes, "rate") if kind == "halflife_warmup" else None,
            power=power,
            offset=offset,
        )
    return dict(sorted(out.items()))


def _needs_v2_key(node: _Node, version: int) -> None:
    if version < 2:
        raise node.fail(f"'{node.path}' needs schema_version 2 (this file says {version})")


def _why_unschedulable(role: str) -> str:
    return {"lr": "the learning rate's is the 'schedule' key", "weight": "term weights are renamed and merged "
            "in canonical form; weight the term with a named gene such as alpha"}[role]


def _parse_locus(node: _Node, genes: dict[str, float], locus: Locus, version: int = SCHEMA_VERSION) -> Any:
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
    if variant.since_schema > version:
        raise node.child(locus.tag).fail(f"{locus.key} '{kind}' needs schema_version {variant.since_schema} "
                                         f"(this file says {version})")
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
        elif f.integer:
            values[f.name] = child.integer(f.minimum, f.default)
        else:
            values[f.name] = child.boolean(f.default)
    return locus.value_type(**values)


def _field_order(locus: Locus):
    order = [f.name for v in locus.variants for f in v.fields]
    return order.index


TOP_LEVEL_KEYS = ("schema_version", "name", "description", "genes", "terms", *LOCI, "fallback", "gene_schedules")
# The loci a fallback may have: not the lr schedule, Eve's feedback and global-norm clipping (the genome's own
# serve every tensor: fallback_genome hands them on), not orthogonalize (it takes the tensors that are not matrices).
# Nor averaging or a global estimator: the genome's own step holds them (a fallback with either is not supported).
FALLBACK_LOCI = tuple(key for key in LOCI if key not in ("schedule", "loss_feedback", "orthogonalize", "averaging",
                                                          "estimator"))
FALLBACK_SINCE_SCHEMA = 2


def _parse_fallback(node: _Node, genes: dict[str, float], version: int) -> Fallback | None:
    if node.value is None:
        return None
    for key, why in (("orthogonalize", "it takes the tensors that are not matrices"),
                     ("fallback", "a fallback has no fallback of its own"),
                     ("schedule", "the genome's schedule sets η_t for every tensor"),
                     ("loss_feedback", "the genome's loss feedback scales every tensor"),
                     ("averaging", "averaging is not supported in a fallback"),
                     ("estimator", "a step-size estimate is one for the whole model")):
        if node.has(key):
            raise node.child(key).fail(f"a fallback takes no '{key}' ({why})")
    node.mapping(("lr_ratio", "terms", *FALLBACK_LOCI), required=("terms",))
    terms = _parse_terms(node.child("terms"), genes, version)
    for i, term in enumerate(terms):
        if term.weight is not None:
            raise node.child("terms").child(i).child("weight").fail("a fallback term takes no weight")
    loci = {}
    for key in FALLBACK_LOCI:
        value = _parse_locus(node.child(key), genes, LOCI[key], version)
        if LOCI[key].present(value):
            loci[key] = value
    if "clip" in loci and loci["clip"].mode == "global_norm":
        raise node.child("clip").fail("a fallback cannot clip by the global norm (the genome's global-norm clip "
                                      "covers every parameter)")
    return Fallback(terms=terms, loci=loci, lr_ratio=node.child("lr_ratio").gene_ref(genes, "lr_ratio", optional=True))


def fallback_genome(genome: Genome) -> Genome | None:
    """The fallback sub-rule as a genome of its own (the genome's genes, the fallback's terms and
    loci), the form the compiler, ``show`` and the slot names read; None without a fallback.

    The genome's global loci serve the fallback's tensors too: a global-norm clip (one norm over
    every parameter clips every gradient) and Eve's loss feedback (one d_t for every denominator).
    """
    fb = genome.fallback
    if fb is None:
        return None
    loci = dict(fb.loci)
    if genome.clip is not None and genome.clip.mode == "global_norm":
        loci["clip"] = genome.clip
    if genome.loss_feedback is not None:
        loci["loss_feedback"] = genome.loss_feedback
    name = f"{genome.name} (fallback)" if genome.name else "fallback"
    return Genome(genes=genome.genes, terms=fb.terms, loci=loci, name=name)


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
    terms = _parse_terms(root.child("terms"), genes, version)
    loci = {}
    for key, locus in LOCI.items():
        if root.has(key) and locus.since_schema > version:
            raise root.child(key).fail(f"'{key}' needs schema_version {locus.since_schema} (this file says {version})")
        value = _parse_locus(root.child(key), genes, locus, version)
        if locus.present(value):
            loci[key] = value
    if root.has("fallback") and version < FALLBACK_SINCE_SCHEMA:
        raise root.child("fallback").fail(f"'fallback' needs schema_version {FALLBACK_SINCE_SCHEMA} "
                                          f"(this file says {version})")
    fallback = _parse_fallback(root.child("fallback"), genes, version)
    if fallback is not None and "clip" in fallback.loci and "clip" in loci and loci["clip"].mode == "global_norm":
        raise root.child("fallback").child("clip").fail(
            "the genome clips by the global norm, which clips the fallback's gradients too: leave this clip out")
    if fallback is not None and "estimator" in loci:
        raise root.child("fallback").fail("a genome with a step-size 'estimator' cannot have a fallback (its sums "
                                          "would need the fallback's tensors: not supported)")
    genome = Genome(genes=genes, terms=terms, loci=loci, name=root.child("name").text(),
                    description=root.child("description").text(), fallback=fallback)
    schedules = _parse_gene_schedules(root.child("gene_schedules"), genes, version)
    if schedules:
        used, outside = referenced_genes(genome), outside_step_genes(genome)
        for name in schedules:
            if name not in used:
                raise root.child("gene_schedules").child(name).fail(f"gene '{name}' is not used by any part of the rule")
            if name in outside:
                raise root.child("gene_schedules").child(name).fail(
                    f"gene '{name}' cannot have a schedule (the lr schedule, a global_norm clip or loss feedback "
                    "reads it once per step outside the terms)")
        genome = replace(genome, gene_schedules=schedules)
    unused = sorted(set(genes) - referenced_genes(genome))
    if unused and not allow_unused_genes:
        raise root.child("genes").fail(
            f"gene '{unused[0]}' is not used by any part of the rule (remove it or refer to it)"
        )
    return genome


def term_genes(term: Term) -> list[str]:
    """The genes a term's parts refer to (not its weight), as registry.PARTS declares their fields."""
    signal, pre = PARTS["signal"], PARTS["precondition"]
    refs = signal.genes(term.signal.kind, term.signal)
    if term.momentum is not None:
        refs += PARTS["momentum"].genes(term.momentum.kind, term.momentum)
    if term.precondition is not None:
        p = term.precondition
        refs += (pre.genes(p.kind, p) + PARTS["eps_mode"].genes(p.eps_mode, p) + signal.genes(p.signal.kind, p.signal))
    return refs


def referenced_genes(genome: Genome) -> set[str]:
    """Every gene name the structure refers to (``lr`` always)."""
    refs: list[str | None] = ["lr"]
    rules = [(genome.terms, genome.loci)]
    if genome.fallback is not None:
        rules.append((genome.fallback.terms, genome.fallback.loci))
        refs.append(genome.fallback.lr_ratio)
    for terms, loci in rules:
        for term in terms:
            refs += [term.weight, *term_genes(term)]
        for key, value in loci.items():
            refs += locus_genes(LOCI[key], value)
    for schedule in genome.gene_schedules.values():
        refs += schedule.genes
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
    if genome.fallback is not None:
        out["fallback"] = fallback_to_dict(genome.fallback)
    if genome.gene_schedules:
        out["gene_schedules"] = {name: _compact(s) for name, s in genome.gene_schedules.items()}
    return out


def fallback_to_dict(fb: Fallback) -> dict[str, Any]:
    out: dict[str, Any] = {"lr_ratio": fb.lr_ratio} if fb.lr_ratio else {}
    out["terms"] = [term_to_dict(t) for t in fb.terms]
    for key, value in fb.loci.items():
        out[key] = locus_to_data(LOCI[key], value)
    return out


def schema_version_of(genome: Genome) -> int:
    """The lowest schema version that expresses ``genome`` (so v1 rules keep their files and hashes)."""
    terms = [*genome.terms, *(genome.fallback.terms if genome.fallback else ())]
    v2_terms = max([1, *map(_term_since, terms)]) >= 2 or bool(genome.gene_schedules)  # gene_schedules: a v2 key
    every_loci = [*genome.loci.items(), *(genome.fallback.loci.items() if genome.fallback else ())]
    loci = [max(LOCI[key].since_schema, LOCI[key].variant(LOCI[key].kind_of(value)).since_schema)
            for key, value in every_loci]
    return max([1, 2 if v2_terms else 1, *loci, *([FALLBACK_SINCE_SCHEMA] if genome.fallback else [])])


def _term_since(term: Term) -> int:
    """The schema version a term needs: the newest of its parts' kinds and the fields it sets (PARTS)."""
    pre = term.precondition
    versions = [PARTS["signal"].since(term.signal.kind, term.signal), PARTS["order"].variant(term.order).since_schema]
    if term.weight is not None and gene_spec(term.weight).role == "coefficient":  # AdEMAMix's α (a v2 role)
        versions.append(2)
    if term.momentum is not None:
        versions.append(PARTS["momentum"].since(term.momentum.kind, term.momentum))
    if pre is not None:
        versions += [PARTS["precondition"].since(pre.kind, pre), PARTS["eps_mode"].since(pre.eps_mode, pre),
                     PARTS["signal"].since(pre.signal.kind, pre.signal)]
    return max(versions)


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
        if (value == default and f.name not in ("kind", "mode")) or value is None:
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
    if term.order != "momentum_first":
        out["order"] = term.order
    return out
