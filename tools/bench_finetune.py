"""Time the noise-aware fine-tuning step inside the fitness, with and without each of
memdeploy's changes to it.

One step is a forward and backward pass of ProtoNet over a 5-way 5-shot 15-query
MNIST episode (100 images) with quantized, noisy crossbar weights against the
`paper-protonet-mnist` profile, and an Adam update. Variants, each in its own
subprocess so that the allocator setting of one does not reach another:

- plain: the step as written without memdeploy, in the default memory layout
  (`torch.func.functional_call` with the quantized, noisy weights).
- channels-last: `memdeploy.training.train`, which runs convolutions in
  channels-last layout.
- channels-last+malloc: the same, with `memdeploy.allocator.keep_freed_memory`.
- memdeploy: `LocalEvaluator.finetune` as the GA calls it, which adds the batch
  normalization folded into the convolutions and ReLU after max pooling
  (`memdeploy.crossbar_model.fold_for_finetuning`).

Variants alternate over rounds, so that a change of load hits all of them. The
table gives the median milliseconds per step, the convolution GFLOP rate (a step
costed at 3 forward passes) as a share of the measured float32 matrix-product rate,
and the speedup over plain. Before it, a line gives the time of the first block's
max pooling in both memory layouts.

Run from the repository root: `.venv/bin/python tools/bench_finetune.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
from bench_fitness import (
    cpu_model,
    flops_per_image,
    matmul_rates,
    require_freed_memory_kept,
    run_json_child,
)
from torch.func import functional_call

from backends import open_backend
from memdeploy.datasets import load_dataset
from memdeploy.evaluation import FitnessSettings, LocalEvaluator
from memdeploy.genome import Genome
from memdeploy.models import build_model
from memdeploy.profiles import load_profile
from memdeploy.quantize import layer_scale, quantize_ste
from memdeploy.tasks import make_task
from memdeploy.training import train

VARIANTS = ("plain", "channels-last", "channels-last+malloc", "memdeploy")
PROFILE = "paper-protonet-mnist"
STEPS_PER_CALL = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4, help="timed calls of 10 steps")
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser


def plain_steps(model, task, profile, steps: int, seed: int) -> None:
    """Noise-aware steps written without memdeploy's training loop."""
    genome = Genome(model)
    names = [b.name for b in genome.blocks if b.crossbar_layer is not None]
    spec = profile.weights
    sigma = math.hypot(spec.programming_noise, spec.read_noise)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)

    def forward(images):
        parameters = dict(model.named_parameters())
        for name in names:
            weight = parameters[name]
            noise = torch.randn(weight.shape, generator=generator)
            scale = layer_scale(weight, spec).detach()
            parameters[name] = quantize_ste(weight, spec) + noise * (sigma * scale)
        return functional_call(model, parameters, (images,))

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    model.eval()
    for _ in range(steps):
        loss = task.loss(forward, task.sample_batch(rng))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def run_child(variant: str, calls: int) -> dict:
    """Time `calls` calls of 10 steps of one variant; return the measurements."""
    if variant in ("channels-last+malloc", "memdeploy"):
        require_freed_memory_kept()
    data = load_dataset("mnist", seed=0)
    model = build_model("protonet", data.image_shape, data.num_classes, seed=0).eval()
    task = make_task("episodic", data, seed=0)
    profile = load_profile(PROFILE)
    settings = FitnessSettings(finetune_steps=STEPS_PER_CALL, finetune_lr=3e-4)
    evaluator = LocalEvaluator(
        model, task, open_backend("gaussian", profile, seed=0), profile, settings
    )
    genes = evaluator.genome.vector(model)

    def one_call(seed: int) -> None:
        if variant == "plain":
            plain_steps(model, task, profile, STEPS_PER_CALL, seed)
        elif variant == "memdeploy":
            evaluator.finetune(genes, (0, seed))
        else:
            train(model, task, steps=STEPS_PER_CALL, lr=3e-4, seed=seed,
                  profile=profile, batch_norm_updates=False)

    one_call(0)  # warm-up: oneDNN kernels, allocator
    seconds = []
    for call in range(1, calls + 1):
        started = time.perf_counter()
        one_call(call)
        seconds.append((time.perf_counter() - started) / STEPS_PER_CALL)
    return {
        "step_s": seconds,
        "flops_per_step": 3 * 100 * flops_per_image(model, data.image_shape),
        "load_average": os.getloadavg()[0],
    }


def max_pool_ms(memory_format, repeats: int = 20) -> float:
    """Return the median milliseconds of a 2x2 max pooling over the first block's
    activation (100 x 64 x 28 x 28 float32) in `memory_format`."""
    activation = torch.randn(100, 64, 28, 28).contiguous(memory_format=memory_format)
    torch.nn.functional.max_pool2d(activation, 2)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.nn.functional.max_pool2d(activation, 2)
        seconds.append(time.perf_counter() - started)
    return 1e3 * statistics.median(seconds)


def spawn_child(variant: str, args) -> dict:
    """Run one variant in a fresh Python process and return its measurements."""
    command = [sys.executable, __file__, "--child", variant, "--calls", str(args.calls)]
    command += ["--threads", str(args.threads)]
    return run_json_child(command, variant)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_child(args.child, args.calls)))
        return 0

    rates = matmul_rates()
    print(
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; float32 matmul "
        f"{rates[0]:.1f} GFLOP/s"
    )
    print(
        "max pooling of 100 x 64 x 28 x 28: "
        f"{max_pool_ms(torch.contiguous_format):.2f} ms contiguous, "
        f"{max_pool_ms(torch.channels_last):.2f} ms channels-last"
    )
    results = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant, runs in results.items():
            runs.append(spawn_child(variant, args))
    print("  variant                ms/step  GFLOP/s matmul  speedup   load")
    plain = None
    for variant, runs in results.items():
        step = statistics.median(s for run in runs for s in run["step_s"])
        plain = plain or step
        gflops = runs[0]["flops_per_step"] / 1e9 / step
        loads = ", ".join(f"{run['load_average']:.2f}" for run in runs)
        print(
            f"  {variant:21s} {step * 1e3:8.1f} {gflops:8.1f} {gflops / rates[0]:6.1%}"
            f" {plain / step:8.2f}   {loads}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
