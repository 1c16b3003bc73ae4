"""Every named genome trains exactly like its reference implementation.

A conv+linear model (4-D, 2-D and 1-D tensors) trains 200 steps in float64 with non-default
hyperparameters, weight decay on and two param groups (weights; biases with their own lr and
decay); parameters must agree elementwise to a relative 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from conftest import tiny_batches, tiny_net, train, weight_and_bias_groups
from references import (AltoReference, CautiousAdamWReference, EveReference, EverReference, GA2025Reference,
                        SignSGDReference)

import evolveopt

STEPS = 200


@dataclass
class Case:
    genes: dict[str, float]  # our overrides (canonical names)
    reference: Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
    bias_group: dict[str, float]  # the second group's own values (same keys for both optimizers)
    genome: Any = None  # a Genome or name; defaults to the case's key
    total_steps: int | None = None


def _torch(cls, **kw):
    return lambda groups: cls(groups, **kw)


def _kozistr(name, **kw):
    def make(groups):
        import pytorch_optimizer

        return getattr(pytorch_optimizer, name)(groups, foreach=False, **kw)
    return make


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
    "prodigy": Case(PRODIGY_GENES, _prodigy(**PRODIGY_KW), PRODIGY_GROUP),
    "prodigy_bias_correction": Case(PRODIGY_GENES, _prodigy(**PRODIGY_KW, use_bias_correction=True), PRODIGY_GROUP,
                                    genome=_prodigy_variant(bias_beta1="beta1", bias_beta2="beta2")),
    "prodigy_safeguard_growth_l2": Case(
        PRODIGY_GENES | dict(growth_rate=1.05),
        _prodigy(**PRODIGY_KW, safeguard_warmup=True, growth_rate=1.05, decouple=False), PRODIGY_GROUP,
        genome=_prodigy_variant(safeguard_warmup=True, growth="growth_rate", l2=True)),
    "signsgd": Case(dict(lr=0.002, weight_decay=0.01),
                    lambda g: SignSGDReference(g, lr=0.002, weight_decay=0.01), GROUP),
}


def _run(make_optimizer) -> list[torch.Tensor]:
    model = tiny_net()
    weights, biases = weight_and_bias_groups(model)
    optimizer = make_optimizer(weights, biases)
    train(model, optimizer, tiny_batches(STEPS))
    return [p.detach().clone() for p in model.parameters()]


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
        return case.reference([{"params": weights}, {"params": biases, **case.bias_group}])

    got, expected = _run(ours), _run(reference)
    initial = [p.detach() for p in tiny_net().parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(got, initial)), "parameters never moved"
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
