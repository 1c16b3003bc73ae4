"""A genome compiled into one step over a list of tensors.

:class:`Rule` is the single implementation of every genome. It serves two callers:

* :class:`~evolveopt.compile.optimizer.GenomeOptimizer` (a ``torch.optim.Optimizer``): genes are
  Python floats from the param group, tensors are one group's parameters (``member_dims = 0``);
* the population evaluator: tensors are stacked ``[P, ...]`` and genes are ``[P]`` tensors, one
  value per member (``member_dims = 1``), so P genomes of one structure train in one call.

Both call :meth:`Rule.step_all` with every tensor list of a step (the optimizer's chunks of
every param group): a genome with a global stage (Prodigy's estimate) first runs each list's
gradient stage, then the global stage over all of them, then the rest of each list's step.

State lives in named slots (``momentum.grad.beta1``, ``second_moment.grad.beta2``, ...) so two
terms that read the same statistic share one buffer, and checkpoints stay readable.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from evolveopt.errors import OptimizerUsageError
from evolveopt.genome.genes import gene_spec
from evolveopt.genome.registry import DEFAULT_READ, PARTS, global_stages, pipeline
from evolveopt.genome.schema import Genome, Momentum, Signal, Term, fallback_genome
from evolveopt.genome.slots import (FACTORED_COLUMNS, FACTORED_ROWS, PARAM_COPY, PARAM_KINDS, PARAM_SHAPED,
                                    PER_MEMBER_ZERO, momentum_slot, momentum_slots, precondition_slots, signal_name,
                                    state_slots)
from evolveopt.primitives import moments, preconditioners, schedules
from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Factor, Scalar, Step, TensorList


@dataclass
class Part:
    """coef · num / den (den may be None): one summand of the direction u."""

    coef: Factor
    num: TensorList
    den: TensorList | None = None
    fresh: bool = False  # num is new memory of this step that nothing else reads: the step may overwrite it


@dataclass
class StepContext:
    """Everything a step needs besides tensors: step count t (1-based; a Python int, or a 0-d
    float64 tensor on the capturable/compiled path), gene values, η_t."""

    t: Step
    genes: Mapping[str, Scalar]
    lr: Scalar
    member_dims: int = 0
    maximize: bool = False
    global_clip: Scalar | None = None  # min(1, c/‖g‖) over every parameter, for clip.mode=global_norm
    feedback: Scalar | None = None  # Eve's d_t
    eps_scale: Scalar | None = None  # a factor of every precondition floor ε (set by a global stage)


@dataclass
class Flow:
    """The tensors a locus's stage function reads and replaces (registry.py, STAGES)."""

    params: TensorList
    grads: TensorList  # g: after maximize, then each gradient-stage locus
    state: Mapping[str, TensorList]
    direction: TensorList | None = None  # u, during the direction stage
    step_scale: list[float] | None = None  # per-tensor factor s of η_t (orthogonalize's shape scale): θ ← θ − η_t·s·u
    step_size: list[Scalar] | None = None  # per-tensor step α in place of η_t (relative_step): θ ← θ − α·s·u


Stage = list[tuple[Callable[[Any, Flow, StepContext], None], Any]]


def _function(path: str) -> Callable:
    """The stage function a registry row names as ``module:function``."""
    module, name = path.split(":")
    if __name__ != "evolveopt.compile.rule":  # a standalone export: the runtime is this one module
        return globals()[name]
    return getattr(importlib.import_module(module), name)


def _stage(genome: Genome, *stages: str) -> Stage:
    return [(_function(variant.function), value) for variant, value in pipeline(genome.loci, *stages)]


@dataclass
class _StepCache:
    """Signals and statistics computed once per step, shared by the terms that read them."""

    grads: TensorList
    signals: dict[str, TensorList] = field(default_factory=dict)
    updated: dict[str, TensorList] = field(default_factory=dict)  # buffers advanced this step, by slot
    statistics: dict[tuple, TensorList] = field(default_factory=dict)  # what a precondition's root is of, by slots
    momentum_parts: dict[tuple, moments.Parts] = field(default_factory=dict)
    stale_updates: dict[str, Callable[[], None]] = field(default_factory=dict)  # run once every term has read


