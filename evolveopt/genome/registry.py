"""The registry of genome loci: every whole-genome primitive of the update rule, declared once.

A *locus* is one optional slot of a genome around its terms (clipping, weight decay, layer-wise
scaling, the cautious mask, ...). Its :class:`Locus` row declares everything the rest of
evolveopt derives from it:

* its YAML key and *variants* (``mode: l2 | decoupled | ...``), each with its fields: a gene
  reference of given roles (see genes.py), a choice among strings, or a flag;
* the frozen dataclass its parsed value lives in (or a plain string for a locus that is only a kind);
* where in the rule each variant acts (:data:`STAGES`, ordered by ``order``) and the tensor
  function that does it, named as ``"module:function"`` (torch-side code in evolveopt.primitives);
* its state buffers, its equations for ``evolveopt show``, and how the search space draws it;
* the schema version that first has it (a variant may be newer than its locus: ``Variant.since_schema``).

The ``move`` stage is the one place a locus replaces a step of the rule rather than adding one:
a variant there moves θ itself from the finished direction u (schedule-free averaging keeps a
second sequence z and interpolates θ toward it) in place of the plain ``θ ← θ − η_t·u``. At
most one locus has variants in that stage; its equation lines stand in for ``θ ← θ − η_t·u``.

Most stage functions see one tensor list at a time; a *global* stage (Prodigy's estimate) sees
every tensor list of the step at once and keeps state of its own: see :data:`STAGES`.

Parsing and dumping (schema.py), referenced genes, state slots, equations, ``diff``, the search
space and its mutations and crossover, and the export bundler all read this table; adding a
primitive is one primitives module plus one row here (docs/architecture.md shows the cautious mask
as the worked example).

This module imports nothing from torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# Where a variant acts, in the order the rule runs them:
#   gradient   g ← f(g)           before the terms (clipping, L2 decay, ALTO's adaptor)
#   weights    θ ← f(θ)           before the terms (decoupled decay; Adafactor's relative step reads θ here,
#                                 before the decay, for the step size α it puts in place of η_t)
#   direction  u ← f(u, g, θ)     after the terms, before θ moves (cautious mask, trust ratio, friction)
#   move       θ ← f(θ, u)        replaces θ ← θ − η_t·u (schedule-free averaging)
#   after      θ ← f(θ)           after θ moves (proximal decay)
#   lr         η_t = η·s(t)       a per-step multiplier of lr (schedule)
#   loss       a global factor from the loss (Eve's feedback), computed by the optimizer
#   global     a pass over every tensor of the step (every chunk of every param group, or the whole
#              stacked population) after the gradient stage and before the weights stage, with
#              state of its own (Prodigy's estimate)
#
# A stage function is ``fn(value, flow, ctx)``: it reads and replaces the tensors of ``flow``
# (compile/rule.py: ``Flow``) with the step's ``ctx`` (``StepContext``). A *global* stage function is
# ``fn(value, flows, ctxs, store)``: it sees the flows of every tensor list of the step at once with
# their contexts, keeps its global state in the dict ``store`` (one per locus: the optimizer's
# ``state[<locus key>]``, or the population's, with one value per member), and sets what the rest
# of the step reads: ``flow.grads``, ``ctx.lr`` (the step size η_t of the step and of decoupled
# decay) and ``ctx.eps_scale`` (a factor of every precondition floor ε). Every param group must
# give its genes, lr and the schedule's genes one value (:func:`shared_genes`; a group may have
# lr 0, which freezes it); the optimizer checks that before any parameter moves.
STAGES = ("gradient", "global", "weights", "direction", "move", "after", "lr", "loss")


@dataclass(frozen=True)
class Field:
    """One key of a locus: a gene reference (``roles``), a choice (``options``), an integer
    (``integer``: at least ``minimum``; structural, not a gene) or a flag."""

    name: str
    roles: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    flag: bool = False
    required: bool = True
    default: Any = None
    integer: bool = False
    minimum: int = 0
    since_schema: int = 1  # a field newer than its variant: set (not at its default), the file needs this version

    @property
    def is_gene(self) -> bool:
        return bool(self.roles)


@dataclass(frozen=True)
class Variant:
    """One kind of a locus: its fields, stage, tensor function, state, equation and draw."""

    kind: str
    fields: tuple[Field, ...] = ()
    stage: str = "direction"
    order: int = 50
    function: str | None = None  # "module:function"; None where the optimizer handles it (lr, loss)
    slots: tuple[str, ...] = ()  # state buffers: parameter-shaped zeros unless slot_kinds says otherwise
    slot_kinds: dict[str, str] = field(default_factory=dict)  # slot -> kind (slots.py: param_copy, per_member_zero)
    equation: Callable[[Any, Callable[[str], str], str], list[str]] = lambda value, sym, g: []  # (value, symbol of a gene, symbol of g)
    draw: dict[str, str] = field(default_factory=dict)  # field -> gene name when the search draws it
    since_schema: int = 1  # a variant newer than its locus (the file needs this schema version)
    tags: tuple[str, ...] = ()  # term-level parts: where a kind may stand (e.g. "precondition_only")
    slot_keys: tuple[str, ...] | None = None  # term-level parts: the values naming its buffers (default: its genes)
    read: str | None = None  # precondition rows: "module:function" giving the statistic (default: its last buffer)
    excludes: dict[str, tuple[str, str]] = field(default_factory=dict)  # part -> (kind it cannot stand with, why)


@dataclass(frozen=True)
class Locus:
    """A whole-genome primitive (see the module docstring)."""

    key: str
    doc: str
    variants: tuple[Variant, ...]
    value_type: type | None = None  # None: the value is the kind string itself
    tag: str | None = "kind"  # the field naming the variant; None for a locus with one variant
    bare: bool = False  # may be written as just its kind
    default: Any = None  # the value when the genome leaves the locus out
    space_key: str = ""  # SearchSpace field (and config key space.<field>) holding its draw setting
    space_default: Any = ("none",)  # choices (with "none" = absent), or a probability for tagless loci
    draw_rank: int = 100  # the order random genomes draw loci (and mutations list them) in, kept from schema v1
    move: str | None = ""  # the structural mutation that redraws it ("" = change_<key>; None = none)
    since_schema: int = 1  # the first schema version that has this locus

    @property
    def move_name(self) -> str | None:
        return f"change_{self.key}" if self.move == "" else self.move

    def variant(self, kind: str) -> Variant:
        return next(v for v in self.variants if v.kind == kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(v.kind for v in self.variants)

    def kind_of(self, value: Any) -> str:
        if self.value_type is None:
            return value
        return getattr(value, self.tag) if self.tag else self.variants[0].kind

    def present(self, value: Any) -> bool:
        return value is not None and value != self.default


# ---------------------------------------------------------------------------- values


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
    rms_clip:    u ← u/max(1, rms(u)/d), d the gene ``threshold`` (Adafactor's update clipping; schema 2).
    """

    kind: str
    clamp: str | None = None
    eps: str | None = None
    norm_of: str = "update"
    threshold: str | None = None


