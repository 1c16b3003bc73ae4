"""The batched evaluator: stacked == sequential, divergence isolation, fitness, cache, bad input."""

from __future__ import annotations

import math
import os

import pytest
import torch

import evolveopt
from evolveopt.evaluation import ResultCache, evaluate
from evolveopt.evaluation.results import MemberResult
from evolveopt.evaluation.halving import halving_cost, rung_budgets, successive_halving
from evolveopt.evaluation.runner import train_population
from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings
from evolveopt.genome.schema import parse_genome
from evolveopt.tasks import TaskError, make_task

ADAM = evolveopt.load_genome("adam")


def adam_variants():
    return [ADAM.with_genes(lr=lr, beta1=b1, beta2=b2)
            for lr, b1, b2 in [(1e-3, 0.9, 0.999), (3e-3, 0.8, 0.99), (1e-2, 0.95, 0.999), (2e-3, 0.5, 0.9)]]


def train_alone(task, genome, seed, steps):
    run = task.start([seed])
    optimizer = evolveopt.build_optimizer(genome, run.params, total_steps=steps)
    for step in range(1, steps + 1):
        def closure():
            optimizer.zero_grad()
            loss = run.loss(step)[0]
            loss.backward()
            return loss

        optimizer.step(closure)
    optimizer.eval()  # the evaluation point (schedule-free averaging), where the evaluator leaves its members
    return [p.detach()[0] for p in run.params]


# schedulefree_adamw at ε = 1e-6: with its default 1e-8 and no momentum, a ReLU unit whose pre-activation
# crosses 0 by a rounding difference (stacked vs lone GEMMs) gets a noise-level gradient normalized to a
# full step, and the float32 runs part by 1e-3 within 10 steps; the rule itself is pinned in float64 by
# tests/test_population.py.
@pytest.mark.parametrize("genome_names", [None, ("ga2025",), ("adan",), ("lion",), ("schedulefree_adamw", 1e-6),
                                          ("schedulefree_sgd",), ("cautious_adamw",), ("cautious_lion",)])
def test_a_member_trains_as_it_would_alone(genome_names):
    """...and ends where the lone optimizer's eval() puts it, so held-out metrics are measured at x."""
    task = make_task("digits_mlp")
    base = adam_variants() if genome_names is None else [evolveopt.load_genome(genome_names[0])] * 2
    if genome_names and len(genome_names) > 1:
        base = [g.with_genes(eps=genome_names[1]) for g in base]
    genomes = [g if genome_names is None else g.with_genes(lr=g.genes["lr"] * f) for g, f in zip(base, (1.0, 2.0))]
    genomes = [evolveopt.genome.canonical_form(g) for g in genomes]
    seeds = [5, 9, 13, 21][: len(genomes)]
    run, _ = train_population(task, genomes, seeds, budget=50)
    for i, (genome, seed) in enumerate(zip(genomes, seeds)):
        alone = train_alone(task, genome, seed, 50)
        for together, single in zip(run.params, alone):
            assert (together.detach()[i] - single).abs().max().item() <= 1e-5


def test_a_diverging_member_is_frozen_and_the_others_stay_bit_identical():
    task = make_task("digits_mlp")
    healthy = adam_variants()[:3]
    wild = ADAM.with_genes(lr=50.0)
    with_wild, tracker = train_population(task, healthy + [wild], [1, 2, 3, 4], budget=60)
    without, _ = train_population(task, healthy, [1, 2, 3], budget=60)
    for a, b in zip(with_wild.params, without.params):
        assert torch.equal(a.detach()[:3], b.detach())
    results = tracker.results({})
    assert results[3].diverged and "step" in results[3].reason
    assert not any(r.diverged for r in results[:3])


