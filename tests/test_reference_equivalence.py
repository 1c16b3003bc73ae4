"""Every named genome trains exactly like its reference implementation.

A conv+linear model (4-D, 2-D and 1-D tensors) trains 200 steps in float64 with non-default
hyperparameters, weight decay on and two param groups (weights; biases with their own lr and
decay); parameters must agree elementwise to a relative 1e-5. Schedule-free genomes are compared
twice: at the training point y and, after ``optimizer.eval()`` on both sides, at the evaluation point x.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from conftest import ademamix_with_schedulers, tiny_batches, tiny_net, train, weight_and_bias_groups
from references import (AltoReference, CautiousAdamWReference, EveReference, EverReference, GA2025Reference,
                        MoonlightMuonReference, SignSGDReference)

import evolveopt
from evolveopt.genome.schema import Schedule

STEPS = 200


@dataclass
class Case:
    genes: dict[str, float]  # our overrides (canonical names)
    reference: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
    bias_group: dict[str, float]  # the second group's own values (same keys for both optimizers)
    genome: Any = None  # a Genome or name; defaults to the case's key
    total_steps: int | None = None
    eval_point: bool = False  # also compare the parameters after optimizer.eval() (schedule-free averaging)
    reference_groups: tuple[dict[str, Any], dict[str, Any]] | None = None  # the reference's own group keys, if they differ


def _torch(cls, **kw):
    return lambda groups: cls(groups, **kw)


def _kozistr(name, **kw):
    def make(groups):
        import pytorch_optimizer

        return getattr(pytorch_optimizer, name)(groups, foreach=False, **kw)
    return make


def _adam_atan2(**kw):
    def make(groups):
        from adam_atan2_pytorch import AdamAtan2

        return AdamAtan2(groups, **kw)
    return make


def _adopt(clip: float, **kw):
    def make(groups):
        from adopt import ADOPT

        return ADOPT(groups, clip_lambda=lambda step: clip * step**0.25, foreach=False, **kw)
    return make


def _adopt_decoupled():
    """adopt as torch-adopt's decouple=True: decoupled decay, off at t = 1 (a one-step warmup after one step)."""
    data = evolveopt.genome.to_dict(evolveopt.genome.load_genome("adopt"))
    data["weight_decay"]["mode"] = "decoupled"
    data["gene_schedules"]["weight_decay"] = {"kind": "linear_warmup", "horizon": 1, "offset": 1}
    return evolveopt.genome.parse_genome(data, source="adopt (decouple=True)")


def _adopt_as_pytorch_optimizer():
    """adopt with pytorch-optimizer 4.1.0 ADOPT's choices: clip (c·t^¼, offset 0) and decoupled decay
    (which it applies at t = 1 too, where torch-adopt's decouple=True skips it)."""
    data = evolveopt.genome.to_dict(evolveopt.genome.load_genome("adopt"))
    data["gene_schedules"]["clip"]["offset"] = 0
    data["weight_decay"]["mode"] = "decoupled"
    return evolveopt.genome.parse_genome(data, source="adopt (pytorch-optimizer form)")


AdEMAMIX_GENES = dict(lr=0.003, beta1=0.8, beta2=0.99, beta3=0.995, alpha=3.0, eps=1e-6, weight_decay=0.05)
AdEMAMIX_KW = dict(lr=0.003, betas=(0.8, 0.99, 0.995), alpha=3.0, eps=1e-6, weight_decay=0.05, weight_decouple=True)


def _jettify_lamb(**kw):
    def make(groups):
        import torch_optimizer

        return torch_optimizer.Lamb(groups, debias=False, **kw)
    return make


def _adabelief(**kw):
    def make(groups):
        from adabelief_pytorch import AdaBelief

        return AdaBelief(groups, print_change_log=False, **kw)
    return make


def _schedulefree(name, **kw):
    def make(groups):
        import schedulefree

        optimizer = getattr(schedulefree, name)(groups, **kw)
        optimizer.train()  # schedulefree starts in eval mode and refuses to step there
        return optimizer
    return make


def _with_warmup(name: str, fraction: float):
    """The named genome with a linear warmup over ``fraction`` of total_steps."""
    def make():
        genome = evolveopt.load_genome(name)
        return dataclasses.replace(genome, genes={**genome.genes, "warmup": fraction},
                                   loci={**genome.loci, "schedule": Schedule("linear_warmup", warmup="warmup")})
    return make


