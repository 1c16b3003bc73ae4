"""The Muon genomes against their references, and the routing of tensors to the fallback rule.

(a) ``muon`` on 2-D parameters equals torch 2.13's torch.optim.Muon bit for bit (bf16 Newton–Schulz in
    torch's op order; η·s formed before it meets the update, as torch's adjusted lr);
(b) the whole ``muon`` genome, with embeddings and the head sent to the fallback by ``matrix_rule=False``,
    equals pytorch-optimizer 4.1.0 Muon with ``use_muon`` groups (the 200-step conv+linear protocol is in
    test_reference_equivalence.py);
(c) the float64 Newton–Schulz path (``dtype: param``) equals a Muon loop built on pytorch-optimizer's
    ``zero_power_via_newton_schulz_5(dtype=torch.float64)`` and ``get_adjusted_lr``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_batches, tiny_net, train
from pytorch_optimizer import Muon as KozistrMuon
from pytorch_optimizer.optimizer.muon.base import get_adjusted_lr
from pytorch_optimizer.optimizer.utils.matrix import zero_power_via_newton_schulz_5
from torch import nn

import evolveopt
from evolveopt.genome.schema import parse_genome, to_dict

needs_torch_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")


def muon_variant(**orthogonalize):
    """The muon genome with some orthogonalize fields changed."""
    data = to_dict(evolveopt.load_genome("muon"))
    data["orthogonalize"] = {**data["orthogonalize"], **orthogonalize}
    return parse_genome(data, source="muon variant")


def _matrices(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # d0 > d1 (transposed NS, s = √(d0/d1) ≠ 1), d0 < d1, square
    return [nn.Parameter((torch.randn(shape, generator=gen, dtype=torch.float64) * 0.3).to(dtype))
            for shape in ((20, 12), (12, 20), (8, 8))]


def _train_matrices(optimizer, params, steps):
    """Two tanh layers and a square one: x[16, 20] → [16, 12] → [16, 20] → first 8 columns → [16, 8]."""
    a, b, c = params
    for step in range(steps):
        gen = torch.Generator().manual_seed(100 + step)
        x = torch.randn(16, 20, generator=gen, dtype=torch.float64).to(a.dtype)
        y = torch.randn(16, 8, generator=gen, dtype=torch.float64).to(a.dtype)

        def closure():
            optimizer.zero_grad()
            loss = ((torch.tanh(torch.tanh(x @ a) @ b)[:, :8] @ c - y) ** 2).mean()
            loss.backward()
            return loss
        optimizer.step(closure)


@needs_torch_muon
@pytest.mark.parametrize("scale", ["original", "match_rms_adamw"])
def test_muon_on_matrices_equals_torch_muon_bit_for_bit(scale):
    """(a) 100 float64 steps (bf16 Newton–Schulz inside), torch's non-default lr, decay and momentum."""
    genome = evolveopt.load_genome("muon") if scale == "original" else muon_variant(scale=scale)
    ours, theirs = _matrices(torch.float64), _matrices(torch.float64)
    _train_matrices(evolveopt.build_optimizer(genome, ours, lr=0.02, beta1=0.9, weight_decay=0.05), ours, 100)
    _train_matrices(torch.optim.Muon(theirs, lr=0.02, weight_decay=0.05, momentum=0.9, adjust_lr_fn=scale), theirs, 100)
    start = _matrices(torch.float64)
    for a, b, c in zip(ours, theirs, start):
        assert not torch.equal(a, c)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_torch_muon
def test_muon_defaults_are_torch_muons():
    optimizer = evolveopt.build_optimizer("muon", _matrices(torch.float32))
    reference = torch.optim.Muon(_matrices(torch.float32))
    for key in ("lr", "weight_decay", "momentum"):
        assert optimizer.param_groups[0][key] == reference.param_groups[0][key], key
    assert reference.param_groups[0]["ns_steps"] == evolveopt.load_genome("muon").orthogonalize.steps
    assert reference.param_groups[0]["adjust_lr_fn"] in (None, "original")


