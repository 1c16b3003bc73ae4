"""Step-by-step reference optimizers written from the papers' equations (test-only).

Each is a plain per-parameter loop, deliberately unlike the compiled rule, for the genomes
without an established implementation: ALTO, Eve, EVE ("ever"), ga2025 and signSGD, and for those whose
implementation cannot run as published (Moonlight's Muon stops in pdb.set_trace()).
"""

from __future__ import annotations

import math

import torch


class _Reference(torch.optim.Optimizer):
    def _grads(self, group):
        for p in group["params"]:
            if p.grad is not None:
                yield p, p.grad, self.state[p]


class AltoReference(_Reference):
    """ALTO, paper Algorithm 2 (trust ratio in LAMB's form ‖θ‖/(‖r‖ + ε2))."""

    def __init__(self, params, lr, alpha, betas, eps, trust_eps, weight_decay):
        super().__init__(params, dict(lr=lr, alpha=alpha, betas=betas, eps=eps, trust_eps=trust_eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure else None
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            for p, g, st in self._grads(group):
                if not st:
                    st.update(t=0, a=torch.zeros_like(p), prev=torch.zeros_like(p), m=torch.zeros_like(p),
                              v=torch.zeros_like(p))
                st["t"] += 1
                t = st["t"]
                st["a"] = b1 * st["a"] + (1 - b1) * (g - st["prev"])
                st["prev"] = g.clone()
                gh = g + group["alpha"] * st["a"]
                st["m"] = b2 * st["m"] + (1 - b2) * gh
                st["v"] = b3 * st["v"] + (1 - b3) * gh * gh
                r = (st["m"] / (1 - b2**t)) / ((st["v"] / (1 - b3**t)).sqrt() + group["eps"])
                r = r + group["weight_decay"] * p
                wn, rn = p.norm(), r.norm()
                tau = wn / (rn + group["trust_eps"]) if wn > 0 and rn > 0 else 1.0
                p -= group["lr"] * tau * r
        return loss


class EveReference(_Reference):
    """Eve, Koushik & Hayashi Algorithm 1: θ ← θ − α m̂/(d√v̂ + ε) with the feedback d."""

    def __init__(self, params, lr, betas, eps, k, K):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, k=k, K=K))
        self.t, self.f_hat, self.d = 0, None, None

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            f = float(closure().detach())
        self.t += 1
        t = self.t
        b3, k, K = self.param_groups[0]["betas"][2], self.param_groups[0]["k"], self.param_groups[0]["K"]
        if t == 1:
            self.f_hat, self.d = f, 1.0
        else:
            lo, hi = (1 + k, 1 + K) if f >= self.f_hat else (1 / (1 + K), 1 / (1 + k))
            c = min(max(f / self.f_hat, lo), hi)
            f_new = c * self.f_hat
            r = abs(f_new - self.f_hat) / min(f_new, self.f_hat)
            self.d = b3 * self.d + (1 - b3) * r
            self.f_hat = f_new
        for group in self.param_groups:
            b1, b2, _ = group["betas"]
            for p, g, st in self._grads(group):
                if not st:
                    st.update(m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["m"] = b1 * st["m"] + (1 - b1) * g
                st["v"] = b2 * st["v"] + (1 - b2) * g * g
                m_hat, v_hat = st["m"] / (1 - b1**t), st["v"] / (1 - b2**t)
                p -= group["lr"] * m_hat / (self.d * v_hat.sqrt() + group["eps"])
        return f


class EverReference(_Reference):
    """iyaja/eve ``EVE``: RAdam step, RaLamb trust ratio on the would-be weights, per-tensor friction."""

    def __init__(self, params, lr, betas, eps, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p, g, st in self._grads(group):
                if not st:
                    st.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p), prev=torch.zeros_like(p))
                st["t"] += 1
                t = st["t"]
                st["m"] = b1 * st["m"] + (1 - b1) * g
                st["v"] = b2 * st["v"] + (1 - b2) * g * g
                n_max = 2 / (1 - b2) - 1
                n = n_max - 2 * t * b2**t / (1 - b2**t)
                if n >= 5:
                    size = math.sqrt((1 - b2**t) * (n - 4) / (n_max - 4) * (n - 2) / n * n_max / (n_max - 2)) / (1 - b1**t)
                    u = size * st["m"] / (st["v"].sqrt() + eps)
                else:
                    u = st["m"] / (1 - b1**t)
                p *= 1 - lr * group["weight_decay"]
                wn, rn = min(p.norm(), 10.0), (p - lr * u).norm()
                tau = 1.0 if wn == 0 or rn == 0 else wn / rn
                xi = torch.sigmoid((st["prev"] - g).norm())
                st["prev"] = g.clone()
                p -= lr * xi * tau * u
        return loss


