"""The genome: an optimizer update rule as plain, validated, immutable data.

A genome is *structure* (which terms, signals, statistics, normalizers, schedule, decay mode;
every field below except ``genes``) plus *genes* (named floats). Structure fields refer to genes
by name, so genomes with one structure differ only in their gene values and can be trained
together, one gene tensor per name.

The update it describes, in the order the compiler applies it (η_t = lr · schedule(t)):

    g  ← ±∇f(θ)                                 (maximize flips the sign)
    g  ← clip(g)                                 clip: value | tensor_norm | global_norm
    g  ← g + λθ                                  weight_decay.mode = l2
    θ  ← θ(1 − η_t λ)                            weight_decay.mode = decoupled
    ĝ  ← g + α·EMA_β(g_t − g_{t−1})              adaptor (ALTO's "E")
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

SCHEMA_VERSION = 1

SIGNALS = ("grad", "grad_diff", "nesterov_grad", "residual")
TERM_SIGNALS = ("grad", "grad_diff", "nesterov_grad")
MOMENTUM_KINDS = ("ema", "nesterov", "interp", "nadam")
PRECONDITION_KINDS = ("ema", "max", "sum", "belief")
EPS_MODES = ("outside", "raw", "inside")
# The genome-level slots around the terms, in the order the rule applies them (diff and crossover use it).
LOCI = ("clip", "adaptor", "layerwise", "friction", "loss_feedback", "weight_decay", "schedule")
CLIP_MODES = ("value", "tensor_norm", "global_norm")
LAYERWISE_KINDS = ("trust_ratio", "rms_norm")
TRUST_NORMS = ("update", "new_weights")
FRICTIONS = ("none", "elementwise", "tensor")
DECAY_MODES = ("l2", "decoupled", "proximal", "in_direction")
SCHEDULES = ("constant", "linear_warmup", "cosine", "linear_decay", "exponential", "warmup_cosine")
HORIZON_SCHEDULES = ("linear_warmup", "cosine", "linear_decay", "warmup_cosine")
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
class Clip:
    """Gradient clipping by value (|g| ≤ c), per-tensor norm or global norm (‖g‖ ≤ c)."""

    mode: str
    threshold: str


@dataclass(frozen=True)
class Adaptor:
    """ALTO's adaptor E: ĝ = g + α·a, a ← βa + (1−β)(g_t − g_{t−1}), g_0 = 0."""

    beta: str
    alpha: str


@dataclass(frozen=True)
class Layerwise:
    """Per-tensor rescaling of the direction.

    trust_ratio: τ = min(‖θ‖, clamp)/(‖u‖ + ε_τ), τ = 1 where either norm is 0 (LAMB);
                 norm_of=new_weights uses ‖θ − η_t u‖ in place of ‖u‖ (RaLamb/EVE).
    rms_norm:    u ← u/(rms(u) + ε).
    """

    kind: str
    clamp: str | None = None
    eps: str | None = None
    norm_of: str = "update"


@dataclass(frozen=True)
class LossFeedback:
    """Eve's global factor d_t from the relative change of the clipped smoothed loss."""

    beta: str
    low: str
    high: str


@dataclass(frozen=True)
class WeightDecay:
    mode: str
    rate: str


@dataclass(frozen=True)
class Schedule:
    """Learning-rate multiplier s(t), t = 1, 2, ...; T = total_steps, W = warmup·T."""

    kind: str = "constant"
    warmup: str | None = None
    gamma: str | None = None

    @property
    def needs_horizon(self) -> bool:
        return self.kind in HORIZON_SCHEDULES


@dataclass(frozen=True)
class Genome:
    """A complete update rule. Build with :func:`parse_genome`; it validates everything."""

    genes: dict[str, float]
    terms: tuple[Term, ...]
    clip: Clip | None = None
    adaptor: Adaptor | None = None
    layerwise: Layerwise | None = None
    friction: str = "none"
    loss_feedback: LossFeedback | None = None
    weight_decay: WeightDecay | None = None
    schedule: Schedule = field(default_factory=Schedule)
    name: str = ""
    description: str = ""

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


def _kind_node(node: _Node, allowed: tuple[str, ...]) -> tuple[str, _Node]:
    """Accept either ``kind`` or ``{kind: kind, ...}``; return the kind and the mapping node."""
    if isinstance(node.value, str):
        return node.value, _Node({"kind": node.value}, node.path, node.source)
    node.mapping(allowed, required=("kind",))
    return node.value["kind"], node


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


def _parse_clip(node: _Node, genes: dict[str, float]) -> Clip | None:
    if node.is_none():
        return None
    node.mapping(("mode", "threshold"), required=("mode", "threshold"))
    return Clip(node.child("mode").choice(CLIP_MODES), node.child("threshold").gene_ref(genes, "threshold"))


def _parse_adaptor(node: _Node, genes: dict[str, float]) -> Adaptor | None:
    if node.is_none():
        return None
    node.mapping(("beta", "alpha"), required=("beta", "alpha"))
    return Adaptor(node.child("beta").gene_ref(genes, "rate"), node.child("alpha").gene_ref(genes, "coefficient"))


