"""Run a GA hyperparameter study and write its CSV and PNG plot.

The studies follow Figures 4 to 7 of Zhang, Zhang and Wu on ProtoNet-MNIST:

  generations         accuracy against generations, at population 10, CP 0.8, MP 0.01
  population          accuracy against population size, at 30 generations, CP 0.8,
                      MP 0.01
  crossover-mutation  a crossover x mutation probability grid, at 25 generations,
                      population 10
  strategies          init x selection x mutation, at 25 generations, population 10,
                      CP 0.8, MP 0.01

The default workload is the embedded one (MLP on 8x8 digits, profile
paper-protonet-mnist), which runs in minutes on a laptop. --model protonet --dataset
mnist runs the ProtoNet-MNIST workload of those figures. The runs of one seed share
their float and baseline weights, and a rerun skips finished runs. Writes
OUT/STUDY/STUDY.csv (mean and sample standard deviation over seeds per grid point),
OUT/STUDY/runs.csv (one row per run) and OUT/STUDY/STUDY.png:

    .venv/bin/python tools/study.py generations --seeds 0 1 2 --out runs/studies
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path

from studies.plots import plot_curve, plot_heatmap, plot_strategy_bars
from studies.rows import PARAMETERS, POINT_FIELDS, RUN_FIELDS, aggregate, run_row

from memdeploy.allocator import keep_freed_memory
from memdeploy.errors import MemdeployError
from memdeploy.experiments import run_setting
from memdeploy.runfolder import write_csv
from memdeploy.settings import make_settings

logger = logging.getLogger("study")

WORKLOAD_OPTIONS = [
    "model",
    "dataset",
    "data_dir",
    "limit",
    "profile",
    "backend",
    "float_steps",
    "baseline_steps",
    "finetune_steps",
    "finetune_lr",
    "fitness_split",
    "mutation",
    "test_draws",
    "selection_draws",
    "finalists",
]


def grid(args) -> list[dict]:
    """Return the settings that vary across the study, one dict per grid point."""
    if args.study == "generations":
        return [{"generations": value} for value in args.values]
    if args.study == "population":
        return [{"population": value} for value in args.values]
    if args.study == "crossover-mutation":
        pairs = itertools.product(args.crossover, args.mutation_probabilities)
        return [
            {"crossover_probability": c, "mutation_probability": m} for c, m in pairs
        ]
    combinations = itertools.product(args.inits, args.selections, args.mutations)
    return [{"init": i, "selection": s, "mutation": m} for i, s, m in combinations]


def point_label(point: dict) -> str:
    """Return the folder name of a grid point, such as `crossover_probability-0.8`."""
    return "_".join(f"{key}-{value}" for key, value in point.items())


def base_settings(args) -> dict:
    """Return the settings every run of the study shares."""
    fixed = {
        name: getattr(args, name) for name in WORKLOAD_OPTIONS if hasattr(args, name)
    }
    for name in (
        "generations",
        "population",
        "crossover_probability",
        "mutation_probability",
    ):
        if hasattr(args, name):
            fixed[name] = getattr(args, name)
    return fixed


def run_point(args, point: dict, seed: int) -> dict:
    """Run one grid point with one seed unless it finished; return its row."""
    label = point_label(point)
    run_dir = args.out / args.study / label / f"seed{seed}"
    settings = make_settings(**(base_settings(args) | point | {"seed": seed}))
    run_setting(settings, run_dir, weight_cache=args.out / "weights")
    return run_row(args.study, label, settings, run_dir)


def caption(args, points: list[dict]) -> str:
    """Describe the seeds, splits and noise draws behind the plotted numbers."""
    point = points[0]
    return (
        f"Mean ± sample std over seeds {point['seeds']}. Test: the GA's chosen "
        f"candidate, mean of {point['test_draws']} noise draws per seed. Validation "
        f"(the split of the final choice): the same candidate, "
        f"{point['validation_draws']} draws per seed. The fitness scored the "
        f"{point['fitness_split']} split. Backend {args.backend}. Fixed settings: "
        + ", ".join(
            f"{k} {v}" for k, v in base_settings(args).items() if k in PARAMETERS
        )
        + "."
    )


def plot(args, points: list[dict], path: Path) -> None:
    """Write the study's PNG."""
    title = f"{args.model} on {args.dataset}, profile {args.profile}: {args.study}"
    text = caption(args, points)
    if args.study in ("generations", "population"):
        plot_curve(points, args.study, path, title, text)
    elif args.study == "crossover-mutation":
        plot_heatmap(points, path, title, text)
    else:
        plot_strategy_bars(points, path, title, text)


