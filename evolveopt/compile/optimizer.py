"""A genome as a ``torch.optim.Optimizer``.

Every gene is a param-group hyperparameter (``group["lr"]``, ``group["beta1"]``, ...), so param
groups carry their own values, ``add_param_group`` fills in the genome's, and every
``torch.optim.lr_scheduler`` works on ``lr``; the genome's own schedule multiplies it. Groups
also hold torch's ``betas`` = (β1, β2[, β3]) or, with beta1 only, ``momentum`` = β1, kept in step
with those genes both ways, so momentum-cycling schedulers (OneCycleLR, CyclicLR) drive them.
State per parameter is a dict of named buffers plus ``step``: a Python int on the eager path, a
float32 tensor (torch.optim.Adam's layout; on the parameter's device when ``capturable``) once
``capturable=True`` or ``torch.compile`` runs the step, which then computes every function of
the step count with tensor ops, never reading it on the host, so compiled code does not
recompile per step and CUDA graphs can capture it. Eve's loss-feedback state is kept
per group under the key ``"loss_feedback.<group index>"``. A genome with schedule-free averaging
holds y, its gradient point, in the parameters; ``eval()`` moves them to the evaluation point x
and ``train()`` back (a ``train_mode`` flag in every group; see :meth:`RuleOptimizer.eval`). Everything in ``state_dict()`` is
plain tensors, numbers and strings, so ``torch.load(weights_only=True)`` reads it. Complex
parameters, gradients and buffers are stepped as real pairs (``torch.view_as_real``), as torch.optim does.
A genome with a fallback rule (Muon's AdamW) steps each parameter of fewer than 2 dims, and every
parameter of a group with ``matrix_rule=False`` (embeddings, an output head), by that rule.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from evolveopt.errors import GenomeError, OptimizerUsageError
from evolveopt.genome.genes import range_problem
from evolveopt.genome.io import load_genome
from evolveopt.genome.schema import SCHEMA_VERSION, Genome
from evolveopt.genome.registry import shared_genes
from evolveopt.genome.slots import TENSOR_KINDS
from evolveopt.compile.rule import FALLBACK_RULE, StepContext, route, rules_of
from evolveopt.primitives import averaging
from evolveopt.primitives import feedback as eve
from evolveopt.primitives import gradient, tensorlist

# Up to this tensor size, one multi-tensor (foreach) call per op for all such tensors beats a
# Python loop on CPU; above it the loop wins (temporaries stay in cache). See docs/performance.md.
FOREACH_MAX_NUMEL = 65_536
DECAYING_SCHEDULES = ("cosine", "linear_decay", "warmup_cosine")  # s(t) = 0 for t > total_steps


class RuleOptimizer(torch.optim.Optimizer):
    """Runs a genome's rule as a ``torch.optim.Optimizer`` (the genome is already validated).

    :class:`GenomeOptimizer` builds it from a genome name or file with gene overrides; an
    exported optimizer (``evolveopt export``) is this class, renamed, with its genome inside.
    """

    def __init__(self, params: Iterable[Any], genome: Genome, *, total_steps: int | None = None,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None):
        self._setup(params, genome, None, total_steps=total_steps, maximize=maximize, foreach=foreach,
                    capturable=capturable, differentiable=differentiable, fused=fused)

    def _setup(self, params: Iterable[Any], genome: Genome, tensors: dict[str, Tensor] | None, *,
               total_steps: int | None, maximize: bool, foreach: bool | None, capturable: bool,
               differentiable: bool, fused: bool | None) -> None:
        """``tensors``: genes given as 1-element tensors; groups keep them as given (as torch keeps a Tensor lr).
        The flags are torch.optim's; ``differentiable`` and ``fused`` exist only as False."""
        if differentiable:
            raise OptimizerUsageError(f"{genome.label}: differentiable=True is not supported "
                                      "(the step runs under torch.no_grad and updates in place)")
        if fused:
            raise OptimizerUsageError(f"{genome.label}: fused=True is not supported (there is no fused kernel "
                                      "for a genome); use foreach=True or leave foreach=None")
        if genome.schedule.needs_horizon:
            _check_total_steps(genome, total_steps)
        self.genome = genome
        self.rules = rules_of(genome)  # [the genome's rule] or [its rule, its fallback's] (see _route)
        self.rule = self.rules[0]
        self._checked: dict[int, tuple[dict[str, Any], dict[str, float]]] = {}
        self._labels: dict[int, tuple[dict[str, Any], list[int | None]]] = {}  # see _cohorts
        defaults: dict[str, Any] = {**genome.genes, **(tensors or {})}
        alias, names = torch_alias(genome)
        if alias:
            defaults[alias] = _alias_value(alias, [defaults[n] for n in names])
        defaults.update(total_steps=total_steps, maximize=maximize, foreach=foreach, capturable=capturable,
                        differentiable=False, fused=fused, schema_version=SCHEMA_VERSION)
        if genome.averaging is not None:
            defaults["train_mode"] = True
        if genome.fallback is not None:
            defaults["matrix_rule"] = True  # a group with matrix_rule=False sends all its tensors to the fallback
        super().__init__(params, defaults)

    @staticmethod
    def _split_overrides(genome: Genome, genes: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(values to check, as floats where given as tensors; the 1-element tensors themselves).
        torch's names ``betas=(β1, β2)`` and ``momentum=β1`` stand for the genes they alias."""
        genes = dict(genes)
        alias, names = torch_alias(genome)
        for key in {"betas", "momentum"} & genes.keys():
            if key != alias:
                raise GenomeError(f"{genome.label}: {key}: this genome has no {key} "
                                  f"(genes: {', '.join(genome.genes)})")
            if any(n in genes for n in names):
                raise GenomeError(f"{genome.label}: give {key} or {', '.join(names)}, not both")
            genes.update(zip(names, _alias_items(genome.label, key, names, genes.pop(key))))
        tensors = {name: value for name, value in genes.items() if isinstance(value, Tensor)}
        for name, value in tensors.items():
            if value.numel() != 1:
                raise OptimizerUsageError(f"Tensor {name} must be 1-element")
        return {**genes, **{name: _as_float(value) for name, value in tensors.items()}}, tensors

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's add_param_group, after checking the group's genes (the genome's fill the gaps);
        a group's ``betas``/``momentum`` sets the genes it aliases."""
        if not isinstance(param_group, dict):
            return super().add_param_group(param_group)
        index = len(self.param_groups)
        alias, names = torch_alias(self.genome)
        if alias in param_group:
            where = f"{self.genome.label}: param_groups[{index}]"
            values = _alias_items(where, alias, names, param_group[alias])
            for name, value in zip(names, values):
                if name in param_group and _number(param_group[name]) != _number(value):
                    raise GenomeError(f"{where}: {alias} and {name} disagree")
                param_group[name] = value
        genes = self._check_genes(index, {**self.defaults, **param_group})
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:  # a use the genome cannot serve fails here, not at a step, and leaves the optimizer as it was
            if not isinstance(group.get("matrix_rule", True), bool):
                raise OptimizerUsageError(f"{self.genome.label}: param_groups[{index}].matrix_rule: expected True or "
                                          f"False, got {group['matrix_rule']!r}")
            for position, p in enumerate(group["params"]):
                route(self.genome, tuple(p.shape), 0, group.get("matrix_rule", True),
                      f"param_groups[{index}].params[{position}]", p.is_complex())
        except OptimizerUsageError:
            self.param_groups.pop()
            raise
        if alias:
            group[alias] = _alias_value(alias, [group[n] for n in names])
        self._checked[id(group)] = (group, genes)

    def _group_genes(self, index: int, group: dict[str, Any]) -> dict[str, float]:
        """The group's genes as floats, checked against their ranges when they changed since last read.

        ``betas``/``momentum`` and the genes they alias are kept in step: whichever changed since
        the last read wins (the alias, when nothing was read yet: torch's tools write it)."""
        record = self._checked.get(id(group))
        seen = record[1] if record is not None and record[0] is group else None
        alias, names = torch_alias(self.genome)
        if alias:
            self._sync_alias(index, group, alias, names, seen)
        genes = self._check_genes(index, group, seen)
        self._checked[id(group)] = (group, genes)
        return genes

    def _sync_alias(self, index: int, group: dict[str, Any], alias: str, names: tuple[str, ...],
                    seen: dict[str, float] | None) -> None:
        if alias not in group:
            group[alias] = _alias_value(alias, [group[n] for n in names])
            return
        values = _alias_items(f"{self.genome.label}: param_groups[{index}]", alias, names, group[alias])
        written = [_number(v) for v in values]
        current = [_number(group[n]) for n in names]
        if written != (current if seen is None else [seen[n] for n in names]):
            group.update(zip(names, values))  # the alias was written (a momentum-cycling scheduler)
        elif written != current:
            group[alias] = _alias_value(alias, [group[n] for n in names])  # the genes were written

    def _check_genes(self, index: int, group: dict[str, Any], seen: dict[str, float] | None = None
                     ) -> dict[str, float]:
        values = {name: _number(group[name]) for name in self.genome.genes}
        if seen == values:
            return values
        for name, value in values.items():
            problem = range_problem(name, value) if value is not None else \
                f"expected a number, got a {type(group[name]).__name__}"
            if problem:
                raise GenomeError(f"{self.genome.label}: param_groups[{index}].{name}: {problem}")
        return values

    def __repr__(self) -> str:
        name = self.genome.name or "genome"
        return f"{type(self).__name__}({name}, groups={len(self.param_groups)})"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.genome.uses_loss and loss is None:
            raise OptimizerUsageError(
                f"{self.genome.label} uses loss feedback: call step(closure) with a closure that returns the loss"
            )
        if not all(group.get("train_mode", True) for group in self.param_groups):
            raise OptimizerUsageError(f"{self.genome.label}: step() in eval mode: call optimizer.train() first "
                                      "(optimizer.eval() moved the parameters to the averaged evaluation point)")
        groups = [(index, group, self._group_genes(index, group), *self._collect(group))
                  for index, group in enumerate(self.param_groups)]  # every group is checked before any moves
        norm = None
        if self.rule.clips_global_norm:
            norm = tensorlist.global_norm([g for *_, grads, _ in groups for g in grads], member_dims=0)
        if self.rule.on_global:
            self._check_shared(groups)
        work = []  # (rule index, (params, grads, state, context)) of every chunk: one step of the rules
        for index, group, genes, params, grads, positions in groups:
            if params:
                work += self._step_group(index, group, genes, params, grads, positions, loss, norm)
        stores = {key: self.state.setdefault(key, {}) for key, *_ in self.rule.on_global}
        for k, rule in enumerate(self.rules):  # (a genome with a global stage has no fallback: schema.py)
            rule.step_all([item for r, item in work if r == k], stores)
        return loss

    def _check_shared(self, groups: list[tuple]) -> None:
        """A global stage (Prodigy's estimate) is one for every group: its genes, lr and the schedule's
        genes must be equal in every group; a group of lr 0 is frozen and takes no part."""
        first = None
        for index, group, genes, *_ in groups:
            if genes["lr"] == 0.0:
                continue
            if first is None:
                first = (index, genes)
                continue
            for name in shared_genes(self.genome.loci):
                if genes[name] != first[1][name]:
                    raise OptimizerUsageError(
                        f"{self.genome.label}: param_groups[{index}].{name} = {genes[name]:g} differs from "
                        f"param_groups[{first[0]}].{name} = {first[1][name]:g}: its step-size estimate is one "
                        "for all param groups, so they share lr and the estimator's genes (lr 0 freezes a group)")

    def _collect(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[int]]:
        """(parameters with a gradient, their gradients as real tensors, their indices in the group)."""
        params, grads, positions = [], [], []
        for position, p in enumerate(group["params"]):
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise OptimizerUsageError(
                    f"{self.genome.label} does not support sparse gradients; use dense gradients "
                    "(e.g. nn.Embedding(sparse=False)) or torch.optim.SparseAdam"
                )
            params.append(p)
            grads.append(torch.view_as_real(grad) if grad.is_complex() else grad)
            positions.append(position)
        return params, grads, positions

    def _step_group(self, index: int, group: dict[str, Any], genes: dict[str, float], params: list[Tensor],
                    grads: list[Tensor], positions: list[int], loss: Any, norm: Tensor | None) -> list[tuple]:
        """The group's chunks as (rule index, (params, grads, state, context)), ready for the rules' step."""
        feedback = self._loss_feedback(index, genes, loss) if self.genome.uses_loss else None
        global_clip = gradient.clip_factor(norm, genes[self.genome.clip.threshold]) if norm is not None else None
        tensor_steps = group["capturable"] or torch.compiler.is_compiling()
        labels = self._cohorts(group, positions) if tensor_steps else self._labels.pop(id(group), None)
        routes = [self._route(group, p) for p in params]
        param_states = [self.state[p] for p in params]
        for p, r, state in zip(params, routes, param_states):
            if not state:
                state.update(self.rules[r].init_state(p, capturable=group["capturable"]))
                state["step"] = 0
            if tensor_steps and not isinstance(state["step"], Tensor):
                state["step"] = _step_tensor(state["step"], p, group["capturable"])
            state["step"] += 1
        work = []
        counts = labels if tensor_steps else [_step_int(state["step"]) for state in param_states]
        complex_params = any(p.is_complex() for p in params)
        for chunk in self._chunks(group, params, counts, routes):
            chunk_params = [params[i] for i in chunk]
            states = [param_states[i] for i in chunk]
            rule = self.rules[routes[chunk[0]]]
            step = states[0]["step"]
            t = step.to(torch.float64) if tensor_steps else _step_int(step)
            if not tensor_steps:
                self._warn_past_horizon(t, group["total_steps"])
            lr = _as_float(group["lr"]) * self.rule.schedule(t, genes, group["total_steps"])
            if rule is not self.rule and self.genome.fallback.lr_ratio:  # the fallback steps with η_t·ρ
                lr *= genes[self.genome.fallback.lr_ratio]
            ctx = StepContext(t=t, genes=genes, lr=lr, maximize=group["maximize"], global_clip=global_clip,
                              feedback=feedback)
            if complex_params and any(p.is_complex() for p in chunk_params):
                slots = {name: [_real(state[name]) for state in states] for name in rule.slots}
                chunk_params = [_real(p) for p in chunk_params]
            else:
                slots = {name: [state[name] for state in states] for name in rule.slots}
            work.append((routes[chunk[0]], (chunk_params, [grads[i] for i in chunk], slots, ctx)))
        return work

    def _route(self, group: dict[str, Any], p: Tensor) -> int:
        """The index in ``self.rules`` of the rule that steps ``p`` (checked in add_param_group)."""
        if len(self.rules) == 1:
            return 0
        return 0 if group.get("matrix_rule", True) and p.dim() >= 2 else FALLBACK_RULE

    def _warn_past_horizon(self, t: int, total_steps: int | None) -> None:
        """Once per optimizer: a decaying schedule is 0 past its horizon, so nothing moves any more
        (checked on the Python-int path only: a tensor step is never read on the host)."""
        kind = self.genome.schedule.kind
        if kind in DECAYING_SCHEDULES and t > total_steps and not getattr(self, "_warned_horizon", False):
            self._warned_horizon = True
            warnings.warn(f"{self.genome.label}: step {t} is past total_steps={total_steps}: its built-in "
                          f"'{kind}' schedule is 0 from here on, so the parameters no longer move "
                          "(pass the number of steps you train as total_steps)", stacklevel=6)

    def _chunks(self, group: dict[str, Any], params: list[Tensor], counts: list[int],
                routes: list[int]) -> list[list[int]]:
        """Indices of tensors sharing rule, device, dtype and step count, stepped by one multi-tensor
        call per op. ``foreach=False``: one tensor at a time; ``None``: on CUDA all together, on CPU
        only tensors of at most FOREACH_MAX_NUMEL elements (each larger one goes alone).
        ``counts``: the step counts, or with tensor step counts labels that stand for them (:meth:`_cohorts`)."""
        choice = group["foreach"]
        if choice is False:
            return [[i] for i in range(len(params))]
        chunks: dict[tuple, list[int]] = defaultdict(list)
        by_size = choice is None
        for i, (p, route, count) in enumerate(zip(params, routes, counts)):
            if by_size and not p.is_cuda and p.numel() > FOREACH_MAX_NUMEL:
                chunks[("alone", i)].append(i)
            else:
                chunks[(route, p.device, p.dtype, count)].append(i)
        return list(chunks.values())

    def _cohorts(self, group: dict[str, Any], positions: list[int]) -> list[int]:
        """A label for each stepped parameter such that equal labels mean equal step counts, kept
        without reading tensor counts on the host (that would sync a device and, under
        ``torch.compile``, make every count a constant to recompile for).

        Parameters stepped together from their first step share a label; a label splits only when
        some of its parameters have a gradient and others not, so the labels, unlike the counts,
        stay the same from step to step. ``positions`` index ``group["params"]``; labels are kept
        per group and rebuilt from the counts when missing (first use, load_state_dict, copies)."""
        record = self._labels.get(id(group))
        labels = record[1] if record is not None and record[0] is group else None
        if labels is None or len(labels) != len(group["params"]):
            counts = [_step_int(self.state[p]["step"]) if self.state.get(p) else None for p in group["params"]]
            distinct = sorted(set(counts) - {None})
            labels = [None if c is None else distinct.index(c) for c in counts]
            self._labels[id(group)] = (group, labels)
        members: dict[int, int] = defaultdict(int)
        for label in labels:
            members[label] += 1
        stepped: dict[int | None, list[int]] = defaultdict(list)
        for i in positions:
            stepped[labels[i]].append(i)  # None: no state yet
        fresh = max([-1] + [label for label in labels if label is not None]) + 1
        for label, indices in stepped.items():
            if label is None or len(indices) < members[label]:
                for i in indices:
                    labels[i] = fresh
                fresh += 1
        return [labels[i] for i in positions]

    def _loss_feedback(self, index: int, genes: dict[str, float], loss: Any) -> Tensor:
        fb = self.genome.loss_feedback
        key = f"loss_feedback.{index}"
        value = torch.as_tensor(loss).detach()
        if key not in self.state:
            self.state[key] = eve.init_feedback(value)
            return self.state[key]["factor"]
        return eve.update_feedback_(self.state[key], value, genes[fb.beta], genes[fb.low], genes[fb.high])

    # ------------------------------------------------------------------ schedule-free evaluation point

    @torch.no_grad()
    def eval(self) -> None:
        """Move every parameter to its evaluation point x = (y − (1−β)z)/β (schedule-free
        averaging), as schedulefree's ``optimizer.eval()``; y is kept in the state (key
        ``averaging.y``), so :meth:`train` returns to it bit for bit. Call it before measuring
        validation loss or saving weights. A no-op for genomes without averaging, or when already in eval mode."""
        avg = self.genome.averaging
        if avg is None:
            return
        for group in self.param_groups:
            if group["train_mode"]:
                for p in group["params"]:
                    state = self.state.get(p)
                    if state and "averaging.z" in state:
                        state["averaging.y"] = p.detach().clone(memory_format=torch.preserve_format)
                        averaging.to_eval_point_([_real(p)], [_real(state["averaging.z"])], _as_float(group[avg.beta]))
                group["train_mode"] = False
        self.defaults["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Return the parameters to y, where training takes gradients (after :meth:`eval`); a
        no-op for genomes without averaging, or when already in train mode."""
        avg = self.genome.averaging
        if avg is None:
            return
        for group in self.param_groups:
            if not group["train_mode"]:
                for p in group["params"]:
                    state = self.state.get(p)
                    if state and "averaging.y" in state:
                        p.copy_(state.pop("averaging.y"))
                    elif state and "averaging.z" in state:  # no saved y: recompute it from x and z
                        averaging.to_train_point_([_real(p)], [_real(state["averaging.z"])], _as_float(group[avg.beta]))
                group["train_mode"] = True
        self.defaults["train_mode"] = True

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's, but scalar state (NAdam's μ product) keeps its saved dtype: torch casts every
        floating tensor except ``step`` to its parameter's dtype. The train/eval mode of
        schedule-free averaging comes back with the groups."""
        super().load_state_dict(state_dict)
        if self.genome.averaging is not None:
            self.defaults["train_mode"] = all(group["train_mode"] for group in self.param_groups)
        scalars = {name for rule in self.rules for name, kind in rule.slots.items() if kind not in TENSOR_KINDS}
        saved = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [(p, group["capturable"]) for group in self.param_groups for p in group["params"]]
        for i, (p, capturable) in zip(saved, params):
            for key in scalars & state_dict["state"].get(i, {}).keys():
                self.state[p][key] = state_dict["state"][i][key].to(p.device if capturable else "cpu", copy=True)

    def __getstate__(self) -> dict[str, Any]:
        """torch keeps defaults, state and param groups; the genome makes the copy a working optimizer."""
        return {**super().__getstate__(), "genome": self.genome}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "genome" in state:
            self.rules = rules_of(self.genome)
            self.rule = self.rules[0]
        self._checked = {}
        self._labels = {}
        for group in self.param_groups:
            group.setdefault("total_steps", None)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("schema_version", SCHEMA_VERSION)
            if "genome" in state and self.genome.averaging is not None:
                group.setdefault("train_mode", True)
            if "genome" in state and self.genome.fallback is not None:
                group.setdefault("matrix_rule", True)
        alias, names = torch_alias(self.genome) if "genome" in state else (None, ())
        if alias:
            self.defaults.setdefault(alias, _alias_value(alias, [self.defaults[n] for n in names]))


class GenomeOptimizer(RuleOptimizer):
    """The update rule of a genome. Build it with :func:`evolveopt.build_optimizer`.

    Args:
        params: parameters or param-group dicts (each group may override any gene).
        genome: a :class:`~evolveopt.genome.schema.Genome`, a genome name or a file path.
        total_steps: training horizon T for schedules that need one (cosine, linear decay,
            warmup); accepted and ignored by genomes without such a schedule.
        maximize: ascend the objective instead of descending.
        foreach: use multi-tensor ops per group (True), one tensor at a time (False), or
            choose by device and tensor size (None: see ``FOREACH_MAX_NUMEL``).
        capturable, differentiable, fused: torch.optim's flags; ``differentiable=True`` and
            ``fused=True`` are not supported and raise.
        **genes: overrides of the genome's genes by name (``lr``, ``beta1``, ``weight_decay``, ...);
            a 1-element tensor (``lr=torch.tensor(1e-3)``) stays a tensor in the param groups.

    A param group of a genome with a fallback rule may say ``matrix_rule=False`` to send all its
    parameters to the fallback (embeddings and the output head, as Muon's authors advise).
    """

    def __init__(self, params: Iterable[Any], genome: Genome | str | os.PathLike[str], *,
                 total_steps: int | None = None, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 **genes: float | Tensor):
        genome = load_genome(genome)
        values, tensors = self._split_overrides(genome, genes)
        genome = genome.with_genes(**values) if values else genome
        self._setup(params, genome, tensors, total_steps=total_steps, maximize=maximize, foreach=foreach,
                    capturable=capturable, differentiable=differentiable, fused=fused)


def torch_alias(genome: Genome) -> tuple[str | None, tuple[str, ...]]:
    """torch's group key for the genome's rates: ``betas`` = (β1, β2[, β3]) when it has beta1 and
    beta2 (Adam-like), ``momentum`` = β1 when it has beta1 only (SGD-like), else none."""
    if "beta1" in genome.genes and "beta2" in genome.genes:
        return "betas", tuple(n for n in ("beta1", "beta2", "beta3") if n in genome.genes)
    if "beta1" in genome.genes:
        return "momentum", ("beta1",)
    return None, ()


def _alias_value(alias: str, values: list[Any]) -> Any:
    return tuple(values) if alias == "betas" else values[0]


def _alias_items(where: str, alias: str, names: tuple[str, ...], value: Any) -> list[Any]:
    """The gene values an alias holds; a ``betas`` of the wrong length is a GenomeError."""
    if alias == "momentum":
        return [value]
    values = list(value) if isinstance(value, (tuple, list)) else None
    if values is None or len(values) != len(names):
        raise GenomeError(f"{where}: betas: expected {len(names)} values ({', '.join(names)}), got {value!r}")
    return values


def _step_tensor(count: int, param: Tensor, capturable: bool) -> Tensor:
    """A step count as torch.optim.Adam keeps it: a float32 tensor, on the parameter's device when
    capturable, else on the host."""
    return torch.tensor(float(count), dtype=torch.float32, device=param.device if capturable else None)


def _step_int(step: int | Tensor) -> int:
    return int(step.item()) if isinstance(step, Tensor) else step


def _real(x: Tensor) -> Tensor:
    """A complex tensor as real pairs (torch.view_as_real, as torch.optim does); others as they are."""
    return torch.view_as_real(x) if x.is_complex() else x


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a real number or a 1-element tensor, else None."""
    if isinstance(value, Tensor):
        return _as_float(value) if value.numel() == 1 and not value.is_complex() else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def _check_total_steps(genome: Genome, total_steps: int | None) -> None:
    if total_steps is None:
        raise OptimizerUsageError(
            f"{genome.label} has a '{genome.schedule.kind}' schedule: pass total_steps=<training steps>"
        )
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise OptimizerUsageError(f"total_steps must be a positive integer, got {total_steps!r}")


def build_optimizer(genome: Genome | str | os.PathLike[str], params: Iterable[Any], **overrides: Any) -> GenomeOptimizer:
    """Compile ``genome`` (a Genome, a name such as ``"adan"``, or a YAML path) for ``params``.

    ``overrides`` are gene values by canonical name (``lr``, ``beta1``, ``beta2``, ``beta3``,
    ``eps``, ``weight_decay``, ...) and the options ``total_steps``, ``maximize``, ``foreach``
    (and torch's ``capturable``, ``differentiable=False``, ``fused=False``).
    """
    return GenomeOptimizer(params, genome, **overrides)