def _parse_layerwise(node: _Node, genes: dict[str, float]) -> Layerwise | None:
    if node.is_none():
        return None
    kind, node = _kind_node(node, ("kind", "clamp", "eps", "norm_of"))
    node.child("kind").choice(LAYERWISE_KINDS)
    if kind == "rms_norm":
        for key in ("clamp", "norm_of"):
            if node.has(key):
                raise node.child(key).fail(f"layerwise 'rms_norm' takes no '{key}'")
        return Layerwise(kind, eps=node.child("eps").gene_ref(genes, "eps"))
    norm_of = node.child("norm_of").choice(TRUST_NORMS) if node.has("norm_of") else "update"
    return Layerwise(
        kind,
        clamp=node.child("clamp").gene_ref(genes, "clamp", optional=True),
        eps=node.child("eps").gene_ref(genes, "eps", optional=True),
        norm_of=norm_of,
    )


def _parse_loss_feedback(node: _Node, genes: dict[str, float]) -> LossFeedback | None:
    if node.is_none():
        return None
    node.mapping(("beta", "low", "high"), required=("beta", "low", "high"))
    roles = {"beta": "rate", "low": "feedback_bound", "high": "feedback_bound"}
    return LossFeedback(*(node.child(k).gene_ref(genes, role) for k, role in roles.items()))


def _parse_weight_decay(node: _Node, genes: dict[str, float]) -> WeightDecay | None:
    if node.is_none():
        return None
    node.mapping(("mode", "rate"), required=("mode", "rate"))
    return WeightDecay(node.child("mode").choice(DECAY_MODES), node.child("rate").gene_ref(genes, "weight_decay"))


def _parse_schedule(node: _Node, genes: dict[str, float]) -> Schedule:
    if node.value is None:
        return Schedule()
    kind, node = _kind_node(node, ("kind", "warmup", "gamma"))
    node.child("kind").choice(SCHEDULES)
    needs = {"linear_warmup": "warmup", "warmup_cosine": "warmup", "exponential": "gamma"}.get(kind)
    for key in ("warmup", "gamma"):
        if key == needs and not node.has(key):
            raise node.fail(f"schedule '{kind}' needs '{key}'")
        if key != needs and node.has(key):
            raise node.child(key).fail(f"schedule '{kind}' takes no '{key}'")
    return Schedule(
        kind,
        warmup=node.child("warmup").gene_ref(genes, "fraction", optional=True),
        gamma=node.child("gamma").gene_ref(genes, "decay_factor", optional=True),
    )


TOP_LEVEL_KEYS = (
    "schema_version", "name", "description", "genes", "terms", "clip", "adaptor",
    "layerwise", "friction", "loss_feedback", "weight_decay", "schedule",
)


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
    if version != SCHEMA_VERSION:
        raise root.child("schema_version").fail(
            f"unsupported schema version {version!r} (this evolveopt reads version {SCHEMA_VERSION})"
        )
    genes = _parse_genes(root.child("genes"))
    friction_node = root.child("friction")
    genome = Genome(
        genes=genes,
        terms=_parse_terms(root.child("terms"), genes),
        clip=_parse_clip(root.child("clip"), genes),
        adaptor=_parse_adaptor(root.child("adaptor"), genes),
        layerwise=_parse_layerwise(root.child("layerwise"), genes),
        friction="none" if friction_node.value is None else friction_node.choice(FRICTIONS),
        loss_feedback=_parse_loss_feedback(root.child("loss_feedback"), genes),
        weight_decay=_parse_weight_decay(root.child("weight_decay"), genes),
        schedule=_parse_schedule(root.child("schedule"), genes),
        name=root.child("name").text(),
        description=root.child("description").text(),
    )
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
    if genome.clip is not None:
        refs.append(genome.clip.threshold)
    if genome.adaptor is not None:
        refs += [genome.adaptor.beta, genome.adaptor.alpha]
    if genome.layerwise is not None:
        refs += [genome.layerwise.clamp, genome.layerwise.eps]
    if genome.loss_feedback is not None:
        refs += [genome.loss_feedback.beta, genome.loss_feedback.low, genome.loss_feedback.high]
    if genome.weight_decay is not None:
        refs.append(genome.weight_decay.rate)
    refs += [genome.schedule.warmup, genome.schedule.gamma]
    return {name for name in refs if name is not None}


# ----------------------------------------------------------------------------- dumping


def to_dict(genome: Genome) -> dict[str, Any]:
    """Plain data for YAML/JSON; fields at their defaults are left out. Round-trips via parse."""
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    if genome.name:
        out["name"] = genome.name
    if genome.description:
        out["description"] = genome.description
    out["genes"] = dict(genome.genes)
    out["terms"] = [term_to_dict(t) for t in genome.terms]
    for key in ("clip", "adaptor", "loss_feedback", "weight_decay"):
        value = getattr(genome, key)
        if value is not None:
            out[key] = _compact(value)
    if genome.layerwise is not None:
        out["layerwise"] = _kind_or_mapping(genome.layerwise)
    if genome.friction != "none":
        out["friction"] = genome.friction
    if genome.schedule != Schedule():
        out["schedule"] = _kind_or_mapping(genome.schedule)
    return out


def _compact(obj: Any) -> dict[str, Any]:
    """Dataclass fields that differ from their defaults, nested values compacted too."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default_factory is MISSING else f.default_factory()
        if value == default and f.name != "kind":
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
