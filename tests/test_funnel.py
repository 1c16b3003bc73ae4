"""Funnel selection (fitness.funnel, evaluation/funnel.py): candidates climb stages of larger tasks
before they enter the hall of fame. Tiny suites: digits_mlp of width 16/32, nqm of 20/60 coordinates."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings, strategies as st

from evolveopt.cli import main
from evolveopt.config import ConfigError, load_config
from evolveopt.evaluation.cache import ResultCache
from evolveopt.evaluation.funnel import Funnel, FunnelStage
from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings
from evolveopt.evolution import resume_run, start_run
from evolveopt.genome import load_genome
from evolveopt.search.algorithm import hall_of_fame
from evolveopt.search.individual import Individual, fame_key
from evolveopt.extras import optional
from test_evolve import run_files, tiny_config

tools = optional("deap.tools", "search")

STAGES = [{"tasks": [{"name": "digits_mlp", "hidden": 48}, {"name": "nqm", "dim": 60}], "top": 3, "budget": 36},
          {"tasks": [{"name": "digits_mlp", "hidden": 64, "depth": 2}], "top": 1}]
FUNNEL = {"fitness.funnel": STAGES, "fitness.tasks": [{"name": "digits_mlp", "hidden": 16}, {"name": "nqm", "dim": 20}]}


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_funnel_scores_the_top_candidates_on_each_stage_as_its_own_fitness_would():
    """Stage 1 takes the top 3 by search fitness, stage 2 the best of those by stage-1 fitness; each
    stage's fitness is the fitness FitnessScorer gives on that stage's tasks and budget alone."""
    genomes = [load_genome(name) for name in ("adam", "sgd", "lion", "adabelief", "momentum")]
    search_fitness = [0.1, -0.3, 0.4, 0.1, 0.2]  # ranking 2, 4, then 0 before 3 (a tie: the earlier first)
    settings = FitnessSettings(tasks=[{"name": "nqm", "dim": 20}], budget=27, seeds=[0], rungs=3)
    funnel = Funnel([FunnelStage.from_config(s) for s in STAGES], settings, ResultCache())
    climbed = funnel.climb(genomes, search_fitness)
    assert [i for i in range(5) if climbed[i]] == [0, 2, 4]
    entered = [0, 2, 4]
    alone = FitnessScorer(FitnessSettings(tasks=STAGES[0]["tasks"], budget=36, seeds=[0], rungs=1), ResultCache())
    assert [climbed[i][0].to_json() for i in entered] == [f.to_json() for f in alone.score([genomes[i] for i in entered])]
    best = max(entered, key=lambda i: climbed[i][0].fitness)
    assert [i for i in range(5) if len(climbed[i]) == 2] == [best]
    last = FitnessScorer(FitnessSettings(tasks=STAGES[1]["tasks"], budget=27, seeds=[0], rungs=1), ResultCache())
    assert climbed[best][1].to_json() == last.score([genomes[best]])[0].to_json()  # the search budget by default


def test_a_run_with_a_funnel_ranks_its_hall_of_fame_by_the_stages_climbed(tmp_path):
    run = tmp_path / "run"
    start_run(load_config(tiny_config(tmp_path, **FUNNEL)), run, progress=False)
    records = lines(run / "generations.jsonl")
    fame = json.loads((run / "hall_of_fame.json").read_text())
    assert all(r["funnel_entrants"][0] >= r["funnel_entrants"][1] >= 1 for r in records)
    keys = [fame_key(ind["fitness"][0], ind["fitness"][1], ind["result"].get("funnel", ())) for ind in fame]
    assert keys == sorted(keys, reverse=True) and len(fame[0]["result"]["funnel"]) == 2
    assert [s["budget"] for s in fame[0]["result"]["funnel"]] == [36, 27]
    for generation in range(3):  # the entrants of each generation: its new last-rung genomes, best first
        new = {r["id"] for r in lines(run / "lineage.jsonl") if r["generation"] == generation}
        population = json.loads((run / f"population/gen_{generation:04d}.json").read_text())["individuals"]
        last = sorted((ind for ind in population if ind["id"] in new and ind["fitness"][0] == 2),
                      key=lambda ind: -ind["fitness"][1])
        assert [ind["id"] for ind in last if "funnel" in ind["result"]] == [ind["id"] for ind in last[:3]]
    assert main(["export", str(run), "-o", str(tmp_path / "champion.py")]) == 0
    assert main(["export", str(run), "-o", str(tmp_path / "champion.yaml")]) == 0
    assert "# funnel (stage: fitness): {1: " in (tmp_path / "champion.yaml").read_text()  # provenance


def test_a_funnel_run_resumed_from_its_previous_checkpoint_equals_an_uninterrupted_one(tmp_path):
    config = load_config(tiny_config(tmp_path, **FUNNEL))
    start_run(config, tmp_path / "whole", progress=False)
    run = tmp_path / "run"
    start_run(config, run, progress=False)
    (run / "checkpoint.json").write_text("{}")  # damaged: the resume redoes the last generation and its funnel
    resume_run(run, progress=False)
    assert run_files(run) == run_files(tmp_path / "whole")


def test_a_steady_state_run_sends_each_epochs_best_through_the_funnel(tmp_path):
    run = tmp_path / "run"
    start_run(load_config(tiny_config(tmp_path, **FUNNEL, **{"search.mode": "steady_state"})), run, progress=False)
    records = lines(run / "generations.jsonl")
    assert [r["funnel_entrants"] for r in records] == [[3, 1]] * 3
    assert len(json.loads((run / "hall_of_fame.json").read_text())[0]["result"]["funnel"]) == 2


@pytest.mark.parametrize("funnel, message", [
    ([{"tasks": ["nqm"]}], r"fitness\.funnel\[0\]\.top: missing"),
    ([{"tasks": ["nqm"], "top": 0}], r"fitness\.funnel\[0\]\.top: 0 is out of range"),
    ([{"tasks": [], "top": 2}], r"fitness\.funnel\[0\]\.tasks: expected a non-empty list"),
    ([{"tasks": ["nqm"], "top": 2, "width": 3}], r"fitness\.funnel\[0\]\.width: unknown key"),
    ([{"tasks": ["nqm"], "top": 2, "budget": -1}], r"fitness\.funnel\[0\]\.budget: -1 is out of range"),
    ([{"tasks": ["nqm"], "top": 2}, {"tasks": [{"name": "nqm", "dimm": 3}], "top": 1}],
     r"fitness\.funnel\[1\]\.tasks\[0\]: .*dimm"),
    ([{"tasks": ["nqm"], "top": 2}, {"tasks": ["nqm"], "top": 3}], r"fitness\.funnel\[1\]\.top: 3 exceeds"),
    (["nqm"], r"fitness\.funnel\[0\]: expected a mapping"),
])
def test_a_bad_funnel_is_one_line_naming_the_stage_and_field(tmp_path, capsys, funnel, message):
    path = tiny_config(tmp_path, **{"fitness.funnel": funnel})
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    assert main(["evolve", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and not (tmp_path / "run").exists()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.5])), min_size=1, max_size=30),
       st.integers(1, 6))
def test_without_a_funnel_the_hall_of_fame_is_deaps(values, size):
    """The funnel's hall of fame orders by Individual.fame; without funnel results it keeps what DEAP's
    keeps, in DEAP's order, ties included."""
    rng = random.Random(len(values))
    names = ["adam", "sgd", "lion", "adabelief"]
    people = []
    for i, value in enumerate(values):
        ind = Individual(i, load_genome(rng.choice(names)).with_genes(lr=1e-3 * (1 + i % 7)), 0)
        ind.fitness.values = (float(value[0]), value[1])
        people.append(ind)
    ours, theirs = hall_of_fame(size), tools.HallOfFame(size, similar=lambda a, b: a.hash == b.hash)
    for start in range(0, len(people), 5):
        ours.update(people[start:start + 5])
        theirs.update(people[start:start + 5])
    assert [ind.id for ind in ours] == [ind.id for ind in theirs]


