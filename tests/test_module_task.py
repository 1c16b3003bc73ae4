"""A user's nn.Module as a population task: each member trains exactly like the module trained alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evolveopt
from evolveopt.evaluation.runner import train_population
from evolveopt.tasks.base import TaskError, batch_indices, epoch_orders
from evolveopt.tasks.module import ModuleTask

STEPS, BATCH, SEEDS = 50, 8, [3, 11, 4]


def _mlp(seed):
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _cnn(norm):
    def factory(seed):  # no conv bias before a norm: it gets no gradient, and Adam would amplify rounding noise
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), norm(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    return factory


class TinyTransformer(nn.Module):
    """A 1-layer causal transformer LM over a 12-symbol vocabulary (the shape of the GPT example)."""

    def __init__(self, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(12, 16)
        self.position = nn.Parameter(torch.randn(8, 16) * 0.02)
        # bias=False: attention's key bias gets no gradient (softmax ignores a shift), and Adam would
        # amplify its rounding noise, member and lone run alike, into different values
        self.block = nn.TransformerEncoderLayer(16, 2, 32, dropout=dropout, batch_first=True, bias=False)
        self.head = nn.Linear(16, 12)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(8), persistent=False)

    def forward(self, ids):
        h = self.embed(ids) + self.position
        return self.head(self.block(h, src_mask=self.mask, is_causal=True))


def _lm_loss(logits, targets):
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _data(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "vector":
        return torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    if kind == "image":
        return torch.randn(40, 1, 6, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    ids = torch.randint(0, 12, (40, 9), generator=g)
    return ids[:, :-1], ids[:, 1:]


CASES = {
    "mlp": (_mlp, "vector", nn.functional.cross_entropy),
    "cnn_groupnorm": (_cnn(lambda: nn.GroupNorm(2, 4)), "image", nn.functional.cross_entropy),
    "cnn_batchnorm": (_cnn(lambda: nn.BatchNorm2d(4)), "image", nn.functional.cross_entropy),
    "transformer": (lambda seed: TinyTransformer(0.0), "tokens", _lm_loss),
    "transformer_dropout": (lambda seed: TinyTransformer(0.1), "tokens", _lm_loss),
}


def _task(case):
    factory, kind, loss = CASES[case]
    return ModuleTask(case, factory, _data(kind), loss, batch_size=BATCH, heldout=_data(kind))


def _alone(task, genome, seed):
    """What a user writes: seed, build the model, train it with the compiled genome on its data order."""
    torch.manual_seed(seed)
    model = task.factory(seed).train()
    optimizer = evolveopt.build_optimizer(genome, model.parameters(), total_steps=STEPS)
    order = epoch_orders([seed], len(task.data[0]), "cpu")
    x, y = task.data
    for step in range(1, STEPS + 1):
        index = batch_indices(order, step, BATCH)[0]
        optimizer.zero_grad()
        task.loss_fn(model(x[index]), y[index]).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_member_trains_exactly_like_the_module_alone(case):
    task = _task(case)
    genomes = [evolveopt.load_genome(n) for n in ("adam", "adam", "lion")]
    run, _ = train_population(task, genomes, SEEDS, STEPS)
    assert run.random == case.endswith("dropout")  # the probe found the random layers, and only those
    _assert_members_trained_alone(task, run, genomes)


def test_each_member_of_the_built_in_gpt_trains_exactly_like_the_gpt_alone():
    from evolveopt.tasks import make_task

    task = make_task({"name": "gpt", "layers": 2, "width": 16, "context": 16, "batch_size": BATCH,
                      "train_bytes": 8192, "heldout_bytes": 1024})
    genomes = [evolveopt.load_genome(n) for n in ("adam", "adam", "lion")]
    run, _ = train_population(task, genomes, SEEDS, STEPS)
    assert run.random is False
    _assert_members_trained_alone(task, run, genomes)
    assert set(run.heldout()) == {"loss", "bits_per_byte"}


def _assert_members_trained_alone(task, run, genomes):
    for i, (genome, seed) in enumerate(zip(genomes, SEEDS)):
        alone = _alone(task, genome, seed)
        for name, tensor in dict(alone.named_parameters()).items():
            torch.testing.assert_close(run.params[run.names.index(name)][i].detach(), tensor.detach(),
                                       rtol=0, atol=1e-5, msg=lambda m, n=name: f"member {i}, {n}: {m}")
        for name, buffer in dict(alone.named_buffers()).items():
            assert torch.allclose(run.buffers[name][i].float(), buffer.float(), atol=1e-5), (i, name)
    heldout = run.heldout()
    assert heldout["loss"].shape == (3,) and torch.isfinite(heldout["loss"]).all()


def test_members_differ_by_seed_and_dropout_masks_differ_by_member():
    task = _task("transformer_dropout")
    run = task.start([1, 1, 2])
    losses = run.loss(1)
    assert losses[0] == losses[1] and losses[0] != losses[2]  # same seed: same init, data and masks


@pytest.mark.parametrize("change, problem", [
    (dict(model=lambda seed: 1 / 0), "the model factory raised ZeroDivisionError"),
    (dict(model=lambda seed: nn.ReLU()), "the model has no parameters"),
    (dict(model=lambda seed: nn.Linear(6, 3 + seed % 2)), "differ in their parameter shapes"),
    (dict(loss=lambda out, y: (out - 0).pow(2).mean(1)), "one scalar per member, got"),
    (dict(batch_size=41), "batch_size 41 must be an integer from 1 to the 40"),
    (dict(data=(torch.zeros(3, 6), torch.zeros(4))), "data must be a pair"),
])
def test_bad_tasks_fail_with_one_line_naming_the_task(change, problem):
    options = dict(name="mine", model=_mlp, data=_data("vector"), loss=nn.functional.cross_entropy, batch_size=8)
    options.update(change)
    with pytest.raises(TaskError, match=rf"^task 'mine': .*{problem}"):
        ModuleTask(**options).start([0, 1]).loss(1)


# ----------------------------------------------------------------------------- plug-ins

USER_MODULE = '''
import torch
from torch import nn
from evolveopt.tasks.module import ModuleTask

def regression(width=8, version="1"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g)
    return ModuleTask("regression", lambda seed: nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 1)),
                      (x, y), nn.functional.mse_loss, batch_size=16, heldout=(x[:16], y[:16]), version=version)

def broken():
    raise RuntimeError("no data here")
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A module the user put on the path, and an installed distribution declaring it as an entry point."""
    (tmp_path / "my_tasks.py").write_text(USER_MODULE)
    info = tmp_path / "my_tasks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-tasks\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[evolveopt.tasks]\nmy_regression = my_tasks:regression\n"
                                           "my_broken = my_tasks:broken\nmy_missing = no_such_module:task\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_task_object_trains_through_evaluate(user_package):
    import my_tasks

    from evolveopt.evaluation import ResultCache

    task = my_tasks.regression()
    result = evolveopt.evaluate(["adam", "lion"], [task], budget=20, seeds=[0, 1], cache=ResultCache())
    assert result.task_labels == ["regression"] and result.tasks[0]["task_version"] == "1"
    assert all(r.final_loss < r.initial_loss and "loss" in r.heldout for per_genome in result.results for r in per_genome[0])