SF_GENES = dict(weight_decay=0.01, avg_r=0.5, avg_lr_power=1.5)
SF_KW = dict(weight_decay=0.01, r=0.5, weight_lr_power=1.5)
def _prodigy(**kw):
    def make(groups):
        from prodigyopt import Prodigy

        return Prodigy(groups, **kw)
    return make


def _prodigy_variant(**estimator):
    """The prodigy genome with some estimator fields set (and L2 decay for ``decouple=False``)."""
    def make():
        data = evolveopt.genome.to_dict(evolveopt.load_genome("prodigy"))
        l2 = estimator.pop("l2", False)
        data["estimator"].update(estimator)
        if "growth" in estimator:
            data["genes"]["growth_rate"] = 1.0
        if l2:
            data["weight_decay"]["mode"] = "l2"
        return evolveopt.genome.parse_genome(data, source="prodigy variant")
    return make


# Prodigy's estimate is one for the whole model: both groups share lr, betas and the estimator's
# genes (prodigyopt reads betas, beta3, d_coef and growth_rate from the first group and refuses
# unequal lr), so the second group differs in weight decay and eps, which prodigyopt reads per group.
PRODIGY_GENES = dict(lr=0.5, beta1=0.8, beta2=0.99, beta3=0.95, eps=1e-6, weight_decay=0.05, d0=1e-5, d_coef=0.7)
PRODIGY_KW = dict(lr=0.5, betas=(0.8, 0.99), beta3=0.95, eps=1e-6, weight_decay=0.05, d0=1e-5, d_coef=0.7)
PRODIGY_GROUP = dict(weight_decay=0.2, eps=1e-5)

ADAM_GENES = dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01)
ADAM_KW = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)
GROUP = dict(lr=0.003, weight_decay=0.03)

MARS_GENES = dict(lr=0.01, beta1=0.9, beta2=0.98, correction=0.05, eps=1e-7, weight_decay=0.05, fallback_lr_ratio=0.5,
                  fallback_beta1=0.8, fallback_beta2=0.99, fallback_weight_decay=0.02)
MARS_KW = dict(lr=0.01, betas=(0.9, 0.98), gamma=0.05, eps=1e-7, weight_decay=0.05, lr_1d=0.005, betas_1d=(0.8, 0.99),
               weight_decay_1d=0.02)


def _mars_every_tensor():
    """mars with pytorch-optimizer's optimize_1d=True: MARS on every tensor (the genome without its fallback)."""
    data = evolveopt.genome.to_dict(evolveopt.genome.load_genome("mars"))
    data.pop("fallback")
    data["genes"] = {k: v for k, v in data["genes"].items() if not k.startswith("fallback_")}
    data["name"] = "mars_optimize_1d"
    return evolveopt.genome.parse_genome(data, source="mars optimize_1d")