@dataclass(frozen=True)
class RelativeStep:
    """Adafactor's relative step size (Shazeer & Stern 2018, §8; torch.optim.Adafactor's form):
    θ ← θ − α·u with α = max(ε2, rms(θ))·min(η_t, 1/√t) per tensor (per member), rms(θ) taken
    before the step's weight decay; the decay keeps η_t. With schedule-free averaging α moves y and z
    in place of η_t (the averaging weights keep η_t)."""

    kind: str
    eps: str


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


HORIZON_SCHEDULES = ("linear_warmup", "cosine", "linear_decay", "warmup_cosine")


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
class Cautious:
    """The cautious mask (Liang et al. 2024): keep the direction where it agrees in sign with g.

    mean:     u ← u⊙M/max(mean(M), 10⁻³),   M = 1[u⊙g > 0]  (C-AdamW; timm ``caution=True``)
    plus_one: u ← u⊙M·n/(ΣM + 1)                            (C-Lion; pytorch-optimizer ``cautious=True``)
    per tensor (per member of a population), n its number of elements.
    """

    kind: str


@dataclass(frozen=True)
class Averaging:
    """Schedule-free averaging (Defazio et al. 2024): θ holds y, where gradients are taken; z
    takes plain steps; the evaluation point x = (y − (1−β)z)/β averages z with weights c_t.

    schedule_free: lr_max ← max(lr_max, η_t);  w = t^r·lr_max^p;  S ← S + w;  c = w/S
                   y ← (1−c)·y + c·z;  y ← y + η_t·(β(1−c) − 1)·u;  z ← z − η_t·u
    """

    kind: str
    beta: str
    r: str
    lr_power: str


@dataclass(frozen=True)
class Estimator:
    """A global step-size estimate (one per model, from sums over every parameter).

    prodigy (Mishchenko & Defazio, ICML 2024; prodigyopt 1.1.2): d from r/Σ‖s‖₁, with
    r ← β3·r + (d/d0)·η̂·Σ⟨g, θ0 − θ⟩ and s ← β3·s + (d/d0)·η̂·g, η̂ = d·η_t·bc; the terms read d·g,
    the step and decoupled decay η̂, the precondition floors d'·ε. ``growth`` caps d' at d·growth
    (absent: ∞); ``bias_beta1``/``bias_beta2`` put 1/(1 − β1^k) and √(1 − β2^k) into bc
    (``use_bias_correction``); ``safeguard_warmup`` drops η_t·bc from the s update.
    """

    kind: str
    beta: str
    d0: str
    coef: str
    growth: str | None = None
    bias_beta1: str | None = None
    bias_beta2: str | None = None
    safeguard_warmup: bool = False


PRODIGY_SLOTS = ("estimator.s", "estimator.x0")  # s, and θ0 (a copy of the parameter at its first step)


# Names the orthogonalize locus may take (torch-free copies; primitives/orthogonal.py imports them and
# holds the coefficient numbers for every name here: tests/test_orthogonal.py checks they agree).
NS_COEFFICIENTS = ("original", "quintic", "polar_express", "polar_express_safer")
NS_DTYPES = ("bfloat16", "param")
NS_SCALES = ("original", "match_rms_adamw", "none")


@dataclass(frozen=True)
class Orthogonalize:
    """Muon's orthogonalized update (Jordan et al. 2024): u ← NS(u), the polar factor of u's matrix
    view [d0, prod(rest)] by ``steps`` quintic Newton–Schulz iterations with the ``coefficients``
    preset, computed in ``dtype`` (bfloat16, or the parameter's own); then the tensor's step is
    η_t·s·u with the shape factor s: original √max(1, d0/d1) (Jordan; torch.optim.Muon),
    match_rms_adamw 0.2·√max(d0, d1) (Moonlight), none 1. Structural: no field is a gene.
    """

    kind: str
    steps: int
    coefficients: str
    dtype: str
    scale: str


# ---------------------------------------------------------------------------- equations


def _clip_lines(clip: Clip, sym, g: str = "g") -> list[str]:
    c = sym(clip.threshold)
    return [{
        "value": f"g ← clamp(g, −{c}, {c})",
        "tensor_norm": f"g ← g·min(1, {c}/‖g‖)   (per tensor)",
        "global_norm": f"g ← g·min(1, {c}/‖g‖_all)   (norm over every parameter)",
    }[clip.mode]]


