"""Time one fitness evaluation per backend on the same model, data and profile.

A fitness evaluation programs every crossbar layer of the model with a fresh noise
seed, then runs the whole validation split through the programmed model, which is
what the genetic algorithm does for every candidate. The model is the MLP 64-64-10
on scikit-learn's 8x8 digits, trained digitally for a few epochs first so that the
accuracy column means something.

Run from the repository root:

    .venv/bin/python tools/bench_backends.py --profile rram-generic --evaluations 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from backends import open_backend
from memdeploy.crossbar_model import CrossbarModel
from memdeploy.datasets import load_dataset
from memdeploy.models import build_model
from memdeploy.profiles import load_profile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile", default="rram-generic", help="profile name or path"
    )
    parser.add_argument(
        "--backends", default="gaussian,aihwkit", help="comma-separated backend specs"
    )
    parser.add_argument(
        "--evaluations", type=int, default=30, help="timed evaluations per backend"
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed evaluations first"
    )
    parser.add_argument(
        "--epochs", type=int, default=30, help="digital training epochs"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of data, model and noise"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: torch's default)"
    )
    return parser


def train_digitally(model, split, epochs: int, seed: int) -> None:
    """Train with full-batch Adam (30 epochs reach 90% on digits with seed 0)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(split.images), split.labels)
        loss.backward()
        optimizer.step()
    model.eval()


def evaluate(crossbar: CrossbarModel, genes, split, noise_seed: int):
    """Run one fitness evaluation and return (program s, forward s, accuracy)."""
    started = time.perf_counter()
    crossbar.program(genes, noise_seed=noise_seed)
    programmed = time.perf_counter()
    predictions = crossbar(split.images).argmax(1)
    finished = time.perf_counter()
    accuracy = float((predictions == split.labels).float().mean())
    return programmed - started, finished - programmed, accuracy


def bench_backend(spec: str, profile, model, split, args) -> dict:
    started = time.perf_counter()
    backend = open_backend(spec, profile, seed=args.seed)
    crossbar = CrossbarModel(model, backend)
    setup_s = time.perf_counter() - started
    genes = crossbar.genome.vector(model)

    for index in range(args.warmup):
        evaluate(crossbar, genes, split, noise_seed=10_000 + index)
    runs = [
        evaluate(crossbar, genes, split, noise_seed=i) for i in range(args.evaluations)
    ]
    backend.close()

    totals = [program_s + forward_s for program_s, forward_s, _ in runs]
    return {
        "backend": spec,
        "setup_ms": 1e3 * setup_s,
        "eval_ms": 1e3 * statistics.median(totals),
        "eval_ms_spread": 1e3 * (max(totals) - min(totals)),
        "program_ms": 1e3 * statistics.median(run[0] for run in runs),
        "forward_ms": 1e3 * statistics.median(run[1] for run in runs),
        "accuracy": statistics.mean(run[2] for run in runs),
        "accuracy_std": statistics.pstdev(run[2] for run in runs),
    }


def format_table(rows: list[dict]) -> str:
    header = (
        "| backend | setup ms | eval ms (median) | eval ms (max-min) | program ms "
        "| forward ms | val. accuracy (mean +- std) |"
    )
    lines = [header, "|" + "---|" * 7]
    for row in rows:
        lines.append(
            f"| {row['backend']} | {row['setup_ms']:.1f} | {row['eval_ms']:.2f} "
            f"| {row['eval_ms_spread']:.2f} | {row['program_ms']:.2f} "
            f"| {row['forward_ms']:.2f} "
            f"| {row['accuracy']:.4f} +- {row['accuracy_std']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        # Small matrices gain nothing from threads, and on a shared machine extra
        # threads only add scheduling noise to the timings.
        torch.set_num_threads(args.threads)
    profile = load_profile(args.profile)
    data = load_dataset("digits", seed=args.seed)
    model = build_model("mlp", data.image_shape, data.num_classes, seed=args.seed)
    train_digitally(model, data.train, args.epochs, args.seed)
    with torch.no_grad():
        digital = model(data.validation.images).argmax(1) == data.validation.labels

    rows = [
        bench_backend(spec, profile, model, data.validation, args)
        for spec in args.backends.split(",")
    ]
    print(
        f"profile {profile.name}, {len(data.validation)} validation images, "
        f"{args.evaluations} evaluations after {args.warmup} warm-up, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"digital accuracy {float(digital.float().mean()):.4f}"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
