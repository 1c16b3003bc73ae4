"""The ``evolveopt`` command line: a thin shell over library calls.

Errors a user can cause print one line, ``evolveopt: error: ...``, and exit with code 2.
Tables and equations go to stdout; progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Callable, Sequence

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
    from evolveopt.genome import canonical_form, dump_genome, genome_hash, load_genome, structure_key
    from evolveopt.genome.equations import render_genome

    genome = load_genome(args.genome)
    if args.canonical:
        genome = canonical_form(genome)
    if args.yaml:
        print(dump_genome(genome), end="")
        return 0
    print(render_genome(genome))
    print(f"hash: {genome_hash(genome)}  structure: {structure_key(genome)}")
    return 0


def cmd_genomes(args: argparse.Namespace) -> int:
    from evolveopt.genome import load_genome, named_genomes

    for name in named_genomes():
        genome = load_genome(name)
        print(f"{name:<12} {genome.description}")
    return 0


def cmd_try(args: argparse.Namespace) -> int:
    from evolveopt.demo import format_results, train_digits

    overrides = _parse_assignments(args.set)
    names = [args.genome] + [g for g in args.against if g != args.genome]
    results = []
    for name in names:
        print(f"training {name} for {args.steps} steps on digits ...", file=sys.stderr)
        results.append(train_digits(name, steps=args.steps, seed=args.seed,
                                    **(overrides if name == args.genome else {})))
    print(format_results(results))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "step":
        from evolveopt.bench.step import format_table, run_step_benchmark

        rows = run_step_benchmark(repeats=args.repeats, device=args.device)
        print(json.dumps({"rows": rows}, indent=2) if args.json else format_table(rows))
        return 0
    if args.what == "eval":
        from evolveopt.bench.evaluation import format_eval_table, run_eval_benchmark

        sizes = tuple(args.sizes) if args.sizes else ((1, 8, 64, 256, 1024, 2048) if args.device.startswith("cuda")
                                                       else (1, 8, 64, 256))
        report = run_eval_benchmark(sizes=sizes, device=args.device)
        print(json.dumps(report, indent=2) if args.json else format_eval_table(report))
        return 0
    raise EvolveOptError(f"unknown benchmark '{args.what}' (available: step, eval)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evolveopt", description="Discover deep-learning optimizers by evolution.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    show = sub.add_parser("show", help="print a genome's update rule as equations")
    show.add_argument("genome", help="a genome name (genomes/NAME.yaml) or a YAML file")
    show.add_argument("--canonical", action="store_true", help="show the canonical form")
    show.add_argument("--yaml", action="store_true", help="print YAML instead of equations")
    show.set_defaults(run=cmd_show)

    genomes = sub.add_parser("genomes", help="list the named genomes")
    genomes.set_defaults(run=cmd_genomes)

    try_ = sub.add_parser("try", help="train a small digits MLP with a genome, next to Adam")
    try_.add_argument("genome")
    try_.add_argument("--steps", type=int, default=300)
    try_.add_argument("--seed", type=int, default=0)
    try_.add_argument("--against", nargs="*", default=["adam"], help="genomes to compare with (default: adam)")
    try_.add_argument("--set", nargs="*", default=[], metavar="GENE=VALUE", help="override genes of GENOME")
    try_.set_defaults(run=cmd_try)

    bench = sub.add_parser("bench", help="run a benchmark and print its comparison table")
    bench.add_argument("what", choices=["step", "eval"],
                       help="step: optimizer step() vs torch.optim; eval: batched vs one-at-a-time training")
    bench.add_argument("--sizes", type=int, nargs="*", help="population sizes for 'eval'")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.add_argument("--repeats", type=int, default=50)
    bench.add_argument("--device", default="cpu")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `evolveopt show adan | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except EvolveOptError as exc:
        print(f"evolveopt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("evolveopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