def _adaptor_lines(a: Adaptor, sym, g: str = "g") -> list[str]:
    b = sym(a.beta)
    return [f"a ← {b}·a + (1 − {b})·(g − g_prev)   (g_prev = 0 at t = 1)", f"ĝ = g + {sym(a.alpha)}·a"]


def _trust_lines(lw: Layerwise, sym, g: str = "g") -> list[str]:
    top = f"min(‖θ‖, {sym(lw.clamp)})" if lw.clamp else "‖θ‖"
    below = "‖u‖" if lw.norm_of == "update" else "‖θ − η_t·u‖"
    below = f"({below} + {sym(lw.eps)})" if lw.eps else below
    return [f"u ← τ·u,  τ = {top}/{below} per tensor (1 where a norm is 0)"]


def _friction_lines(kind: str, sym, g: str = "g") -> list[str]:
    if kind == "elementwise":
        return [f"u ← sigmoid(|{g} − {g}_prev|)⊙u   ({g}_prev = 0 at t = 1)"]
    return [f"u ← sigmoid(‖{g} − {g}_prev‖)·u per tensor   ({g}_prev = 0 at t = 1)"]


def _schedule_lines(s: Schedule, sym, g: str = "g") -> list[str]:
    w = f"min(1, t/({sym(s.warmup)}·T))" if s.warmup else ""
    cos = "½(1 + cos(π·(t − 1)/T))"
    factor = {
        "constant": "1",
        "linear_warmup": w,
        "cosine": cos,
        "linear_decay": "max(0, 1 − (t − 1)/T)",
        "exponential": f"{sym(s.gamma) if s.gamma else 'γ'}^(t − 1)",
        "warmup_cosine": f"{w}·{cos}",
    }[s.kind]
    if s.kind == "constant":
        return ["η_t = η"]
    return ["η_t = η·" + factor + ("   (T = total_steps)" if s.needs_horizon else "")]


def _feedback_lines(fb: LossFeedback, sym, g: str = "g") -> list[str]:
    return [f"d_t = Eve's loss feedback: d_1 = 1, d ← {sym(fb.beta)}·d + (1 − {sym(fb.beta)})·r_t, r_t the "
            f"relative change of the smoothed loss, clipped by ({sym(fb.low)}, {sym(fb.high)})"]


def _cautious_lines(c: Cautious, sym, g: str = "g") -> list[str]:
    scaled = "u⊙M/max(mean(M), 10⁻³)" if c.kind == "mean" else "u⊙M·n/(ΣM + 1)"
    return [f"u ← {scaled},  M = 1[u⊙{g} > 0] per tensor (n elements)"]


def _averaging_lines(a: Averaging, sym, g: str = "g") -> list[str]:
    b, r, p = sym(a.beta), sym(a.r), sym(a.lr_power)
    return [f"lr_max ← max(lr_max, η_t);  S ← S + t^{r}·lr_max^{p};  c = t^{r}·lr_max^{p}/S   (c = 0 while S = 0)",
            f"θ ← (1 − c)·θ + c·z;  θ ← θ + η_t·({b}·(1 − c) − 1)·u;  z ← z − η_t·u"
            "   (θ = y, the gradient point; z_0 = θ_0)",
            f"evaluation point x = (θ − (1 − {b})·z)/{b}   (optimizer.eval(); train() returns to θ = y)"]


def _orthogonalize_lines(o: Orthogonalize, sym, g: str = "g") -> list[str]:
    dtype = "in bfloat16" if o.dtype == "bfloat16" else "in the parameter's dtype"
    scale = {"original": "s = √max(1, d0/d1)", "match_rms_adamw": "s = 0.2·√max(d0, d1)", "none": "s = 1"}[o.scale]
    return [f"X = u as a [d0, d1 = prod(rest)] matrix (Xᵀ when d0 > d1), X ← X/max(‖X‖_F, 10⁻⁷)   ({dtype})",
            f"{o.steps}×: A = X·Xᵀ, X ← a·X + (b·A + c·A²)·X   ((a, b, c): '{o.coefficients}' coefficients)",
            f"u ← X (back to u's shape);  {scale} (a factor of the tensor's step, after the other direction loci)"]


def _estimator_lines(e: Estimator, sym, g: str = "g") -> list[str]:
    bc = []
    if e.bias_beta1:
        bc.append(f"/(1 − {sym(e.bias_beta1)}^k)")
    if e.bias_beta2:
        bc.append(f"·√(1 − {sym(e.bias_beta2)}^k)")
    b, d0 = sym(e.beta), sym(e.d0)
    s_rate = "d" if e.safeguard_warmup else "η̂"
    cap = f"min(d_max, d·{sym(e.growth)}), d raised to max(d, d̂) while d = {d0}" if e.growth else "d_max"
    return [
        f"Prodigy's estimate d (one per model; k = its step count, θ0 = θ at the first step; sums over every parameter):",
        f"  η̂ = d·η_t{''.join(bc)};  r ← {b}·r + (d/{d0})·η̂·Σ⟨{g}, θ0 − θ⟩;  s ← {b}·s + (d/{d0})·{s_rate}·{g}",
        f"  d̂ = {sym(e.coef)}·r/Σ‖s‖₁;  d_max ← max(d_max, d̂);  d' = {cap}",
        f"  {g} ← d·{g};  η_t ← η̂;  ε ← d'·ε in every denominator",
    ]


