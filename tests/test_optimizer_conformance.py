"""Every compiled genome, and every exported standalone module, behaves as a torch.optim.Optimizer should.

Each test runs over ``IMPLEMENTATIONS``: ``compiled:NAME`` (``evolveopt.build_optimizer``) and
``exported:NAME`` (the class of ``evolveopt export NAME``, imported from its own file).
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from conftest import exported_class, tiny_batches, tiny_net, train, weight_and_bias_groups
from torch import nn

import evolveopt
from evolveopt.errors import OptimizerUsageError

GENOMES = [f"{kind}:{name}" for kind in ("compiled", "exported") for name in evolveopt.genome.named_genomes()]
STEPS = 30


def build(implementation, params, **kw):
    kind, _, name = implementation.partition(":")
    if kind == "exported":
        return exported_class(name)(params, total_steps=STEPS, **kw)
    return evolveopt.build_optimizer(name, params, total_steps=STEPS, **kw)


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", GENOMES)
def test_is_a_torch_optimizer_and_reduces_loss(name):
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters(), lr=1e-2)
    assert isinstance(optimizer, torch.optim.Optimizer)
    batches = tiny_batches(1, torch.float32) * 40
    losses = train(model, optimizer, batches)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", GENOMES)
def test_param_groups_use_their_own_hyperparameters(name):
    model = tiny_net(torch.float32)
    weights, biases = weight_and_bias_groups(model)
    optimizer = build(name, [{"params": weights}, {"params": biases, "lr": 0.0}])
    frozen = [b.detach().clone() for b in biases]
    before = [w.detach().clone() for w in weights]
    train(model, optimizer, tiny_batches(3, torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(biases, frozen))
    assert any(not torch.equal(a, b) for a, b in zip(weights, before))
    assert all("lr" in group for group in optimizer.param_groups)


@pytest.mark.parametrize("name", GENOMES)
def test_add_param_group_fills_the_genome_defaults(name):
    model = tiny_net(torch.float32)
    weights, biases = weight_and_bias_groups(model)
    optimizer = build(name, weights)
    optimizer.add_param_group({"params": biases})
    genome = evolveopt.load_genome(name.partition(":")[2])
    for gene, value in genome.genes.items():
        assert optimizer.param_groups[1][gene] == optimizer.param_groups[0][gene]
    train(model, optimizer, tiny_batches(2, torch.float32))
    assert all(optimizer.state[b]["step"] == 2 for b in biases)


@pytest.mark.parametrize("name", GENOMES)
def test_lr_scheduler_drives_the_learning_rate(name):
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 if epoch == 0 else 0.0)
    batches = tiny_batches(4, torch.float32)
    train(model, optimizer, batches[:2])
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0
    averaged = optimizer.genome.averaging is not None
    # schedule-free averaging (as schedulefree does): at lr 0 the iterate z stops; y, its average with x, still moves
    moving = [optimizer.state[p]["averaging.z"] for p in model.parameters()] if averaged else list(model.parameters())
    frozen = [t.detach().clone() for t in moving]
    train(model, optimizer, batches[2:])
    assert all(torch.equal(a, b) for a, b in zip(moving, frozen))


@pytest.mark.parametrize("name", GENOMES)
def test_state_dict_round_trip_continues_bit_identically(name):
    batches = tiny_batches(12, torch.float32)
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters(), lr=1e-2)
    train(model, optimizer, batches[:6])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    train(model, optimizer, batches[6:])
    expected = snapshot(model)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    restored = tiny_net(torch.float32, seed=123)
    restored.load_state_dict(checkpoint["model"])
    optimizer2 = build(name, restored.parameters(), lr=0.5)  # loaded state overrides this lr
    optimizer2.load_state_dict(checkpoint["optimizer"])
    train(restored, optimizer2, batches[6:])
    assert all(torch.equal(a, b) for a, b in zip(snapshot(restored), expected))


@pytest.mark.parametrize("name", GENOMES)
def test_step_with_closure_returns_the_loss(name):
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters())
    x, y = tiny_batches(1, torch.float32)[0]

    def closure():
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    returned = optimizer.step(closure)
    assert isinstance(returned, torch.Tensor) and returned.ndim == 0


@pytest.mark.parametrize("name", ["compiled:eve", "exported:eve"])
def test_loss_feedback_without_closure_is_a_clear_error(name):
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters())
    x, y = tiny_batches(1, torch.float32)[0]
    ((model(x) - y) ** 2).mean().backward()
    with pytest.raises(ValueError, match="loss feedback: call step\\(closure\\)"):
        optimizer.step()


@pytest.mark.parametrize("name", GENOMES)
def test_maximize_ascends_what_minimize_descends(name):
    batches = tiny_batches(5, torch.float32)
    a, b = tiny_net(torch.float32), tiny_net(torch.float32)
    opt_a = build(name, a.parameters(), maximize=True)
    opt_b = build(name, b.parameters())
    for x, y in batches:
        def closure_a():
            opt_a.zero_grad()
            loss = -((a(x) - y) ** 2).mean() + 10.0  # positive, so loss feedback sees the same ratios
            loss.backward()
            return loss

        def closure_b():
            opt_b.zero_grad()
            loss = ((b(x) - y) ** 2).mean() + 10.0
            loss.backward()
            return loss

        opt_a.step(closure_a)
        opt_b.step(closure_b)
    if name.endswith(":eve"):  # Eve's feedback reads the loss itself, which differs in sign: compare movement only
        assert any(not torch.equal(p, q) for p, q in zip(snapshot(a), snapshot(tiny_net(torch.float32))))
        return
    for p, q in zip(snapshot(a), snapshot(b)):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", GENOMES)
def test_parameters_without_grad_are_skipped(name):
    model = tiny_net(torch.float32)
    unused = nn.Parameter(torch.ones(3))
    optimizer = build(name, [*model.parameters(), unused])
    train(model, optimizer, tiny_batches(2, torch.float32))
    assert torch.equal(unused, torch.ones(3))
    assert unused not in optimizer.state


@pytest.mark.parametrize("name", ["compiled:adam", "compiled:lion", "compiled:adan", "exported:adam"])
def test_sparse_gradients_raise_a_clear_error(name):
    embedding = nn.Embedding(10, 3, sparse=True)
    optimizer = build(name, embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse gradients"):
        optimizer.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", GENOMES)
def test_dtypes_train_and_keep_state_in_the_parameter_dtype(name, dtype):
    model = tiny_net(dtype)
    # Prodigy's first steps have size d0·lr (1e-8 by default): below bfloat16's rounding of the weights,
    # so θ − θ0 stays 0 and the estimate never grows (prodigyopt.Prodigy too); start it larger here.
    start = {"d0": 1e-2} if "d0" in evolveopt.load_genome(name.partition(":")[2]).genes else {}
    optimizer = build(name, model.parameters(), lr=1e-2, **start)
    before = snapshot(model)
    train(model, optimizer, tiny_batches(3, dtype))
    after = snapshot(model)
    assert all(torch.isfinite(p.float()).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    for p in model.parameters():
        for key, value in optimizer.state[p].items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert value.dtype == dtype, key


@pytest.mark.parametrize("name", GENOMES)
def test_foreach_and_per_tensor_paths_agree(name, float64):
    batches = tiny_batches(10)
    results = []
    for foreach in (True, False):
        model = tiny_net()
        optimizer = build(name, model.parameters(), lr=1e-2, foreach=foreach)
        train(model, optimizer, batches)
        results.append(snapshot(model))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_horizon_schedule_without_total_steps_is_a_clear_error():
    with pytest.raises(OptimizerUsageError, match="pass total_steps"):
        evolveopt.build_optimizer("ga2025", tiny_net().parameters())
    with pytest.raises(ValueError, match="pass total_steps"):
        exported_class("ga2025")(tiny_net().parameters())


def test_total_steps_is_accepted_and_ignored_without_a_horizon():
    model = tiny_net(torch.float32)
    optimizer = evolveopt.build_optimizer("adam", model.parameters(), total_steps=10)
    train(model, optimizer, tiny_batches(2, torch.float32))


def test_unknown_override_names_the_genes():
    with pytest.raises(evolveopt.GenomeError, match="has no gene 'beta3'"):
        evolveopt.build_optimizer("adam", tiny_net().parameters(), beta3=0.9)


def test_out_of_range_override_is_rejected():
    with pytest.raises(evolveopt.GenomeError, match="out of range"):
        evolveopt.build_optimizer("adam", tiny_net().parameters(), beta1=1.5)
    with pytest.raises(ValueError, match=r"genes\.beta1: 1\.5 is out of range"):
        exported_class("adam")(tiny_net().parameters(), beta1=1.5)
    with pytest.raises(ValueError, match="has no gene 'beta3'"):
        exported_class("adam")(tiny_net().parameters(), beta3=0.9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", GENOMES)
def test_cuda_matches_cpu(name):
    batches = tiny_batches(5, torch.float32)
    results = []
    for device in ("cpu", "cuda"):
        model = tiny_net(torch.float32).to(device)
        optimizer = build(name, model.parameters(), lr=1e-2)
        train(model, optimizer, [(x.to(device), y.to(device)) for x, y in batches])
        results.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name", GENOMES)
def test_copies_keep_the_genome_and_step_identically(name, copier):
    batches = tiny_batches(6, torch.float32)
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters(), lr=1e-2)
    train(model, optimizer, batches[:3])
    copied_model, copied = copy.deepcopy((model, optimizer)) if copier == "deepcopy" else \
        pickle.loads(pickle.dumps((model, optimizer)))
    assert repr(copied) == repr(optimizer) and copied.genome == optimizer.genome
    train(model, optimizer, batches[3:])
    train(copied_model, copied, batches[3:])
    assert all(torch.equal(a, b) for a, b in zip(snapshot(copied_model), snapshot(model)))


@pytest.mark.parametrize("name", ["compiled:adam", "compiled:lion", "exported:adam", "exported:nadam"])
def test_tensor_lr_in_the_constructor_acts_as_in_a_param_group(name):
    batches = tiny_batches(4, torch.float32)
    results = []
    for make in (lambda params: build(name, params, lr=torch.tensor(1e-2)),
                 lambda params: build(name, [{"params": list(params), "lr": torch.tensor(1e-2)}]),
                 lambda params: build(name, params, lr=float(torch.tensor(1e-2)))):
        model = tiny_net(torch.float32)
        optimizer = make(model.parameters())
        train(model, optimizer, batches)
        results.append(snapshot(model))
    assert isinstance(optimizer.param_groups[0]["lr"], float)
    for a, b, c in zip(*results):
        assert torch.equal(a, b) and torch.equal(a, c)
    optimizer = build(name, tiny_net().parameters(), lr=torch.tensor(1e-2))
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        build(name, tiny_net().parameters(), lr=torch.tensor([1e-2, 1e-3]))
    with pytest.raises(ValueError, match="out of range"):
        build(name, tiny_net().parameters(), lr=torch.tensor(-1.0))


@pytest.mark.parametrize("name", ["compiled:adam", "compiled:lion", "exported:adam", "exported:lamb"])
def test_param_group_genes_are_checked_like_the_constructors(name):
    with pytest.raises(ValueError) as constructor:
        build(name, tiny_net().parameters(), beta1=1.5)
    weights, biases = weight_and_bias_groups(tiny_net())
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.beta1: 1\.5 is out of range \[0, 1\)"):
        build(name, [{"params": weights}, {"params": biases, "beta1": 1.5}])
    optimizer = build(name, weights)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.weight_decay: -1\.0 is out of range"):
        optimizer.add_param_group({"params": biases, "weight_decay": -1.0})
    assert len(optimizer.param_groups) == 1
    with pytest.raises(ValueError) as in_group:
        build(name, [{"params": weights}, {"params": biases, "beta1": 1.5}])
    assert str(in_group.value) == str(constructor.value).replace("genes.", "param_groups[1].")
    assert type(in_group.value).__name__ == type(constructor.value).__name__ == "GenomeError"


@pytest.mark.parametrize("name", ["compiled:adam", "exported:adam"])
def test_a_param_group_edited_before_a_step_is_checked_at_the_step(name):
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters())
    before = snapshot(model)
    train(model, optimizer, tiny_batches(1, torch.float32))
    optimizer.param_groups[0]["eps"] = -1.0
    moved = snapshot(model)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.eps: -1\.0 is out of range"):
        train(model, optimizer, tiny_batches(1, torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), moved))
    optimizer.param_groups[0]["eps"] = "tiny"
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.eps: expected a number, got a str"):
        train(model, optimizer, tiny_batches(1, torch.float32))
    optimizer.param_groups[0]["eps"] = 1e-8
    train(model, optimizer, tiny_batches(1, torch.float32))
    assert not torch.equal(snapshot(model)[0], before[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["compiled:nadam", "exported:nadam", "compiled:adam"])
def test_load_state_dict_keeps_every_state_dtype(name, dtype):
    model = tiny_net(dtype)
    optimizer = build(name, model.parameters())
    train(model, optimizer, tiny_batches(3, dtype))
    saved = optimizer.state_dict()
    optimizer2 = build(name, model.parameters())
    optimizer2.load_state_dict(saved)
    reloaded = optimizer2.state_dict()
    for i, state in saved["state"].items():
        for key, value in state.items():
            again = reloaded["state"][i][key]
            if isinstance(value, torch.Tensor):
                assert again.dtype == value.dtype and torch.equal(again, value), key
            else:
                assert again == value
    if "nadam" in name:
        assert any(v.dtype == torch.float64 for s in reloaded["state"].values() for v in s.values()
                   if isinstance(v, torch.Tensor))


def complex_problem(seed=0):
    """A complex least-squares problem: a [3, 4] weight and a [4] bias, so foreach chunks hold two tensors;
    returns the parameters and the loss as a function of (w, b)."""
    gen = torch.Generator().manual_seed(seed)
    w = nn.Parameter(torch.randn(3, 4, dtype=torch.complex128, generator=gen))
    b = nn.Parameter(torch.randn(4, dtype=torch.complex128, generator=gen))
    x = torch.randn(6, 3, dtype=torch.complex128, generator=gen)
    y = torch.randn(6, 4, dtype=torch.complex128, generator=gen)
    return [w, b], lambda w, b: ((x @ w + b - y).abs() ** 2).mean()


def run_complex(params, optimizer, loss, steps=10):
    for _ in range(steps):
        def closure():
            optimizer.zero_grad()
            value = loss()
            value.backward()
            return value
        optimizer.step(closure)
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", ["compiled:adam", "exported:adam"])
def test_complex_adam_steps_as_torch_adam(name, foreach):
    results = []
    for make in (lambda params: build(name, params, lr=1e-2, weight_decay=0.1, foreach=foreach),
                 lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=0.1, foreach=foreach)):
        params, loss_of = complex_problem()
        results.append(run_complex(params, make(params), lambda: loss_of(*params)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", [f"{kind}:{g}" for kind in ("compiled", "exported")
                                  for g in ("amsgrad", "lion", "ga2025", "adabelief", "radam", "adan")])
def test_complex_params_step_as_their_real_views(name):
    params, loss_of = complex_problem()
    ours = run_complex(params, build(name, params, lr=1e-2), lambda: loss_of(*params))
    params, loss_of = complex_problem()
    real = [nn.Parameter(torch.view_as_real(p.detach()).clone()) for p in params]
    viewed = run_complex(real, build(name, real, lr=1e-2), lambda: loss_of(*map(torch.view_as_complex, real)))
    for a, b in zip(ours, viewed):
        assert a.dtype == torch.complex128
        torch.testing.assert_close(torch.view_as_real(a), b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["compiled:adam", "compiled:nadam", "exported:adam", "exported:lion"])
def test_torch_optim_flags_are_accepted_as_torch_does(name):
    batches = tiny_batches(3, torch.float32)
    results = []
    for flags in ({}, dict(foreach=True, fused=False, capturable=False, differentiable=False),
                  dict(foreach=False, fused=None, capturable=True)):
        model = tiny_net(torch.float32)
        optimizer = build(name, model.parameters(), lr=1e-2, **flags)
        train(model, optimizer, batches)
        results.append(snapshot(model))
        for key in ("foreach", "maximize", "capturable", "differentiable", "fused"):
            assert key in optimizer.param_groups[0] and key in optimizer.defaults
    for a, b, c in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="differentiable=True is not supported"):
        build(name, tiny_net().parameters(), differentiable=True)
    with pytest.raises(ValueError, match="fused=True is not supported"):
        build(name, tiny_net().parameters(), fused=True)


MOMENTUM_SCHEDULERS = {
    "one_cycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12),
    "cyclic": lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, base_lr=1e-3, max_lr=2e-2, step_size_up=3,
                                                            cycle_momentum=True),
}


@pytest.mark.parametrize("scheduler", MOMENTUM_SCHEDULERS)
@pytest.mark.parametrize("name", ["compiled:adam", "exported:adam", "compiled:momentum", "exported:momentum"])
def test_momentum_cycling_schedulers_drive_the_betas_as_on_torch_optimizers(name, scheduler, float64):
    genome = name.partition(":")[2]
    alias = "betas" if genome == "adam" else "momentum"
    batches = tiny_batches(12)
    results = []
    for make in (lambda params: build(name, params),
                 lambda params: torch.optim.Adam(params) if genome == "adam" else
                 torch.optim.SGD(params, lr=1e-2, momentum=0.9)):
        model = tiny_net()
        optimizer = make(model.parameters())
        sched = MOMENTUM_SCHEDULERS[scheduler](optimizer)
        used = []
        for batch in batches:
            train(model, optimizer, [batch])
            sched.step()
            used.append(optimizer.param_groups[0][alias])
        results.append((snapshot(model), used))
    (ours, our_rates), (theirs, their_rates) = results
    assert our_rates == their_rates and len(set(our_rates)) > 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["compiled:adam", "exported:adam", "compiled:adan", "exported:momentum"])
def test_betas_and_momentum_alias_the_genes_both_ways(name):
    genome = evolveopt.load_genome(name.partition(":")[2])
    names = [n for n in ("beta1", "beta2", "beta3") if n in genome.genes]
    alias = "betas" if len(names) > 1 else "momentum"
    value = tuple(0.5 + 0.1 * i for i in range(len(names))) if alias == "betas" else 0.5
    optimizer = build(name, tiny_net().parameters(), **{alias: value})
    group = optimizer.param_groups[0]
    assert alias in optimizer.defaults and group[alias] == value
    assert [group[n] for n in names] == list(value if alias == "betas" else [value])
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters())
    group = optimizer.param_groups[0]
    group["beta1"] = 0.7  # a gene written: the alias follows
    train(model, optimizer, tiny_batches(1, torch.float32))
    assert (group[alias][0] if alias == "betas" else group[alias]) == 0.7
    group[alias] = (0.6, *group[alias][1:]) if alias == "betas" else 0.6  # the alias written: the gene follows
    train(model, optimizer, tiny_batches(1, torch.float32))
    assert group["beta1"] == 0.6
    group[alias] = (1.5, *group[alias][1:]) if alias == "betas" else 1.5
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.beta1: 1\.5 is out of range"):
        train(model, optimizer, tiny_batches(1, torch.float32))
    if alias == "betas":
        with pytest.raises(ValueError, match=f"betas: expected {len(names)} values"):
            build(name, tiny_net().parameters(), betas=(0.9,) * (len(names) + 1))
    with pytest.raises(ValueError, match="not both"):
        build(name, tiny_net().parameters(), **{alias: value, "beta1": 0.5})
    with pytest.raises(ValueError, match=f"this genome has no {'momentum' if alias == 'betas' else 'betas'}"):
        build(name, tiny_net().parameters(), **{"momentum" if alias == "betas" else "betas": value})


@pytest.mark.parametrize("name", ["compiled:ga2025", "exported:ga2025"])
def test_a_decaying_schedule_past_total_steps_warns_once(name):
    model = tiny_net(torch.float32)
    kind, _, genome = name.partition(":")
    optimizer = (exported_class(genome) if kind == "exported" else
                 lambda p, **kw: evolveopt.build_optimizer(genome, p, **kw))(model.parameters(), total_steps=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, optimizer, tiny_batches(3, torch.float32))
    with pytest.warns(UserWarning, match="step 4 is past total_steps=3") as caught:
        train(model, optimizer, tiny_batches(3, torch.float32))
    assert len([w for w in caught if "past total_steps" in str(w.message)]) == 1


# ----------------------------------------------------------------------------- schedule-free eval()/train()

AVERAGED = [name for name in GENOMES if evolveopt.load_genome(name.partition(":")[2]).averaging is not None]


def test_the_schedule_free_genomes_are_averaged():
    assert {"compiled:schedulefree_adamw", "exported:schedulefree_sgd"} <= set(AVERAGED)


@pytest.mark.parametrize("name", AVERAGED)
def test_eval_moves_to_the_averaged_point_and_train_returns_bit_for_bit(name):
    batches = tiny_batches(10, torch.float32)
    model, twin = tiny_net(torch.float32), tiny_net(torch.float32)
    optimizer, uninterrupted = build(name, model.parameters(), lr=1e-2), build(name, twin.parameters(), lr=1e-2)
    optimizer.eval()  # before any step there is no z: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), snapshot(twin)))
    optimizer.train()
    train(model, optimizer, batches[:5])
    train(twin, uninterrupted, batches[:5])
    y = snapshot(model)
    beta = optimizer.param_groups[0][optimizer.genome.averaging.beta]
    optimizer.eval()
    optimizer.eval()  # a second eval() is a no-op
    for x, y0, p in zip(snapshot(model), y, model.parameters()):
        z = optimizer.state[p]["averaging.z"]
        assert not torch.equal(x, y0)
        torch.testing.assert_close(x, (y0 - (1 - beta) * z) / beta, rtol=1e-5, atol=1e-6)
    optimizer.train()
    optimizer.train()
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), y))
    assert all("averaging.y" not in optimizer.state[p] for p in model.parameters())
    train(model, optimizer, batches[5:])
    train(twin, uninterrupted, batches[5:])
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), snapshot(twin)))


@pytest.mark.parametrize("name", AVERAGED)
def test_step_in_eval_mode_is_a_one_line_error(name):
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters())
    train(model, optimizer, tiny_batches(2, torch.float32))
    optimizer.eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"^genome 'schedulefree_\w+': step\(\) in eval mode: call optimizer\.train\(\) "
                                         r"first \(optimizer\.eval\(\) moved the parameters to the averaged "
                                         r"evaluation point\)$"):
        train(model, optimizer, tiny_batches(1, torch.float32))
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), before))


@pytest.mark.parametrize("name", AVERAGED)
def test_state_dict_saved_in_eval_mode_reloads_and_trains_on_bit_identically(name):
    batches = tiny_batches(12, torch.float32)
    model = tiny_net(torch.float32)
    optimizer = build(name, model.parameters(), lr=1e-2)
    train(model, optimizer, batches[:6])
    optimizer.eval()  # save the weights at the evaluation point, as schedulefree asks
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    evaluated = snapshot(model)
    optimizer.train()
    train(model, optimizer, batches[6:])
    expected = snapshot(model)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    restored = tiny_net(torch.float32, seed=123)
    restored.load_state_dict(checkpoint["model"])
    assert all(torch.equal(a, b) for a, b in zip(snapshot(restored), evaluated))
    optimizer2 = build(name, restored.parameters(), lr=0.5)
    optimizer2.load_state_dict(checkpoint["optimizer"])
    assert [group["train_mode"] for group in optimizer2.param_groups] == [False]
    with pytest.raises(ValueError, match="in eval mode"):
        train(restored, optimizer2, batches[6:7])
    optimizer2.train()
    train(restored, optimizer2, batches[6:])
    assert all(torch.equal(a, b) for a, b in zip(snapshot(restored), expected))


@pytest.mark.parametrize("name", ["compiled:adam", "exported:adam", "compiled:lion"])
def test_eval_and_train_are_no_ops_without_averaging(name):
    batches = tiny_batches(4, torch.float32)
    model, twin = tiny_net(torch.float32), tiny_net(torch.float32)
    optimizer, plain = build(name, model.parameters(), lr=1e-2), build(name, twin.parameters(), lr=1e-2)
    train(model, optimizer, batches[:2])
    optimizer.eval()
    train(model, optimizer, batches[2:])  # stepping "in eval mode" is fine: there is no second point
    optimizer.train()
    train(twin, plain, batches)
    assert all(torch.equal(a, b) for a, b in zip(snapshot(model), snapshot(twin)))
    assert "train_mode" not in optimizer.param_groups[0]
