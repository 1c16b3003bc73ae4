"""Render a genome as the update equations it compiles to (``evolveopt show``)."""

from __future__ import annotations

from evolveopt.genome.registry import PARTS, pipeline
from evolveopt.genome.schema import Genome, Momentum, Precondition, Signal, Term, fallback_genome
from evolveopt.genome.slots import buffers_per_param, momentum_slot, precondition_slots, rule_buffers

SYMBOLS = {
    "lr": "η", "beta1": "β1", "beta2": "β2", "beta3": "β3", "eps": "ε", "weight_decay": "λ",
    "alpha": "α", "clip": "c", "warmup": "w", "gamma": "γ", "trust_clamp": "C", "trust_eps": "ε_τ",
    "feedback_low": "k", "feedback_high": "K", "momentum_decay": "ψ", "avg_r": "r", "avg_lr_power": "p",
    "fallback_lr_ratio": "ρ", "fallback_beta1": "β1'", "fallback_beta2": "β2'", "fallback_eps": "ε'",
    "fallback_weight_decay": "λ'", "d_coef": "c_d", "growth_rate": "ρ_d", "eps2": "ε2", "update_clip": "d",
    "correction": "γ_c",
}



def sym(gene: str) -> str:
    return SYMBOLS.get(gene, gene)


class _Renderer:
    def __init__(self, genome: Genome):
        self.genome = genome
        self.lines: list[str] = []
        self.buffers: dict[str, str] = {}  # slot name -> symbol
        self.g = "ĝ" if genome.adaptor else "g"

    def buffer(self, slot: str, letter: str) -> tuple[str, bool]:
        """The buffer's symbol, and whether this is its first appearance."""
        if slot in self.buffers:
            return self.buffers[slot], False
        count = sum(s.startswith(letter) for s in self.buffers.values()) + 1
        self.buffers[slot] = f"{letter}{count}"
        return self.buffers[slot], True

    def signal(self, signal: Signal, momentum: str = "m") -> str:
        return PARTS["signal"].variant(signal.kind).equation(signal, sym, self.g, momentum)

    def render(self) -> list[str]:
        self._preprocess()
        terms = [self._term(i, t) for i, t in enumerate(self.genome.terms)]
        if any(t.signal.kind in ("grad_diff", "nesterov_grad") for t in self.genome.terms):
            self.lines.append(f"  ({self.g}_prev = {self.g} at t = 1, so the difference starts at 0)")
        corrected = [s for t in self.genome.terms for s in (t.signal, t.precondition.signal if t.precondition else None)
                     if s is not None and s.kind == "corrected_grad"]
        if corrected:
            clip = next((s.clip for s in corrected if s.clip), None)
            self.lines.append(f"  ({self.g}_prev = 0 at t = 1" + (f"; clip_{sym(clip)}(x) = x·min(1, {sym(clip)}/‖x‖) "
                                                                 "per tensor)" if clip else ")"))
        self.lines.append("u = " + " + ".join(terms))
        self._postprocess()
        return self.lines

    def _stage(self, *stages: str, g: str = "g") -> None:
        for variant, value in pipeline(self.genome.loci, *stages):
            self.lines += variant.equation(value, sym, g)

    def _preprocess(self) -> None:
        self.lines.append("g ← −∇f(θ) when maximizing, else ∇f(θ)")
        self._gene_schedules()
        self._stage("gradient")
        self._stage("global", g=self.g)
        self._stage("weights")

    def _term(self, index: int, term: Term) -> str:
        x = self.signal(term.signal)
        numerator, m = x, "m"
        if term.order == "normalize_first":
            normalized = self._precondition(term, x, m)
            self.lines.append(f"n{index + 1} = {normalized}")
            numerator, m = self._momentum(term, f"n{index + 1}")
        else:
            if term.momentum is not None:
                numerator, m = self._momentum(term, x)
            if term.precondition is not None:
                numerator = self._precondition(term, numerator, m)
            elif self.genome.loss_feedback is not None:
                numerator = f"{numerator}/d_t"
        if term.sign:
            numerator = f"sign({numerator})"
        weight = sym(term.weight) if term.weight else ""
        return f"{weight}·{numerator}" if weight else numerator

    def _momentum(self, term: Term, x: str) -> tuple[str, str]:
        mom: Momentum = term.momentum
        m, new = self.buffer(momentum_slot(term), "m")
        first, every, out = PARTS["momentum"].variant(mom.kind).equation(mom, sym, m, x)
        self.lines += (first if new else []) + every
        return out, m

    def _precondition(self, term: Term, numerator: str, m: str) -> str:
        pre: Precondition = term.precondition
        slots = precondition_slots(term)
        v, new = self.buffer(slots[0], "v")
        x = self.signal(pre.signal, momentum=m)
        if new:
            self.lines += PARTS["precondition"].variant(pre.kind).equation(pre, sym, v, x)
        if pre.kind == "max":
            vmax, new_max = self.buffer(slots[1], "v̄")
            if new_max:
                self.lines.append(f"{vmax} ← max({vmax}, {v})")
            v = vmax
        bc = f"(1 − {sym(pre.beta)}^t)" if pre.bias_correction else ""
        d = "d_t·" if self.genome.loss_feedback is not None else ""
        out = PARTS["eps_mode"].variant(pre.eps_mode).equation(pre, sym, numerator, v, bc, d)
        if pre.rectify:
            rho = f"ρ_t = ρ∞ − 2t·{sym(pre.beta)}^t/(1 − {sym(pre.beta)}^t), ρ∞ = 2/(1 − {sym(pre.beta)}) − 1"
            if rho not in self.lines:
                self.lines.append(rho)
            out = f"[r_t·{out} if ρ_t > 5 else {numerator}]"
        if pre.clip:
            out = f"clamp({out}, −{sym(pre.clip)}, {sym(pre.clip)})"
        return out

    def _gene_schedules(self) -> None:
        for name, s in self.genome.gene_schedules.items():
            for line in PARTS["gene_schedule"].variant(s.kind).equation(s, sym, name):
                self.lines.append(line + f"   (the rule reads {sym(name)}_t for {sym(name)})")

    def _postprocess(self) -> None:
        self._stage("direction", g=self.g)
        ortho = self.genome.orthogonalize
        scaled = ortho is not None and ortho.scale != "none"
        step = "α" if self.genome.relative_step is not None else "η_t"
        self._stage_or_default("move", f"θ ← θ − {step}·s·u" if scaled else f"θ ← θ − {step}·u")
        self._stage("after")
        self._stage_or_default("lr", "η_t = η")
        self._stage("loss")

    def _stage_or_default(self, stage: str, default: str) -> None:
        before = len(self.lines)
        self._stage(stage)
        if len(self.lines) == before:
            self.lines.append(default)