def _relative_step_lines(rs: RelativeStep, sym, g: str = "g") -> list[str]:
    return [f"α = max({sym(rs.eps)}, rms(θ))·min(η_t, 1/√t) per tensor (θ before its decay);  α takes the place "
            "of η_t in the steps along u (of θ, and of z with averaging)"]


# ---------------------------------------------------------------------------- the registry


def _gene(name: str, *roles: str, required: bool = True) -> Field:
    return Field(name, roles=roles, required=required)


_DECAY = (_gene("rate", "weight_decay"),)

LOCI: dict[str, Locus] = {locus.key: locus for locus in (
    Locus(
        "clip", "gradient clipping", value_type=Clip, tag="mode",
        variants=tuple(Variant(
            mode, (_gene("threshold", "threshold"),), stage="gradient", order=10,
            function="evolveopt.primitives.gradient:clip_stage", equation=_clip_lines, draw={"threshold": "clip"},
        ) for mode in ("value", "tensor_norm", "global_norm")),
        space_key="clip", space_default=("none", "none", "none", "global_norm", "tensor_norm", "value"),
        draw_rank=5,
    ),
    Locus(
        "adaptor", "ALTO's gradient adaptor", value_type=Adaptor, tag=None,
        variants=(Variant(
            "adaptor", (_gene("beta", "rate"), _gene("alpha", "coefficient")), stage="gradient", order=40,
            function="evolveopt.primitives.gradient:adaptor_stage",
            slots=("adaptor.prev_grad", "adaptor.diff_ema"), equation=_adaptor_lines,
            draw={"beta": "<rate>", "alpha": "alpha"},
        ),),
        space_key="adaptor_probability", space_default=0.15, draw_rank=6, move="toggle_adaptor",
    ),
    Locus(
        "layerwise", "per-tensor scaling of the direction", value_type=Layerwise, bare=True,
        variants=(
            Variant("trust_ratio", (_gene("clamp", "clamp", required=False), _gene("eps", "eps", required=False),
                                    Field("norm_of", options=("update", "new_weights"), required=False,
                                          default="update")),
                    stage="direction", order=70, function="evolveopt.primitives.layerwise:layerwise_stage",
                    equation=_trust_lines, draw={"clamp": "trust_clamp", "eps": "trust_eps"}),
            Variant("rms_norm", (_gene("eps", "eps"),), stage="direction", order=70,
                    function="evolveopt.primitives.layerwise:layerwise_stage",
                    equation=lambda lw, sym, g: [f"u ← u/(rms(u) + {sym(lw.eps)}) per tensor"], draw={"eps": "eps"}),
            Variant("rms_clip", (_gene("threshold", "threshold"),), stage="direction", order=70,
                    function="evolveopt.primitives.layerwise:layerwise_stage",
                    equation=lambda lw, sym, g: [f"u ← u/max(1, rms(u)/{sym(lw.threshold)}) per tensor"],
                    draw={"threshold": "update_clip"}, since_schema=2),
        ),
        space_key="layerwise", space_default=("none", "none", "trust_ratio", "rms_norm"), draw_rank=1,
    ),
    Locus(
        "friction", "diffGrad's friction", value_type=None, default="none",
        variants=tuple(Variant(kind, stage="direction", order=80,
                               function="evolveopt.primitives.layerwise:friction_stage",
                               slots=("prev_grad",), equation=_friction_lines)
                       for kind in ("elementwise", "tensor")),
        space_key="friction", space_default=("none", "none", "elementwise", "tensor"), draw_rank=2,
    ),
    Locus(
        "loss_feedback", "Eve's loss feedback", value_type=LossFeedback, tag=None,
        variants=(Variant(
            "loss_feedback", (_gene("beta", "rate"), _gene("low", "feedback_bound"), _gene("high", "feedback_bound")),
            stage="loss", equation=_feedback_lines,
            draw={"beta": "beta3", "low": "feedback_low", "high": "feedback_high"},
        ),),
        space_key="loss_feedback_probability", space_default=0.0, draw_rank=7, move=None,
    ),
    Locus(
        "weight_decay", "weight decay", value_type=WeightDecay, tag="mode",
        variants=(
            Variant("l2", _DECAY, stage="gradient", order=20, function="evolveopt.primitives.decay:l2_stage",
                    equation=lambda wd, sym, g: [f"g ← g + {sym(wd.rate)}·θ"], draw={"rate": "weight_decay"}),
            Variant("decoupled", _DECAY, stage="weights", order=30,
                    function="evolveopt.primitives.decay:decoupled_stage",
                    equation=lambda wd, sym, g: [f"θ ← θ·(1 − η_t·{sym(wd.rate)})"], draw={"rate": "weight_decay"}),
            Variant("proximal", _DECAY, stage="after", order=90, function="evolveopt.primitives.decay:proximal_stage",
                    equation=lambda wd, sym, g: [f"θ ← θ/(1 + η_t·{sym(wd.rate)})"],
                    draw={"rate": "weight_decay"}),
            Variant("in_direction", _DECAY, stage="direction", order=60,
                    function="evolveopt.primitives.decay:in_direction_stage",
                    equation=lambda wd, sym, g: [f"u ← u + {sym(wd.rate)}·θ"], draw={"rate": "weight_decay"}),
            Variant("decoupled_after", _DECAY, stage="after", order=90,
                    function="evolveopt.primitives.decay:decoupled_after_stage",
                    equation=lambda wd, sym, g: [f"θ ← θ·(1 − η_t·{sym(wd.rate)})   (after the step)"],
                    draw={"rate": "weight_decay"}, since_schema=2),
        ),
        space_key="weight_decay", space_default=("none", "l2", "decoupled", "decoupled", "proximal", "in_direction"),
        draw_rank=3,
    ),
    Locus(
        "schedule", "learning-rate schedule", value_type=Schedule, bare=True, default=Schedule(),
        variants=(
            Variant("constant", stage="lr", equation=_schedule_lines),
            Variant("linear_warmup", (_gene("warmup", "fraction"),), stage="lr", equation=_schedule_lines,
                    draw={"warmup": "warmup"}),
            Variant("cosine", stage="lr", equation=_schedule_lines),
            Variant("linear_decay", stage="lr", equation=_schedule_lines),
            Variant("exponential", (_gene("gamma", "decay_factor"),), stage="lr", equation=_schedule_lines,
                    draw={"gamma": "gamma"}),
            Variant("warmup_cosine", (_gene("warmup", "fraction"),), stage="lr", equation=_schedule_lines,
                    draw={"warmup": "warmup"}),
        ),
        space_key="schedules",
        space_default=("constant", "constant", "cosine", "warmup_cosine", "linear_decay", "linear_warmup"),
        draw_rank=4,
    ),
    Locus(
        "cautious", "the cautious sign-agreement mask", value_type=Cautious, bare=True,
        variants=tuple(Variant(kind, stage="direction", order=55,
                               function="evolveopt.primitives.cautious:cautious_stage", equation=_cautious_lines)
                       for kind in ("mean", "plus_one")),
        space_key="cautious", space_default=("none",), draw_rank=8, since_schema=2,
    ),
    Locus(
        "averaging", "schedule-free averaging (a z sequence and an evaluation point)", value_type=Averaging,
        variants=(Variant(
            "schedule_free", (_gene("beta", "rate"), _gene("r", "averaging_power"),
                              _gene("lr_power", "averaging_power")),
            stage="move", order=85, function="evolveopt.primitives.averaging:schedule_free_stage",
            slots=("averaging.z", "averaging.lr_max", "averaging.weight_sum"),
            slot_kinds={"averaging.z": "param_copy", "averaging.lr_max": "per_member_zero",
                        "averaging.weight_sum": "per_member_zero"},
            equation=_averaging_lines, draw={"beta": "beta1", "r": "avg_r", "lr_power": "avg_lr_power"},
        ),),
        space_key="averaging", space_default=("none",), draw_rank=9, since_schema=2,
    ),
    Locus(
        # First of the direction stage (order 50), right after the terms: cautious masks, in-direction decay,
        # the trust ratio / rms_norm and friction then act on the orthogonalized u; the shape factor s
        # multiplies the tensor's step size (as torch.optim.Muon's adjusted lr), after all of them.
        "orthogonalize", "Muon's Newton–Schulz orthogonalization of each matrix's direction",
        value_type=Orthogonalize, bare=True,
        variants=(Variant(
            "newton_schulz",
            (Field("steps", integer=True, minimum=1, required=False, default=5),
             Field("coefficients", options=NS_COEFFICIENTS, required=False, default="original"),
             Field("dtype", options=NS_DTYPES, required=False, default="bfloat16"),
             Field("scale", options=NS_SCALES, required=False, default="original")),
            stage="direction", order=50, function="evolveopt.primitives.orthogonal:orthogonalize_stage",
            equation=_orthogonalize_lines,
        ),),
        space_key="orthogonalize", space_default=("none",), draw_rank=10, since_schema=2,
    ),
    Locus(
        "estimator", "a global step-size estimate", value_type=Estimator,
        variants=(Variant(
            "prodigy", (_gene("beta", "rate"), _gene("d0", "initial_estimate"), _gene("coef", "estimate_coefficient"),
                        _gene("growth", "growth_rate", required=False), _gene("bias_beta1", "rate", required=False),
                        _gene("bias_beta2", "rate", required=False), Field("safeguard_warmup", flag=True, required=False,
                                                                          default=False)),
            stage="global", order=50, function="evolveopt.primitives.estimators:prodigy_estimate",
            slots=PRODIGY_SLOTS, slot_kinds={"estimator.x0": "param_copy"}, equation=_estimator_lines,
            draw={"beta": "beta3", "d0": "d0", "coef": "d_coef"},
        ),),
        space_key="estimator", space_default=("none",), draw_rank=11, since_schema=2,
    ),
    Locus(
        # A weights-stage locus ordered before decoupled decay (30): α reads θ before it decays.
        "relative_step", "Adafactor's relative step size (parameter RMS times min(η_t, 1/√t))",
        value_type=RelativeStep,
        variants=(Variant(
            "parameter_rms", (_gene("eps", "eps"),), stage="weights", order=25,
            function="evolveopt.primitives.layerwise:relative_step_stage", equation=_relative_step_lines,
            draw={"eps": "eps2"},
        ),),
        space_key="relative_step", space_default=("none",), draw_rank=12, since_schema=2,
    ),
)}