@pytest.mark.parametrize("spec", [
    {"name": "registered", "width": 6},  # evolveopt.tasks.register
    {"name": "my_regression", "width": 6},  # an entry point of an installed package
    {"name": "my_tasks:regression", "width": 6},  # an import path
])
def test_a_user_task_is_found_each_way_with_its_options(user_package, spec):
    import my_tasks

    from evolveopt.tasks import make_task, register

    register("registered", my_tasks.regression)
    task = make_task(spec)
    assert task.spec == {**spec, "task_version": "1"} and task.param_count() == 4 * 6 + 6 + 6 + 1
    assert make_task(task.spec).spec == task.spec  # a worker rebuilds it from its spec


@pytest.mark.parametrize("name, problem", [
    ("my_broken", r"task 'my_broken': its factory raised RuntimeError: no data here"),
    ("my_missing", r"task 'my_missing': loading its entry point no_such_module:task failed: ModuleNotFoundError"),
    ("my_tasks:nothing", r"task 'my_tasks:nothing': loading its import path failed: AttributeError"),
    ("../my_tasks.py:regression", r"unknown task '../my_tasks.py:regression'"),  # a file path is never run
])
def test_user_tasks_that_do_not_load_fail_with_one_line(user_package, name, problem):
    from evolveopt.tasks import make_task

    with pytest.raises(TaskError, match=problem):
        make_task(name)


