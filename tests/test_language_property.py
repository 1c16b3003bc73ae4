"""Property tests over genomes drawn from the search space (every registry locus allowed).

For any genome the GA can draw: its file form round-trips; its canonical form is idempotent and
blind to the order of its terms and to a term split in two; a stacked population of it steps as
its members do alone; and every locus of the registry is reachable by draws.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_population import MEMBERS, member_loss, perturbed, problem

import evolveopt
from evolveopt.compile.population import PopulationOptimizer, stack_genes
from evolveopt.genome import canonical_form, genome_hash, to_dict
from evolveopt.genome.registry import LOCI
from evolveopt.genome.schema import parse_genome
from evolveopt.search.space import full_space, random_genome

SPACE = full_space(max_terms=4)
SEEDS = st.integers(0, 2**32 - 1)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def drawn(seed: int):
    return random_genome(np.random.default_rng(seed), SPACE)


@settings(max_examples=200, **SETTINGS)
@given(SEEDS)
def test_file_form_round_trips(seed):
    genome = drawn(seed)
    assert parse_genome(to_dict(genome), source="drawn") == genome


@settings(max_examples=200, **SETTINGS)
@given(SEEDS, st.randoms(use_true_random=False))
def test_canonical_form_is_idempotent_and_blind_to_term_order_and_splitting(seed, shuffle):
    genome = drawn(seed)
    canonical = canonical_form(genome)
    assert canonical_form(canonical) == canonical
    data = to_dict(genome)
    shuffle.shuffle(data["terms"])
    assert genome_hash(parse_genome(data, source="shuffled")) == genome_hash(genome)
    # split the first term of an untied weight w into terms of weights w − d and d, d the leading power
    # of ten of w (both stay on the 4-significant-digit grid, so the merge is exact)
    data = to_dict(canonical)
    first = data["terms"][0]
    weight = first["weight"]
    if weight.startswith("w"):
        free = next(f"w{i}" for i in range(1, 10) if f"w{i}" not in data["genes"])
        w = data["genes"][weight]
        d = math.copysign(10.0 ** math.floor(math.log10(abs(w))), w)
        data["genes"][weight], data["genes"][free] = w - d, d
        data["terms"].append({**first, "weight": free})
        assert genome_hash(parse_genome(data, source="split")) == genome_hash(genome)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=SEEDS)
def test_a_stacked_population_of_a_drawn_structure_steps_as_its_members_alone(seed, float64):
    """(Newton–Schulz runs in the parameters' float64 here: in bfloat16 a one-ulp float64 difference
    upstream, e.g. of a per-member norm, can round to a different bfloat16 and grow; the bfloat16 path
    is pinned bit for bit against torch.optim.Muon in tests/test_muon.py.)"""
    base = drawn(seed)
    if base.orthogonalize is not None:
        data = to_dict(base)
        data["orthogonalize"] = {**data["orthogonalize"], "dtype": "param"}
        base = parse_genome(data, source="drawn")
    members = [perturbed(base, i) for i in range(MEMBERS)]
    init, targets, scales = problem(seed % 7)
    steps, total = 6, 12
    stacked = [p.clone().requires_grad_() for p in init]
    population = PopulationOptimizer(base, stacked, stack_genes(members, dtype=torch.float64), total_steps=total)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            losses = member_loss(stacked, targets, scales)
            population.step(torch.autograd.grad(losses.sum(), stacked), loss=losses.detach())
        for i, genome in enumerate(members):
            params = [p[i].clone().requires_grad_() for p in init]
            optimizer = evolveopt.build_optimizer(genome, params, total_steps=total)

            def closure():
                optimizer.zero_grad()
                loss = member_loss([p[None] for p in params], [t[i:i + 1] for t in targets],
                                   [s[i:i + 1] for s in scales])[0]
                loss.backward()
                return loss

            for _ in range(steps):
                optimizer.step(closure)
            for alone, together in zip(params, stacked):
                torch.testing.assert_close(together[i].detach(), alone.detach(), rtol=1e-9, atol=1e-11,
                                           equal_nan=True)


def test_every_locus_variant_is_reachable_by_draws():
    """The full space draws every variant of every registry locus (so mutations can reach them)."""
    rng = np.random.default_rng(0)
    seen = {key: set() for key in LOCI}
    for _ in range(600):
        genome = random_genome(rng, SPACE)
        for key, locus in LOCI.items():
            value = getattr(genome, key)
            if locus.present(value):
                seen[key].add(locus.kind_of(value))
    missing = {key: set(LOCI[key].kinds) - kinds - {"constant"} for key, kinds in seen.items()}
    assert not any(missing.values()), missing


def test_schema_one_search_spaces_draw_what_they_drew_before_the_registry():
    """Seeded searches repeat across the registry refactor: random genomes, structural mutations
    and crossovers of the default, paper and quickstart spaces hash exactly as schema 1's code drew
    them (digest computed at commit f515c87, before loci moved into the registry)."""
    import hashlib

    from evolveopt.config import load_config
    from evolveopt.search.operators import crossover, mutate_structure
    from evolveopt.search.space import SearchSpace

    hashes = []
    experiments = Path(__file__).parent.parent / "experiments"
    for space in (SearchSpace(), load_config(experiments / "paper.yaml").space,
                  load_config(experiments / "quickstart.yaml").space):
        rng = np.random.default_rng(7)
        genomes = [random_genome(rng, space) for _ in range(30)]
        hashes += [genome_hash(g) for g in genomes]
        for i in range(30):
            hashes.append(genome_hash(mutate_structure(rng, genomes[i], space)[0]))
            hashes.append(genome_hash(crossover(rng, genomes[i], genomes[(i + 1) % 30], space)[0]))
    assert hashlib.sha256("".join(hashes).encode()).hexdigest()[:16] == "64cb2fdb1bfc3f68"