def test_bench_transfer_orders_the_same_genomes_by_search_fitness_and_by_the_funnel(monkeypatch):
    from evolveopt.measure import fitness_transfer

    genomes = {name: load_genome(name) for name in ("adam", "sgd", "lion", "adabelief", "momentum", "nadam")}
    monkeypatch.setattr(fitness_transfer, "candidate_genomes", lambda random_count: genomes)
    monkeypatch.setattr("evolveopt.tasks.SEARCH_SUITE", [{"name": "nqm", "dim": 20}])
    monkeypatch.setattr("evolveopt.tasks.HELDOUT_SUITE", [{"name": "digits_mlp", "hidden": 24}])
    report = fitness_transfer.run_funnel_transfer(STAGES, budget=18)
    assert report["entrants"] == [3, 1] and report["top"] == 1
    assert [(r["selection"], r["heldout_score"]) for r in report["rows"]] == [
        (name, target) for name in ("search fitness", "funnel") for target in ("train_loss", "heldout_loss")]
    search, funnel = report["search"]["search fitness"], report["search"]["funnel"]
    top3 = sorted(range(6), key=lambda i: -search[i])[:3]
    assert set(sorted(range(6), key=lambda i: -funnel[i])[:3]) == set(top3)  # only the entrants are re-ordered
    assert sorted(range(6), key=lambda i: -funnel[i])[3:] == sorted(range(6), key=lambda i: -search[i])[3:]
    assert 0 < report["funnel_member_steps"]
    for by in report["picks"].values():
        assert all(1 <= v["champion_rank"] <= 6 and v["top_mean_rank"] == v["champion_rank"] for v in by.values())
    table = fitness_transfer.format_transfer_table(report)
    assert "| funnel | heldout_loss |" in table and "stage 1: top 3 (entered 3)" in table and "x the search's" in table


def test_the_transfer_experiment_climbs_the_stages_the_benchmark_measures():
    from evolveopt.tasks import FUNNEL_STAGES, HELDOUT_SUITE

    funnel = load_config("experiments/transfer.yaml").fitness.funnel
    assert [s["tasks"] for s in funnel] == [s["tasks"] for s in FUNNEL_STAGES]
    assert not any(task in HELDOUT_SUITE for stage in FUNNEL_STAGES for task in stage["tasks"])
