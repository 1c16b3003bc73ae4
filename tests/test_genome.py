"""The genome as data: loading, round trips, canonical form and hashing, the torch-free layer."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

import evolveopt
from evolveopt.genome import canonical_form, dump_genome, genome_hash, parse_genome_text, structure_key, to_dict
from evolveopt.genome.equations import render_genome
from evolveopt.genome.schema import Signal, Term, parse_genome

GENOMES = evolveopt.genome.named_genomes()


@pytest.mark.parametrize("name", GENOMES)
def test_named_genome_round_trips_through_yaml(name):
    genome = evolveopt.load_genome(name)
    again = parse_genome_text(dump_genome(genome), source="dumped")
    assert again == genome
    assert genome_hash(again) == genome_hash(genome)
    assert genome.description and (genome.name == name or name.startswith("discovered/"))


@pytest.mark.parametrize("name", GENOMES)
def test_canonical_form_is_a_fixed_point_with_the_same_hash(name):
    genome = evolveopt.load_genome(name)
    canonical = canonical_form(genome)
    assert canonical_form(canonical) == canonical
    assert genome_hash(canonical) == genome_hash(genome)
    assert structure_key(canonical) == structure_key(genome)


@pytest.mark.parametrize("name", GENOMES)
def test_show_renders_every_gene_and_the_parameter_update(name):
    text = render_genome(evolveopt.load_genome(name))
    assert "θ ←" in text and "genes:" in text


def test_named_genomes_hash_apart():
    hashes = {genome_hash(evolveopt.load_genome(n)) for n in GENOMES}
    assert len(hashes) == len(GENOMES)


def adam():
    return evolveopt.load_genome("adam")


def test_missing_weight_equals_explicit_unit_weight():
    data = to_dict(adam())
    data["genes"]["w1"] = 1.0
    data["terms"][0]["weight"] = "w1"
    assert genome_hash(parse_genome(data)) == genome_hash(adam())


def test_name_and_description_do_not_change_the_hash():
    assert genome_hash(replace(adam(), name="x", description="y")) == genome_hash(adam())


def test_genes_are_rounded_to_four_significant_digits():
    assert genome_hash(adam().with_genes(lr=1.00001e-3)) == genome_hash(adam())
    assert genome_hash(adam().with_genes(lr=1.001e-3)) != genome_hash(adam())
    assert genome_hash(adam().with_genes(beta2=0.99999)) != genome_hash(adam().with_genes(beta2=0.9999))


def test_structure_key_ignores_gene_values_only():
    assert structure_key(adam().with_genes(lr=0.5, beta1=0.1)) == structure_key(adam())
    assert structure_key(evolveopt.load_genome("adamw")) != structure_key(adam())


def sign_plus_grad(w_sign_a, w_sign_b, w_grad, order=("a", "b", "g")):
    terms = {
        "a": {"weight": "w1", "signal": "grad", "sign": True},
        "b": {"weight": "w2", "signal": "grad", "sign": True},
        "g": {"weight": "w3", "signal": "grad"},
    }
    return parse_genome({
        "schema_version": 1,
        "genes": {"lr": 0.01, "w1": w_sign_a, "w2": w_sign_b, "w3": w_grad},
        "terms": [terms[k] for k in order],
    })


def test_term_order_does_not_change_the_hash():
    assert genome_hash(sign_plus_grad(0.4, 0.3, 1.0)) == genome_hash(sign_plus_grad(0.4, 0.3, 1.0, ("g", "b", "a")))


def test_duplicate_terms_merge_into_one_with_the_summed_weight():
    merged = canonical_form(sign_plus_grad(0.4, 0.3, 1.0))
    assert len(merged.terms) == 2
    assert sorted(merged.genes[t.weight] for t in merged.terms) == [0.7, 1.0]


def test_zero_weight_terms_are_dropped():
    genome = sign_plus_grad(0.4, -0.4, 1.0)
    assert len(canonical_form(genome).terms) == 1
    plain = parse_genome({"schema_version": 1, "genes": {"lr": 0.01, "w1": 1.0}, "terms": [{"weight": "w1"}]})
    assert genome_hash(genome) == genome_hash(plain)


def test_tied_weights_are_kept_apart():
    adan = canonical_form(evolveopt.load_genome("adan"))
    assert [t.weight for t in adan.terms].count("beta2") == 1


def test_genome_layer_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import evolveopt, evolveopt.genome\n"
        "from evolveopt.genome.equations import render_genome\n"
        "for name in evolveopt.genome.named_genomes():\n"
        "    render_genome(evolveopt.load_genome(name)); evolveopt.genome_hash(evolveopt.load_genome(name))\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_with_genes_validates_names_and_ranges():
    with pytest.raises(evolveopt.GenomeError, match="no gene 'beta3'"):
        adam().with_genes(beta3=0.9)
    with pytest.raises(evolveopt.GenomeError, match=r"beta1: 1.0 is out of range \[0, 1\)"):
        adam().with_genes(beta1=1.0)


def test_signal_defaults_to_the_gradient():
    genome = parse_genome({"schema_version": 1, "genes": {"lr": 0.1}, "terms": [{}]})
    assert genome.terms == (Term(signal=Signal("grad")),)


# ----------------------------------------------------------------------------- orthogonalize and the fallback


def test_orthogonalize_bare_kind_means_the_torch_defaults():
    data = to_dict(evolveopt.load_genome("muon"))
    data["orthogonalize"] = "newton_schulz"
    assert parse_genome(data) == evolveopt.load_genome("muon")


def test_fallback_terms_are_sorted_in_the_canonical_form():
    data = to_dict(evolveopt.load_genome("muon"))
    sign_term = {"signal": "grad", "precondition": {"kind": "ema", "beta": "fallback_beta2", "eps": "fallback_eps"},
                 "sign": True}
    data["fallback"]["terms"] = [data["fallback"]["terms"][0], sign_term]
    flipped = {**data, "fallback": {**data["fallback"], "terms": data["fallback"]["terms"][::-1]}}
    a, b = parse_genome(data), parse_genome(flipped)
    assert a != b and canonical_form(a) == canonical_form(b) and genome_hash(a) == genome_hash(b)
    assert canonical_form(a).fallback.terms[0].precondition is None or canonical_form(a).fallback.terms[1].precondition is None


def test_the_fallback_is_part_of_the_rule_hash_and_diff():
    from evolveopt.genome.diff import diff_genomes

    muon = evolveopt.load_genome("muon")
    data = to_dict(muon)
    data["fallback"]["weight_decay"]["mode"] = "l2"
    changed = parse_genome(data)
    assert genome_hash(changed) != genome_hash(muon) and structure_key(changed) != structure_key(muon)
    lines = diff_genomes(muon, changed)
    assert len(lines) == 1 and lines[0].startswith("fallback: ") and '"l2"' in lines[0]
    assert diff_genomes(muon, evolveopt.load_genome("muon_moonlight"))  # scale, momentum, eps placement, ...


def test_fallback_genes_count_as_used_and_the_file_says_schema_2():
    muon = evolveopt.load_genome("muon")
    assert to_dict(muon)["schema_version"] == 2
    data = to_dict(muon)
    del data["fallback"]
    with pytest.raises(evolveopt.GenomeError, match=r"gene 'fallback_beta1' is not used"):
        parse_genome(data)


def test_state_and_show_count_each_rules_buffers():
    from evolveopt.genome.slots import buffers_per_param

    muon = evolveopt.load_genome("muon")
    assert buffers_per_param(muon) == 2  # the larger of Muon's 1 and AdamW's 2: the bound a memory cap needs
    text = render_genome(muon)
    assert "state: 1 buffer(s) per matrix parameter, 2 per other parameter" in text
    assert "θ ← θ − η_t·s·u" in text and "θ ← θ − η_t·ρ·u" in text and "5×: A = X·Xᵀ" in text


def test_a_fallback_lr_ratio_of_one_is_the_same_rule_as_none():
    moonlight = evolveopt.load_genome("muon_moonlight")
    data = to_dict(moonlight)
    data["genes"]["fallback_lr_ratio"] = 1.0
    data["fallback"]["lr_ratio"] = "fallback_lr_ratio"
    with_ratio = parse_genome(data)
    assert with_ratio != moonlight and genome_hash(with_ratio) == genome_hash(moonlight)
    assert genome_hash(with_ratio.with_genes(fallback_lr_ratio=0.5)) != genome_hash(moonlight)