@dataclass
class SignalSource:
    """What a signal row's function reads (registry.PARTS["signal"], primitives/gradient.py)."""

    rule: "Rule"
    term: Term
    state: Mapping[str, TensorList]
    cache: _StepCache
    ctx: StepContext

    @property
    def grads(self) -> TensorList:
        return self.cache.grads

    def signal(self, signal: Signal | str) -> TensorList:
        """Another signal of this step (a kind, or a Signal value)."""
        signal = Signal(signal) if isinstance(signal, str) else signal
        return self.rule._signal(signal, self.term, self.state, self.cache, self.ctx)

    def momentum(self) -> TensorList:
        """The term's momentum buffer (as advanced so far this step)."""
        return self.state[momentum_slot(self.term)]


class Rule:
    """The update rule of one genome structure (gene values arrive with each step)."""

    def __init__(self, genome: Genome):
        self.genome = genome
        self.slots = state_slots(genome)
        self.on_gradient = _stage(genome, "gradient")
        self.on_global = [(key, _function(variant.function), value)  # (locus key, fn, value): see step_all
                          for key, variant, value in global_stages(genome.loci)]
        self.before_terms = _stage(genome, "weights")
        self.on_direction = _stage(genome, "direction")
        self.move = _stage(genome, "move")  # replaces θ ← θ − η_t·u where a locus moves θ itself
        self.after_move = _stage(genome, "after")
        # the term parts' row functions, resolved once (a look-up inside step() would be traced by torch.compile)
        self.functions = part_functions(genome)
        self.per_term_signals = {kind for kind in PARTS["signal"].kinds if "per_term" in PARTS["signal"].variant(kind).tags}

    def init_state(self, param: Tensor, member_dims: int = 0, capturable: bool = False) -> dict[str, Tensor]:
        """Fresh state for one parameter tensor (``[P, ...]`` when member_dims is 1); scalar slots
        live on the host (read without a device sync) unless ``capturable`` puts them on the device."""
        state = {}
        for name, kind in self.slots.items():
            if kind == PARAM_SHAPED:
                state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
            elif kind == PARAM_COPY:
                state[name] = param.detach().clone(memory_format=torch.preserve_format)
            elif kind in (FACTORED_ROWS, FACTORED_COLUMNS):
                state[name] = _factored_zeros(param, kind, member_dims)
            else:
                start = 0.0 if kind == PER_MEMBER_ZERO else 1.0
                if member_dims == 0:
                    device = param.device if capturable else None
                    state[name] = torch.full((), start, dtype=torch.float64, device=device)
                else:
                    state[name] = torch.full(param.shape[:member_dims], start, dtype=param.dtype, device=param.device)
        return state

    @property
    def buffers_per_param(self) -> int:
        """Parameter-sized state buffers (Adam 2, Lion 1; a factored statistic counts 1: slots.rule_buffers)."""
        return sum(kind in PARAM_KINDS or kind == FACTORED_ROWS for kind in self.slots.values())

    # ------------------------------------------------------------------ per-step scalars

    def schedule(self, t: Step, genes: Mapping[str, Scalar], total_steps: int | None) -> Scalar:
        """s(t), the multiplier of lr."""
        s = self.genome.schedule
        return schedules.schedule_factor(
            s.kind, t, total_steps,
            warmup=genes[s.warmup] if s.warmup else None,
            gamma=genes[s.gamma] if s.gamma else None,
        )

    def genes_at(self, t: Step, genes: Mapping[str, Scalar]) -> dict[str, Scalar]:
        """The gene values at step t: each scheduled gene as its schedule says (schema.py GeneSchedule)."""
        out = dict(genes)
        for name, s in self.genome.gene_schedules.items():
            out[name] = schedules.scheduled_gene(
                s.kind, genes[name], t, horizon=s.horizon, start=genes[s.start] if s.start else None,
                power=s.power, offset=s.offset, rate=gene_spec(name).scale == "beta")
        return out

    @property
    def clips_global_norm(self) -> bool:
        return self.genome.clip is not None and self.genome.clip.mode == "global_norm"

    # ------------------------------------------------------------------ the step

    def step(self, params: TensorList, grads: TensorList, state: Mapping[str, TensorList], ctx: StepContext) -> None:
        """One update of ``params`` in place. ``state[slot]`` lists one buffer per parameter."""
        ctx = self._at_step(ctx)
        self._finish(self._begin(params, grads, state, ctx), ctx)

    def step_all(self, items: list[tuple[TensorList, TensorList, Mapping[str, TensorList], StepContext]],
                 stores: dict[str, dict] | None = None) -> None:
        """One update of several tensor lists that make one step (every chunk of every param group):
        each one's gradient stage, then the global stages over all of them (``stores[locus key]``
        keeps their state), then the rest of each one's step."""
        if not self.on_global:
            for params, grads, state, ctx in items:
                self.step(params, grads, state, ctx)
            return
        ctxs = [self._at_step(item[3]) for item in items]
        flows = [self._begin(params, grads, state, ctx) for (params, grads, state, _), ctx in zip(items, ctxs)]
        for key, run, value in self.on_global:
            run(value, flows, ctxs, stores[key])
        for flow, ctx in zip(flows, ctxs):
            self._finish(flow, ctx)

    def _at_step(self, ctx: StepContext) -> StepContext:
        """The step's context with each scheduled gene at its value for step t."""
        return replace(ctx, genes=self.genes_at(ctx.t, ctx.genes)) if self.genome.gene_schedules else ctx

    def _begin(self, params: TensorList, grads: TensorList, state: Mapping[str, TensorList], ctx: StepContext) -> Flow:
        g = list(torch._foreach_neg(grads)) if ctx.maximize else list(grads)
        flow = Flow(params, g, state)
        for run, value in self.on_gradient:
            run(value, flow, ctx)
        return flow

    def _finish(self, flow: Flow, ctx: StepContext) -> None:
        params, state = flow.params, flow.state
        for run, value in self.before_terms:
            run(value, flow, ctx)
        cache = _StepCache(grads=flow.grads)
        parts = [p for term in self.genome.terms for p in self._term(term, state, cache, ctx)]
        for advance in cache.stale_updates.values():  # the parts hold their own denominators, not v
            advance()
        if self.on_direction:
            flow.direction = materialize(parts)
            for run, value in self.on_direction:
                run(value, flow, ctx)
            parts = [Part(1.0 if flow.step_scale is None else flow.step_scale, flow.direction, fresh=True)]
        if "prev_grad" in state:
            torch._foreach_copy_(state["prev_grad"], flow.grads)
        if self.move:
            if flow.direction is None:
                flow.direction = materialize(parts)
            for run, value in self.move:
                run(value, flow, ctx)
        else:
            apply_(params, parts, -ctx.lr if flow.step_size is None else tl.mul(-1.0, flow.step_size))
        for run, value in self.after_move:
            run(value, flow, ctx)

    # ------------------------------------------------------------------ terms

    def _term(self, term: Term, state: Mapping[str, TensorList], cache: _StepCache, ctx: StepContext) -> list[Part]:
        x = self._signal(term.signal, term, state, cache, ctx)
        if term.order == "normalize_first":  # the momentum averages the normalized signal (LaProp, ADOPT)
            normalized = read_only(self._precondition(term, [(1.0, x)], state, cache, ctx))
            parts = [Part(c, num) for c, num in self._momentum(term, state, cache, ctx, normalized)]
        else:
            numerators: moments.Parts = [(1.0, x)]
            if term.momentum is not None:
                numerators = self._momentum(term, state, cache, ctx)
            parts = self._precondition(term, numerators, state, cache, ctx)
        if term.sign:
            u = materialize(parts)
            torch._foreach_sign_(u)
            parts = [Part(1.0, u, fresh=True)]
        weight = ctx.genes[term.weight] if term.weight else 1.0
        return [Part(tl.mul(weight, p.coef), p.num, p.den, p.fresh) for p in parts]

    def _signal(self, signal: Signal, term: Term, state: Mapping[str, TensorList], cache: _StepCache,
                ctx: StepContext) -> TensorList:
        """The signal row's function, once per step (a "per_term" row, once per reading term)."""
        shared = signal.kind not in self.per_term_signals
        key = signal_name(signal)
        if shared and key in cache.signals:
            return cache.signals[key]
        value = self.functions["signal", signal.kind](signal, SignalSource(self, term, state, cache, ctx))
        if shared:
            cache.signals[key] = value
        return value

    def _momentum(self, term: Term, state: Mapping[str, TensorList], cache: _StepCache, ctx: StepContext,
                  x: TensorList | None = None) -> moments.Parts:
        """``x``: what the momentum averages when it is not the term's signal (normalize_first)."""
        mom, genes, t = term.momentum, ctx.genes, ctx.t
        slot = momentum_slot(term)
        key = (slot, mom)
        if key in cache.momentum_parts:  # an identical momentum was read this step
            return cache.momentum_parts[key]
        x = self._signal(term.signal, term, state, cache, ctx) if x is None else x
        m, beta = state[slot], genes[mom.beta]
        if slot in cache.updated:  # an EMA/Nesterov term sharing this buffer already advanced it
            parts = _momentum_readout(mom, m, x, beta, t)
        else:  # the row's function (registry.PARTS) with the row's buffers
            parts = self.functions["momentum", mom.kind](mom, [state[name] for name in momentum_slots(term)], x, ctx)
        cache.updated[slot] = m
        cache.momentum_parts[key] = parts
        return parts

    def _precondition(self, term: Term, numerators: moments.Parts, state: Mapping[str, TensorList],
                      cache: _StepCache, ctx: StepContext) -> list[Part]:
        pre = term.precondition
        if pre is None:
            d = ctx.feedback
            scale = 1.0 if d is None else 1.0 / d
            return [Part(tl.mul(scale, c), num) for c, num in numerators]
        genes, t = ctx.genes, ctx.t
        stat = self._statistic(term, state, cache, ctx)
        if pre.stale and tl.is_float(t) and t <= 1:  # v_0 = x_1² is all the first step does
            return [Part(0.0, numerators[0][1])]
        beta = genes[pre.beta] if pre.beta else None
        bias = 1.0 - tl.power(beta, t) if pre.bias_correction else 1.0
        normalized_parts = self.functions["eps_mode", pre.eps_mode](pre, numerators, stat, bias, ctx)
        if pre.stale and not tl.is_float(t):  # no 0/0 at t = 1 (its part is 0)
            for den in {id(den): den for _, _, den in normalized_parts if den is not None}.values():
                tl.add_scalar_(den, 1.0 - preconditioners.after_first_step(t))
        normalized, plain = 1.0, 0.0
        if pre.rectify:
            normalized, plain = preconditioners.rectification(beta, t)
        if pre.stale and not tl.is_float(t):
            normalized = tl.mul(normalized, preconditioners.after_first_step(t))
        parts = []
        for c, num, den in normalized_parts:
            if not tl.is_zero(normalized):
                parts.append(Part(tl.mul(c, normalized), num, den))
        if not tl.is_zero(plain):
            parts += [Part(tl.mul(c, plain), num) for c, num in numerators]
        if pre.clip is not None:
            clipped = materialize(parts)
            preconditioners.clip_(clipped, genes[pre.clip])
            parts = [Part(1.0, clipped, fresh=True)]
        return parts

    def _statistic(self, term: Term, state: Mapping[str, TensorList], cache: _StepCache, ctx: StepContext) -> TensorList:
        """Advance the term's second-moment buffers once per step (from the first one no term sharing
        them advanced); return what the root is taken of. A stale statistic is read before it advances,
        after every term read it: its value of the previous step."""
        pre, slots = term.precondition, tuple(precondition_slots(term))
        if slots in cache.statistics:
            return cache.statistics[slots]
        advance, read = self.functions["precondition", pre.kind], self.functions["read", pre.kind]
        buffers = [state[name] for name in slots]
        beta = ctx.genes[pre.beta] if pre.beta else None
        eps = ctx.genes[pre.eps] if pre.eps else None
        first = next((i for i, name in enumerate(slots) if name not in cache.updated), len(slots))
        if first == len(slots):
            stat = read(pre, buffers, eps, ctx.member_dims)
        else:
            x = self._signal(pre.signal, term, state, cache, ctx)
            if pre.stale:
                stat = read(pre, buffers, eps, ctx.member_dims)
                cache.stale_updates[slots[first]] = lambda x=x, beta=preconditioners.stale_beta(beta, ctx.t): \
                    advance(pre, buffers, x, beta, eps, ctx.member_dims, first)
            else:
                advance(pre, buffers, x, beta, eps, ctx.member_dims, first)
                stat = read(pre, buffers, eps, ctx.member_dims)
            cache.updated.update({name: state[name] for name in slots})
        cache.statistics[slots] = stat
        return stat