CASES: dict[str, Case] = {
    "sgd": Case(dict(lr=0.05, weight_decay=0.01), _torch(torch.optim.SGD, lr=0.05, weight_decay=0.01), GROUP),
    "momentum": Case(dict(lr=0.02, beta1=0.8, weight_decay=0.01),
                     _torch(torch.optim.SGD, lr=0.02, momentum=0.8, weight_decay=0.01), GROUP),
    "nesterov": Case(dict(lr=0.02, beta1=0.8, weight_decay=0.01),
                     _torch(torch.optim.SGD, lr=0.02, momentum=0.8, nesterov=True, weight_decay=0.01), GROUP),
    "adam": Case(ADAM_GENES, _torch(torch.optim.Adam, **ADAM_KW), GROUP),
    "adamw": Case(ADAM_GENES | dict(weight_decay=0.1), _torch(torch.optim.AdamW, **ADAM_KW | dict(weight_decay=0.1)), GROUP),
    "amsgrad": Case(ADAM_GENES, _torch(torch.optim.Adam, amsgrad=True, **ADAM_KW), GROUP),
    "nadam": Case(ADAM_GENES | dict(momentum_decay=6e-3),
                  _torch(torch.optim.NAdam, momentum_decay=6e-3, **ADAM_KW), GROUP),
    "radam": Case(ADAM_GENES, _torch(torch.optim.RAdam, **ADAM_KW), GROUP),
    "rmsprop": Case(dict(lr=0.005, beta2=0.9, eps=1e-6, weight_decay=0.01),
                    _torch(torch.optim.RMSprop, lr=0.005, alpha=0.9, eps=1e-6, weight_decay=0.01), GROUP),
    "adagrad": Case(dict(lr=0.05, eps=1e-6, weight_decay=0.01),
                    _torch(torch.optim.Adagrad, lr=0.05, eps=1e-6, weight_decay=0.01), GROUP),
    "adabelief": Case(dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-10, weight_decay=0.05),
                      _adabelief(lr=0.01, betas=(0.8, 0.99), eps=1e-10, weight_decay=0.05,
                                 weight_decouple=True, rectify=True), GROUP),
    "adan": Case(dict(lr=0.01, beta1=0.9, beta2=0.85, beta3=0.98, eps=1e-6, weight_decay=0.05),
                 _kozistr("Adan", lr=0.01, betas=(0.9, 0.85, 0.98), eps=1e-6, weight_decay=0.05,
                          weight_decouple=False), GROUP),
    "lamb": Case(dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05, trust_clamp=5.0),
                 _jettify_lamb(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, clamp_value=5.0), GROUP),
    "lion": Case(dict(lr=0.002, beta1=0.8, beta2=0.95, weight_decay=0.1),
                 _kozistr("Lion", lr=0.002, betas=(0.8, 0.95), weight_decay=0.1), GROUP),
    "alto": Case(dict(lr=0.01, alpha=-2.0, beta1=0.9, beta2=0.85, beta3=0.98, eps=1e-6, weight_decay=1e-3),
                 lambda g: AltoReference(g, lr=0.01, alpha=-2.0, betas=(0.9, 0.85, 0.98), eps=1e-6,
                                         trust_eps=1e-6, weight_decay=1e-3), GROUP),
    "eve": Case(dict(lr=0.01, beta1=0.8, beta2=0.99, beta3=0.95, eps=1e-6),
                lambda g: EveReference(g, lr=0.01, betas=(0.8, 0.99, 0.95), eps=1e-6, k=0.1, K=10.0),
                dict(lr=0.003)),
    "ever": Case(dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05),
                 lambda g: EverReference(g, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05), GROUP),
    "ga2025": Case(dict(lr=0.002, beta1=0.8, beta2=0.95, eps=1e-8, weight_decay=0.01),
                   lambda g: GA2025Reference(g, lr=0.002, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.01,
                                             w_adam=3.6352, w_sign=0.7345, total_steps=STEPS),
                   GROUP, total_steps=STEPS),
    "cautious_adamw": Case(ADAM_GENES | dict(weight_decay=0.1),
                           lambda g: CautiousAdamWReference(g, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                           GROUP),
    "cautious_lion": Case(dict(lr=0.002, beta1=0.8, beta2=0.95, weight_decay=0.1),
                          _kozistr("Lion", lr=0.002, betas=(0.8, 0.95), weight_decay=0.1, cautious=True), GROUP),
    "schedulefree_adamw": Case(dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6) | SF_GENES,
                               _schedulefree("AdamWScheduleFree", lr=0.01, betas=(0.8, 0.99), eps=1e-6, **SF_KW),
                               GROUP, eval_point=True),
    # warmup_steps = 20 of 200 is the genome's linear_warmup over a 0.1 fraction of total_steps
    "schedulefree_adamw+warmup": Case(dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6) | SF_GENES,
                                      _schedulefree("AdamWScheduleFree", lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                                    warmup_steps=20, **SF_KW),
                                      GROUP, genome=_with_warmup("schedulefree_adamw", 0.1), total_steps=STEPS,
                                      eval_point=True),
    "schedulefree_sgd": Case(dict(lr=0.05, beta1=0.8) | SF_GENES,
                             _schedulefree("SGDScheduleFree", lr=0.05, momentum=0.8, **SF_KW), GROUP, eval_point=True),
    "schedulefree_sgd+warmup": Case(dict(lr=0.05, beta1=0.8) | SF_GENES,
                                    _schedulefree("SGDScheduleFree", lr=0.05, momentum=0.8, warmup_steps=20, **SF_KW),
                                    GROUP, genome=_with_warmup("schedulefree_sgd", 0.1), total_steps=STEPS,
                                    eval_point=True),
    # Muon: weights (conv [2,1,3,3] as [2, 9], head [4, 18]) take the matrix rule, biases the AdamW fallback.
    # pytorch-optimizer 4.1.0 Muon runs Newton–Schulz in bfloat16 in torch's op order, as the genome does:
    # the two agree to the last bit on the matrices (biases: ρ·η is one rounding away from the given lr).
    "muon": Case(dict(lr=0.02, beta1=0.9, weight_decay=0.05, fallback_lr_ratio=0.15, fallback_beta1=0.8,
                      fallback_beta2=0.99, fallback_eps=1e-8, fallback_weight_decay=0.01),
                 _kozistr("Muon", lr=0.02, momentum=0.9, weight_decay=0.05, adamw_betas=(0.8, 0.99), adamw_eps=1e-8,
                          adamw_wd=0.01),
                 dict(lr=0.01), reference_groups=(dict(use_muon=True), dict(use_muon=False, lr=0.01 * 0.15))),
    "muon_moonlight": Case(dict(lr=0.01, beta1=0.9, weight_decay=0.05, fallback_beta1=0.8, fallback_beta2=0.99,
                                fallback_eps=1e-8),
                           lambda g: MoonlightMuonReference(g, lr=0.01, wd=0.05, momentum=0.9, adamw_betas=(0.8, 0.99),
                                                            adamw_eps=1e-8),
                           dict(lr=0.003, weight_decay=0.03), reference_groups=(dict(), dict(lr=0.003, wd=0.03))),
    "adam_atan2": Case(dict(lr=0.003, beta1=0.8, beta2=0.95, a=1.5, b=0.8, weight_decay=0.05),
                       _adam_atan2(lr=0.003, betas=(0.8, 0.95), a=1.5, b=0.8, weight_decay=0.05), GROUP),
    "adopt": Case(dict(lr=0.003, beta1=0.8, beta2=0.99, eps=1e-5, clip=1.5, weight_decay=0.01),
                  _adopt(1.5, lr=0.003, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.01), GROUP),
    "adopt_decouple": Case(dict(lr=0.003, beta1=0.8, beta2=0.99, eps=1e-5, clip=1.5, weight_decay=0.05),
                           _adopt(1.5, lr=0.003, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.05, decouple=True),
                           GROUP, genome=_adopt_decoupled),
    "adopt_pytorch_optimizer_decoupled": Case(
        dict(lr=0.003, beta1=0.8, beta2=0.99, eps=1e-5, clip=1.5, weight_decay=0.05),
        _kozistr("ADOPT", lr=0.003, betas=(0.8, 0.99), eps=1e-5, weight_decay=0.05, weight_decouple=True,
                 clip_lambda=lambda step: 1.5 * step**0.25),
        GROUP, genome=_adopt_as_pytorch_optimizer),
    "laprop": Case(dict(lr=0.003, beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=0.05),
                   _kozistr("LaProp", lr=0.003, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.05), GROUP),
    "ademamix": Case(AdEMAMIX_GENES, _kozistr("AdEMAMix", **AdEMAMIX_KW), GROUP),
    "ademamix_schedulers": Case(AdEMAMIX_GENES, _kozistr("AdEMAMix", t_alpha_beta3=60, **AdEMAMIX_KW), GROUP,
                                genome=lambda: ademamix_with_schedulers(60)),
    "prodigy": Case(PRODIGY_GENES, _prodigy(**PRODIGY_KW), PRODIGY_GROUP),
    "prodigy_bias_correction": Case(PRODIGY_GENES, _prodigy(**PRODIGY_KW, use_bias_correction=True), PRODIGY_GROUP,
                                    genome=_prodigy_variant(bias_beta1="beta1", bias_beta2="beta2")),
    "prodigy_safeguard_growth_l2": Case(
        PRODIGY_GENES | dict(growth_rate=1.05),
        _prodigy(**PRODIGY_KW, safeguard_warmup=True, growth_rate=1.05, decouple=False), PRODIGY_GROUP,
        genome=_prodigy_variant(safeguard_warmup=True, growth="growth_rate", l2=True)),
    # Adafactor: the conv weight [2, 1, 3, 3] is factored over its last two dims (3×3 per [out, in] index) as
    # torch factors it; the head [4, 18] is one factorization; biases keep a full v. lr 0.02 > 1/√t from t = 3,
    # so both arms of min(η_t, 1/√t) run; d = 1.2 (torch takes d ≥ 1).
    "adafactor": Case(dict(lr=0.02, eps=1e-12, eps2=5e-4, update_clip=1.2, weight_decay=0.05),
                      _torch(torch.optim.Adafactor, lr=0.02, eps=(1e-12, 5e-4), d=1.2, weight_decay=0.05), GROUP),
    # MARS: conv [2,1,3,3] and head [4, 18] take MARS-AdamW (pytorch-optimizer routes by ndim >= 2), biases AdamW
    # with betas_1d at lr_1d = ρ·lr (lr_1d_factor = lr_1d/lr = 0.5, from the constructor, times each group's lr).
    "mars": Case(MARS_GENES, _kozistr("MARS", **MARS_KW), dict(lr=0.004, fallback_weight_decay=0.03),
                 reference_groups=(dict(), dict(lr=0.004, weight_decay_1d=0.03))),
    "mars_optimize_1d": Case({k: v for k, v in MARS_GENES.items() if not k.startswith("fallback_")},
                             _kozistr("MARS", optimize_1d=True, **MARS_KW), GROUP, genome=_mars_every_tensor),
    "signsgd": Case(dict(lr=0.002, weight_decay=0.01),
                    lambda g: SignSGDReference(g, lr=0.002, weight_decay=0.01), GROUP),
}