def test_the_command_line_trains_a_user_task_by_import_path(user_package, capsys):
    from evolveopt.cli import main, parse_task_arg

    assert parse_task_arg("my_tasks:regression:width=6") == {"name": "my_tasks:regression", "width": 6}
    assert parse_task_arg("digits_mlp:hidden=16") == {"name": "digits_mlp", "hidden": 16}
    assert main(["eval", "adam", "lion", "--task", "my_tasks:regression:width=6", "--budget", "20",
                 "--seeds", "0", "--cache", str(user_package / "cache.sqlite")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-1] == "regression" and out.splitlines()[2].startswith("lion")


def test_a_run_whose_task_no_longer_loads_stops_with_one_line_and_keeps_its_records(user_package, tmp_path,
                                                                                      monkeypatch, capsys):
    import sys

    import yaml

    from evolveopt.cli import main

    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({
        "name": "mine", "seed": 0,
        "search": {"population": 4, "generations": 2, "elites": 1, "tournament": 2, "seed_genomes": ["adam", "lion"],
                   "seed_variants": 0, "hall_of_fame": 2},
        "fitness": {"tasks": [{"name": "my_tasks:regression", "width": 4}], "budget": 12, "seeds": [0]}}))
    run = tmp_path / "run"
    assert main(["evolve", str(config), "--out", str(run)]) == 0
    records = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    monkeypatch.delitem(sys.modules, "my_tasks")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(user_package)])
    capsys.readouterr()
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task 'my_tasks:regression': loading its import path failed: ModuleNotFoundError" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == records


def test_activation_memory_is_measured_so_populations_are_sized_by_it():
    from evolveopt.evaluation.sizing import member_bytes

    small, large = (ModuleTask("t", lambda seed: TinyTransformer(0.0), _data("tokens"), _lm_loss, batch_size=b)
                    for b in (4, 16))
    assert 0 < small.activation_bytes() < large.activation_bytes()
    assert member_bytes(large, [evolveopt.load_genome("adam")]) > large.activation_bytes() + 4 * large.param_count()


def test_the_cache_key_of_a_module_task_follows_its_data():
    from evolveopt.evaluation.cache import result_key

    x, y = _data("vector")
    first, same, other = (ModuleTask("t", _mlp, (a, y), nn.functional.cross_entropy, batch_size=8)
                          for a in (x, x.clone(), x + 1))
    keys = [result_key("h", t, 10, 0) for t in (first, same, other)]
    assert keys[0] == keys[1] != keys[2]


def test_benchmark_compares_optimizers_on_a_user_task(user_package, tmp_path):
    import json

    from evolveopt.cli import main

    out = tmp_path / "bench"
    assert main(["benchmark", "lion", "--task", "my_tasks:regression:width=4", "--trials", "2", "--seeds", "2",
                 "--budget", "20", "--baselines", "none", "--out", str(out)]) == 0
    report = json.loads((out / "benchmark.json").read_text())
    assert [t["task"] for t in report["tasks"]] == ["regression"]
    assert set(report["tasks"][0]["optimizers"]) == {"adamw", "lion"}


@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
def test_the_benchmarks_char_lm_module_tasks_train(attention):
    from evolveopt.measure import module_tasks

    task = module_tasks.char_lm(attention)
    run, _ = train_population(task, [evolveopt.load_genome("adam")] * 2, [0, 1], 3)
    assert run.params[0].shape[0] == 2 and task.param_count() == sum(p[0].numel() for p in run.params)


def test_heldout_outputs_in_member_chunks_give_the_same_metrics(monkeypatch):
    import evolveopt.tasks.module as module

    run = _task("transformer").start([3, 11, 4, 5])
    whole = run.heldout()
    monkeypatch.setattr(module, "HELDOUT_OUTPUT_BYTES", 1)  # one member at a time
    chunked = run.heldout()
    assert whole.keys() == chunked.keys() and all(torch.equal(whole[k], chunked[k]) for k in whole)


def test_the_gpt_example_is_a_plug_in_over_the_built_in_model_and_text(monkeypatch):
    from pathlib import Path

    from evolveopt.tasks import gpt

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    monkeypatch.delitem(__import__("sys").modules, "evolveopt_examples.gpt", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "evolveopt_examples", raising=False)
    from evolveopt_examples.gpt import gpt_stdlib

    task = gpt_stdlib(layers=1, width=16, context=16, train_bytes=4096, heldout_bytes=1024)
    assert type(task.model(0)[0]) is gpt.GPT and task.version.startswith("2-")
    assert torch.equal(task.data[0], gpt.windows(gpt.stdlib_text()[0][:4096], 16)[0])
    run, _ = train_population(task, [evolveopt.load_genome("adam")] * 2, [0, 1], 3)
    assert set(run.heldout()) == {"loss", "bits_per_byte"}
