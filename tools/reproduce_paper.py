"""Run the four tasks of Table 1 of Zhang, Zhang and Wu and tabulate the results.

Each task runs once per seed with the GA settings that Zhang et al. give for it.
Settings they leave open (elitism, init, float and baseline training steps) keep
memdeploy's defaults; fine-tuning takes 5 steps per candidate on the ProtoNet tasks
(`PROTONET_FINETUNE_STEPS`) and memdeploy's default elsewhere. Beside the float model, the quantized
baseline and the GA, the table has a control: the baseline's noise-aware training
continued for the GA's compute (see `memdeploy.experiments.ga_compute_budget`),
scored on the same noise draws as the baseline. Test accuracies are the mean and
sample standard deviation over seeds of each seed's mean over its test noise draws.
A task whose dataset is missing gets a "data not found" row.

Every (task, seed) keeps its folders under --out, and a rerun skips finished ones:

    .venv/bin/python tools/reproduce_paper.py --tasks protonet-mnist --seeds 0 1 2
    .venv/bin/python tools/reproduce_paper.py --quick      # smoke test, minutes
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from studies.paper_table import missing_data_row, seed_row, table_row, write_tables

from memdeploy.allocator import keep_freed_memory
from memdeploy.errors import DatasetError, MemdeployError
from memdeploy.experiments import noise_aware_alone, run_setting
from memdeploy.settings import make_settings

logger = logging.getLogger("reproduce_paper")


@dataclass(frozen=True)
class PaperTask:
    """A task of the table: the workload, its GA settings and the reported numbers."""

    title: str
    model: str
    dataset: str
    profile: str
    generations: int
    selection: str
    mutation_probability: float
    paper_baseline: float | None
    """Baseline test accuracy reported by Zhang et al., in percent; None for a task
    outside their Table 1."""

    paper_ga: float | None
    """GA test accuracy reported by Zhang et al., in percent."""

    finetune_steps: int | None = None
    """Fine-tuning steps per candidate, where memdeploy's default does not fit."""


PROTONET_FINETUNE_STEPS = 5
"""Half memdeploy's default, so that the GA of ProtoNet-MNIST takes under 5 minutes
on two CPU cores. docs/benchmarks.md compares its accuracy with that of 10 steps."""

PAPER_TASKS = {
    "protonet-mnist": PaperTask(
        title="ProtoNet-MNIST",
        model="protonet",
        dataset="mnist",
        profile="paper-protonet-mnist",
        generations=25,
        selection="roulette",
        mutation_probability=0.01,
        paper_baseline=73.93,
        paper_ga=81.99,
        finetune_steps=PROTONET_FINETUNE_STEPS,
    ),
    "protonet-fashion-mnist": PaperTask(
        title="ProtoNet-FashionMNIST",
        model="protonet",
        dataset="fashion-mnist",
        profile="paper-protonet-fashion",
        generations=25,
        selection="roulette",
        mutation_probability=0.01,
        paper_baseline=78.35,
        paper_ga=83.81,
        finetune_steps=PROTONET_FINETUNE_STEPS,
    ),
    "mobilenetv2-cifar10": PaperTask(
        title="MobileNetV2-CIFAR-10",
        model="mobilenetv2",
        dataset="cifar10",
        profile="paper-mobilenetv2-cifar10",
        generations=5,
        selection="rank",
        mutation_probability=0.001,
        paper_baseline=77.91,
        paper_ga=83.18,
    ),
    "micronet-cifar100": PaperTask(
        title="MicroNet-CIFAR-100",
        model="micronet",
        dataset="cifar100",
        profile="paper-micronet-cifar100",
        generations=5,
        selection="rank",
        mutation_probability=0.001,
        paper_baseline=73.90,
        paper_ga=76.19,
    ),
}
"""Population 10, two-point crossover 0.8 and max-min mutation hold for every task."""