def test_bad_genomes_get_finite_worst_fitness_with_a_reason():
    nan_at_step_one = ADAM.with_genes(eps=0.0)  # 0/0 on always-zero digit pixels at step 1
    zero_update = parse_genome({"schema_version": 1, "genes": {"lr": 0.0}, "terms": [{}]})
    explodes = evolveopt.load_genome("sgd").with_genes(lr=30.0)
    scorer = FitnessScorer(FitnessSettings(tasks=[{"name": "digits_mlp"}], budget=40, seeds=[0], rungs=1))
    scores = scorer.score([nan_at_step_one, zero_update, explodes, ADAM])
    for bad in scores[:3]:
        assert math.isfinite(bad.fitness) and bad.fitness == -5.0
        assert bad.failures and ("step" in bad.failures[0] or "no progress" in bad.failures[0])
    assert scores[3].fitness > -5.0


def test_tuned_adam_scores_exactly_neutral():
    scorer = FitnessScorer(FitnessSettings(tasks=[{"name": "digits_mlp"}], budget=30, seeds=[0, 1], rungs=1))
    tuned_lr = scorer.baselines(30)[0].lr
    (score,) = scorer.score([ADAM.with_genes(lr=tuned_lr)])
    assert score.fitness == 0.0
    assert set(score.heldout["digits_mlp"]) == {"loss", "accuracy"}


def test_a_repeated_genome_hits_the_cache(tmp_path):
    cache = ResultCache(tmp_path / "cache.sqlite")
    first = evaluate([ADAM, "lion"], ["digits_mlp"], 20, [0, 1], cache=cache)
    assert first.cache_hits == 0 and first.member_steps == 2 * 2 * 20
    reopened = ResultCache(tmp_path / "cache.sqlite")
    again = evaluate([ADAM.with_genes(lr=1.00001e-3), "lion", "adamw"], ["digits_mlp"], 20, [0, 1], cache=reopened)
    assert again.cache_hits == 4 and again.cache_misses == 2 and again.hit_rate == pytest.approx(4 / 6)
    assert again.results[0][0][0] == first.results[0][0][0]


def test_all_structures_of_a_task_train_in_one_unit():
    evaluation = evaluate(adam_variants() + [evolveopt.load_genome("lion")], ["digits_mlp"], 5, [0, 1])
    assert evaluation.units == 1 and evaluation.member_steps == 5 * 2 * 5


def test_empty_genome_list_returns_an_empty_result():
    evaluation = evaluate([], ["digits_mlp"], 10, [0])
    assert evaluation.results == [] and evaluation.member_steps == 0


def test_unknown_task_and_bad_option_name_what_is_allowed():
    with pytest.raises(TaskError, match=r"unknown task 'digitz' \(tasks: .*digits_mlp"):
        evaluate([ADAM], ["digitz"], 10, [0])
    with pytest.raises(TaskError, match=r"option hidden=0 is out of range \[1, 4096\]"):
        make_task({"name": "digits_mlp", "hidden": 0})
    with pytest.raises(TaskError, match=r"unknown option 'width'"):
        make_task({"name": "digits_mlp", "width": 3})


def test_rung_budgets_and_cost():
    assert rung_budgets(900) == [100, 300, 900]
    assert halving_cost(27, 900) == 27 * 100 + 9 * 300 + 3 * 900
    assert halving_cost(27, 900) * 3 <= 27 * 900 * 1.01


def test_successive_halving_promotes_the_best_third():
    calls = []

    def score(candidates, budget):
        calls.append((list(candidates), budget))
        return [c * budget for c in candidates]

    outcomes = successive_halving(list(range(9)), score, key=float, budget=90)
    assert [len(c) for c, _ in calls] == [9, 3, 1]
    assert [o.rung for o in outcomes] == [0] * 6 + [1] * 2 + [2]
    assert outcomes[8].budget == 90 and outcomes[8].scores_by_rung == [80, 240, 720]


