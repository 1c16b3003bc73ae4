"""Bad genome input, tried as a new user would: one clear line at the CLI, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import evolveopt
from evolveopt.cli import main

ADAM = """schema_version: 1
genes: {lr: 1.0e-3, beta1: 0.9, beta2: 0.999, eps: 1.0e-8}
terms:
  - signal: grad
    momentum: {kind: ema, beta: beta1, bias_correction: true}
    precondition: {kind: ema, beta: beta2, eps: eps, bias_correction: true}
"""

MATRIX_ONLY = """schema_version: 2
name: muon_matrices
genes: {lr: 0.02, beta1: 0.95}
terms:
  - momentum: {kind: nesterov, beta: beta1}
orthogonalize: {kind: newton_schulz, steps: 5, coefficients: original}
"""
WITH_FALLBACK = MATRIX_ONLY.replace("beta1: 0.95}", "beta1: 0.95, beta2: 0.99, eps: 1.0e-8}") + """fallback:
  terms:
    - precondition: {kind: ema, beta: beta2, eps: eps}
"""
PRODIGY = """schema_version: 2
genes: {lr: 1.0, beta1: 0.9, beta2: 0.999, beta3: 0.9995, eps: 1.0e-8, d0: 1.0e-6, d_coef: 1.0}
terms:
  - signal: grad
    momentum: {kind: ema, beta: beta1}
    precondition: {kind: ema, beta: beta2, eps: eps}