def part_functions(genome: Genome) -> dict[tuple[str, str], Callable]:
    """(part, kind) -> the tensor function its registry row names, for every part the genome's terms use
    (a signal's, a momentum's, a precondition's with its ``read`` and its eps_mode's)."""
    out = {}
    for key, row, attribute in part_rows(genome):
        out[key] = _function(getattr(row, attribute) or DEFAULT_READ)
    return out


def part_rows(genome: Genome) -> list[tuple[tuple[str, str], Any, str]]:
    """((part, kind), registry row, which of its functions) for every part the genome's terms use."""
    rows = {}
    signals = [t.signal for t in genome.terms] + [t.precondition.signal for t in genome.terms if t.precondition]
    if any(s.kind == "nesterov_grad" for s in signals):
        signals.append(Signal("grad_diff"))
    if any(s.kind == "residual" for s in signals):
        signals += [t.signal for t in genome.terms]
    for s in signals:
        rows["signal", s.kind] = (PARTS["signal"].variant(s.kind), "function")
    for t in genome.terms:
        if t.momentum is not None:
            rows["momentum", t.momentum.kind] = (PARTS["momentum"].variant(t.momentum.kind), "function")
        if t.precondition is not None:
            pre = t.precondition
            rows["precondition", pre.kind] = (PARTS["precondition"].variant(pre.kind), "function")
            rows["read", pre.kind] = (PARTS["precondition"].variant(pre.kind), "read")
            rows["eps_mode", pre.eps_mode] = (PARTS["eps_mode"].variant(pre.eps_mode), "function")
    return [(key, row, attribute) for key, (row, attribute) in rows.items()]


