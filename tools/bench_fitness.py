"""Compare fitness evaluations per second: the plain PyGAD pattern and memdeploy's loop.

Both variants score the same population (seeded perturbations of the model's initial
weights) on the same validation images, on the gaussian backend with the same noise
seed, without fine-tuning:

(a) plain: the pygad.torchga pattern, candidate by candidate. The candidate's torchga
    weights vector (state-dict order with buffers, built before timing) becomes a
    state dictionary with `pygad.torchga.model_weights_as_dict`. `load_state_dict`
    loads it into a `CrossbarModel` that is built once, without fused digital steps.
    `backend.program` programs the crossbar weights from that dictionary. All scoring
    images go through the model in one forward call, as `pygad.torchga.predict` runs
    its data, and `task.score` turns the outputs into accuracy.
(b) memdeploy: `LocalEvaluator.evaluate` on one `EvaluationRequest` that carries the
    whole population, in a process that set glibc's allocator to keep freed memory
    (`memdeploy.allocator.keep_freed_memory`), as the memdeploy command does.

A third row, plain+malloc, runs (a) with that allocator setting too, to show how
much of the difference the allocator alone makes.

Every variant runs in its own subprocess, so that its peak resident memory
(`ru_maxrss`) is its own. Variants alternate over rounds, so that a change of load
hits both. Per variant the table gives evaluations per second, CPU ms per evaluation,
the Conv2d and Linear GFLOP rate per wall second and per CPU-second (each also as a
share of the matrix-product rate measured the same way), peak resident memory, that
before the first scoring, and the load average. The last line is `speedup: R`, (b)'s
evaluations per second over (a)'s on ProtoNet with MNIST.

Run from the repository root: `.venv/bin/python tools/bench_fitness.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from pygad import torchga

from backends import open_backend
from memdeploy.allocator import keep_freed_memory
from memdeploy.crossbar_model import CrossbarModel
from memdeploy.datasets import load_dataset
from memdeploy.evaluation import EvaluationRequest, LocalEvaluator
from memdeploy.models import build_model, task_kind
from memdeploy.profiles import load_profile
from memdeploy.tasks import make_task

WORKLOADS = {
    # name: (model, dataset, profile)
    "mlp-digits": ("mlp", "digits", "paper-protonet-mnist"),
    "protonet-mnist": ("protonet", "mnist", "paper-protonet-mnist"),
}
NOISE_SEED = 1234
MATMUL_SIZE = 2048


INTEGER_OPTIONS = (
    ("--population", 10, "candidates per request"),
    ("--repeats", 3, "timed requests per round"),
    ("--rounds", 2, "subprocesses per variant"),
    ("--threads", 0, "torch CPU threads (0: torch's default)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default, help_text in INTEGER_OPTIONS:
        parser.add_argument(flag, type=int, default=default, help=help_text)
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated workloads"
    )
    parser.add_argument(
        "--child", nargs=2, metavar=("WORKLOAD", "VARIANT"), help=argparse.SUPPRESS
    )
    return parser


def build_workload(name: str, population_size: int):
    """Return the model, its task, its evaluator (gaussian backend) and a population."""
    model_name, dataset, profile_name = WORKLOADS[name]
    data = load_dataset(dataset, seed=0)
    model = build_model(model_name, data.image_shape, data.num_classes, seed=0).eval()
    task = make_task(task_kind(model), data, seed=0)
    profile = load_profile(profile_name)
    backend = open_backend("gaussian", profile, seed=0)
    evaluator = LocalEvaluator(model, task, backend, profile)
    genes = evaluator.genome.vector(model)
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.02 * np.abs(genes).max(), (population_size, genes.size))
    return model, task, evaluator, (genes + noise).astype(np.float32)


def plain_variant(model, task, evaluator, population):
    """Return a function scoring the population the pygad.torchga way (variant a)."""
    backend = open_backend("gaussian", evaluator.profile, seed=0)
    crossbar = CrossbarModel(model, backend)
    layers = [layer.name for layer in crossbar.genome.crossbar_layers]
    vectors = []
    for genes in population:
        crossbar.genome.load(crossbar.module, genes.copy())
        vectors.append(torchga.model_weights_as_vector(crossbar.module))
    images = torch.cat(task.evaluation_inputs("validation"))

    def score_population() -> list[float]:
        accuracies = []
        for vector in vectors:
            state = torchga.model_weights_as_dict(crossbar.module, vector)
            crossbar.module.load_state_dict(state)
            backend.program(
                {name: state[f"{name}.weight"] for name in layers},
                noise_seed=NOISE_SEED,
            )
            accuracies.append(task.score(crossbar(images), "validation"))
        return accuracies

    return score_population


def memdeploy_variant(model, task, evaluator, population):
    """Return a function scoring the population with `LocalEvaluator` (variant b)."""
    request = EvaluationRequest(
        population,
        generation=0,
        noise_seed=NOISE_SEED,
        candidate_ids=tuple(range(len(population))),
    )

    def score_population() -> list[float]:
        return evaluator.evaluate(request).fitness.tolist()

    return score_population


def flops_per_image(model, image_shape) -> int:
    """Count the floating-point operations of the model's Conv2d and Linear layers."""
    total = [0]

    def count(module, inputs, output):
        per_output = module.weight[0].numel()  # in_features, or in/groups x kh x kw
        total[0] += 2 * per_output * output[0].numel()

    layers = [
        m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    with torch.inference_mode():
        model(torch.zeros(1, *image_shape))
    for hook in hooks:
        hook.remove()
    return total[0]


def run_child(workload: str, variant: str, population_size: int, repeats: int) -> dict:
    """Time `repeats` scorings of the population; return the measurements."""
    if variant != "plain":
        require_freed_memory_kept()
    model, task, evaluator, population = build_workload(workload, population_size)
    make = memdeploy_variant if variant == "memdeploy" else plain_variant
    score_population = make(model, task, evaluator, population)
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    score_population()  # warm-up: allocator, oneDNN kernels, cached inputs

    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        accuracies = score_population()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    images = sum(len(batch) for batch in task.evaluation_inputs("validation"))
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "accuracies": accuracies,
        "flops_per_eval": images * flops_per_image(model, task.data.image_shape),
        "images_per_eval": images,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_scoring_mib": rss_before_kib / 1024,
        "load_average": os.getloadavg()[0],
    }


