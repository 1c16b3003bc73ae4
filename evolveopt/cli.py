"""The ``evolveopt`` command line: a thin shell over library calls.

Errors a user can cause print one line, ``evolveopt: error: ...``, and exit with code 2.
Tables and equations go to stdout; progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Callable, Sequence

from evolveopt.benchmark.baselines import BASELINES, CLASSICS, DEFAULT_BASELINES, FRONTIER
from evolveopt.config import RULES, FitnessConfig
from evolveopt.errors import EvolveOptError

EXIT_USAGE = 2


def _parse_assignments(items: Sequence[str]) -> dict[str, float]:
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise EvolveOptError(f"--set expects gene=value, got '{item}'")
        try:
            values[key] = float(raw)
        except ValueError:
            raise EvolveOptError(f"--set {key}: '{raw}' is not a number") from None
    return values


def cmd_show(args: argparse.Namespace) -> int:
    from evolveopt.genome import canonical_form, dump_genome, genome_hash, structure_key
    from evolveopt.genome.equations import render_genome
    from evolveopt.finished_runs import resolve_genome

    genome, _, provenance = resolve_genome(args.genome)
    if args.canonical:
        genome = canonical_form(genome)
    if args.yaml:
        print(dump_genome(genome), end="")
        return 0
    print(render_genome(genome))
    print(f"hash: {genome_hash(genome)}  structure: {structure_key(genome)}")
    if "run" in provenance:
        print("provenance: " + ", ".join(f"{k} {v}" for k, v in provenance.items() if k != "run"))
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from evolveopt.genome.diff import diff_genomes
    from evolveopt.finished_runs import resolve_genome

    a, b = resolve_genome(args.a)[0], resolve_genome(args.b)[0]
    lines = diff_genomes(a, b, (args.a, args.b))
    print("\n".join(lines) if lines else "same rule (equal canonical forms)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from evolveopt.export import export_text, write_export
    from evolveopt.finished_runs import resolve_genome

    genome, label, provenance = resolve_genome(args.source, args.rank, args.id)
    fmt = args.format or ("yaml" if args.output.endswith((".yaml", ".yml")) else "py")
    path = write_export(export_text(genome, fmt, label, provenance), args.output)
    print(f"wrote {path} ({fmt})", file=sys.stderr)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from evolveopt.lineage import FILE_FORMATS, Lineage, champion_id, render, write
    from evolveopt.finished_runs import run_name

    lineage = Lineage.from_run(args.run_dir)
    ident = args.id if args.id is not None else champion_id(args.run_dir)
    title = f"{run_name(args.run_dir)}: lineage of #{ident}"
    if args.output is None:
        if args.format in FILE_FORMATS:
            raise EvolveOptError(f"lineage --format {args.format} writes a file: give -o FILE")
        sys.stdout.write(render(lineage, ident, args.format, args.depth, title))
    else:
        print(f"wrote {write(lineage, ident, args.format, args.output, args.depth, title)}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evolveopt.run_report import write_report

    print(write_report(args.run_dir, checkup_seeds=args.checkup_seeds, checkup_budget=args.checkup_budget))
    return 0


def cmd_genomes(args: argparse.Namespace) -> int:
    from evolveopt.genome import load_genome, named_genomes

    for name in named_genomes():
        genome = load_genome(name)
        print(f"{name:<12} {genome.description}")
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from evolveopt.demo import format_results, train_digits
    from evolveopt.finished_runs import resolve_genome

    overrides = _parse_assignments(args.set)
    names = [args.genome] + [g for g in args.against if g != args.genome]
    genomes = [resolve_genome(name) for name in names]  # names, files, runs and RUN#ID, checked before training
    results = []
    for name, (genome, label, _) in zip(names, genomes):
        print(f"training {label} for {args.steps} steps on digits ...", file=sys.stderr)
        result = train_digits(genome, steps=args.steps, seed=args.seed, **(overrides if name == args.genome else {}))
        results.append(replace(result, name=label))
    print(format_results(results))
    return 0


def parse_task_arg(text: str) -> dict[str, object]:
    """``name`` or ``name:key=value,key=value`` → a task spec mapping (numbers parsed); the name may be
    an import path ``package.module:factory``."""
    name, _, rest = text.partition(":")
    if rest and "=" not in rest.partition(":")[0]:  # package.module:factory[:key=value,...]
        factory, _, rest = rest.partition(":")
        name = f"{name}:{factory}"
    spec: dict[str, object] = {"name": name}
    for item in filter(None, rest.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise EvolveOptError(f"--task {text}: expected key=value after ':', got '{item}'")
        try:
            spec[key] = int(raw)
        except ValueError:
            try:
                spec[key] = float(raw)
            except ValueError:
                spec[key] = raw
    return spec


def default_cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "evolveopt", "results.sqlite")


def cmd_eval(args: argparse.Namespace) -> int:
    from evolveopt.backends import check_device
    from evolveopt.evaluation import ResultCache
    from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings
    from evolveopt.finished_runs import resolve_genome
    from evolveopt.progress import TaskProgress
    from evolveopt.tasks import HELDOUT_SUITE, SEARCH_SUITE

    check_device(args.device)
    genomes = [resolve_genome(g)[0] for g in args.genomes]  # names, files, runs and RUN#ID
    tasks = [parse_task_arg(t) for t in args.task] if args.task else (
        HELDOUT_SUITE if args.suite == "heldout" else SEARCH_SUITE)
    if args.no_cache:
        cache = ResultCache()
    else:
        from evolveopt.run_directory import make_folder

        make_folder(os.path.dirname(args.cache) or ".", "the cache's folder")
        cache = ResultCache(args.cache)
    print(f"evaluating {len(genomes)} genome(s) on {len(tasks)} task(s), {args.budget} steps, seeds {args.seeds} "
          f"(Adam baselines tuned on a 9-point lr grid first)", file=sys.stderr)
    display = TaskProgress()
    scorer = FitnessScorer(FitnessSettings(tasks=list(tasks), budget=args.budget, seeds=args.seeds, rungs=1,
                                           device=args.device, objective=args.objective),
                           cache=cache, on_progress=display.units)
    try:
        scores = scorer.score(genomes)
    finally:
        display.close()
    stats = scorer.stats
    rate = stats.member_steps / stats.seconds if stats.seconds else 0.0
    if args.json:
        print(json.dumps({"genomes": [g.name or args.genomes[i] for i, g in enumerate(genomes)],
                          "fitness": [f.to_json() for f in scores], "member_steps": stats.member_steps,
                          "seconds": stats.seconds, "cache_hits": stats.cache_hits,
                          "cache_misses": stats.cache_misses}, indent=2))
        return 0
    labels = list(scores[0].task_scores) if scores else []
    print(f"{'genome':<16} {'fitness':>8} " + " ".join(f"{label[:18]:>18}" for label in labels))
    for name, fit in zip(args.genomes, scores):
        print(f"{name[:16]:<16} {fit.fitness:>8.3f} " + " ".join(f"{fit.task_scores[label]:>18.3f}" for label in labels))
        for failure in fit.failures[:3]:
            print(f"    failed: {failure}")
    print(f"{stats.member_steps:,} member-steps in {stats.seconds:.1f} s ({rate:,.0f}/s); cache hits "
          f"{stats.cache_hits}, misses {stats.cache_misses}", file=sys.stderr)
    return 0


def cmd_evolve(args: argparse.Namespace) -> int:
    from evolveopt.evolution import run_config_file

    summary = run_config_file(args.config, out=args.out, overrides=args.set, backend=args.backend,
                              address=args.address, seed=args.seed)
    return _report_run(summary)


def cmd_resume(args: argparse.Namespace) -> int:
    from evolveopt.evolution import resume_run

    return _report_run(resume_run(args.run_dir, backend=args.backend, address=args.address, restart=args.restart))


def _report_run(summary) -> int:  # noqa: ANN001 - RunSummary
    best = summary.best
    if summary.interrupted:
        print(_interrupted_message(summary), file=sys.stderr)
        return 130
    if best is not None:
        print(f"run: {summary.path}\ngenerations: {summary.generations}\nchampion: #{best.id} "
              f"fitness {best.score:+.4f} at rung {best.rung} (vs tuned Adam; > 0 is better)")
        for task, score in best.result.get("task_scores", {}).items():
            print(f"  {task}: {score:+.4f}")
    return 0


def _interrupted_message(summary) -> str:  # noqa: ANN001 - RunSummary
    """What an interrupted run left behind, as it is on disk."""
    checkpoint = summary.path / "checkpoint.json"
    if summary.generations and checkpoint.is_file():
        kept = (f"interrupted after {summary.generations} completed generation(s); checkpoint kept in {checkpoint}\n"
                f"resume with: evolveopt resume {summary.path}")
    else:
        kept = (f"interrupted during generation {summary.generations}, before any generation completed: no checkpoint "
                f"yet\nstart over with: evolveopt resume {summary.path}  (or delete {summary.path})")
    return kept


def cmd_runs(args: argparse.Namespace) -> int:
    from evolveopt.finished_runs import format_runs, list_runs

    print(format_runs(list_runs(args.folder)))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.summarize:
        from evolveopt.benchmark.summary import resummarize

        folder = Path(args.summarize)
        if not (folder / "benchmark.json").is_file():
            raise EvolveOptError(f"{folder}: no benchmark.json to summarize")
        print(resummarize(folder))
        return 0
    if not args.genomes and args.baselines == "none":
        raise EvolveOptError("benchmark needs at least one genome, a --baselines set, or --summarize DIR")

    from evolveopt.backends import check_device, make_backend
    from evolveopt.benchmark.protocol import BenchmarkSettings, run_benchmark
    from evolveopt.benchmark.summary import REFERENCE, build_report, write_report
    from evolveopt.config import BackendConfig, backend_flags
    from evolveopt.genome import load_genome
    from evolveopt.finished_runs import resolve_genome
    from evolveopt.run_directory import default_folder, output_folder
    from evolveopt.tasks import HELDOUT_SUITE, SEARCH_SUITE

    check_device(args.device)
    genomes = {}
    for ref in args.genomes:
        genome, label, _ = resolve_genome(ref)
        genomes[label.replace(" ", "#")] = genome
    baselines = {name: load_genome(name) for name in (REFERENCE, *BASELINES[args.baselines]) if name not in genomes}
    genomes = {REFERENCE: genomes.pop(REFERENCE, None) or baselines.pop(REFERENCE), **genomes, **baselines}
    suites = {"search": SEARCH_SUITE, "heldout": HELDOUT_SUITE, "all": SEARCH_SUITE + HELDOUT_SUITE}
    tasks = [parse_task_arg(t) for t in args.task] if args.task else suites[args.suite]
    settings = BenchmarkSettings(tasks=tuple(tasks), budget=args.budget, trials=args.trials, seeds=args.seeds,
                                 tuning_seeds=args.tuning_seeds, device=args.device)
    backend_flags(args.backend, args.address)  # --address alone means ray; with --backend local it is refused
    kind = "ray" if args.address else (args.backend or "local")
    out = Path(args.out) if args.out else default_folder("benchmark")
    with output_folder(out, "the benchmark folder"):  # made before any training; removed again if that fails
        backend = make_backend(BackendConfig(kind=kind, address=args.address or None), args.device)
        print(f"benchmarking {', '.join(genomes)} on {len(tasks)} task(s): {args.trials} tuning trials each, "
              f"then {args.seeds} fresh seeds", file=sys.stderr)
        try:
            runs = run_benchmark(genomes, settings, map_units=backend.map_units,
                                 on_task=lambda t: print(f"  {t.label}: {t.seconds:.1f} s", file=sys.stderr))
        finally:
            backend.close()
        print(write_report(build_report(runs, genomes, settings), out))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from evolveopt.backends import check_device
    from evolveopt.measure import BENCHMARKS

    check_device(args.device)
    report, table = BENCHMARKS[args.what](args)
    print(json.dumps(report, indent=2) if args.json else table)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``evolveopt CMD: error: ...``, exit 2) like every other mistake;
    ``--help`` still prints the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def worker_counts(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated worker counts, each >= 1 (``2,8,32,64``)."""
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,8,32, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"every worker count must be at least 1, got {text!r}")
    return counts


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="evolveopt", description="Discover deep-learning optimizers by evolution.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = sub.add_parser("show", help="print a genome's update rule as equations")
    show.add_argument("genome", help="a genome name (genomes/NAME.yaml), a YAML file, a run (its champion) or RUN#ID")
    show.add_argument("--canonical", action="store_true", help="show the canonical form")
    show.add_argument("--yaml", action="store_true", help="print YAML instead of equations")
    show.set_defaults(command_function=cmd_show)

    diff = sub.add_parser("diff", help="which terms, loci and genes differ between two genomes")
    diff.add_argument("a", help="genome name, YAML file, run or RUN#ID")
    diff.add_argument("b")
    diff.set_defaults(command_function=cmd_diff)

    export = sub.add_parser("export", help="write a genome as a standalone optimizer (.py) or a genome file (.yaml)")
    export.add_argument("source", help="a run directory (its champion by default), RUN#ID, a genome name or file")
    pick = export.add_mutually_exclusive_group()
    pick.add_argument("--rank", type=at_least(1), help="hall-of-fame rank in the run (1 = champion)")
    pick.add_argument("--id", type=at_least(0), help="individual id in the run")
    export.add_argument("--format", choices=["py", "yaml"], help="default: from the file name (.yaml) else py")
    export.add_argument("-o", "--output", required=True, help="file to write")
    export.set_defaults(command_function=cmd_export)

    lineage = sub.add_parser("lineage", help="the ancestry of an individual: text, dot, csv, json, png, svg, html")
    lineage.add_argument("run_dir", metavar="RUN")
    who = lineage.add_mutually_exclusive_group()
    who.add_argument("--id", type=at_least(0), help="individual id (default: the champion)")
    who.add_argument("--champion", action="store_true", help="the champion (the default)")
    lineage.add_argument("--depth", type=at_least(0), help="generations of descent to follow back")
    lineage.add_argument("--format", default="text", choices=["text", "dot", "csv", "json", "png", "svg", "html"])
    lineage.add_argument("-o", "--output", help="file to write (required for png, svg, html)")
    lineage.set_defaults(command_function=cmd_lineage)

    benchmark = sub.add_parser("benchmark", help="compare optimizers under one tuning protocol on search or held-out tasks")
    benchmark.add_argument("genomes", nargs="*", help="genome names, files, runs (their champion) or RUN#ID; "
                                                     "adamw (the target-setter) is always added")
    benchmark.add_argument("--baselines", choices=list(BASELINES), default=DEFAULT_BASELINES,
                           help="optimizers to compare against, tuned alike (default: all): classics = "
                                f"{', '.join(CLASSICS)}; frontier = {', '.join(FRONTIER)}; none = AdamW alone")
    benchmark.add_argument("--summarize", metavar="DIR", help="only recompute DIR's summary, tables and pictures")
    benchmark.add_argument("--suite", choices=["search", "heldout", "all"], default="heldout")
    benchmark.add_argument("--task", action="append", help="a task instead of a suite (repeatable), e.g. nqm:batch_size=8")
    benchmark.add_argument("--trials", type=at_least(1), default=8, help="shared quasi-random tuning trials per optimizer")
    benchmark.add_argument("--seeds", type=at_least(1), default=5, help="fresh seeds at the best setting")
    benchmark.add_argument("--tuning-seeds", type=at_least(1), default=1)
    benchmark.add_argument("--budget", type=at_least(1), default=500, help="training steps per run")
    benchmark.add_argument("--out", help="output folder (default: runs/benchmark-TIMESTAMP)")
    benchmark.add_argument("--backend", choices=["local", "ray"], help="where evaluations run (default: local; "
                           "ray: a new local Ray cluster, or RAY_ADDRESS's)")
    benchmark.add_argument("--address", metavar="HOST:PORT", help="a Ray cluster's head to join (means --backend ray)")
    benchmark.add_argument("--device", default="cpu")
    benchmark.set_defaults(command_function=cmd_benchmark)

    report = sub.add_parser("report", help="a markdown report of a run, with pictures, in RUN/report/")
    report.add_argument("run_dir", metavar="RUN")
    report.add_argument("--checkup-seeds", type=at_least(0), default=5, metavar="N",
                        help="fresh seeds for the champion-vs-AdamW checkup on fresh seeds and held-out tasks (0: skip)")
    report.add_argument("--checkup-budget", type=at_least(1), default=None, metavar="N",
                        help="training steps per checkup run (default: the run's fitness budget)")
    report.set_defaults(command_function=cmd_report)

    genomes = sub.add_parser("genomes", help="list the named genomes")
    genomes.set_defaults(command_function=cmd_genomes)

    try_ = sub.add_parser("try", help="train a small digits MLP with a genome, next to Adam")
    try_.add_argument("genome")
    try_.add_argument("--steps", type=at_least(1), default=300)
    try_.add_argument("--seed", type=at_least(0), default=0)
    try_.add_argument("--against", nargs="*", default=["adam"], help="genomes to compare with (default: adam)")
    try_.add_argument("--set", nargs="*", action="extend", default=[], metavar="GENE=VALUE", help="override genes of GENOME")
    try_.set_defaults(command_function=cmd_try)

    ev = sub.add_parser("eval", help="fitness of genomes against tuned Adam on proxy tasks")
    ev.add_argument("genomes", nargs="+", help="genome names or YAML files")
    ev.add_argument("--task", action="append", help="a task, e.g. digits_mlp or nqm:batch_size=8 (repeatable)")
    ev.add_argument("--suite", choices=["search", "heldout"], default="search", help="task suite when no --task")
    ev.add_argument("--budget", type=at_least(1), default=300, help="training steps per task")
    ev.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2])
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--objective", choices=list(RULES["fitness.objective"]), default=FitnessConfig.objective,
                    help="the loss compared with tuned Adam's (default: heldout_loss, the task's own held-out split)")
    ev.add_argument("--cache", default=default_cache_path(), help="SQLite result cache")
    ev.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(command_function=cmd_eval)

    evolve = sub.add_parser("evolve", help="run an evolution from a config (experiments/*.yaml)")
    evolve.add_argument("config")
    evolve.add_argument("--out", help="run directory (default: runs/NAME-TIMESTAMP)")
    evolve.add_argument("--backend", choices=["local", "ray"], help="where evaluations run (default: the config's; "
                        "ray without an address: RAY_ADDRESS's cluster, else a new local one)")
    evolve.add_argument("--address", metavar="HOST:PORT", help="a Ray cluster's head to join (means --backend ray)")
    evolve.add_argument("--seed", type=at_least(0))
    evolve.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="override config keys, e.g. search.population=8")
    evolve.set_defaults(command_function=cmd_evolve)

    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir", metavar="RUN")
    resume.add_argument("--backend", choices=["local", "ray"], help="where evaluations run (default: as the run did)")
    resume.add_argument("--address", metavar="HOST:PORT", help="a Ray cluster's head to join (means --backend ray)")
    resume.add_argument("--restart", action="store_true",
                        help="start the run over from generation 0 in the same folder; its old records (logs, "
                             "population, hall of fame, checkpoints, report) are moved to RUN/replaced-TIMESTAMP/")
    resume.set_defaults(command_function=cmd_resume)

    runs = sub.add_parser("runs", help="list the runs under a folder with status and best fitness")
    runs.add_argument("folder", nargs="?", default="runs")
    runs.set_defaults(command_function=cmd_runs)

    bench = sub.add_parser("bench", help="run a benchmark and print its comparison table")
    from evolveopt.measure import BENCHMARKS

    bench.add_argument("what", choices=list(BENCHMARKS),
                       help="; ".join(f"{name}: {b.help}" for name, b in BENCHMARKS.items()))
    bench.add_argument("--sizes", type=at_least(1), nargs="*", help="population sizes for 'eval' ('heap': the largest)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--repeats", type=at_least(1), default=50)
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--neighbours", type=at_least(0), help="busy processes for 'neighbour' (default: one per CPU)")
    bench.add_argument("--neighbour-threads", type=at_least(1), default=1, help="torch threads of each neighbour")
    bench.add_argument("--budget", type=at_least(1), help="training budget for 'neighbour' (default: the "
                       "quickstart's 270 steps), 'cluster' (default: 30, over the config's) and 'transfer' (default 150)")
    bench.add_argument("--workers", type=worker_counts, help="'cluster': logical workers of each local Ray "
                       "cluster, comma-separated (default: 2,8,32,64)")
    bench.add_argument("--generations", type=at_least(1), help="'cluster': generations (epochs) per run (default: 4)")
    bench.add_argument("--config", help="'cluster': the run config (default: experiments/paper.yaml)")
    bench.add_argument("--population", type=at_least(2), help="'cluster': search.population (default: the config's)")
    bench.add_argument("--in-flight-per-worker", type=at_least(1),
                       help="'cluster': search.in_flight_per_worker of the steady-state runs (default: the config's)")
    bench.add_argument("--lr-sweep", nargs="+", type=float, metavar="M", help="'transfer': compare the search fitness without "
                       "and with this learning-rate sweep (fitness.lr_sweep), e.g. 0.5 1 2")
    bench.add_argument("--funnel", action="store_true", help="'transfer': order the genomes by search fitness and "
                       "as a funnel's hall of fame does (tasks.FUNNEL_STAGES), each against the held-out scores")
    bench.add_argument("--compile", action="store_true",
                       help="'step': eager vs torch.compile'd step of an exported Adam genome and torch Adam")
    bench.set_defaults(command_function=cmd_bench)
    return parser


class Interrupted(KeyboardInterrupt):
    """Ctrl-C as evolveopt's own SIGINT handler raises it.

    A subclass, not KeyboardInterrupt itself: CPython re-raises SIGINT at exit (exit status -2, not 130)
    whenever a bare KeyboardInterrupt passed through one of its own top-level code runners on the way to
    our handler, even though the handler then caught it.
    """


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted()


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `evolveopt show adan | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # only the main thread may set handlers; not when started with Ctrl-C ignored
    own = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if own:
        signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        return _run_command(argv)
    finally:
        if own:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_command(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command_function
    try:
        return command(args)
    except EvolveOptError as exc:
        print(f"evolveopt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("evolveopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
