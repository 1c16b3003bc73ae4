"""Export (standalone .py and .yaml), lineage in every format, diff, show RUN#ID, report, bad input."""

from __future__ import annotations

import ast
import csv
import importlib
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import exported_class, tiny_batches, tiny_net, train

import evolveopt
from evolveopt.cli import main
from evolveopt.config import load_config
from evolveopt.genome import genome_hash
from evolveopt.evolution import start_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from test_evolve import TINY

    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny.yaml"
    data = json.loads(json.dumps(TINY))
    data["search"]["generations"] = 4
    config.write_text(yaml.safe_dump(data))
    start_run(load_config(config), folder / "run", progress=False)
    return folder / "run"


def lineage_records(run: Path) -> dict[int, dict]:
    return {r["id"]: r for r in map(json.loads, (run / "lineage.jsonl").read_text().splitlines())}


def champion(run: Path) -> dict:
    return json.loads((run / "hall_of_fame.json").read_text())[0]


# ----------------------------------------------------------------------------- export


def test_exported_module_needs_only_torch_and_runs_nothing_from_strings(run, tmp_path):
    out = tmp_path / "champion.py"
    assert main(["export", str(run), "-o", str(out)]) == 0
    text = out.read_text()
    # no builtin that runs code from strings is called (optimizer.eval() of schedule-free averaging is a method)
    calls = [node.func for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Call)]
    assert not [f.id for f in calls if isinstance(f, ast.Name) and f.id in ("eval", "exec", "compile", "__import__")]
    assert "evolveopt" not in re.findall(r"^(?:import|from) (\S+)", text, re.M)
    assert len(re.findall(r"^class \w+\(torch\.optim\.Optimizer\)", text, re.M)) == 1
    assert f"#{champion(run)['id']}" in text
    code = (
        "import sys; sys.modules['evolveopt'] = None\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import torch, champion\n"
        "cls = [c for c in vars(champion).values() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)"
        " and c is not torch.optim.Optimizer][0]\n"
        "m = torch.nn.Linear(3, 2); opt = cls(m.parameters(), total_steps=5)\n"
        "opt.step(lambda: m(torch.ones(1, 3)).sum().backward() or m(torch.ones(1, 3)).sum().abs() + 1)\n"
        "print(cls.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Tiny" in result.stdout


def trained(make_optimizer) -> list[torch.Tensor]:
    """Parameters of the tiny net after 100 steps with ``make_optimizer(params)``, then after
    ``optimizer.eval()`` (the evaluation point; the same tensors for rules without averaging),
    then after 10 more steps once ``optimizer.train()`` returned to the training point."""
    model = tiny_net(torch.float32)
    optimizer = make_optimizer(model.parameters())
    batches = tiny_batches(110, torch.float32)
    train(model, optimizer, batches[:100])
    out = [p.detach().clone() for p in model.parameters()]
    optimizer.eval()
    out += [p.detach().clone() for p in model.parameters()]
    optimizer.train()
    train(model, optimizer, batches[100:])
    return out + [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["adam", "ga2025", "lamb", "eve", "alto", "schedulefree_adamw", "schedulefree_sgd",
                                  "muon", "muon_moonlight", "prodigy"])
def test_exported_optimizer_trains_bit_identically_to_the_compiled_genome(name):
    compiled = trained(lambda p: evolveopt.build_optimizer(name, p, total_steps=100))
    exported = trained(lambda p: exported_class(name)(p, total_steps=100))
    assert len(compiled) == len(exported) == 12
    assert all(torch.equal(a, b) for a, b in zip(compiled, exported))
    y, x = compiled[:4], compiled[4:8]
    averaged = evolveopt.load_genome(name).averaging is not None
    assert all(torch.equal(a, b) != averaged for a, b in zip(y, x)), "eval() moves exactly the averaged rules"


def test_exported_champion_trains_bit_identically(run, tmp_path):
    import importlib.util

    out = tmp_path / "champ_module.py"
    assert main(["export", str(run), "--rank", "1", "-o", str(out)]) == 0
    spec = importlib.util.spec_from_file_location("champ_module", out)
    module = importlib.util.module_from_spec(spec)
    sys.modules["champ_module"] = module
    spec.loader.exec_module(module)
    cls = next(c for c in vars(module).values() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
               and c is not torch.optim.Optimizer)
    genome = evolveopt.genome.parse_genome(champion(run)["genome"])
    compiled = trained(lambda p: evolveopt.build_optimizer(genome, p, total_steps=100))
    exported = trained(lambda p: cls(p, total_steps=100))
    assert all(torch.equal(a, b) for a, b in zip(compiled, exported))


def _load_by(way: str, path: Path, monkeypatch) -> dict:
    """The exported file's namespace, loaded as a user might load a file."""
    import importlib.util
    import runpy

    if way == "import":
        monkeypatch.syspath_prepend(str(path.parent))
        return vars(importlib.import_module(path.stem))
    if way == "spec_from_file_location":  # not registered in sys.modules
        spec = importlib.util.spec_from_file_location("loaded_by_path", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert "loaded_by_path" not in sys.modules
        return vars(module)
    if way == "runpy":
        return runpy.run_path(str(path))
    namespace = {"__name__": "__main__"}  # a notebook cell: the file's text run in a fresh namespace
    exec(compile(path.read_text(), "<cell>", "exec"), namespace)  # noqa: S102 - the project's own generated file
    return namespace


@pytest.mark.parametrize("way", ["import", "spec_from_file_location", "runpy", "notebook cell"])
def test_an_exported_file_loads_however_a_user_loads_a_file(way, tmp_path, monkeypatch):
    out = tmp_path / f"lion_export_{way.replace(' ', '_')}.py"
    assert main(["export", "lion", "-o", str(out)]) == 0
    cls = _load_by(way, out, monkeypatch)["Lion"]
    compiled = trained(lambda p: evolveopt.build_optimizer("lion", p, total_steps=100))
    exported = trained(lambda p: cls(p, total_steps=100))
    assert all(torch.equal(a, b) for a, b in zip(compiled, exported))


def test_yaml_export_reads_back_to_the_same_canonical_hash(run, tmp_path):
    for source, extra in [(str(run), ["--rank", "2"]), (f"{run}#{champion(run)['id']}", []), ("adan", [])]:
        out = tmp_path / "genome.yaml"
        assert main(["export", source, *extra, "--format", "yaml", "-o", str(out)]) == 0
        expected = evolveopt.finished_runs.resolve_genome(source, *([2, None] if extra else []))[0]
        assert genome_hash(evolveopt.load_genome(out)) == genome_hash(expected)


# ----------------------------------------------------------------------------- lineage


def ancestry_ids(records: dict[int, dict], ident: int) -> set[int]:
    seen, todo = {ident}, [ident]
    while todo:
        for parent in records[todo.pop()]["parents"]:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def test_lineage_matches_recorded_parents_in_every_format(run, tmp_path, capsys):
    records = lineage_records(run)
    ident = champion(run)["id"]
    ancestors = ancestry_ids(records, ident)
    edges = {(p, c) for c in ancestors for p in records[c]["parents"]}

    assert main(["lineage", str(run), "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert {(int(a), int(b)) for a, b in re.findall(r'"(\d+)" -> "(\d+)"', dot)} == edges
    assert {int(n) for n in re.findall(r'^  "(\d+)" \[label', dot, re.M)} == ancestors

    assert main(["lineage", str(run), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0])[:3] == ["id", "ancestor_list", "origin_time"]
    for row in rows:
        record = records[int(row["id"])]
        expected = "[" + ",".join(map(str, record["parents"])) + "]" if record["parents"] else "[none]"
        assert row["ancestor_list"] == expected and int(row["origin_time"]) == record["generation"]
    assert {int(r["id"]) for r in rows} == ancestors

    assert main(["lineage", str(run), "--id", str(ident), "--format", "json"]) == 0
    nodes = json.loads(capsys.readouterr().out)
    assert {n["id"]: n["parents"] for n in nodes} == {i: records[i]["parents"] for i in ancestors}

    assert main(["lineage", str(run), "--champion"]) == 0
    text = capsys.readouterr().out
    assert all(f"#{i} " in text or f"#{i} (shown above)" in text for i in ancestors)

    for fmt in ("png", "html"):
        out = tmp_path / f"lineage.{fmt}"
        assert main(["lineage", str(run), "--format", fmt, "-o", str(out)]) == 0
    assert (tmp_path / "lineage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "lineage.html").read_text()
    assert "<svg" in page and f"#{ident}" in page and "http" not in page.split("<svg")[0].lower().replace("http-equiv", "")


def test_lineage_depth_limits_the_ancestry(run, capsys):
    assert main(["lineage", str(run), "--depth", "1", "--format", "json"]) == 0
    nodes = json.loads(capsys.readouterr().out)
    ident = champion(run)["id"]
    assert {n["id"] for n in nodes} == {ident, *lineage_records(run)[ident]["parents"]}


def test_diff_and_show_of_a_run_individual(run, capsys):
    ident = champion(run)["id"]
    assert main(["show", f"{run}#{ident}"]) == 0
    assert f"individual #{ident}" in capsys.readouterr().out
    assert main(["diff", "adam", "adamw"]) == 0
    assert "weight_decay: " in capsys.readouterr().out
    assert main(["diff", "adam", "adam"]) == 0
    assert "same rule" in capsys.readouterr().out


def test_report_writes_markdown_and_pictures(run, capsys):
    assert main(["report", str(run), "--checkup-seeds", "2", "--checkup-budget", "9"]) == 0
    report = (run / "report" / "report.md").read_text()
    assert "## Scores against the seeded baselines" in report and "(seed)" in report
    assert (run / "report" / "fitness.png").exists() and (run / "report" / "lineage.png").exists()
    checkup = json.loads((run / "report" / "checkup.json").read_text())
    from evolveopt.tasks import HELDOUT_SUITE

    assert checkup["settings"]["budget"] == 9 and "fresh seeds at 9 steps" in report
    assert [t["suite"] for t in checkup["tasks"]] == ["search"] + ["heldout"] * len(HELDOUT_SUITE)
    for task in checkup["tasks"]:
        for side in task["optimizers"].values():
            assert math.isfinite(side["final_loss"]["median"])
        assert task["verdict"] in {"win", "tie", "loss"}
    digits = checkup["tasks"][0]["optimizers"]["champion"]["heldout"]
    assert 0.0 < digits["accuracy"]["median"] <= 1.0
    assert "## Does it generalize?" in report and "| heldout | digits_cnn |" in report
    capsys.readouterr()
    assert main(["runs", str(run)]) == 0
    wins = sum(t["verdict"] == "win" for t in checkup["tasks"] if t["suite"] == "heldout")
    assert f"held-out {wins}/" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gives_one_line_and_exit_code_2(run, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    cases = [
        (["lineage", str(tmp_path / "missing")], "no such run directory"),
        (["export", str(tmp_path / "missing"), "-o", str(tmp_path / "x.py")], "no such run directory or genome file"),
        (["lineage", str(run), "--id", "99999"], "no individual #99999"),
        (["export", str(run), "--id", "99999", "-o", str(tmp_path / "x.py")], "no individual #99999"),
        (["export", str(run), "--rank", "50", "-o", str(tmp_path / "x.py")], "rank 50 is out of range"),
        (["lineage", str(empty)], "no completed generation"),
        (["export", str(empty), "-o", str(tmp_path / "x.py")], "no completed generation"),
        (["report", str(empty)], "no completed generation"),
        (["export", str(run), "-o", str(tmp_path / "no" / "dir" / "x.py")], "cannot write"),
        (["lineage", str(run), "--format", "png"], "give -o FILE"),
        (["lineage", str(run), "--format", "png", "-o", str(tmp_path / "no" / "x.png")], "cannot write"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_try_and_eval_read_a_run_and_run_id_like_every_other_command(run, capsys):
    ident = champion(run)["id"]
    for ref in (str(run), f"{run}#{ident}"):
        assert main(["try", ref, "--steps", "5", "--against", "adam"]) == 0, ref
        out = capsys.readouterr().out
        assert f"{ident}" in out.splitlines()[0] and "adam" in out, out
    assert main(["eval", f"{run}#{ident}", "--budget", "9", "--seeds", "0", "--task", "nqm"]) == 0
    assert main(["try", str(run / "missing"), "--steps", "5"]) == 2