def locus_genes(locus: Locus, value: Any) -> list[str]:
    """The genes a locus value refers to."""
    if locus.value_type is None:
        return []
    variant = locus.variant(locus.kind_of(value))
    return [getattr(value, f.name) for f in variant.fields if f.is_gene and getattr(value, f.name) is not None]


def locus_slots(locus: Locus, value: Any) -> tuple[str, ...]:
    return locus.variant(locus.kind_of(value)).slots


def locus_slot_kinds(locus: Locus, value: Any) -> dict[str, str]:
    """Every state slot of a locus value with its kind (``param_shaped`` unless the row says otherwise)."""
    variant = locus.variant(locus.kind_of(value))
    return {slot: variant.slot_kinds.get(slot, "param_shaped") for slot in variant.slots}


def global_stages(loci: dict[str, Any]) -> list[tuple[str, Variant, Any]]:
    """(locus key, variant, value) of every global-stage locus a genome has, in their order."""
    steps = [(locus.key, locus.variant(locus.kind_of(value)), value) for locus, value in present_loci(loci)]
    return sorted([step for step in steps if step[1].stage == "global"], key=lambda step: step[1].order)


def shared_genes(loci: dict[str, Any]) -> list[str]:
    """Genes every param group must share: lr and the schedule's genes when a global stage reads η_t,
    and every gene of the global-stage loci."""
    stages = global_stages(loci)
    if not stages:
        return []
    names = ["lr", *locus_genes(LOCI["schedule"], loci.get("schedule", LOCI["schedule"].default))]
    for key, _, value in stages:
        names += locus_genes(LOCI[key], value)
    return list(dict.fromkeys(names))