@needs_torch_muon
def test_muon_float32_matrices_stay_within_bf16_rounding_of_torch_muon():
    """In float32 the Nesterov blend (1−β)g + βB rounds unlike torch's grad.lerp at the last float32 bit, which
    can move a bf16 rounding in Newton–Schulz: 20 steps agree to 1e-4 (measured 0 on this machine)."""
    ours, theirs = _matrices(torch.float32), _matrices(torch.float32)
    _train_matrices(evolveopt.build_optimizer("muon", ours, lr=0.02), ours, 20)
    _train_matrices(torch.optim.Muon(theirs, lr=0.02), theirs, 20)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class _LanguageModel(nn.Module):
    """Embedding → linear → tanh → head: the embedding and head go to the fallback (matrix_rule=False)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 6)
        self.hidden = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, tokens):
        return self.head(self.norm(torch.tanh(self.hidden(self.embed(tokens)))))


def _lm_groups(model, **matrix_group):
    hidden = [model.hidden.weight]
    outer = [model.embed.weight, model.head.weight]
    small = [model.hidden.bias, model.norm.weight, model.norm.bias, model.head.bias]
    return hidden, outer, small


def _train_lm(model, optimizer, steps=60):
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        tokens = torch.randint(0, 10, (16, 4), generator=gen)
        targets = torch.randint(0, 10, (16, 4), generator=gen)

        def closure():
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
            loss.backward()
            return loss
        optimizer.step(closure)


def test_muon_with_matrix_rule_false_groups_equals_pytorch_optimizer_muon(float64):
    """(b) Hidden matrix by Muon; embedding, head (matrix_rule=False), biases and norm gains (1-D) by AdamW."""
    genes = dict(lr=0.02, beta1=0.9, weight_decay=0.05, fallback_lr_ratio=0.15, fallback_beta1=0.8,
                 fallback_beta2=0.99, fallback_eps=1e-8, fallback_weight_decay=0.01)
    ours_model, ref_model = _LanguageModel().double(), _LanguageModel().double()
    hidden, outer, small = _lm_groups(ours_model)
    ours = evolveopt.build_optimizer("muon", [{"params": hidden}, {"params": outer, "matrix_rule": False},
                                              {"params": small}], **genes)
    hidden, outer, small = _lm_groups(ref_model)
    ref = KozistrMuon([{"params": hidden, "use_muon": True}, {"params": outer + small, "use_muon": False, "lr": 0.02 * 0.15}],
                      lr=0.02, momentum=0.9, weight_decay=0.05, adamw_betas=(0.8, 0.99), adamw_eps=1e-8,
                      adamw_wd=0.01, foreach=False)
    _train_lm(ours_model, ours)
    _train_lm(ref_model, ref)
    start = _LanguageModel().double()
    for (name, a), b, c in zip(ours_model.named_parameters(), ref_model.parameters(), start.parameters()):
        assert not torch.equal(a, c), name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14, msg=name)
    assert "momentum.grad.beta1" in ours.state[ours_model.hidden.weight]
    assert "momentum.grad.fallback_beta1" in ours.state[ours_model.embed.weight]


class Float64MuonReference(torch.optim.Optimizer):
    """Muon with pytorch-optimizer's float64 Newton–Schulz and lr adjustment (test-only loop)."""

    def __init__(self, params, lr, momentum, weight_decay, use_adjusted_lr):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      use_adjusted_lr=use_adjusted_lr))

    @torch.no_grad()
    def step(self, closure=None):
        with torch.enable_grad():
            loss = closure()
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["buf"] = torch.zeros_like(p)
                state["buf"].lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(state["buf"], mu).reshape(p.size(0), -1)
                update = zero_power_via_newton_schulz_5(update, num_steps=5, dtype=torch.float64).reshape(p.shape)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-get_adjusted_lr(lr, p.shape, group["use_adjusted_lr"]))
        return loss


@pytest.mark.parametrize("scale", ["original", "match_rms_adamw"])
def test_float64_newton_schulz_path_equals_pytorch_optimizers_ns5(scale, float64):
    """(c) 200 steps of the conv+linear net's weights (conv [2,1,3,3] as [2, 9]; head [4, 18]) with dtype: param;
    measured max relative difference 2.6e-15 (the norm reduces in another order)."""
    genome = muon_variant(dtype="param", scale=scale)
    model, ref_model = tiny_net(), tiny_net()
    weights = [model.conv.weight, model.head.weight]
    ours = evolveopt.build_optimizer(genome, weights, lr=0.02, beta1=0.9, weight_decay=0.05)
    ref = Float64MuonReference([ref_model.conv.weight, ref_model.head.weight], lr=0.02, momentum=0.9,
                               weight_decay=0.05, use_adjusted_lr=scale == "match_rms_adamw")
    batches = tiny_batches(200)
    train(model, ours, batches)
    train(ref_model, ref, batches)
    for a, b, c in zip(weights, [ref_model.conv.weight, ref_model.head.weight], [tiny_net().conv.weight, tiny_net().head.weight]):
        assert not torch.equal(a, c)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_bf16_and_float64_newton_schulz_differ():
    """The dtype field is not a no-op: bf16 and float64 runs part after one step (by about bf16 rounding)."""
    runs = []
    for genome in (evolveopt.load_genome("muon"), muon_variant(dtype="param")):
        params = _matrices(torch.float64)
        _train_matrices(evolveopt.build_optimizer(genome, params, lr=0.02), params, 1)
        runs.append(params)
    diff = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(*runs))
    assert 1e-6 < diff < 1e-2