def _factored_zeros(param: Tensor, kind: str, member_dims: int) -> Tensor:
    """A factored statistic's zero state (slots.py): R [..., n, 1] and C [..., 1, m] for a tensor of
    >= 2 dims per member; a full v (rows) and an empty [..., 0] (columns) for the others."""
    shape = tuple(param.shape)
    if len(shape) - member_dims >= 2:
        shape = shape[:-1] + (1,) if kind == FACTORED_ROWS else shape[:-2] + (1, shape[-1])
    elif kind == FACTORED_COLUMNS:
        shape = shape[:member_dims] + (0,)
    return torch.zeros(shape, dtype=param.dtype, device=param.device)


# ---------------------------------------------------------------------------- routing

MATRIX_RULE, FALLBACK_RULE = 0, 1


def rules_of(genome: Genome) -> list[Rule]:
    """[the genome's rule] or [its rule, its fallback's rule] (schema.Fallback)."""
    sub = fallback_genome(genome)
    return [Rule(genome)] if sub is None else [Rule(genome), Rule(sub)]


def route(genome: Genome, shape: tuple[int, ...], member_dims: int, matrix_rule: bool = True,
          where: str = "a parameter", is_complex: bool = False) -> int:
    """Which rule steps a tensor: the genome's own (MATRIX_RULE) for tensors of >= 2 dims per member, the
    fallback (FALLBACK_RULE) for the others and for every tensor of a group with ``matrix_rule: False``.
    A genome without a fallback takes every tensor, except that an orthogonalizing one cannot take a
    tensor of < 2 dims: an OptimizerUsageError (the genome is valid; this use of it is not)."""
    dims = len(shape) - member_dims
    if genome.fallback is not None:
        chosen = MATRIX_RULE if matrix_rule and dims >= 2 else FALLBACK_RULE
    elif not matrix_rule:
        raise OptimizerUsageError(f"{genome.label}: {where}: matrix_rule=False needs a genome with a fallback rule "
                                  "(this one has none)")
    elif genome.orthogonalize is not None and dims < 2:
        raise OptimizerUsageError(
            f"{genome.label} orthogonalizes matrices and has no fallback rule: {where} has shape {list(shape[member_dims:])} "
            "(fewer than 2 dims); give the genome a fallback or leave the tensor out")
    else:
        chosen = MATRIX_RULE
    if is_complex and chosen == MATRIX_RULE and genome.orthogonalize is not None:
        raise OptimizerUsageError(f"{genome.label}: {where} is complex; orthogonalize takes real matrices only")
    return chosen