def present_loci(loci: dict[str, Any]) -> list[tuple[Locus, Any]]:
    """(locus, value) of every locus a genome has, in registry order."""
    return [(locus, loci[key]) for key, locus in LOCI.items() if key in loci and locus.present(loci[key])]


def pipeline(loci: dict[str, Any], *stages: str) -> list[tuple[Variant, Any]]:
    """The variants a genome runs at ``stages``, in their order."""
    steps = []
    for locus, value in present_loci(loci):
        variant = locus.variant(locus.kind_of(value))
        if variant.stage in stages:
            steps.append((variant, value))
    return sorted(steps, key=lambda item: item[0].order)





# ---------------------------------------------------------------------------- term-level parts
#
# The parts a term is made of (its signal, momentum, precondition with its eps placement, its order) and
# the kinds of gene schedule, declared as the loci are: each kind is a :class:`Variant` row with its
# fields (gene references with roles, flags, options; ``since_schema`` on a field that is newer than its
# kind), the schema version that first has it, and, where the renderer reads it per kind, its equation.
# Parsing and its errors, the referenced genes, ``schema_version_of``, the search space's choices and
# ``evolveopt show`` read this table (schema.py, equations.py, search/space.py). Each signal, momentum,
# precondition and eps-mode kind names its tensor function (primitives gradient, moments,
# preconditioners; compile/rule.py resolves them once per rule and an export ships those it uses).