def render_equations(genome: Genome) -> list[str]:
    """The update rule as lines of equations, in the order they run; with a fallback, its rule follows,
    for the tensors of fewer than 2 dims (and param groups with matrix_rule=False)."""
    lines = _Renderer(genome).render()
    sub = fallback_genome(genome)
    if sub is None:
        return lines
    ratio = genome.fallback.lr_ratio
    step = f"η_t·{sym(ratio)}" if ratio else "η_t"
    fallback = [line for line in _Renderer(sub).render()[1:] if not line.startswith(("η_t", "d_t ="))]
    fallback = [line.replace("η_t·", f"{step}·") for line in fallback]  # the fallback steps with η_t·ρ
    head = "matrices (≥ 2 dims):" if genome.orthogonalize is not None else "tensors of ≥ 2 dims:"
    return ([head] + [f"  {line}" for line in lines]
            + ["other tensors (< 2 dims; param groups with matrix_rule=False), the fallback rule:"]
            + [f"  {line}" for line in fallback])


def render_genome(genome: Genome) -> str:
    """Title, equations, gene values and state size: what ``evolveopt show`` prints."""
    title = genome.name or "genome"
    if genome.description:
        title += f": {genome.description}"
    body = "\n".join(f"  {line}" for line in render_equations(genome))
    genes = ", ".join(f"{k} ({sym(k)}) = {v:g}" if sym(k) != k else f"{k} = {v:g}" for k, v in genome.genes.items())
    sub = fallback_genome(genome)
    state = (f"{buffers_per_param(genome)} buffer(s) per parameter" if sub is None else
             f"{rule_buffers(genome)} buffer(s) per matrix parameter, {rule_buffers(sub)} per other parameter")
    return f"{title}\n\n{body}\n\ngenes: {genes}\nstate: {state}"