def _momentum_readout(mom: Momentum, m: TensorList, x: TensorList, beta: Scalar, t: Step) -> moments.Parts:
    """The output of an EMA/Nesterov momentum whose buffer another term advanced this step."""
    bias = 1.0 / (1.0 - tl.power(beta, t)) if mom.bias_correction else 1.0
    if mom.kind == "ema":
        return [(bias, m)]
    return [(tl.mul(bias, 1.0 - beta if mom.dampening else 1.0), x), (tl.mul(bias, beta), m)]


# ---------------------------------------------------------------------------- directions


def materialize(parts: list[Part]) -> TensorList:
    """u = Σ coef·num/den as new tensors, or in the first part's own memory: its numerator where it is
    fresh, its denominator (scratch of this step) where no other part reads it."""
    first, rest = parts[0], parts[1:]
    if first.den is None:
        u = first.num if first.fresh else tl.clone(first.num)
    elif any(part.den is first.den for part in rest):
        u = tl.divided(first.num, first.den)
    else:
        u = tl.divided_over(first.num, first.den)
    tl.scale_(u, first.coef)
    for part in rest:
        if part.den is not None:
            tl.addcdiv_(u, part.num, part.den, part.coef)
        else:
            tl.add_scaled_(u, part.num, part.coef)
    return u


def read_only(parts: list[Part]) -> TensorList:
    """u = Σ coef·num/den for reading only: a lone unscaled part is its own tensors (no copy)."""
    if len(parts) == 1 and parts[0].den is None and tl.is_float(parts[0].coef) and parts[0].coef == 1.0:
        return parts[0].num
    return materialize(parts)


def apply_(params: TensorList, parts: list[Part], scale: Scalar) -> None:
    """θ ← θ + scale·Σ parts (scale = −η_t), fused into addcdiv where factors are plain floats."""
    for part in parts:
        factor = tl.mul(scale, part.coef)
        if part.den is not None:
            tl.addcdiv_(params, part.num, part.den, factor)
        else:
            tl.add_scaled_(params, part.num, factor)