estimator: {kind: prodigy, beta: beta3, d0: d0, coef: d_coef}
"""

CASES = {
    "typo_in_key": (ADAM.replace("terms:", "termz:"), r"unknown key 'termz' \(allowed: schema_version, name"),
    "wrong_type": (ADAM.replace("lr: 1.0e-3", "lr: fast"), r"genes\.lr: expected a number, got a string"),
    "missing_field": (ADAM.replace("schema_version: 1\n", ""), r"missing required key 'schema_version'"),
    "unknown_primitive": (ADAM.replace("kind: ema, beta: beta1", "kind: adamm, beta: beta1"),
                          r"terms\[0\]\.momentum\.kind: unknown value 'adamm' \(allowed: ema, nesterov, interp, nadam\)"),
    "unknown_gene": (ADAM.replace("beta: beta1", "beta: beta7"), r"terms\[0\]\.momentum\.beta: unknown gene 'beta7'"),
    "unknown_gene_name": (ADAM.replace("lr: 1.0e-3", "lrr: 1.0e-3"), r"genes\.lrr: unknown gene 'lrr' \(allowed: lr, beta1"),
    "out_of_range": (ADAM.replace("beta1: 0.9", "beta1: 1.5"), r"genes\.beta1: 1\.5 is out of range \[0, 1\)"),
    "not_a_mapping": ("- adam\n- lion\n", r"a genome must be a mapping at the top level, got a list"),
    "empty_file": ("", r"file is empty"),
    "bad_yaml": (ADAM.replace("genes: {lr:", "genes: {lr: [1,"), r"not valid YAML"),
    "unused_gene": (ADAM.replace("eps: 1.0e-8}", "eps: 1.0e-8, beta3: 0.9}"), r"gene 'beta3' is not used"),
    "all_zero_weights": (
        "schema_version: 1\ngenes: {lr: 0.1, w1: 0.0, w2: 0.0}\n"
        "terms:\n  - {weight: w1, signal: grad}\n  - {weight: w2, signal: grad, sign: true}\n",
        r"terms: every term has weight 0",
    ),
    "future_schema": (ADAM.replace("schema_version: 1", "schema_version: 7"), r"unsupported schema version 7"),
    "schema_2_locus_in_a_schema_1_file": (ADAM + "cautious: mean\n",
                                          r"cautious: 'cautious' needs schema_version 2 \(this file says 1\)"),
    "unknown_locus_kind": (ADAM.replace("schema_version: 1", "schema_version: 2") + "cautious: always\n",
                           r"cautious\.kind: unknown value 'always' \(allowed: mean, plus_one\)"),
    "locus_field_of_another_variant": (
        ADAM.replace("schema_version: 1", "schema_version: 2") + "layerwise: {kind: rms_norm, eps: eps, clamp: eps}\n",
        r"layerwise\.clamp: layerwise 'rms_norm' takes no 'clamp'"),
    "locus_gene_out_of_role": (ADAM + "weight_decay: {mode: decoupled, rate: beta1}\n",
                               r"weight_decay\.rate: gene 'beta1' is .*; this field takes"),
    "unknown_ns_coefficients": (MATRIX_ONLY.replace("coefficients: original", "coefficients: cubic"),
                                r"orthogonalize\.coefficients: unknown value 'cubic' \(allowed: original, quintic, "
                                r"polar_express, polar_express_safer\)$"),
    "zero_ns_steps": (MATRIX_ONLY.replace("steps: 5", "steps: 0"),
                      r"orthogonalize\.steps: 0 is out of range \(an integer >= 1\)$"),
    "fractional_ns_steps": (MATRIX_ONLY.replace("steps: 5", "steps: 2.5"),
                            r"orthogonalize\.steps: expected an integer >= 1, got a float$"),
    "orthogonalize_in_schema_1": (MATRIX_ONLY.replace("schema_version: 2", "schema_version: 1"),
                                  r"orthogonalize: 'orthogonalize' needs schema_version 2 \(this file says 1\)$"),
    "fallback_in_schema_1": (WITH_FALLBACK.replace("schema_version: 2", "schema_version: 1").replace(
                                 "orthogonalize: {kind: newton_schulz, steps: 5, coefficients: original}\n", ""),
                             r"fallback: 'fallback' needs schema_version 2 \(this file says 1\)$"),
    "fallback_orthogonalizes": (WITH_FALLBACK + "  orthogonalize: newton_schulz\n",
                                r"fallback\.orthogonalize: a fallback takes no 'orthogonalize' \(it takes the tensors "
                                r"that are not matrices\)$"),
    "fallback_clip_under_a_global_clip": (
        WITH_FALLBACK.replace("eps: 1.0e-8}", "eps: 1.0e-8, clip: 1.0}").replace(
            "fallback:\n", "clip: {mode: global_norm, threshold: clip}\nfallback:\n  clip: {mode: value, threshold: clip}\n"),
        r"fallback\.clip: the genome clips by the global norm, which clips the fallback's gradients too: leave this "
        r"clip out$"),
    "weighted_fallback_term": (WITH_FALLBACK.replace("genes: {lr: 0.02,", "genes: {lr: 0.02, w1: 2.0,").replace(
                                   "- precondition:", "- weight: w1\n      precondition:"),
                               r"fallback\.terms\[0\]\.weight: a fallback term takes no weight$"),
    "estimator_in_a_schema_1_file": (PRODIGY.replace("schema_version: 2", "schema_version: 1"),
                                     r"estimator: 'estimator' needs schema_version 2 \(this file says 1\)"),
    "estimator_without_d0": (PRODIGY.replace("d0: d0, ", ""), r"estimator: estimator 'prodigy' needs 'd0'"),
    "estimator_gene_out_of_role": (PRODIGY.replace("d0: d0,", "d0: eps,"),
                                   r"estimator\.d0: gene 'eps' is a numerical floor; this field takes an initial "
                                   r"step-size estimate \(d0\)"),
    "estimator_d0_zero": (PRODIGY.replace("d0: 1.0e-6", "d0: 0"), r"genes\.d0: 0 is out of range \(0, 1\]"),
    "estimator_growth_below_one": (PRODIGY.replace("d_coef: 1.0}", "d_coef: 1.0, growth_rate: 0.5}")
                                   .replace("coef: d_coef}", "coef: d_coef, growth: growth_rate}"),
                                   r"genes\.growth_rate: 0\.5 is out of range \[1, inf\]"),
    "estimator_unknown_option": (PRODIGY.replace("coef: d_coef}", "coef: d_coef, decouple: true}"),
                                 r"estimator: unknown key 'decouple' \(allowed: kind, beta, d0, coef, growth"),
    "estimator_flag_not_a_boolean": (PRODIGY.replace("coef: d_coef}", "coef: d_coef, safeguard_warmup: yes please}"),
                                     r"estimator\.safeguard_warmup: expected true or false, got a string"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_genome_gives_one_clear_line_and_exit_code_2(case, tmp_path, capsys):
    text, pattern = CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(evolveopt.GenomeError, match=pattern):
        evolveopt.load_genome(path)
    assert main(["show", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evolveopt: error: ")
    assert str(path) in err or case == "empty_file" and "file is empty" in err


def test_yaml_tags_never_execute(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "tag.yaml"
    path.write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')
    assert main(["show", str(path)]) == 2
    assert "YAML tag is not allowed" in capsys.readouterr().err
    assert not marker.exists()


def test_huge_file_is_refused_before_parsing(tmp_path, capsys):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as f:
        f.write("# " + "x" * (50 * 1024 * 1024) + "\n")
    assert main(["show", str(path)]) == 2
    assert "file is 52.4 MB; genome files are limited to 1 MB" in capsys.readouterr().err


def test_unknown_genome_name_lists_the_named_ones(capsys):
    assert main(["show", "adamz"]) == 2
    err = capsys.readouterr().err
    assert "no genome named 'adamz'" in err and "adam, adam_atan2, adamw" in err


def test_missing_file_path(tmp_path, capsys):
    assert main(["show", str(tmp_path / "nope.yaml")]) == 2
    assert "no such genome file" in capsys.readouterr().err


def test_cli_error_has_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(ADAM.replace("terms:", "termz:"))
    result = subprocess.run([sys.executable, "-m", "evolveopt.cli", "show", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0


# ----------------------------------------------------------------------------- the command line, as a new user meets it


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("evolveopt: error: ") and err.count("\n") == 1, err
    return err


no_cuda = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")


@no_cuda
def test_cuda_device_without_cuda_is_refused_before_the_run_directory(tmp_path, capsys):
    from test_evolve import tiny_config

    run = tmp_path / "run"
    assert main(["evolve", str(tiny_config(tmp_path)), "--set", "device=cuda", "--out", str(run)]) == 2
    assert "device 'cuda': torch" in one_line_error(capsys)
    assert not run.exists()
    assert main(["eval", "adam", "--device", "cuda:1", "--no-cache"]) == 2
    assert "device 'cuda:1'" in one_line_error(capsys)


@no_cuda
def test_gpu_experiment_on_a_cpu_machine_fails_fast_naming_what_is_missing(tmp_path):
    gpu = Path(__file__).resolve().parent.parent / "experiments" / "gpu.yaml"
    for extra, says in (([], "device 'cuda'"), (["--set", "device=cpu"], "backend.gpus_per_actor=0.25 asks for GPUs")):
        run = tmp_path / "run"
        result = subprocess.run([sys.executable, "-m", "evolveopt.cli", "evolve", str(gpu), "--out", str(run), *extra],
                                capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
        assert result.returncode == 2 and says in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and not run.exists()


@pytest.mark.parametrize("argv", [
    ["try", "adam", "--steps", "-5"], ["try", "adam", "--steps", "x"], ["eval", "adam", "--budget", "0"],
    ["benchmark", "adam", "--trials", "0"], ["report", "RUN", "--checkup-seeds", "-1"],
    ["report", "RUN", "--checkup-budget", "0"],
    ["lineage", "RUN", "--depth", "-2"], ["export", "RUN", "--rank", "0"], ["bogus-command"],
])
def test_out_of_range_command_line_numbers_are_one_line_and_exit_2(argv, capsys):
    from evolveopt.cli import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evolveopt") and "error: " in err, err


def test_numbers_as_people_write_them_are_numbers(tmp_path):
    """YAML 1.1 reads 3e-4 (no dot) as text; genomes and --set take it as the number it is."""
    from evolveopt.config import load_config

    genome = evolveopt.genome.parse_genome(yaml.safe_load(
        ADAM.replace("lr: 1.0e-3", "lr: 3e-4").replace("eps: 1.0e-8", "eps: 1E-8")))
    assert genome.genes["lr"] == 3e-4 and genome.genes["eps"] == 1e-8
    config = tmp_path / "c.yaml"
    config.write_text((Path(__file__).parent.parent / "experiments" / "quickstart.yaml").read_text())
    loaded = load_config(config, ["fitness.budget=3e2", "search.gene_sigma=4e-1"])
    assert loaded.fitness.budget == 300 and isinstance(loaded.fitness.budget, int)
    assert loaded.search.gene_sigma == 0.4
    with pytest.raises(Exception, match="expected an integer"):
        load_config(config, ["fitness.budget=2.5e0"])
    with pytest.raises(evolveopt.errors.GenomeError, match="expected a number"):
        evolveopt.genome.parse_genome(yaml.safe_load(ADAM.replace("lr: 1.0e-3", "lr: 3e-4x")))


# ----------------------------------------------------------------------------- outputs that cannot be written


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from test_evolve import tiny_config

    from evolveopt.config import load_config
    from evolveopt.evolution import start_run

    folder = tmp_path_factory.mktemp("finished")
    start_run(load_config(tiny_config(folder)), folder / "run", progress=False)
    return folder / "run"


def unwritable_cases(run: Path, config: Path, a_file: Path, missing: Path) -> dict[str, tuple[list[str], str]]:
    """argv -> the words the one-line error must hold; ``a_file`` is a file, ``missing`` a folder that is not."""
    cases = {
        "evolve_under_a_file": (["evolve", str(config), "--out", str(a_file / "sub")], "cannot create the run folder"),
        "evolve_onto_a_file": (["evolve", str(config), "--out", str(a_file)], "cannot create the run folder"),
        "export_under_a_file": (["export", str(run), "-o", str(a_file / "x.py")], "cannot write the export"),
        "export_missing_folder": (["export", str(run), "-o", str(missing / "x.py")], f"(no folder {missing})"),
        "benchmark_under_a_file": (["benchmark", "adam", "--task", "nqm", "--budget", "5", "--trials", "1", "--seeds",
                                    "1", "--out", str(a_file / "b")], "cannot create the benchmark folder"),
        "benchmark_summarize_into_a_file": (["benchmark", "--summarize", str(a_file)], "no benchmark.json"),
        "eval_cache_under_a_file": (["eval", "adam", "--task", "nqm", "--budget", "5", "--seeds", "0", "--cache",
                                     str(a_file / "c" / "r.sqlite")], "cannot create the cache's folder"),
    }
    for fmt in ("text", "dot", "csv", "json", "png", "svg", "html"):
        cases[f"lineage_{fmt}_under_a_file"] = (["lineage", str(run), "--format", fmt, "-o", str(a_file / f"x.{fmt}")],
                                                f"cannot write the {fmt} lineage")
    if Path("/proc/self").is_dir():  # Linux: /proc takes no new files or folders, even from root
        cases["evolve_in_proc"] = (["evolve", str(config), "--out", "/proc/evo"], "/proc/evo: cannot create the run folder")
        cases["lineage_png_in_proc"] = (["lineage", str(run), "--format", "png", "-o", "/proc/x.png"],
                                        "/proc/x.png: cannot write the png lineage")
        cases["export_in_proc"] = (["export", str(run), "-o", "/proc/x.py"], "/proc/x.py: cannot write the export")
    return cases


def test_every_unwritable_output_is_one_line_exit_2_and_leaves_nothing(finished_run, tmp_path, capsys):
    from test_evolve import tiny_config

    config = tiny_config(tmp_path)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder\n")
    before = sorted(tmp_path.rglob("*"))
    for name, (argv, says) in unwritable_cases(finished_run, config, a_file, tmp_path / "missing").items():
        assert main(argv) == 2, name
        err = one_line_error(capsys)
        assert says in err, (name, err)
        assert str(a_file) in err or "/proc" in err or "missing" in err, (name, err)
        assert sorted(tmp_path.rglob("*")) == before, name  # no half-made run, report or benchmark folder
    assert a_file.read_text() == "a file, not a folder\n"


def test_report_over_a_file_or_from_an_empty_config_is_one_line(finished_run, tmp_path, capsys):
    import shutil

    blocked = shutil.copytree(finished_run, tmp_path / "blocked")
    (blocked / "report").write_text("in the way\n")
    assert main(["report", str(blocked), "--checkup-seeds", "0"]) == 2
    assert f"{blocked / 'report'}: cannot create the report folder ({blocked / 'report'} is a file, not a folder)" \
        in one_line_error(capsys)
    assert (blocked / "report").read_text() == "in the way\n"
    empty = shutil.copytree(finished_run, tmp_path / "empty_config")
    (empty / "config.yaml").write_text("")
    for command in (["report", str(empty), "--checkup-seeds", "0"], ["resume", str(empty)]):
        assert main(command) == 2
        assert f"{empty / 'config.yaml'}: empty" in one_line_error(capsys)
    assert not (empty / "report").exists()


def test_a_failed_command_removes_the_folders_it_made_and_nothing_else(tmp_path):
    from evolveopt.run_directory import OutputError, output_folder

    kept = tmp_path / "kept"
    kept.mkdir()
    for interruption in (KeyboardInterrupt, evolveopt.EvolveOptError):
        with pytest.raises(interruption):
            with output_folder(kept / "new" / "run", "the run folder") as folder:
                (folder / "half.json").write_text("{")
                raise interruption()
        assert sorted(tmp_path.rglob("*")) == [kept]
    with pytest.raises(OutputError, match=r"kept/x/half\.json: cannot write the run folder \(Is a directory\)"):
        with output_folder(kept / "x", "the run folder") as folder:
            (folder / "half.json").mkdir()
            (folder / "half.json").write_text("{")
    assert sorted(tmp_path.rglob("*")) == [kept]
    with output_folder(kept, "the run folder") as folder:
        (folder / "done.json").write_text("{}")
    assert (kept / "done.json").read_text() == "{}"


def test_benchmark_that_fails_midway_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "bench"
    assert main(["benchmark", "adam", "--task", "nosuch", "--budget", "5", "--trials", "1", "--seeds", "1",
                 "--out", str(out)]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("evolveopt: error: unknown task 'nosuch'")
    assert not (tmp_path / "new").exists()


def _matrix_only():
    from evolveopt.genome.io import parse_genome_text

    return parse_genome_text(MATRIX_ONLY, source="muon_matrices.yaml")


def test_a_matrix_only_genome_refuses_a_1d_parameter_when_built():
    """OptimizerUsageError, not GenomeError: the genome is valid; giving it a bias is the mistake."""
    import torch

    params = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(5))]
    with pytest.raises(evolveopt.OptimizerUsageError) as info:
        evolveopt.build_optimizer(_matrix_only(), params)
    assert str(info.value) == ("genome 'muon_matrices' orthogonalizes matrices and has no fallback rule: "
                               "param_groups[0].params[1] has shape [5] (fewer than 2 dims); give the genome a "
                               "fallback or leave the tensor out")
    assert not isinstance(info.value, evolveopt.GenomeError)


def test_a_matrix_only_population_refuses_a_1d_tensor_per_member():
    import torch

    from evolveopt.compile.population import PopulationOptimizer, stack_genes

    genome = _matrix_only()
    stacked = [torch.zeros(3, 4, 6), torch.zeros(3, 6)]  # members: [4, 6] and [6]
    with pytest.raises(evolveopt.OptimizerUsageError, match=r"^genome 'muon_matrices' orthogonalizes matrices and "
                       r"has no fallback rule: tensor 1 has shape \[6\] \(fewer than 2 dims\)"):
        PopulationOptimizer(genome, stacked, stack_genes([genome] * 3))


def test_matrix_rule_false_needs_a_fallback():
    import torch

    group = {"params": [torch.nn.Parameter(torch.zeros(4, 3))], "matrix_rule": False}
    with pytest.raises(evolveopt.OptimizerUsageError, match=r"^genome 'muon_matrices': param_groups\[0\]\.params\[0\]: "
                       r"matrix_rule=False needs a genome with a fallback rule \(this one has none\)$"):
        evolveopt.build_optimizer(_matrix_only(), [group])


def test_a_refused_param_group_leaves_the_optimizer_as_it_was():
    import torch

    optimizer = evolveopt.build_optimizer(_matrix_only(), [torch.nn.Parameter(torch.zeros(4, 3))])
    with pytest.raises(evolveopt.OptimizerUsageError, match=r"param_groups\[1\]\.params\[0\] has shape \[3\]"):
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    assert len(optimizer.param_groups) == 1


def test_matrix_rule_must_be_a_boolean():
    import torch

    group = {"params": [torch.nn.Parameter(torch.zeros(4, 3))], "matrix_rule": "no"}
    with pytest.raises(evolveopt.OptimizerUsageError, match=r"^genome 'muon': param_groups\[0\]\.matrix_rule: "
                       r"expected True or False, got 'no'$"):
        evolveopt.build_optimizer("muon", [group])
