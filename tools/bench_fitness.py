"""Compare fitness evaluations per second: the plain PyGAD pattern and memdeploy's loop.

Both variants score the same population (seeded perturbations of the model's initial
weights) on the same validation images, on the gaussian backend with the same noise
seed, without fine-tuning:

(a) plain: the pygad.torchga pattern. For each candidate, in turn: its torchga weights
    vector (state-dict order, buffers included; built before timing) becomes a state
    dictionary with `pygad.torchga.model_weights_as_dict`, which `load_state_dict`
    loads into a `CrossbarModel` built once in the default memory layout; the
    crossbar weights from that dictionary are programmed with `backend.program`; all
    scoring images go through the model in one forward call, as
    `pygad.torchga.predict` runs its data; `task.score` turns the outputs into
    accuracy.
(b) memdeploy: `LocalEvaluator.evaluate` on one `EvaluationRequest` that carries the
    whole population.

Every variant runs in its own subprocess, so that its peak resident memory
(`ru_maxrss`) is its own; variants alternate over rounds, so that a change of load
hits both. The last line is `speedup: R`, the ratio of (b)'s to (a)'s evaluations per
second on ProtoNet with MNIST.

Run from the repository root:

    .venv/bin/python tools/bench_fitness.py --rounds 2 --repeats 3
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

WORKLOADS = {
    # name: (model, dataset, profile)
    "mlp-digits": ("mlp", "digits", "paper-protonet-mnist"),
    "protonet-mnist": ("protonet", "mnist", "paper-protonet-mnist"),
}
NOISE_SEED = 1234
MATMUL_SIZE = 2048


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--population", type=int, default=10, help="candidates per request"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed requests per round"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="subprocesses per variant"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma-separated workloads"
    )
    parser.add_argument(
        "--child", nargs=2, metavar=("WORKLOAD", "VARIANT"), help=argparse.SUPPRESS
    )
    return parser


def build_workload(name: str, population_size: int):
    """Return the model, its task, its evaluator (gaussian backend) and a population."""
    from backends import open_backend
    from memdeploy.datasets import load_dataset
    from memdeploy.evaluation import LocalEvaluator
    from memdeploy.models import build_model, task_kind
    from memdeploy.profiles import load_profile
    from memdeploy.tasks import make_task

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
    from pygad import torchga

    from backends import open_backend
    from memdeploy.crossbar_model import CrossbarModel

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
    from memdeploy.evaluation import EvaluationRequest

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
    model, task, evaluator, population = build_workload(workload, population_size)
    make = plain_variant if variant == "plain" else memdeploy_variant
    score_population = make(model, task, evaluator, population)
    score_population()  # warm-up: allocator, oneDNN kernels, cached inputs
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

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
        "rss_before_timing_mib": rss_before_kib / 1024,
        "load_average": os.getloadavg()[0],
    }


def spawn_child(workload: str, variant: str, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        workload,
        variant,
        "--population",
        str(args.population),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{workload} {variant} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def matmul_rate_gflops(repeats: int = 7) -> float:
    """Median float32 rate of a 2048 x 2048 matrix product, in GFLOP/s."""
    left, right = (
        torch.randn(MATMUL_SIZE, MATMUL_SIZE),
        torch.randn(MATMUL_SIZE, MATMUL_SIZE),
    )
    left @ right
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        left @ right
        times.append(time.perf_counter() - started)
    return 2 * MATMUL_SIZE**3 / statistics.median(times) / 1e9


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(
    workload: str, results: dict[str, list[dict]], population: int, rate: float
):
    """Print one workload's table; return (b)'s speedup over (a)."""
    print(f"\n{workload}: {population} candidates per request")
    evals_per_s = {}
    for variant, runs in results.items():
        wall = [t for run in runs for t in run["wall_s"]]
        cpu = [t for run in runs for t in run["cpu_s"]]
        evals_per_s[variant] = population / statistics.median(wall)
        flops = runs[0]["flops_per_eval"]
        loads = ", ".join(f"{run['load_average']:.2f}" for run in runs)
        print(
            f"  {variant:9s} {evals_per_s[variant]:8.2f} evals/s (wall, median of "
            f"{len(wall)}), {statistics.median(cpu) / population * 1e3:8.1f} ms CPU per "
            f"eval, {flops * evals_per_s[variant] / 1e9:6.1f} GFLOP/s = "
            f"{flops * evals_per_s[variant] / 1e9 / rate:5.1%} of matmul, peak RSS "
            f"{max(run['peak_rss_mib'] for run in runs):7.1f} MiB (before timing "
            f"{max(run['rss_before_timing_mib'] for run in runs):7.1f}), load "
            f"{loads}"
        )
        print(f"            accuracies {[round(a, 6) for a in runs[0]['accuracies']]}")
    identical = (
        results["plain"][0]["accuracies"] == results["memdeploy"][0]["accuracies"]
    )
    print(f"  same weights and noise seed give identical accuracy: {identical}")
    print(
        f"  {runs[0]['flops_per_eval'] / 1e9:.3f} GFLOP per evaluation "
        f"({runs[0]['images_per_eval']} images)"
    )
    return evals_per_s["memdeploy"] / evals_per_s["plain"], identical


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_child(*args.child, args.population, args.repeats)))
        return 0

    rate = matmul_rate_gflops()
    print(
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; load average "
        f"{' '.join(f'{value:.2f}' for value in os.getloadavg())}"
    )
    print(
        f"float32 matmul {MATMUL_SIZE}x{MATMUL_SIZE}: {rate:.1f} GFLOP/s (median of 7)"
    )
    speedups, all_identical = {}, True
    for workload in args.workloads.split(","):
        results = {"plain": [], "memdeploy": []}
        for _ in range(args.rounds):
            for variant, runs in results.items():
                runs.append(spawn_child(workload, variant, args))
        speedups[workload], identical = summarize(
            workload, results, args.population, rate
        )
        all_identical = all_identical and identical
        print(f"  speedup of memdeploy over plain: {speedups[workload]:.2f}")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"speedup: {speedups.get('protonet-mnist', float('nan')):.2f}")
    return 0 if all_identical else 1


if __name__ == "__main__":
    sys.exit(main())