class GA2025Reference(_Reference):
    """The GA paper's evolved rule as its notebook computes it (cell 10), warmup W = 0.2·T."""

    def __init__(self, params, lr, betas, eps, weight_decay, w_adam, w_sign, total_steps):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.w_adam, self.w_sign, self.T = w_adam, w_sign, total_steps

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p, g, st in self._grads(group):
                if not st:
                    st.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                t0 = st["t"]  # the notebook's 0-based step
                st["t"] += 1
                eta = group["lr"] * min(1.0, (t0 + 1) / (0.2 * self.T)) * 0.5 * (1 + math.cos(math.pi * t0 / self.T))
                p *= 1 - eta * group["weight_decay"]
                st["m"] = b1 * st["m"] + (1 - b1) * g
                st["v"] = b2 * st["v"] + (1 - b2) * g * g
                u = self.w_sign * torch.sign(g) + self.w_adam * st["m"] / (st["v"].sqrt() + group["eps"])
                p -= eta * u
        return loss


class SignSGDReference(_Reference):
    """signSGD with decoupled decay: θ ← θ(1 − ηλ) − η sign(g)."""

    def __init__(self, params, lr, weight_decay):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure else None
        for group in self.param_groups:
            for p, g, _ in self._grads(group):
                p *= 1 - group["lr"] * group["weight_decay"]
                p -= group["lr"] * torch.sign(g)
        return loss


class CautiousAdamWReference(_Reference):
    """C-AdamW as timm's AdamW(caution=True): the mask 1[m⊙g > 0] divided by max(mean, 1e-3)
    multiplies m in torch.optim.AdamW's step (decoupled decay first)."""

    def __init__(self, params, lr, betas, eps, weight_decay):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p, g, st in self._grads(group):
                if not st:
                    st.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["t"] += 1
                t = st["t"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                st["m"].lerp_(g, 1 - b1)
                st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                mask = (st["m"] * g > 0).to(g.dtype)
                mask.div_(mask.mean().clamp(min=1e-3))
                denom = (st["v"].sqrt() / math.sqrt(1 - b2**t)).add_(group["eps"])
                p.addcdiv_(st["m"] * mask, denom, value=-group["lr"] / (1 - b1**t))
        return loss


def _moonlight_newton_schulz(g, steps):
    """Moonlight toy_train.py's zeropower_via_newtonschulz5 in torch 2.13's fused op order (addmm),
    which the torch.optim.Muon it was merged into uses; X/max(‖X‖, 1e-7) as torch does."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.bfloat16()
    if g.size(0) > g.size(1):
        x = x.T
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if g.size(0) > g.size(1) else x


class MoonlightMuonReference(_Reference):
    """Moonlight (arXiv 2502.16982) examples/toy_train.py Muon, step by step: matrices (>= 2 dims, viewed
    as [d0, prod(rest)]) by heavy-ball Nesterov momentum, Newton–Schulz and lr·0.2·√max(d0, d1); the
    rest by its AdamW (same lr and wd, eps on the raw root); decoupled decay θ(1 − lr·wd) for both."""

    def __init__(self, params, lr, wd, momentum, adamw_betas, adamw_eps, ns_steps=5):
        super().__init__(params, dict(lr=lr, wd=wd, momentum=momentum, adamw_betas=adamw_betas,
                                      adamw_eps=adamw_eps, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure() if closure else None
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["wd"], group["momentum"]
            beta1, beta2 = group["adamw_betas"]
            for p, g, st in self._grads(group):
                if p.ndim >= 2:
                    g = g.view(g.size(0), -1)
                    if not st:
                        st["buf"] = torch.zeros_like(g)
                    st["buf"].mul_(mu).add_(g)
                    u = _moonlight_newton_schulz(g.add(st["buf"], alpha=mu), group["ns_steps"])
                    adjusted = lr * 0.2 * math.sqrt(max(g.size(0), g.size(1)))
                    p.mul_(1 - lr * wd)
                    p.add_(u.view(p.shape), alpha=-adjusted)
                    continue
                if not st:
                    st.update(step=0, m=torch.zeros_like(g), v=torch.zeros_like(g))
                st["step"] += 1
                st["m"].lerp_(g, 1 - beta1)
                st["v"].lerp_(g.square(), 1 - beta2)
                direction = st["m"] / (group["adamw_eps"] + st["v"].sqrt())
                scale = (1 - beta1 ** st["step"]) / (1 - beta2 ** st["step"]) ** 0.5
                p.mul_(1 - lr * wd)
                p.add_(direction, alpha=-lr / scale)
        return loss