def test_the_scorer_reports_units_done_of_total_and_the_rung_in_order():
    from evolveopt.backends import LocalBackend

    tasks = [{"name": "nqm"}, {"name": "digits_mlp", "hidden": 16}]
    labels = [make_task(t).label for t in tasks]
    events = []
    scorer = FitnessScorer(FitnessSettings(tasks=tasks, budget=27, seeds=[0], eta=3, rungs=3, max_members=2),
                           map_units=LocalBackend().map_units, on_progress=events.append)
    scorer.score_with_halving([evolveopt.load_genome(n) for n in ("lion", "sgd", "nesterov", "momentum")])
    expected = []  # per rung: Adam's 9-rate grid on both tasks at once (5 units of 2 each), then the survivors
    for rung, (budget, alive) in enumerate(zip([3, 9, 27], [4, 2, 1])):  # (4, 2, 1) on both tasks
        for step in range(11):  # in-process, longest first: digits_mlp's grid units (the larger model), then nqm's
            digits = min(step, 5)
            expected.append(("baseline", rung, 3, budget, ((labels[0], step - digits, 5), (labels[1], digits, 5))))
        per_task = math.ceil(alive / 2)
        for step in range(2 * per_task + 1):  # in-process: digits_mlp's units, then nqm's
            digits = min(step, per_task)
            expected.append(("genomes", rung, 3, budget, ((labels[0], step - digits, per_task),
                                                          (labels[1], digits, per_task))))
    assert [(e.stage, e.rung, e.rungs, e.budget, tuple(tuple(t) for t in e.tasks)) for e in events] == expected
    assert [e.done for e in events[:11]] == list(range(11)) and {e.total for e in events[:11]} == {10}
    assert [e.finished for e in events[:11]] == [None] + [labels[1]] * 5 + [labels[0]] * 5  # the task of its unit


def test_eval_command_reports_units_per_task_on_a_log(tmp_path, capsys):
    from evolveopt.cli import main

    argv = ["eval", "adam", "lion", "--task", "nqm", "--task", "digits_mlp:hidden=16", "--budget", "10", "--seeds",
            "0", "--no-cache"]
    assert main(argv) == 0
    lines = capsys.readouterr().err.splitlines()
    progress = [line.split(" (t=")[0] for line in lines if line.startswith("[eval]")]
    assert progress == ["[eval] digits_mlp[hidden=16]: Adam lr grid 1/1 units", "[eval] nqm: Adam lr grid 1/1 units",
                        "[eval] digits_mlp[hidden=16]: genomes 1/1 units", "[eval] nqm: genomes 1/1 units"]  # LPT
    assert lines[0].startswith("evaluating 2 genome(s)") and lines[1:5] == [
        line for line in lines if line.startswith("[eval]")]  # between the first line and the table