EXTRA_TASKS = {
    "mlp-digits": PaperTask(
        title="MLP-digits (embedded default)",
        model="mlp",
        dataset="digits",
        profile="paper-protonet-mnist",
        generations=25,
        selection="roulette",
        mutation_probability=0.01,
        paper_baseline=None,
        paper_ga=None,
    ),
}
"""Tasks outside Table 1, run only when named in --tasks. The embedded default takes
the ProtoNet-MNIST GA settings and runs in minutes."""

QUICK_SETTINGS = {
    "limit": 200,
    "population": 4,
    "generations": 1,
    "float_steps": 30,
    "baseline_steps": 20,
    "finetune_steps": 2,
    "test_draws": 2,
    "selection_draws": 2,
    "finalists": 2,
}
"""Settings of --quick, which checks that every step runs, not the accuracy."""


def task_settings(task: PaperTask, seed: int, args) -> dict:
    """Return the optimize settings of one task and seed."""
    values = {
        "model": task.model,
        "dataset": task.dataset,
        "profile": task.profile,
        "backend": args.backend,
        "seed": seed,
        "population": 10,
        "generations": task.generations,
        "selection": task.selection,
        "crossover_probability": 0.8,
        "mutation": "max-min",
        "mutation_probability": task.mutation_probability,
    }
    if task.finetune_steps is not None:
        values["finetune_steps"] = task.finetune_steps
    data_dir = getattr(args, f"{task.dataset.replace('-', '_')}_dir", None)
    if data_dir is not None:
        values["data_dir"] = str(data_dir)
    return values | (QUICK_SETTINGS if args.quick else {})


def run_seed(name: str, task: PaperTask, seed: int, args) -> dict:
    """Run the GA and the control of one task and seed; return the seed's row."""
    seed_dir = args.out / name / f"seed{seed}"
    settings = make_settings(**task_settings(task, seed, args))
    summary = run_setting(settings, seed_dir / "ga")
    control = noise_aware_alone(
        seed_dir / "ga",
        seed_dir / "noise-aware-alone",
        count_forward=args.budget == "steps+forward",
    )
    return seed_row(name, seed, summary, control, seed_dir / "ga")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add(
        "--tasks",
        nargs="+",
        choices=[*PAPER_TASKS, *EXTRA_TASKS],
        default=list(PAPER_TASKS),
        help="tasks to run (default: the four of Table 1)",
    )
    add("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    add(
        "--out",
        type=Path,
        help="output folder (default runs/paper, or runs/paper-quick with --quick)",
    )
    add(
        "--quick",
        action="store_true",
        help="tiny settings: checks that every step runs; the accuracies mean nothing",
    )
    add("--backend", default="gaussian", help="backend spec (default gaussian)")
    add(
        "--budget",
        choices=["steps", "steps+forward"],
        default="steps+forward",
        help="what the control's step count matches: the GA's fine-tuning steps, or "
        "those plus its validation forward passes (default)",
    )
    for dataset in ("mnist", "fashion-mnist", "cifar10", "cifar100"):
        add(
            f"--{dataset}-dir",
            type=Path,
            help=f"folder with the {dataset} files "
            "(default: search $MEMDEPLOY_DATA, ./data and system folders)",
        )
    add("-v", "--verbose", action="count", default=0, help="-v: INFO, -vv: DEBUG")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    if args.out is None:
        args.out = Path("runs/paper-quick" if args.quick else "runs/paper")
    args.out.mkdir(parents=True, exist_ok=True)

    rows, seed_rows = [], []
    for name in args.tasks:
        task = PAPER_TASKS.get(name) or EXTRA_TASKS[name]
        try:
            task_rows = [run_seed(name, task, seed, args) for seed in args.seeds]
        except DatasetError as err:
            logger.warning(
                "%s skipped: %s (this tool takes the folder as --%s-dir)",
                task.title, err, task.dataset,
            )
            rows.append(missing_data_row(task, err))
        else:
            seed_rows += task_rows
            rows.append(table_row(task, task_rows))
        write_tables(args.out, rows, seed_rows)
    print((args.out / "table.md").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MemdeployError as error:
        print(f"reproduce_paper.py: error: {error}", file=sys.stderr)
        sys.exit(1)
