"""Schema-2 term options and gene schedules: eps_mode atan2/clamp, a stale preconditioner, the clip of
the normalized value, the normalize-first order, ``gene_schedules`` and weight_decay decoupled_after.

Their reference equivalence is in test_reference_equivalence.py (adam_atan2, adopt, laprop, ademamix);
here: the language (bad input, round trips, schema versions, canonical hashes), the schedule values on
every kind of t and gene, the stale first step, and the search drawing them only when allowed.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

import evolveopt
from evolveopt.config import ConfigError
from evolveopt.errors import GenomeError
from evolveopt.genome import genome_hash, load_genome, parse_genome, to_dict
from evolveopt.genome.equations import render_equations
from evolveopt.genome.schema import schema_version_of
from evolveopt.genome.slots import state_slots
from evolveopt.primitives.schedules import scheduled_gene

NEW = ("adam_atan2", "adopt", "laprop", "ademamix")


def _doc(**precondition):
    """A one-term genome document with the given precondition fields (schema 2)."""
    pre = {"kind": "ema", "beta": "beta2", "eps": "eps", **precondition}
    pre = {k: v for k, v in pre.items() if v is not None}
    genes = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.99}
    genes.update({g: 1.0 for g in ("a", "b", "clip") if g in pre.values()})
    if "eps" in pre or "eps" in pre.values():
        genes["eps"] = 1e-8
    return {"schema_version": 2, "genes": genes,
            "terms": [{"momentum": {"kind": "ema", "beta": "beta1"}, "precondition": pre}]}


# ----------------------------------------------------------------------------- bad input


def _with(doc, **top):
    return {**copy.deepcopy(doc), **top}


BAD = [
    ("terms[0].precondition.eps: eps_mode 'atan2' takes no eps", _doc(eps_mode="atan2", a="a", b="b")),
    ("terms[0].precondition: eps_mode 'atan2' needs 'b'", _doc(eps_mode="atan2", eps=None, a="a")),
    ("terms[0].precondition.a: 'a' is a gene of eps_mode 'atan2' only", _doc(eps_mode="clamp", a="a")),
    ("terms[0].precondition.eps_mode: precondition 'belief' adds ε", _doc(kind="belief", eps_mode="atan2", eps=None,
                                                                         a="a", b="b")),
    ("terms[0].precondition.a: gene 'eps' is a numerical floor", _doc(eps_mode="atan2", eps=None, a="eps", b="b")),
    ("terms[0].precondition.bias_correction: a stale precondition takes no bias_correction",
     _doc(stale=True, bias_correction=True)),
    ("terms[0].precondition.rectify: a stale precondition takes no rectify", _doc(stale=True, rectify=True)),
    ("terms[0].precondition.clip: gene 'beta1' is an EMA rate", _doc(clip="beta1")),
]


@pytest.mark.parametrize("message, document", BAD, ids=[m.split(":")[0] + "|" + m.split(": ")[-1][:20] for m, _ in BAD])
def test_bad_term_options_fail_with_one_line_naming_the_field(message, document):
    with pytest.raises(GenomeError) as info:
        parse_genome(document, source="bad.yaml")
    assert str(info.value).startswith("bad.yaml: " + message) and "\n" not in str(info.value)


def test_normalize_first_needs_a_momentum_and_a_precondition():
    doc = _doc()
    del doc["terms"][0]["momentum"]
    doc["terms"][0]["order"] = "normalize_first"
    with pytest.raises(GenomeError, match=r"^g: terms\[0\]\.order: order 'normalize_first' needs a momentum and a "
                                          r"precondition$"):
        parse_genome(doc, source="g")


@pytest.mark.parametrize("what, edit", [
    ("terms[0].precondition.eps_mode: 'eps_mode: clamp' needs schema_version 2",
     lambda d: d["terms"][0]["precondition"].update(eps_mode="clamp")),
    ("terms[0].precondition.stale: 'stale: True' needs schema_version 2",
     lambda d: d["terms"][0]["precondition"].update(stale=True)),
    ("terms[0].order: 'order: normalize_first' needs schema_version 2",
     lambda d: d["terms"][0].update(order="normalize_first")),
    ("gene_schedules: 'gene_schedules' needs schema_version 2",
     lambda d: d.update(gene_schedules={"beta1": {"kind": "linear_warmup", "horizon": 5}})),
    ("weight_decay.mode: weight_decay 'decoupled_after' needs schema_version 2",
     lambda d: d.update(weight_decay={"mode": "decoupled_after", "rate": "weight_decay"})),
])
def test_a_v1_file_cannot_use_a_schema_2_term_option(what, edit):
    doc = _doc()
    doc["schema_version"] = 1
    doc["genes"]["weight_decay"] = 0.01
    edit(doc)
    if "weight_decay" not in str(doc["terms"]) + str(doc.get("weight_decay")):
        del doc["genes"]["weight_decay"]
    with pytest.raises(GenomeError, match="^old.yaml: " + re.escape(what) + r" \(this file says 1\)$"):
        parse_genome(doc, source="old.yaml")


def test_a_coefficient_as_term_weight_is_schema_2():
    data = to_dict(load_genome("ademamix"))
    assert data["schema_version"] == 2
    data["schema_version"] = 1
    with pytest.raises(GenomeError, match=r"terms\[1\]\.weight: gene 'alpha' is the adaptor's weight; this field takes"):
        parse_genome(data, source="x")


def _scheduled(schedule, gene="beta1", **extra):
    doc = _doc(**extra)
    doc["gene_schedules"] = {gene: schedule}
    return doc


@pytest.mark.parametrize("field, problem, document", [
    ("gene_schedules.beta1.horizon", "0 is out of range (at least 1)", _scheduled({"kind": "linear_warmup", "horizon": 0})),
    ("gene_schedules.beta1.horizon", "-5 is out of range (at least 1)",
     _scheduled({"kind": "linear_warmup", "horizon": -5})),
    ("gene_schedules.beta2.horizon", "expected a whole number of steps, got a float",
     _scheduled({"kind": "halflife_warmup", "horizon": 2.5, "start": "beta1"}, gene="beta2")),
    ("gene_schedules.beta1", "schedule 'linear_warmup' needs 'horizon'", _scheduled({"kind": "linear_warmup"})),
    ("gene_schedules.beta1.power", "schedule 'linear_warmup' takes no 'power' (it takes: horizon, offset)",
     _scheduled({"kind": "linear_warmup", "horizon": 3, "power": 2})),
    ("gene_schedules.beta1.kind", "unknown value 'cosine' (allowed: linear_warmup, halflife_warmup, power)",
     _scheduled({"kind": "cosine"})),
    ("gene_schedules.lr", "gene 'lr' cannot have a schedule (the learning rate's is the 'schedule' key)",
     _scheduled("power", gene="lr")),
    ("gene_schedules.beta3", "unknown gene 'beta3'", _scheduled({"kind": "power", "power": -1}, gene="beta3")),
    ("gene_schedules.beta1.power", "a power schedule on a rate needs a negative power",
     _scheduled({"kind": "power", "power": 0.5})),
    ("gene_schedules.clip.power", "power 0 leaves the gene constant", _scheduled({"kind": "power", "power": 0},
                                                                                 gene="clip", clip="clip")),
    ("gene_schedules.clip.offset", "a negative power needs offset 0",
     _scheduled({"kind": "power", "power": -0.5, "offset": 1}, gene="clip", clip="clip")),
    ("gene_schedules.clip", "schedule 'halflife_warmup' is for a rate (beta1..beta3), not 'clip'",
     _scheduled({"kind": "halflife_warmup", "horizon": 3, "start": "beta1"}, gene="clip", clip="clip")),
])
def test_bad_gene_schedules_fail_with_one_line_naming_the_file_and_field(field, problem, document):
    with pytest.raises(GenomeError) as info:
        parse_genome(document, source="run.yaml")
    assert str(info.value).startswith(f"run.yaml: {field}: {problem}") and "\n" not in str(info.value)


def test_a_gene_read_outside_the_step_or_by_nothing_cannot_be_scheduled():
    doc = _scheduled({"kind": "power", "power": 0.25}, gene="clip")
    doc["genes"]["clip"] = 1.0
    doc["clip"] = {"mode": "global_norm", "threshold": "clip"}
    with pytest.raises(GenomeError, match=r"^g: gene_schedules\.clip: gene 'clip' cannot have a schedule \(the lr "
                                          r"schedule, a global_norm clip or loss feedback reads it"):
        parse_genome(doc, source="g")
    doc = _scheduled({"kind": "linear_warmup", "horizon": 3}, gene="beta3")
    doc["genes"]["beta3"] = 0.9
    with pytest.raises(GenomeError, match=r"^g: gene_schedules\.beta3: gene 'beta3' is not used by any part"):
        parse_genome(doc, source="g", allow_unused_genes=True)


def test_a_negative_horizon_in_a_genome_file_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "warm.yaml"
    path.write_text("schema_version: 2\ngenes: {lr: 1.0e-3, beta1: 0.9, beta2: 0.99, eps: 1.0e-8}\n"
                    "terms:\n  - momentum: {kind: ema, beta: beta1}\n"
                    "    precondition: {kind: ema, beta: beta2, eps: eps}\n"
                    "gene_schedules: {beta1: {kind: linear_warmup, horizon: -10}}\n")
    with pytest.raises(GenomeError, match=rf"^{re.escape(str(path))}: gene_schedules\.beta1\.horizon: -10 is out of "
                                          r"range \(at least 1\)$"):
        load_genome(str(path))


# ----------------------------------------------------------------------------- round trips, versions, hashes


@pytest.mark.parametrize("name", NEW)
def test_new_genomes_round_trip_and_say_schema_2(name):
    genome = load_genome(name)
    data = to_dict(genome)
    assert data["schema_version"] == 2 == schema_version_of(genome)
    assert parse_genome(copy.deepcopy(data), source=name) == genome


def test_v1_genomes_keep_schema_1():
    for name in ("adam", "adamw", "adan", "lion", "radam"):
        assert schema_version_of(load_genome(name)) == 1


def _adopt_doc():
    return to_dict(load_genome("adopt"))


def test_one_rule_written_two_ways_hashes_equal():
    a = _adopt_doc()
    b = copy.deepcopy(a)
    b["gene_schedules"]["clip"] = {"offset": 1, "power": 0.25, "kind": "power"}  # key order
    b["terms"][0]["precondition"] = dict(reversed(list(b["terms"][0]["precondition"].items())))
    b["terms"][0]["precondition"]["rectify"] = False  # a default, written out
    b["name"], b["description"] = "other", "same rule"
    assert genome_hash(parse_genome(a)) == genome_hash(parse_genome(b))
    with_unused = _adopt_doc()
    with_unused["terms"].append({**copy.deepcopy(with_unused["terms"][0]), "weight": "w1"})
    with_unused["genes"]["w1"] = 0.0  # a zero-weight copy is dropped
    assert genome_hash(parse_genome(with_unused)) == genome_hash(parse_genome(a))


@pytest.mark.parametrize("edit", [
    lambda d: d["terms"][0]["precondition"].pop("stale"),
    lambda d: d["terms"][0].pop("order"),
    lambda d: d["terms"][0]["precondition"].pop("clip") and d.pop("gene_schedules") and d["genes"].pop("clip"),
    lambda d: d["terms"][0]["precondition"].update(eps_mode="outside"),
    lambda d: d["gene_schedules"]["clip"].update(offset=0),
    lambda d: d["gene_schedules"]["clip"].update(power=0.5),
    lambda d: d.pop("gene_schedules"),
    lambda d: d["weight_decay"].update(mode="decoupled_after"),
], ids=["stale", "order", "clip", "eps_mode", "offset", "power", "no_schedule", "decay_after"])
def test_different_rules_hash_differently(edit):
    changed = _adopt_doc()
    edit(changed)
    assert genome_hash(parse_genome(changed)) != genome_hash(load_genome("adopt"))


def test_atan2_genes_and_schedule_horizons_are_part_of_the_hash():
    base = load_genome("adam_atan2")
    assert genome_hash(base.with_genes(a=1.5)) != genome_hash(base)
    short, long = (to_dict(load_genome("ademamix")) for _ in range(2))
    short["gene_schedules"] = {"alpha": {"kind": "linear_warmup", "horizon": 10}}
    long["gene_schedules"] = {"alpha": {"kind": "linear_warmup", "horizon": 20}}
    assert genome_hash(parse_genome(short)) != genome_hash(parse_genome(long))


def test_sign_keeps_a_stale_clipping_or_normalize_first_preconditioner_in_canonical_form():
    """sign(y/den) = sign(y) lets canonicalization drop a preconditioner, but a stale one makes its term 0 at
    t = 1, a clip's scheduled threshold may be 0 (ADOPT's at t = 1) and a normalize-first one changes what
    the momentum averages."""
    from evolveopt.genome import canonical_form

    plain = _doc()
    plain["terms"][0]["sign"] = True
    assert canonical_form(parse_genome(plain)).terms[0].precondition is None
    for edit in (lambda t: t["precondition"].update(stale=True), lambda t: t.update(order="normalize_first"),
                 lambda t: t["precondition"].update(clip="clip")):
        doc = copy.deepcopy(plain)
        edit(doc["terms"][0])
        if "clip" in doc["terms"][0]["precondition"]:
            doc["genes"]["clip"] = 1.0
        assert canonical_form(parse_genome(doc)).terms[0].precondition is not None


def test_diff_shows_a_changed_gene_schedule():
    from evolveopt.genome.diff import diff_genomes

    changed = _adopt_doc()
    changed["gene_schedules"]["clip"]["offset"] = 0
    assert diff_genomes(load_genome("adopt"), parse_genome(changed)) == [
        'gene_schedules: {"clip": {"kind": "power", "offset": 1, "power": 0.25}} → '
        '{"clip": {"kind": "power", "power": 0.25}}']


def test_slots_name_what_the_buffers_hold():
    assert state_slots(load_genome("adopt")) == {
        "momentum.normalized(grad,second_moment.grad.beta2.stale,clamp(eps),clip(clip)).beta1": "param_shaped",
        "second_moment.grad.beta2.stale": "param_shaped"}
    assert set(state_slots(load_genome("ademamix"))) == {"momentum.grad.beta1", "momentum.grad.beta3",
                                                         "second_moment.grad.beta2"}


def test_a_normalize_first_nadam_keeps_its_own_mu_product():
    """Its μ product advances once per step for its own momentum, not shared with a plain NAdam term
    (the property test found the two sharing one product, advanced twice a step)."""
    doc = _doc()
    doc["genes"]["momentum_decay"] = 0.004
    doc["terms"][0]["momentum"] = {"kind": "nadam", "beta": "beta1", "decay": "momentum_decay"}
    doc["terms"].append({**copy.deepcopy(doc["terms"][0]), "order": "normalize_first"})
    products = [s for s, kind in state_slots(parse_genome(doc)).items() if kind == "per_member"]
    assert products == ["nadam_mu_product.grad.beta1.momentum_decay",
                        "nadam_mu_product.normalized(grad,second_moment.grad.beta2,outside(eps)).beta1.momentum_decay"]


def test_equations_show_the_new_parts():
    adopt = "\n".join(render_equations(load_genome("adopt")))
    assert "c_t = c·max(t − 1, 0)^0.25   (the rule reads c_t for c)" in adopt
    assert "n1 = clamp(g/max(√v1, ε), −c, c)" in adopt and "m1 ← β1·m1 + (1 − β1)·n1" in adopt
    assert "v1_0 = g² at t = 1" in adopt
    assert "a·atan2(m1/(1 − β1^t), b·√(v1/(1 − β2^t)))" in "\n".join(render_equations(load_genome("adam_atan2")))
    assert "θ ← θ·(1 − η_t·λ)   (after the step)" in render_equations(load_genome("laprop"))


# ----------------------------------------------------------------------------- schedule values


def _pytorch_optimizer_beta3(t, horizon, beta1, beta3):
    from pytorch_optimizer import AdEMAMix

    return AdEMAMix.schedule_beta3(horizon, t, beta1, beta3)


@pytest.mark.parametrize("t", [1, 2, 7, 19, 20, 21, 40])
def test_halflife_warmup_is_pytorch_optimizer_ademamix_schedule_beta3(t):
    ours = scheduled_gene("halflife_warmup", 0.999, t, horizon=20, start=0.8)
    assert ours == pytest.approx(_pytorch_optimizer_beta3(t, 20, 0.8, 0.999), rel=1e-14)


def test_power_schedule_gives_adafactor_beta2_and_adopt_clip():
    for t in (1, 2, 10, 1000):
        assert scheduled_gene("power", 0.0, t, power=-0.8, rate=True) == pytest.approx(1.0 - t**-0.8, rel=1e-15)
        assert scheduled_gene("power", 1.0, t, power=0.25, offset=1) == (t - 1) ** 0.25


@pytest.mark.parametrize("kind, args", [
    ("linear_warmup", dict(horizon=6)), ("linear_warmup", dict(horizon=1, offset=1)),
    ("halflife_warmup", dict(horizon=6, start=0.85)),
    ("power", dict(power=-0.8)), ("power", dict(power=0.25, offset=1)),
])
def test_a_schedule_gives_one_value_for_float_tensor_and_per_member_genes(kind, args):
    """Python int t (eager), 0-d float64 tensor t (capturable, compiled) and [P] genes (populations) agree."""
    rate = kind != "linear_warmup" and args.get("power", -1) < 0
    values = torch.tensor([0.9, 0.99, 0.5], dtype=torch.float64)
    start = args.get("start")
    for t in range(1, 10):
        floats = [scheduled_gene(kind, float(v), t, **args, rate=rate) for v in values]
        tensor_t = [scheduled_gene(kind, float(v), torch.tensor(float(t), dtype=torch.float64), **args, rate=rate)
                    for v in values]
        members = scheduled_gene(kind, values, t, **{**args, **({"start": torch.full((3,), start, dtype=torch.float64)}
                                                                  if start else {})}, rate=rate)
        assert all(isinstance(x, torch.Tensor) and x.ndim == 0 for x in tensor_t)
        torch.testing.assert_close(torch.stack(tensor_t), torch.tensor(floats, dtype=torch.float64), rtol=1e-14, atol=0)
        torch.testing.assert_close(members, torch.tensor(floats, dtype=torch.float64), rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------- the stale first step


def test_a_stale_term_moves_nothing_at_step_1_and_divides_by_v_of_the_step_before():
    weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    start = weight.detach().clone()
    optimizer = evolveopt.build_optimizer("adopt", [weight])
    g1, g2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    weight.grad = g1.clone()
    optimizer.step()
    state = optimizer.state[weight]
    momentum = "momentum.normalized(grad,second_moment.grad.beta2.stale,clamp(eps),clip(clip)).beta1"
    assert torch.equal(weight.detach(), start) and not state[momentum].any()
    assert torch.equal(state["second_moment.grad.beta2.stale"], g1**2)  # v_0 = g_1²
    weight.grad = g2.clone()
    optimizer.step()  # t = 2: n = clamp(g2/max(√v_0, ε), ±1·(2 − 1)^¼), m = (1 − β1)·n, θ −= η·m
    expected = start - 1e-3 * (1 - 0.9) * torch.clamp(g2 / torch.clamp(g1.abs(), min=1e-6), -1.0, 1.0)
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(state["second_moment.grad.beta2.stale"], 0.9999 * g1**2 + 1e-4 * g2**2,
                               rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------- search


def _v2_space(**extra):
    from evolveopt.search.space import SearchSpace

    return SearchSpace(eps_modes=("outside", "clamp", "atan2"), stale_probability=0.3, normalize_first_probability=0.5,
                       normalized_clip_probability=0.3,
                       gene_schedules=("none", "linear_warmup", "halflife_warmup", "power"), **extra)


def _features(genome) -> set[str]:
    out = {f"schedule:{s.kind}" for s in genome.gene_schedules.values()}
    for term in genome.terms:
        pre = term.precondition
        if term.order == "normalize_first":
            out.add("normalize_first")
        if pre is not None:
            out |= {pre.eps_mode} & {"clamp", "atan2"}
            out |= {"stale"} if pre.stale else set()
            out |= {"clip"} if pre.clip else set()
    return out


def test_the_default_space_draws_and_mutates_no_schema_2_term_option():
    from evolveopt.search.operators import V2_MOVES, structural_moves
    from evolveopt.search.space import SearchSpace, random_genome

    rng = np.random.default_rng(5)
    genomes = [random_genome(rng, SearchSpace()) for _ in range(300)]
    assert set().union(*map(_features, genomes)) == set()
    assert set(structural_moves(SearchSpace())) & set(V2_MOVES) == set()
    assert set(V2_MOVES) <= set(structural_moves(_v2_space()))


def test_a_space_that_allows_them_draws_each_option_and_its_offspring_stay_valid():
    from evolveopt.genome import canonical_form
    from evolveopt.search.operators import crossover, mutate_structure
    from evolveopt.search.space import random_genome

    rng, space = np.random.default_rng(3), _v2_space()
    genomes = [canonical_form(random_genome(rng, space)) for _ in range(200)]
    assert set().union(*map(_features, genomes)) == {"clamp", "atan2", "stale", "clip", "normalize_first",
                                                      "schedule:linear_warmup", "schedule:halflife_warmup",
                                                      "schedule:power"}
    for i, genome in enumerate(genomes[:80]):
        for child, _ in (mutate_structure(rng, genome, space), crossover(rng, genome, genomes[-1 - i], space)):
            assert canonical_form(child) == child and parse_genome(to_dict(child)) == child


def test_a_drawn_rule_with_every_option_trains_finitely():
    from evolveopt.search.space import random_genome

    rng, space = np.random.default_rng(11), _v2_space(max_terms=2)
    for _ in range(30):
        genome = random_genome(rng, space).with_genes(lr=1e-3)
        weight = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        optimizer = evolveopt.build_optimizer(genome, [weight], total_steps=10)
        for _ in range(10):
            optimizer.zero_grad()
            (weight**2).sum().backward()
            optimizer.step()
        assert torch.isfinite(weight).all(), genome


def test_config_accepts_the_new_space_options_and_refuses_unknown_ones():
    from evolveopt.config import parse_config

    config = parse_config({"space": {"eps_modes": ["outside", "atan2", "clamp"], "gene_schedules": ["none", "power"],
                                     "stale_probability": 0.2}})
    assert config.space.eps_modes == ("outside", "atan2", "clamp") and config.space.stale_probability == 0.2
    with pytest.raises(ConfigError, match=r"space\.gene_schedules: 'cosine' is not allowed"):
        parse_config({"space": {"gene_schedules": ["cosine"]}})
    with pytest.raises(ConfigError, match=r"space\.stale_probability: 1\.5 is out of range"):
        parse_config({"space": {"stale_probability": 1.5}})