@dataclass(frozen=True)
class Part:
    """A term-level primitive: a field of a term (or a gene schedule) whose value is one of its kinds."""

    key: str
    doc: str
    variants: tuple[Variant, ...]
    common: tuple[Field, ...] = ()  # fields every kind takes (besides its own)
    default: str | None = None  # the kind when the field is left out

    def variant(self, kind: str) -> Variant:
        return next(v for v in self.variants if v.kind == kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(v.kind for v in self.variants)

    def kinds_without(self, tag: str) -> tuple[str, ...]:
        return tuple(v.kind for v in self.variants if tag not in v.tags)

    def fields_of(self, kind: str) -> tuple[Field, ...]:
        return (*self.variant(kind).fields, *self.common)

    def keys(self) -> tuple[str, ...]:
        """Every key a mapping of this part may have, the tag first, in declaration order."""
        names = [f.name for v in self.variants for f in v.fields] + [f.name for f in self.common]
        return ("kind", *dict.fromkeys(names))

    def genes(self, kind: str, value: Any) -> list[str]:
        """The genes a value of this part (of ``kind``) refers to, in field order."""
        names = [getattr(value, f.name) for f in self.fields_of(kind) if f.is_gene]
        return [name for name in names if name is not None]

    def slot_names(self, kind: str, value: Any, of: str) -> list[tuple[str, str]]:
        """(name, kind) of the buffers of a value of ``kind`` holding a statistic of ``of``: each named
        ``<slot>.<of>.<value of each slot key>`` (buffers with one name are one buffer, shared)."""
        variant = self.variant(kind)
        keys = variant.slot_keys if variant.slot_keys is not None else [f.name for f in variant.fields if f.is_gene]
        suffix = "".join(f".{getattr(value, key)}" for key in keys)
        return [(f"{slot}.{of}{suffix}", variant.slot_kinds.get(slot, "param_shaped")) for slot in variant.slots]

    def since(self, kind: str, value: Any) -> int:
        """The schema version a value of ``kind`` needs: its kind's, or a newer field's that it sets."""
        used = [f.since_schema for f in self.fields_of(kind)
                if getattr(value, f.name, None) not in (None, f.default, False)]
        return max([self.variant(kind).since_schema, *used])


def _linear_warmup_lines(s: Any, sym, gene: str) -> list[str]:
    x, steps = sym(gene), f"max(t − {s.offset}, 0)" if s.offset else "t"
    return [f"{x}_t = {x}·min(1, {steps}/{s.horizon})"]


def _halflife_lines(s: Any, sym, gene: str) -> list[str]:
    x, b0 = sym(gene), sym(s.start)
    return [f"{x}_t = min(exp(ln {b0}·ln {x}/((1 − s)·ln {x} + s·ln {b0})), {x}),  s = min(1, t/{s.horizon})"
            f":  1/ln {x}_t moves linearly from 1/ln {b0} to 1/ln {x}"]


def _power_lines(s: Any, sym, gene: str) -> list[str]:
    x = sym(gene)
    power = f"max(t − {s.offset}, 0)^{s.power:g}" if s.offset else f"t^{s.power:g}"
    return [f"{x}_t = 1 − (1 − {x})·{power}" if gene in ("beta1", "beta2", "beta3") else f"{x}_t = {x}·{power}"]


# A signal row's equation is (signal, sym, g, m) -> the signal's expression (m: the term's momentum buffer).
def _corrected_lines(signal: Any, sym, g: str, m: str) -> str:
    b = sym(signal.beta)
    c = f"({g} + {sym(signal.gamma)}·{b}/(1 − {b})·({g} − {g}_prev))"
    return f"clip_{sym(signal.clip)}{c}" if signal.clip else c


# An eps_mode row's equation is (precondition, sym, y, v, bc, d) -> y divided by the root of v (bc: the
# bias correction's expression or "", d: "d_t·" with loss feedback or "").
def _root(v: str, bc: str) -> str:
    return f"√({v}/{bc})" if bc else f"√{v}"


def _outside(pre: Any, sym, y: str, v: str, bc: str, d: str) -> str:
    return f"{y}/({d}{_root(v, bc)} + {sym(pre.eps)})"


def _raw(pre: Any, sym, y: str, v: str, bc: str, d: str) -> str:
    return f"{f'√{bc}·' if bc else ''}{y}/({d}√{v} + {sym(pre.eps)})"


def _inside(pre: Any, sym, y: str, v: str, bc: str, d: str) -> str:
    return f"{y}/({d}√({v}/{bc} + {sym(pre.eps)}))" if bc else f"{y}/({d}√({v} + {sym(pre.eps)}))"


def _clamp(pre: Any, sym, y: str, v: str, bc: str, d: str) -> str:
    return f"{y}/max({d}{_root(v, bc)}, {sym(pre.eps)})"


def _atan2(pre: Any, sym, y: str, v: str, bc: str, d: str) -> str:
    return f"{sym(pre.a)}·atan2({y}, {sym(pre.b)}·{d}{_root(v, bc)})"


# A precondition row's equation is (precondition, sym, v, x) -> the lines advancing its statistic v of x
# (shown where v first appears).
def _stale(pre: Any, v: str, x: str) -> str:
    return f"   (after use: the division reads {v} of step t − 1; {v}_0 = {x}² at t = 1, when the term is 0)" \
        if pre.stale else ""


def _second_moment_lines(pre: Any, sym, v: str, x: str) -> list[str]:
    b = sym(pre.beta)
    return [f"{v} ← {b}·{v} + (1 − {b})·{x}²" + _stale(pre, v, x)]


def _belief_lines(pre: Any, sym, v: str, x: str) -> list[str]:
    b = sym(pre.beta)
    return [f"{v} ← {b}·{v} + (1 − {b})·{x}² + {sym(pre.eps)}" + _stale(pre, v, x)]


def _factored_lines(pre: Any, sym, v: str, x: str) -> list[str]:
    b = sym(pre.beta)
    return [f"R ← {b}·R + (1 − {b})·mean_cols({x}²);  C ← {b}·C + (1 − {b})·mean_rows({x}²);  "
            f"{v} = R·C/max(mean(R), {sym(pre.eps)})   (over the last two dims; a tensor of "
            f"< 2 dims keeps {v} ← {b}·{v} + (1 − {b})·{x}²)"]


def _averaged(mom: Any, sym, m: str, x: str) -> str:
    b = sym(mom.beta)
    return f"{m} ← {b}·{m} + (1 − {b})·{x}" if mom.dampening else f"{m} ← {b}·{m} + {x}"


# A momentum row's equation is (momentum, sym, m, x) -> (lines shown where the buffer m first appears,
# lines shown at every use, the term's numerator).
def _ema_lines(mom: Any, sym, m: str, x: str) -> tuple[list[str], list[str], str]:
    bias = f"/(1 − {sym(mom.beta)}^t)" if mom.bias_correction else ""
    return [_averaged(mom, sym, m, x)], [], f"{m}{bias}"


def _nesterov_lines(mom: Any, sym, m: str, x: str) -> tuple[list[str], list[str], str]:
    b, bias = sym(mom.beta), f"/(1 − {sym(mom.beta)}^t)" if mom.bias_correction else ""
    lead = f"(1 − {b})·{x}" if mom.dampening else x
    return [_averaged(mom, sym, m, x)], [], f"({lead} + {b}·{m}){bias}"


def _interp_lines(mom: Any, sym, m: str, x: str) -> tuple[list[str], list[str], str]:
    mix = sym(mom.mix)
    return [f"c = {mix}·{m} + (1 − {mix})·{x};  then {_averaged(mom, sym, m, x)}"], [], "c"


def _nadam_lines(mom: Any, sym, m: str, x: str) -> tuple[list[str], list[str], str]:
    b = sym(mom.beta)
    return ([_averaged(mom, sym, m, x)], [f"μ_t = {b}·(1 − ½·0.96^(t·{sym(mom.decay)}))"],
            f"[(1 − μ_t)/(1 − Πμ)·{x} + μ_(t+1)/(1 − Πμ·μ_(t+1))·{m}]")


_MOMENTS = "evolveopt.primitives.moments"
_GRADIENT = "evolveopt.primitives.gradient"
_PRE = "evolveopt.primitives.preconditioners"
_HORIZON = Field("horizon", integer=True, minimum=1)
_OFFSET = Field("offset", integer=True, required=False, default=0)
_MOMENTUM_BETA = _gene("beta", "rate")
_DAMPED = (_MOMENTUM_BETA, Field("dampening", flag=True, required=False, default=True),
           Field("bias_correction", flag=True, required=False, default=False))
_PRE_BETA = (_gene("beta", "rate"), Field("bias_correction", flag=True, required=False, default=False),
             Field("rectify", flag=True, required=False, default=False))
_EPS = (_gene("eps", "eps"),)
DEFAULT_READ = f"{_PRE}:last_buffer"  # a precondition row's statistic when it names no ``read``

PARTS: dict[str, Part] = {part.key: part for part in (
    Part("signal", "the quantity a statistic averages (schema.Signal)", default="grad", variants=(
        Variant("grad", function=f"{_GRADIENT}:grad_signal", equation=lambda signal, sym, g, m: g),
        Variant("grad_diff", slots=("prev_grad",), function=f"{_GRADIENT}:grad_diff_signal",
                equation=lambda signal, sym, g, m: f"({g} − {g}_prev)"),
        Variant("nesterov_grad", (_gene("beta", "rate"),), slots=("prev_grad",), function=f"{_GRADIENT}:nesterov_grad_signal",
                equation=lambda signal, sym, g, m: f"({g} + {sym(signal.beta)}·({g} − {g}_prev))"),
        # "per_term": its value depends on the term reading it (not shared between terms)
        Variant("residual", tags=("precondition_only", "per_term"), function=f"{_GRADIENT}:residual_signal",
                equation=lambda signal, sym, g, m: f"({g} − {m})"),
        Variant("corrected_grad", (_gene("beta", "rate"), _gene("gamma", "correction"),
                                   _gene("clip", "threshold", required=False)), slots=("prev_grad",),
                function=f"{_GRADIENT}:corrected_grad_signal", equation=_corrected_lines, since_schema=2),
    )),
    Part("momentum", "a term's first-moment statistic (schema.Momentum)", variants=(
        Variant("ema", _DAMPED, slots=("momentum",), function=f"{_MOMENTS}:ema", equation=_ema_lines),
        # shares the buffer of an ema of the same signal and β
        Variant("nesterov", _DAMPED, slots=("momentum",), function=f"{_MOMENTS}:nesterov", equation=_nesterov_lines),
        Variant("interp", (_MOMENTUM_BETA, _gene("mix", "rate")), slots=("lion_momentum",),  # reads m_{t−1} first
                function=f"{_MOMENTS}:interp", equation=_interp_lines),
        Variant("nadam", (_MOMENTUM_BETA, _gene("decay", "momentum_decay")), slots=("nadam_momentum", "nadam_mu_product"),
                slot_kinds={"nadam_mu_product": "per_member"}, function=f"{_MOMENTS}:nadam", equation=_nadam_lines),
    )),
    Part("precondition", "a term's second-moment statistic (schema.Precondition)", variants=(
        Variant("ema", _PRE_BETA, slots=("second_moment",), function=f"{_PRE}:ema_statistic_",
                equation=_second_moment_lines),
        # v̄ ← max(v̄, v): the root is taken of its last slot (equations.py shows the running max)
        Variant("max", _PRE_BETA, slots=("second_moment", "second_moment_max"), function=f"{_PRE}:max_statistic_",
                equation=_second_moment_lines),
        Variant("sum", slots=("sum_of_squares",), function=f"{_PRE}:sum_statistic_",
                equation=lambda pre, sym, v, x: [f"{v} ← {v} + {x}²" + _stale(pre, v, x)]),
        Variant("belief", _PRE_BETA, slots=("belief",), slot_keys=("beta", "eps"),  # its state holds ε
                function=f"{_PRE}:belief_statistic_", equation=_belief_lines,
                excludes={"eps_mode": ("atan2", "adds ε to its state; eps_mode 'atan2' takes no ε (use ema, max or sum)")}),
        # rows R and columns C (a full v for tensors of < 2 dims); v̂ is rebuilt each step
        Variant("factored", _PRE_BETA, slots=("factored_rows", "factored_columns"),
                slot_kinds={"factored_rows": "factored_rows", "factored_columns": "factored_columns"},
                function=f"{_PRE}:factored_statistic_", read=f"{_PRE}:factored_read", equation=_factored_lines,
                since_schema=2,
                excludes={"eps_mode": ("atan2", "needs eps (the floor of mean(R)); eps_mode 'atan2' takes none")}),
    ), common=(Field("stale", flag=True, required=False, default=False, since_schema=2),
               Field("clip", roles=("threshold",), required=False, since_schema=2))),
    Part("eps_mode", "where a precondition's floor ε goes (schema.Precondition.eps_mode)", default="outside",
         variants=(
             Variant("outside", _EPS, draw={"eps": "eps"}, function=f"{_PRE}:outside_eps", equation=_outside),
             Variant("raw", _EPS, draw={"eps": "eps"}, function=f"{_PRE}:raw_eps", equation=_raw),
             Variant("inside", _EPS, draw={"eps": "eps"}, function=f"{_PRE}:inside_eps", equation=_inside),
             Variant("clamp", _EPS, draw={"eps": "eps"}, function=f"{_PRE}:clamp_eps", equation=_clamp, since_schema=2),
             Variant("atan2", (_gene("a", "atan2_scale"), _gene("b", "atan2_scale")), draw={"a": "a", "b": "b"},
                     function=f"{_PRE}:atan2_eps", equation=_atan2, since_schema=2),
         )),
    Part("order", "the order of a term's statistics (schema.Term.order)", default="momentum_first", variants=(
        Variant("momentum_first"),
        Variant("normalize_first", since_schema=2),
    )),
    Part("gene_schedule", "a gene that varies with the step (schema.GeneSchedule)", variants=(
        Variant("linear_warmup", (_HORIZON, _OFFSET), equation=_linear_warmup_lines),
        Variant("halflife_warmup", (_HORIZON, _gene("start", "rate")), equation=_halflife_lines),
        Variant("power", (Field("power"), _OFFSET), equation=_power_lines),
    )),
)}


def primitive_modules() -> tuple[str, ...]:
    """The torch-side modules that implement some locus or term-level part (the export bundler ships them)."""
    rows = [*LOCI.values(), *PARTS.values()]
    names = {v.function.split(":")[0] for row in rows for v in row.variants if v.function}
    return tuple(sorted(names))