def run_study(args) -> list[dict]:
    """Run every grid point and seed, then write the CSV files and the plot."""
    folder = args.out / args.study
    folder.mkdir(parents=True, exist_ok=True)
    # Seed-major order: every point of the first seed finishes before the next seed.
    rows = [run_point(args, point, seed) for seed in args.seeds for point in grid(args)]
    points = aggregate(rows)
    write_csv(folder / "runs.csv", RUN_FIELDS, rows)
    write_csv(folder / f"{args.study}.csv", POINT_FIELDS, points)
    plot(args, points, folder / f"{args.study}.png")
    logger.info("wrote %s", folder / f"{args.study}.png")
    return points


def _add_common(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", default="mlp", help="model name (default mlp)")
    add("--dataset", default="digits", help="dataset name (default digits)")
    add(
        "--profile",
        default="paper-protonet-mnist",
        help="device profile (default paper-protonet-mnist)",
    )
    add("--backend", default="gaussian", help="backend spec (default gaussian)")
    add("--data-dir", dest="data_dir", help="folder with the dataset's files")
    add("--seeds", nargs="+", type=int, default=[0], help="seeds (default 0)")
    add(
        "--out",
        type=Path,
        default=Path("runs/studies"),
        help="output folder (default runs/studies)",
    )
    for name, kind, text in (
        ("limit", int, "cap on examples per split"),
        ("float-steps", int, "float training steps"),
        ("baseline-steps", int, "noise-aware baseline training steps"),
        ("finetune-steps", int, "fine-tuning steps per fitness evaluation"),
        ("finetune-lr", float, "fine-tuning learning rate"),
        ("fitness-split", str, "split the fitness scores: train or validation"),
        ("mutation", str, "mutation, add-noise or max-min (the strategies study varies it)"),
        ("test-draws", int, "test noise draws per run"),
        ("selection-draws", int, "validation draws per finalist"),
        ("finalists", int, "candidates re-scored at the end"),
    ):
        add(
            f"--{name}",
            dest=name.replace("-", "_"),
            type=kind,
            default=argparse.SUPPRESS,
            help=f"{text} (default: optimize's)",
        )
    add("-v", "--verbose", action="count", default=0, help="-v: INFO, -vv: DEBUG")


def _add_fixed(parser, **defaults) -> None:
    """Add the GA settings a study keeps fixed, defaulting to those of Zhang et al."""
    kinds = {"generations": int, "population": int}
    for name, value in defaults.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kinds.get(name, float),
            default=value,
            help=f"{name.replace('_', ' ')} (default {value})",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    studies = parser.add_subparsers(dest="study", required=True)
    fixed_probabilities = {"crossover_probability": 0.8, "mutation_probability": 0.01}

    study = studies.add_parser("generations", help="accuracy against generations")
    study.add_argument(
        "--values", nargs="+", type=int, default=[5, 10, 15, 20, 25, 30],
        help="generation counts to run (default 5 10 15 20 25 30)",
    )  # fmt: skip
    _add_fixed(study, population=10, **fixed_probabilities)

    study = studies.add_parser("population", help="accuracy against population size")
    study.add_argument(
        "--values", nargs="+", type=int, default=[4, 6, 8, 10, 12],
        help="population sizes to run (default 4 6 8 10 12)",
    )  # fmt: skip
    _add_fixed(study, generations=30, **fixed_probabilities)

    study = studies.add_parser("crossover-mutation", help="CP x MP grid")
    study.add_argument(
        "--crossover", nargs="+", type=float, default=[0.6, 0.7, 0.8, 0.9],
        help="crossover probabilities (default 0.6 0.7 0.8 0.9)",
    )  # fmt: skip
    study.add_argument(
        "--mutation-probabilities", nargs="+", type=float,
        default=[0.0001, 0.001, 0.005, 0.01, 0.05],
        help="per-gene mutation probabilities (default 0.0001 0.001 0.005 0.01 0.05)",
    )  # fmt: skip
    _add_fixed(study, generations=25, population=10)

    study = studies.add_parser("strategies", help="init x selection x mutation")
    study.add_argument("--inits", nargs="+", default=["origin", "large"])
    study.add_argument("--selections", nargs="+", default=["roulette", "rank"])
    study.add_argument("--mutations", nargs="+", default=["max-min", "add-noise"])
    _add_fixed(study, generations=25, population=10, **fixed_probabilities)

    for study in studies.choices.values():
        _add_common(study)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    points = run_study(args)
    for point in points:
        print(
            f"{point['point']}: GA test {100 * point['ga_test_mean']:.2f}% "
            f"(seeds {point['seeds']})"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MemdeployError as error:
        print(f"study.py: error: {error}", file=sys.stderr)
        sys.exit(1)