def _run(make_optimizer, eval_point: bool = False) -> list[torch.Tensor]:
    """The parameters after training (then, with ``eval_point``, after ``optimizer.eval()`` too)."""
    model = tiny_net()
    weights, biases = weight_and_bias_groups(model)
    optimizer = make_optimizer(weights, biases)
    train(model, optimizer, tiny_batches(STEPS))
    params = [p.detach().clone() for p in model.parameters()]
    if eval_point:
        optimizer.eval()
        params += [p.detach().clone() for p in model.parameters()]
    return params


def test_every_named_genome_has_a_reference_case():
    published = {name for name in evolveopt.genome.named_genomes() if "/" not in name}  # not genomes/discovered/
    assert published - set(CASES) == set()


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_genome_matches_reference(name, float64):
    case = CASES[name]
    genome = case.genome() if callable(case.genome) else (case.genome or name)

    def ours(weights, biases):
        return evolveopt.build_optimizer(genome, [{"params": weights}, {"params": biases, **case.bias_group}],
                                         total_steps=case.total_steps, **case.genes)

    def reference(weights, biases):
        if case.reference_groups is not None:
            first, second = case.reference_groups
            return case.reference([{"params": weights, **first}, {"params": biases, **second}])
        return case.reference([{"params": weights}, {"params": biases, **case.bias_group}])

    got, expected = _run(ours, case.eval_point), _run(reference, case.eval_point)
    initial = [p.detach() for p in tiny_net().parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(got, initial)), "parameters never moved"
    assert len(got) == len(expected)
    if case.eval_point:
        y, x = got[:len(got) // 2], got[len(got) // 2:]
        assert all(not torch.equal(a, b) for a, b in zip(y, x)), "eval() left the parameters where they were"
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)


def test_adopt_follows_torch_adopt_where_the_references_disagree_on_the_clip_step(float64):
    """torch-adopt 0.1.0 clips at c·s^¼ with its 0-based step s = t − 1 (the genome's offset 1);
    pytorch-optimizer 4.1.0 ADOPT at c·t^¼. With offset 0 the genome leaves torch-adopt's path."""
    case = CASES["adopt"]
    data = evolveopt.genome.to_dict(evolveopt.genome.load_genome("adopt"))
    data["gene_schedules"]["clip"]["offset"] = 0
    shifted = evolveopt.genome.parse_genome(data, source="adopt with offset 0")

    def ours(weights, biases):
        return evolveopt.build_optimizer(shifted, [{"params": weights}, {"params": biases, **case.bias_group}],
                                         **case.genes)

    def reference(weights, biases):
        return case.reference([{"params": weights}, {"params": biases, **case.bias_group}])

    got, expected = _run(ours), _run(reference)
    worst = max(float(((a - b).abs() / b.abs().clamp(min=1e-12)).max()) for a, b in zip(got, expected))
    assert worst > 1e-3, worst