def test_eval_command_reports_fitness_and_reuses_its_cache(tmp_path, capsys):
    import json

    from evolveopt.cli import main

    argv = ["eval", "adam", "lion", "--task", "digits_mlp:hidden=32", "--budget", "20", "--seeds", "0",
            "--cache", str(tmp_path / "cache.sqlite"), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert [set(f["task_scores"]) for f in first["fitness"]] == [{"digits_mlp[hidden=32]"}] * 2
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["member_steps"] == 0 and again["cache_hits"] == 2
    assert [f["fitness"] for f in again["fitness"]] == [f["fitness"] for f in first["fitness"]]


def test_member_memory_is_known_and_sizes_the_runs():
    from evolveopt.evaluation.sizing import CPU_MEMBERS, default_max_members, member_bytes

    task = make_task("digits_mlp")
    adam, adan = ADAM, evolveopt.load_genome("adan")
    params = 64 * 128 + 128 + 128 * 10 + 10
    assert member_bytes(task, [adam]) >= 4 * params * (3 + 2)
    assert member_bytes(task, [adan]) > member_bytes(task, [adam])  # 4 buffers against 2
    assert default_max_members(task, [adam], "cpu") == CPU_MEMBERS


def _results_in(path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def test_an_exception_in_a_unit_propagates_with_its_traceback_and_is_never_cached(tmp_path, monkeypatch):
    from evolveopt.cli import main
    from evolveopt.compile import rule

    original = rule.Rule.step

    def flaky(self, params, grads, state, ctx):
        if any(term.sign for term in self.genome.terms):
            raise RuntimeError("boom")  # a bug in lion's structure
        return original(self, params, grads, state, ctx)

    monkeypatch.setattr(rule.Rule, "step", flaky)
    with pytest.raises(RuntimeError, match="boom") as info:
        evaluate([ADAM, "lion"], ["digits_mlp"], 10, [0], cache=ResultCache(tmp_path / "run.sqlite"))
    assert any(entry.name == "flaky" for entry in info.traceback)
    assert _results_in(tmp_path / "run.sqlite") == 0
    shared = tmp_path / "user" / "results.sqlite"  # the CLI's user cache
    with pytest.raises(RuntimeError, match="boom"):
        main(["eval", "lion", "--task", "digits_mlp:hidden=16", "--budget", "10", "--seeds", "0",
              "--cache", str(shared)])
    assert not any("error" in json_text for json_text in _values(shared))


def _values(path) -> list[str]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT value FROM results")]


def test_adam_settings_that_diverge_on_any_seed_are_never_the_baseline():
    from evolveopt.errors import EvaluationError
    from evolveopt.evaluation.fitness import tune_adam

    task, seeds = {"name": "digits_mlp", "hidden": 16}, [1, 2, 3]
    # lr 0.4 diverges on seed 2 yet has the lower median (1.86 vs 2.32 of lr 1e-5)
    baseline = tune_adam(task, 30, seeds, ResultCache(), grid=(1e-5, 0.4))
    assert baseline.lr == 1e-5 and all(math.isfinite(v) for v in baseline.losses.values())
    scorer = FitnessScorer(FitnessSettings(tasks=[task], budget=30, seeds=seeds, rungs=1))
    assert math.isfinite(scorer.score([ADAM])[0].fitness)
    with pytest.raises(EvaluationError, match="Adam diverged on some seed .* at every learning rate"):
        tune_adam(task, 30, seeds, ResultCache(), grid=(0.4,))


def test_a_non_finite_fitness_never_reaches_selection():
    from evolveopt.evaluation.fitness import Baseline, score_evaluation

    evaluation = evaluate([ADAM], ["nqm"], 5, [0])
    with pytest.raises(ArithmeticError, match="not finite"):
        score_evaluation(evaluation, [Baseline(evaluation.tasks[0], 5, 1e-3, {0: math.nan})])


def test_try_trains_on_exactly_the_digits_mlp_tasks_data():
    from evolveopt.demo import digits_split
    from evolveopt.tasks import make_task

    run = make_task("digits_mlp").start([0])
    for mine, task in zip(digits_split(), (run.x_train, run.y_train, run.x_test, run.y_test)):
        assert torch.equal(mine, task)


# ----------------------------------------------------------------------------- cache keys


def test_a_result_computed_under_another_torch_is_never_read_back(monkeypatch):
    cache = ResultCache()
    first = evaluate([ADAM], ["nqm"], 5, [0], cache=cache)
    assert evaluate([ADAM], ["nqm"], 5, [0], cache=cache).cache_hits == 1
    monkeypatch.setattr(torch, "__version__", "0.0.1+other")  # only the version string the key reads
    again = evaluate([ADAM], ["nqm"], 5, [0], cache=cache)
    assert again.cache_hits == 0 and again.cache_misses == 1
    assert again.results == first.results


@pytest.mark.parametrize("task_class", ["char_lm", "char_rnn"])
def test_the_result_key_holds_a_digest_of_the_text_a_task_trains_on(task_class):
    import hashlib

    from evolveopt.evaluation.cache import result_key
    from evolveopt.tasks import TASKS

    class OtherText(TASKS[task_class]):
        def text(self) -> str:
            return "the same task over another text, as another Python release might ship it\n" * 40

    shipped, other = TASKS[task_class](), OtherText()
    assert shipped.spec == other.spec
    assert other.data_digest() == hashlib.sha256(other.text().encode("utf-8")).hexdigest()
    assert shipped.data_digest() == hashlib.sha256(shipped.text().encode("utf-8")).hexdigest()
    genome = evolveopt.genome_hash(ADAM)
    assert result_key(genome, shipped, 10, 0) != result_key(genome, other, 10, 0)
    assert result_key(genome, shipped, 10, 0) == result_key(genome, TASKS[task_class](), 10, 0)


def test_an_adam_genome_in_the_working_directory_is_the_baseline_and_is_never_mixed_with_the_bundled_one(
        tmp_path, monkeypatch):
    from evolveopt.evaluation.fitness import tune_adam

    cache = ResultCache()
    bundled = tune_adam({"name": "nqm"}, 10, [0], cache, grid=(1e-2, 1e-1))
    (tmp_path / "genomes").mkdir()
    (tmp_path / "genomes" / "adam.yaml").write_text(
        (evolveopt.genome.io.bundled_genome_dir() / "adam.yaml").read_text().replace("beta2: 0.999", "beta2: 0.9"))
    monkeypatch.chdir(tmp_path)
    assert evolveopt.load_genome("adam") == ADAM.with_genes(beta2=0.9)  # ./genomes comes before the bundled set
    local = tune_adam({"name": "nqm"}, 10, [0], cache, grid=(1e-2, 1e-1))
    assert local.losses != bundled.losses
    grid = evaluate([ADAM.with_genes(beta2=0.9, lr=lr) for lr in (1e-2, 1e-1)], ["nqm"], 10, [0])
    assert local.losses == {0: grid.results[(1e-2, 1e-1).index(local.lr)][0][0].ema_loss}


# ----------------------------------------------------------------------------- a damaged cache file

DAMAGES = {
    "random bytes over the whole file": lambda f, size: f.write(os.urandom(size)),
    "random bytes over some pages": lambda f, size: (f.seek(size // 3), f.write(os.urandom(3 * 4096))),
    "truncated to half": lambda f, size: f.truncate(size // 2),
    "truncated to its header": lambda f, size: f.truncate(100),
}


def filled_cache(path, entries=3000):
    cache = ResultCache(path)
    cache.put_many({f"key {i}": MemberResult(1.0 + i, 2.0, curve=[0.5] * 32) for i in range(entries)})
    cache.put_record("baseline", {"lr": 0.01})
    cache.close()
    return path.stat().st_size


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_file_is_moved_aside_and_an_empty_cache_starts(tmp_path, capsys, damage):
    path = tmp_path / "cache.sqlite"
    for n in (1, 2):  # a second damage goes to the next free name
        size = filled_cache(path)
        assert len(ResultCache(path).get_many([f"key {i}" for i in range(3000)])) == 3000
        with open(path, "r+b") as f:
            DAMAGES[damage](f, size)
        damaged = path.read_bytes()
        cache = ResultCache(path)
        warning = capsys.readouterr().err
        assert warning.count("\n") == 1 and f"warning: {path}: damaged evaluation cache" in warning
        assert f"moved to {path}.corrupt-{n}," in warning
        assert (tmp_path / f"cache.sqlite.corrupt-{n}").read_bytes() == damaged
        assert cache.get_many(["key 0"]) == {} and cache.get_record("baseline") is None
        cache.put_many({"key 0": MemberResult(1.0, 2.0)})
        cache.close()
        assert ResultCache(path).get_many(["key 0"]) == {"key 0": MemberResult(1.0, 2.0)}
        assert capsys.readouterr().err == ""
        path.unlink()


def test_a_cache_that_cannot_be_opened_is_still_one_clear_error(tmp_path):
    from evolveopt.errors import EvolveOptError

    with pytest.raises(EvolveOptError, match=r"not a usable evaluation cache \(unable to open"):
        ResultCache(tmp_path / "no such folder" / "cache.sqlite")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- results do not depend on the unit

COMPOSITION_TASKS = [{"name": "digits_mlp", "hidden": 30}, {"name": "nqm"},
                     {"name": "large_batch", "width": 32, "depth": 1, "batch_size": 1024}]


@pytest.fixture
def two_threads():
    """Two CPU threads: a one-member stack then takes torch's threaded single-GEMM path."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def same_structure_neighbour(genome):
    """Another learning rate, and weight decay where ``genome`` has none (a shared zero gene)."""
    return genome.with_genes(lr=genome.genes["lr"] * 0.7, weight_decay=1e-4)


@pytest.mark.parametrize("task", COMPOSITION_TASKS, ids=lambda t: t["name"])
@pytest.mark.parametrize("name", ["adam", "ga2025", "lion", "prodigy"])
def test_a_members_result_does_not_depend_on_the_unit_it_trains_in(two_threads, task, name):
    from evolveopt.evaluation.runner import run_unit

    genome, other = evolveopt.load_genome(name), evolveopt.load_genome("sgd")
    neighbour = same_structure_neighbour(genome)
    built = make_task(task)
    alone = run_unit(built, [genome], [0], 12).results[0]
    pair = run_unit(built, [genome, neighbour], [0, 0], 12).results[0]
    five = run_unit(built, [other, neighbour, genome, neighbour, genome], [3, 1, 0, 2, 4], 12).results[2]
    assert not alone.diverged
    assert alone == pair == five


def test_the_last_members_of_an_odd_unit_round_as_in_an_even_one(two_threads):
    """MKL's batched GEMM shared an odd number of matrices between 2 threads otherwise than an even
    number, and rounded the held-out [P, 449, 16] @ [P, 16, 10] of the last member differently (seen on
    a 2-thread AMD EPYC without MKL_CBWR); evolveopt sets MKL_CBWR=AUTO,STRICT, which makes it exact."""
    import os

    from evolveopt.evaluation.runner import run_unit

    assert os.environ["MKL_CBWR"] == "AUTO,STRICT"
    task = make_task({"name": "digits_mlp", "hidden": 16})
    genomes = [ADAM.with_genes(lr=1e-3 * (k + 1)) for k in range(18)]
    full = run_unit(task, genomes, list(range(18)), 3).results
    for first in (1, 9):
        assert run_unit(task, genomes[first:], list(range(first, 18)), 3).results == full[first:]


def test_a_cached_result_is_the_bits_training_it_again_in_another_unit_gives(two_threads):
    task = COMPOSITION_TASKS[0]
    cache = ResultCache()
    alone = evaluate([ADAM], [task], 12, [0], cache=cache).results[0][0][0]
    crowd = [ADAM, same_structure_neighbour(ADAM), evolveopt.load_genome("lion")]
    cached = evaluate(crowd, [task], 12, [0], cache=cache)
    afresh = evaluate(crowd, [task], 12, [0], cache=ResultCache())
    assert cached.cache_hits == 1 and afresh.cache_hits == 0
    assert cached.results[0][0][0] == afresh.results[0][0][0] == alone
    assert cached.results == afresh.results


def test_units_are_cut_to_keep_every_worker_busy_and_the_grain_changes_no_result():
    """Issue 14.1: a unit grain that follows the workers, with results bit for bit those of one big unit."""
    import json

    from evolveopt.evaluation.evaluator import plan_units, unit_count

    assert [unit_count(m, 256, u) for m, u in [(20, 1), (20, 4), (5, 4), (3, 8), (1, 8), (600, 1)]] == [1, 4, 2, 1, 1, 3]
    genomes = [evolveopt.load_genome(n) for n in ("adam", "lion", "adan", "sgd", "ga2025")]
    tasks = ["digits_mlp", "nqm"]
    grains = {w: plan_units(genomes, tasks, 12, [0, 1], skip=set(), max_members=256, workers=w) for w in (1, 8)}
    assert [u.members for u in grains[1]] == [10, 10]
    assert [u.members for u in grains[8]] == [3, 3, 2, 2] * 2  # longest first: digits_mlp's, then nqm's
    assert [u.task["name"] for u in grains[8]] == ["digits_mlp"] * 4 + ["nqm"] * 4
    plain = {w: json.dumps([[[r.to_json() for r in s] for s in t] for t in evaluate(
        genomes, tasks, 12, [0, 1], cache=ResultCache(), workers=w).results], sort_keys=True) for w in (1, 8)}
    assert plain[8] == plain[1]


def test_adams_grids_of_several_tasks_tuned_together_choose_what_each_task_chooses_alone():
    from evolveopt.evaluation.fitness import tune_adam, tune_adam_tasks

    tasks, grid = [{"name": "nqm"}, {"name": "digits_mlp", "hidden": 16}], (1e-3, 1e-2, 1e-1)
    calls = []

    def run(*args, **kwargs):
        calls.append([t["name"] for t in args[1]])
        return evaluate(*args, **kwargs)

    cache = ResultCache()
    together = tune_adam_tasks(tasks, 20, [0, 1], cache, run=run, grid=grid)
    alone = [tune_adam(task, 20, [0, 1], ResultCache(), grid=grid) for task in tasks]
    assert calls == [["nqm", "digits_mlp"]]  # one evaluation for both tasks
    assert [(b.lr, b.losses) for b in together] == [(b.lr, b.losses) for b in alone]
    assert tune_adam_tasks(tasks, 20, [0, 1], cache, run=run, grid=grid) == together and len(calls) == 1  # cached


@pytest.mark.parametrize("objective", ["heldout_loss", "combined"])
def test_adam_tuned_for_an_objective_scores_exactly_neutral_under_it(objective):
    settings = FitnessSettings(tasks=[{"name": "digits_mlp"}], budget=30, seeds=[0, 1], rungs=1, objective=objective)
    scorer = FitnessScorer(settings)
    baseline = scorer.baselines(30)[0]
    assert baseline.objective == objective and set(baseline.heldout_losses) == {0, 1}
    (score,) = scorer.score([ADAM.with_genes(lr=baseline.lr)])
    assert score.fitness == 0.0


def test_the_objectives_compare_the_training_loss_the_heldout_loss_or_both():
    from evolveopt.evaluation.fitness import log_ratio

    member = MemberResult(final_loss=0.5, ema_loss=0.5, heldout={"loss": 2.0})
    assert log_ratio(member, 1.0, 1.0, "train_loss") == pytest.approx(math.log(2.0))
    assert log_ratio(member, 1.0, 1.0, "heldout_loss") == pytest.approx(math.log(0.5))  # it memorized: worse
    assert log_ratio(member, 1.0, 1.0, "combined") == pytest.approx(0.0)
    blown = MemberResult(final_loss=0.5, ema_loss=0.5, heldout={"loss": math.inf})
    assert log_ratio(blown, 1.0, 1.0, "train_loss") is not None and log_ratio(blown, 1.0, 1.0, "combined") is None


def test_the_train_loss_objective_keeps_the_baseline_records_of_older_runs():
    from evolveopt.evaluation.cache import digest_key, task_identity
    from evolveopt.evaluation.fitness import ADAM_LR_GRID, baseline_genome, baseline_key
    from evolveopt.genome import genome_hash

    adam, task = baseline_genome(), {"name": "nqm"}
    before = digest_key({"baseline": genome_hash(adam), **task_identity(make_task(task)), "budget": 10,
                         "seeds": [0], "grid": list(ADAM_LR_GRID)})  # the key as it was before objectives
    assert baseline_key(task, 10, [0], ADAM_LR_GRID, adam, "train_loss") == before
    assert baseline_key(task, 10, [0], ADAM_LR_GRID, adam, "heldout_loss") != before


def test_a_heldout_objective_on_a_task_without_heldout_data_is_one_clear_error():
    from evolveopt.errors import EvaluationError
    from evolveopt.evaluation.fitness import objective_value

    with pytest.raises(EvaluationError, match="needs a held-out loss, but this task measures none"):
        objective_value(MemberResult(final_loss=0.5, ema_loss=0.5, heldout={}), "heldout_loss")
    with pytest.raises(EvaluationError, match="fitness objective 'val' is not one of"):
        FitnessScorer(FitnessSettings(tasks=["nqm"], budget=5, seeds=[0], objective="val"))


def test_a_run_recorded_before_objectives_resumes_with_the_training_loss_it_ran_with(tmp_path):
    import yaml

    from evolveopt.config import parse_config, to_plain
    from evolveopt.run_directory import RunDir

    recorded = to_plain(parse_config({}))
    assert recorded["fitness"].pop("objective") == "heldout_loss"  # today's default
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert RunDir(tmp_path).read_config().fitness.objective == "train_loss"
    recorded["fitness"]["objective"] = "combined"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert RunDir(tmp_path).read_config().fitness.objective == "combined"