def test_one_dimensional_tensors_follow_the_fallback_rule_alone(float64):
    """A model of only biases trained by muon moves exactly as the fallback genome's AdamW does."""
    from evolveopt.genome.schema import fallback_genome

    genome = evolveopt.load_genome("muon").with_genes(lr=0.01, fallback_lr_ratio=0.5, fallback_weight_decay=0.02)
    sub = fallback_genome(genome)
    runs = []
    for which, opt_genome, lr in (("muon", genome, 0.01), ("adamw", None, 0.005)):
        params = [nn.Parameter(torch.linspace(-1, 1, 7)), nn.Parameter(torch.ones(3))]
        if opt_genome is None:
            optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-10, weight_decay=0.02)
        else:
            optimizer = evolveopt.build_optimizer(opt_genome, params)
        for step in range(20):
            optimizer.zero_grad()
            (params[0].sin().sum() * (step + 1) + (params[1] ** 3).sum()).backward()
            optimizer.step()
        runs.append(params)
    assert sub.terms == genome.fallback.terms
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_cautious_masks_the_orthogonalized_direction_and_the_shape_factor_scales_the_step(float64):
    """Order in the direction stage: u = NS(U) first, then the cautious mask on it; s multiplies η last."""
    from evolveopt.primitives.cautious import cautious_mask
    from evolveopt.primitives.orthogonal import newton_schulz, shape_scale

    data = to_dict(evolveopt.load_genome("muon"))
    data["cautious"] = "mean"
    genome = parse_genome(data)
    theta = torch.randn(9, 4, generator=torch.Generator().manual_seed(3))
    grad = torch.randn(9, 4, generator=torch.Generator().manual_seed(4))
    param = nn.Parameter(theta.clone())
    optimizer = evolveopt.build_optimizer(genome, [param], lr=0.02, beta1=0.9, weight_decay=0.05)
    param.grad = grad.clone()
    optimizer.step()
    (o,) = newton_schulz([0.1 * grad + 0.9 * (0.1 * grad)], 5, "original", "bfloat16", member_dims=0)
    expected = theta * (1 - 0.02 * 0.05) - 0.02 * shape_scale((9, 4), "original", 0) * o * cautious_mask(o, grad, "mean", 0)
    assert shape_scale((9, 4), "original", 0) == 1.5
    torch.testing.assert_close(param.detach(), expected, rtol=1e-12, atol=1e-15)


def _with_own_terms_as_fallback(name, genes, **loci):
    """Genome ``name`` (plus ``genes`` and ``loci``) whose fallback repeats its own terms, and the genome alone."""
    data = to_dict(evolveopt.load_genome(name))
    data.update(schema_version=2, **loci)
    data["genes"].update(genes)
    whole = parse_genome(data)
    data["fallback"] = {"terms": data["terms"]}
    return parse_genome(data), whole


@pytest.mark.parametrize("name, genes, loci", [
    ("eve", {}, {}),
    ("adam", {"clip": 0.05}, {"clip": {"mode": "global_norm", "threshold": "clip"}}),
], ids=["loss_feedback", "global_norm_clip"])
def test_the_genomes_global_loci_serve_the_fallback_too(name, genes, loci, float64):
    """Eve's d_t and a global-norm clip are one per optimizer: a fallback equal to the genome's own terms
    trains the conv+linear net exactly as the genome alone (biases in the fallback)."""
    split, whole = _with_own_terms_as_fallback(name, genes, **loci)
    runs = []
    for genome in (split, whole):
        model = tiny_net()
        train(model, evolveopt.build_optimizer(genome, model.parameters(), lr=0.01), tiny_batches(30))
        runs.append([p.detach() for p in model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert set(evolveopt.genome.schema.fallback_genome(split).loci) == ({"clip"} if loci else {"loss_feedback"})
