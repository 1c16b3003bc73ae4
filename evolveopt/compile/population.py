"""One genome structure, P sets of genes, P stacked models: the evaluation form of a rule.

Parameters arrive stacked, each tensor ``[P, ...]`` with member i's tensors at index i; genes
arrive as ``[P]`` tensors. One :meth:`PopulationOptimizer.step` updates all P models with the
same :class:`~evolveopt.compile.rule.Rule` code the ``torch.optim`` form runs, so member i
trains as it would alone with its own genes: with float64 gene tensors to float64 rounding
(``tests/test_population.py``); with the float32 gene tensors evaluation uses, each gene value is
first rounded to float32, and members agree with lone float32 runs to a relative 1e-5 after 200
Adam steps (measured about 2.4e-7). A genome with a fallback rule steps the tensors of fewer than 2
dims per member (``[P, n]``) with it and the others with its own rule, as the torch.optim form does.

A genome with schedule-free averaging trains at y and is judged at x: :meth:`PopulationOptimizer.eval`
moves the stacked parameters to every member's evaluation point (the evaluator calls it when
training ends), :meth:`PopulationOptimizer.train` back.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from evolveopt.compile.rule import FALLBACK_RULE, StepContext, route, rules_of
from evolveopt.errors import OptimizerUsageError
from evolveopt.genome.schema import Genome
from evolveopt.primitives import averaging
from evolveopt.primitives import feedback as eve
from evolveopt.primitives import gradient, tensorlist


def stack_genes(genomes: Sequence[Genome], device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """``[P]`` tensors of gene values; every genome must have the same gene names."""
    names = list(genomes[0].genes)
    for genome in genomes[1:]:
        if list(genome.genes) != names:
            raise ValueError(f"genes differ: {names} vs {list(genome.genes)} (stack genomes of one structure)")
    return {n: torch.tensor([g.genes[n] for g in genomes], dtype=dtype, device=device) for n in names}


def _uniform_as_float(values: Tensor, zero_only: bool = False) -> Tensor | float:
    """A gene every member shares becomes a Python float: the rule then skips zero terms and uses
    fused scalar kernels for it (checked once here, never per step). With ``zero_only`` only a
    gene every member has at 0 does: skipping its term gives the bits computing it with zeros
    gives, so a member rounds the same whatever its neighbours' genes (floats and tensors round
    differently; evaluation needs results that do not depend on a unit's composition)."""
    first = values.reshape(-1)[0]
    if zero_only and float(first) != 0.0:
        return values
    return float(first) if bool((values == first).all()) else values


class PopulationOptimizer:
    """Steps P stacked models, member i with genes ``{name: genes[name][i]}``; ``shared_floats``:
    see :func:`_uniform_as_float` (False: only shared zeros become floats)."""

    def __init__(self, genome: Genome, params: Sequence[Tensor], genes: Mapping[str, Tensor],
                 total_steps: int | None = None, shared_floats: bool = True):
        self.rules = rules_of(genome)
        self.rule = self.rules[0]
        self.genome = genome
        self.params = list(params)
        self.genes = {name: _uniform_as_float(values, zero_only=not shared_floats) for name, values in genes.items()}
        self.members = self.params[0].shape[0]
        self.total_steps = total_steps
        if genome.schedule.needs_horizon and total_steps is None:
            raise OptimizerUsageError(f"{genome.label} has a '{genome.schedule.kind}' schedule: pass total_steps")
        # Tensor i goes to rule routes[i]: the matrix rule or the fallback (rule.route; [P, ...] has member_dims 1).
        self.routes = [route(genome, tuple(p.shape), 1, where=f"tensor {i}") for i, p in enumerate(self.params)]
        self.members_of = [[i for i, r in enumerate(self.routes) if r == k] for k in range(len(self.rules))]
        self.states = []
        for rule, members in zip(self.rules, self.members_of):
            per_param = [rule.init_state(self.params[i], member_dims=1) for i in members]
            self.states.append({slot: [s[slot] for s in per_param] for slot in rule.slots})
        self.state = self.states[0]
        self.feedback_state: dict[str, Tensor] | None = None
        self.global_state: dict[str, dict[str, Tensor]] = {key: {} for key, *_ in self.rule.on_global}  # [P] each
        self.t = 0
        self.train_mode = True
        self._train_point: list[Tensor] | None = None  # y while at the evaluation point

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], loss: Tensor | None = None, lr_scale: Tensor | None = None) -> None:
        """Update every member; ``loss`` is ``[P]`` (needed by loss feedback), ``lr_scale`` an extra ``[P]`` factor."""
        if not self.train_mode:
            raise OptimizerUsageError(f"{self.genome.label}: step() at the evaluation point: call train() first")
        self.t += 1
        genes, t = self.genes, self.t
        lr = genes["lr"] * self.rule.schedule(t, genes, self.total_steps)  # float or [P]
        if lr_scale is not None:
            lr = lr * lr_scale
        global_clip = None
        if self.rule.clips_global_norm:
            norm = tensorlist.global_norm(list(grads), member_dims=1)
            global_clip = gradient.clip_factor(norm, genes[self.genome.clip.threshold])
        feedback = self._feedback(loss) if self.genome.uses_loss else None
        for k, (rule, members, state) in enumerate(zip(self.rules, self.members_of, self.states)):
            if not members:
                continue
            ratio = self.genome.fallback.lr_ratio if k == FALLBACK_RULE else None  # the fallback steps with η_t·ρ
            ctx = StepContext(t=t, genes=genes, lr=lr * genes[ratio] if ratio else lr, member_dims=1,
                              global_clip=global_clip, feedback=feedback)
            rule.step_all([([self.params[i] for i in members], [grads[i] for i in members], state, ctx)],
                          self.global_state)

    @torch.no_grad()
    def eval(self) -> None:
        """Move every member to its evaluation point x (schedule-free averaging; y is kept for
        :meth:`train`); a no-op for genomes without averaging."""
        avg = self.genome.averaging
        if avg is None or not self.train_mode:
            return
        self._train_point = [p.detach().clone() for p in self.params]
        averaged = [self.params[i] for i in self.members_of[0]]  # the genome's own rule (not its fallback)
        if averaged:  # (an averaging matrix rule may get no tensor: every one of fewer than 2 dims)
            averaging.to_eval_point_(averaged, self.states[0]["averaging.z"], self.genes[avg.beta])
        self.train_mode = False

    @torch.no_grad()
    def train(self) -> None:
        """Return to y after :meth:`eval`, bit for bit."""
        if self.train_mode:
            return
        torch._foreach_copy_(self.params, self._train_point)
        self._train_point, self.train_mode = None, True

    def _feedback(self, loss: Tensor | None) -> Tensor:
        if loss is None:
            raise OptimizerUsageError(f"{self.genome.label} uses loss feedback: pass the [P] losses to step()")
        fb = self.genome.loss_feedback
        if self.feedback_state is None:
            self.feedback_state = eve.init_feedback(loss)
            return self.feedback_state["factor"]
        g = self.genes
        return eve.update_feedback_(self.feedback_state, loss, g[fb.beta], g[fb.low], g[fb.high])
