"""``evolveopt report RUN``: a markdown report of a run with its pictures.

Writes ``RUN/report/report.md``, ``fitness.png`` (best and median fitness per generation) and
``lineage.png`` (the champion's ancestry), with the config, the champion's equations and its
scores next to the seeded baselines of generation 0, and ``checkup.json``: the champion against
tuned AdamW on fresh seeds of the search tasks and on the held-out suite (``benchmark/checkup.py``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from evolveopt.genome.equations import render_equations
from evolveopt.genome.schema import parse_genome
from evolveopt.lineage import Lineage, draw, lineage_summary
from evolveopt.config import FitnessConfig, to_plain
from evolveopt.run_directory import RunDir, dumps, output_folder
from evolveopt.finished_runs import read_individuals, run_name, select_individual
from evolveopt.extras import optional


def plot_fitness(rows: list[dict], path: Path) -> Path:
    matplotlib = optional("matplotlib", "plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generations = [r["generation"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(generations, [r.get("max") for r in rows], label="best this generation (rung reached)")
    ax.plot(generations, [r.get("median") for r in rows], label="median this generation")
    best = [r.get("best") for r in rows]
    if any(b is not None for b in best):
        ax.plot(generations, [float("nan") if b is None else b for b in best], "k--", label="best so far, full budget")
    ax.axhline(0.0, color="#888", lw=0.8)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness vs tuned Adam")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _baseline_table(path: str | Path, run: RunDir, config: dict, champion: dict, genome) -> list[str]:
    """Champion and seed genomes scored at the full budget, as markdown table rows."""
    from evolveopt.evaluation.cache import ResultCache
    from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings

    fit = config["fitness"]
    scorer = FitnessScorer(FitnessSettings(tasks=list(fit["tasks"]), budget=fit["budget"], seeds=list(fit["seeds"]),
                                           rungs=1, device=config.get("device", "cpu"),
                                           objective=fit.get("objective", "train_loss"),
                                           lr_sweep=tuple(fit.get("lr_sweep", [1.0])),
                                           lr_aggregate=fit.get("lr_aggregate", FitnessConfig.lr_aggregate)),
                           cache=ResultCache(run.file("cache.sqlite")))
    seeds = sorted((ind for ind in read_individuals(path).values() if "seed" in ind.get("operators", [])),
                   key=lambda ind: ind["id"])
    labels = [f"**champion #{champion['id']}**"] + [f"{ind['details'].get('seed')} (seed)" for ind in seeds]
    genomes = [genome] + [parse_genome(ind["genome"]) for ind in seeds]
    scores = scorer.score(genomes)
    tasks = list(scores[0].task_scores)
    rows = ["| genome | fitness | " + " | ".join(tasks) + " |", "|---|---:|" + "---:|" * len(tasks)]
    for label, score in sorted(zip(labels, scores), key=lambda item: -item[1].fitness):
        cells = " | ".join(f"{score.task_scores[t]:+.3f}" for t in tasks)
        rows.append(f"| {label} | {score.fitness:+.4f} | {cells} |")
    return rows


def _checkup_section(run: RunDir, config: dict, genome, out: Path, seeds: int, budget: int | None) -> list[str]:
    """The champion against tuned AdamW on fresh seeds and the held-out suite (``benchmark/checkup.py``)."""
    from evolveopt.benchmark.checkup import CheckupSettings, markdown_rows, run_checkup, summary_line
    from evolveopt.evaluation.cache import ResultCache

    if seeds <= 0:
        return ["Skipped (`--checkup-seeds 0`)."]
    fit = config["fitness"]
    budget = fit["budget"] if budget is None else budget
    settings = CheckupSettings(seeds=seeds, device=config.get("device", "cpu"))
    checkup = run_checkup(genome, list(fit["tasks"]), budget, settings,
                          cache=ResultCache(run.file("cache.sqlite")))
    (out / "checkup.json").write_text(dumps(checkup) + "\n")
    return [f"The champion and AdamW, each tuned with the same {settings.trials} quasi-random (lr, weight decay) "
            f"trials, then trained from {seeds} fresh seeds at {budget} steps. Wins/ties/losses against "
            f"AdamW (a win: the 95% interval of the log-loss difference is below 0): **{summary_line(checkup)}**.",
            "", *markdown_rows(checkup)]


def write_report(path: str | Path, checkup_seeds: int = 5, checkup_budget: int | None = None) -> Path:
    """Write ``RUN/report/`` (made if missing, removed again if the report fails) and return its report.md.
    The checkup trains ``checkup_budget`` steps per run (default: the run's fitness budget)."""
    run = RunDir(path)
    config = to_plain(run.read_config())
    rows = run.read_lines("generations.jsonl")
    champion = select_individual(path)
    lineage = Lineage.from_run(path)
    genome = parse_genome(champion["genome"], source=f"{path}#{champion['id']}")
    with output_folder(run.path / "report", "the report folder") as out:
        plot_fitness(rows, out / "fitness.png")
        draw(lineage, champion["id"], out / "lineage.png", title=f"ancestry of #{champion['id']}")
        table = _baseline_table(path, run, config, champion, genome)
        checkup = _checkup_section(run, config, genome, out, checkup_seeds, checkup_budget)
        (out / "report.md").write_text(_markdown(path, rows, config, champion, genome, lineage, table, checkup),
                                       encoding="utf-8")
    return out / "report.md"


def _markdown(path: str | Path, rows: list[dict], config: dict, champion: dict, genome, lineage: Lineage,
              table: list[str], checkup: list[str]) -> str:
    summary = lineage_summary(lineage, champion["id"])
    return "\n".join([
        f"# Run report: {run_name(path)}", "",
        f"{len(rows)} generation(s) of population {config['search']['population']}, "
        f"budget {config['fitness']['budget']} steps, seeds {config['fitness']['seeds']}, "
        f"tasks {', '.join(t['name'] for t in config['fitness']['tasks'])}.", "",
        "## Fitness", "", "![fitness over generations](fitness.png)", "",
        f"## Champion #{champion['id']} (generation {champion['generation']})", "",
        "```", *render_equations(genome), "```", "",
        "Genes: " + ", ".join(f"`{k}` = {v:g}" for k, v in genome.genes.items()), "",
        "## Scores against the seeded baselines", "",
        "Every seed genome of generation 0 scored at the full budget on the search tasks (the run's cache "
        "answers what the run already trained). Fitness is relative to Adam tuned per task: 0 = as good, "
        "> 0 = better (see docs/fitness.md).", "", *table, "",
        "## Does it generalize?", "", *checkup, "",
        "## Lineage", "", "![champion ancestry](lineage.png)", "",
        f"{summary['ancestors']} ancestors back to generation {summary['first_generation']}; operators along "
        "the way: " + ", ".join(f"{k} ×{v}" for k, v in sorted(summary['operators'].items())) + ".", "",
        "## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", "",
    ])