def require_freed_memory_kept() -> None:
    """Set the allocator as the memdeploy command does, or raise saying why not."""
    if not keep_freed_memory():
        raise RuntimeError(
            "could not set the allocator: this needs Linux with glibc and neither "
            "MALLOC_MMAP_THRESHOLD_ nor MALLOC_TRIM_THRESHOLD_ set"
        )


def run_json_child(command: list[str], name: str) -> dict:
    """Run a benchmark child process and return the JSON object on its last line."""
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def spawn_child(workload: str, variant: str, args) -> dict:
    """Run one variant in a fresh Python process and return its measurements."""
    options = {"--population": args.population, "--repeats": args.repeats}
    options["--threads"] = args.threads
    command = [sys.executable, __file__, "--child", workload, variant]
    command += [str(value) for option in options.items() for value in option]
    return run_json_child(command, f"{workload} {variant}")


def matmul_rates(repeats: int = 7) -> tuple[float, float]:
    """Return the float32 rate of a 2048 x 2048 matrix product: GFLOP per second of
    wall time and GFLOP per CPU-second, each the median of `repeats`."""
    left = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    right = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    left @ right
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        left @ right
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    flops = 2 * MATMUL_SIZE**3 / 1e9
    return flops / statistics.median(wall), flops / statistics.median(cpu)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def variant_row(variant: str, runs: list[dict], population: int, rates) -> dict:
    """Print one variant's line of the table and return its medians."""
    wall = statistics.median(t for run in runs for t in run["wall_s"]) / population
    cpu = statistics.median(t for run in runs for t in run["cpu_s"]) / population
    gflop = runs[0]["flops_per_eval"] / 1e9
    loads = ", ".join(f"{run['load_average']:.2f}" for run in runs)
    print(
        f"  {variant:12s} {1 / wall:8.2f} {cpu * 1e3:9.1f} {gflop / wall:7.1f} "
        f"{gflop / wall / rates[0]:6.1%} {gflop / cpu:7.1f} {gflop / cpu / rates[1]:6.1%}"
        f" {max(run['peak_rss_mib'] for run in runs):8.1f}"
        f" {max(run['rss_before_scoring_mib'] for run in runs):8.1f}   {loads}"
    )
    return {"wall": wall, "cpu": cpu, "accuracies": runs[0]["accuracies"]}


def summarize(workload: str, results: dict[str, list[dict]], population: int, rates):
    """Print one workload's table; return (b)'s wall-time speedup and whether the
    accuracies of (a) and (b) are identical."""
    first = results["plain"][0]
    print(
        f"\n{workload}: {population} candidates per request, "
        f"{first['flops_per_eval'] / 1e9:.3f} GFLOP per evaluation "
        f"({first['images_per_eval']} images)"
    )
    print(
        "  variant       evals/s  CPU ms/ev  GFLOP/s matmul  GF/CPUs matmul"
        "  peak MiB  pre MiB   load"
    )
    rows = {v: variant_row(v, runs, population, rates) for v, runs in results.items()}
    for variant, row in rows.items():
        print(f"  accuracy {variant:12s} {[round(a, 6) for a in row['accuracies']]}")
    identical = all(
        row["accuracies"] == rows["memdeploy"]["accuracies"] for row in rows.values()
    )
    print(f"  same weights and noise seed give identical accuracy: {identical}")
    speedup = rows["plain"]["wall"] / rows["memdeploy"]["wall"]
    cpu_speedup = rows["plain"]["cpu"] / rows["memdeploy"]["cpu"]
    print(
        f"  speedup of memdeploy over plain: {speedup:.2f} in wall time, "
        f"{cpu_speedup:.2f} in CPU time; over plain+malloc: "
        f"{rows['plain+malloc']['wall'] / rows['memdeploy']['wall']:.2f} in wall time"
    )
    return speedup, identical


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_child(*args.child, args.population, args.repeats)))
        return 0

    rates = matmul_rates()
    loads = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; load average {loads}"
    )
    print(
        f"float32 matmul {MATMUL_SIZE}x{MATMUL_SIZE}: {rates[0]:.1f} GFLOP/s wall, "
        f"{rates[1]:.1f} GFLOP per CPU-second (medians of 7)"
    )
    speedups, all_identical = {}, True
    for workload in args.workloads.split(","):
        results = {"plain": [], "plain+malloc": [], "memdeploy": []}
        for _ in range(args.rounds):
            for variant, runs in results.items():
                runs.append(spawn_child(workload, variant, args))
        speedups[workload], identical = summarize(
            workload, results, args.population, rates
        )
        all_identical = all_identical and identical
    loads = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\nload average at the end: {loads}")
    print(f"speedup: {speedups.get('protonet-mnist', float('nan')):.2f}")
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
