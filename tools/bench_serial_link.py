"""Link traffic per GA candidate on the serial array: delta against full programming.

Each candidate is the parent MLP 64-32-10 (scikit-learn digits sized) with 1% of its
weights mutated. The tool programs a population of them onto an emulated
lab-array-32x32 over a pseudo-terminal. Per candidate it reports the cells written,
the bytes on the link and the link time at the given baud rate (10 bit times per byte,
8N1). The wall time is that of the emulator on this machine, not of a UART.

    .venv/bin/python tools/bench_serial_link.py --candidates 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from backends import CrossbarLayer
from backends.emulator import start_emulator
from backends.serial_array import SerialArrayBackend
from memdeploy.profiles import load_profile

PROFILE = "lab-array-32x32"
MUTATIONS = ("add-noise", "max-min")
PROGRAMMING = {
    "full": {"delta": "0"},
    "delta": {},
    "delta, fixed scale": {"fixed_scale": "1"},
}


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )


def mutate(weights, kind, rate, generator) -> dict[str, np.ndarray]:
    """Mutate a fraction `rate` of the genes the way memdeploy's GA operators do.

    `add-noise` adds Gaussian noise of 0.05 x max|w| of the layer; `max-min` replaces
    the gene by a uniform draw over the layer's range widened by 10%, as the max-min
    mutation's reference models widen it.
    """
    mutated = {}
    for name, weight in weights.items():
        weight = weight.copy()
        mask = generator.random(weight.shape) < rate
        bound = np.abs(weight).max()
        if kind == "add-noise":
            weight[mask] += generator.standard_normal(mask.sum()) * 0.05 * bound
        else:
            weight[mask] = generator.uniform(-1.1 * bound, 1.1 * bound, mask.sum())
        mutated[name] = weight
    return mutated


def run_case(model, candidates, inputs, *, options, tiles) -> dict[str, float]:
    profile = load_profile(PROFILE)
    layers = [
        CrossbarLayer("0", "linear", (32, 64)),
        CrossbarLayer("2", "linear", (10, 32)),
    ]
    with start_emulator(profile, tiles=tiles) as emulator:
        backend = SerialArrayBackend(
            profile, options={"target": emulator.url, **options}
        )
        backend.setup(layers)
        backend.program({name: torch.from_numpy(w) for name, w in model.items()})

        totals = {"cells": 0.0, "bytes": 0.0, "link_s": 0.0, "wall_s": 0.0}
        for candidate in candidates:
            started = time.perf_counter()
            stats = backend.program(
                {n: torch.from_numpy(w) for n, w in candidate.items()}
            )
            totals["wall_s"] += time.perf_counter() - started
            totals["cells"] += stats.cells_written
            totals["bytes"] += stats.bytes_sent + stats.bytes_received
            totals["link_s"] += stats.link_time_s

        link = backend.client.link
        before = link.link_bytes
        hidden = torch.relu(backend.forward("0", inputs))
        backend.forward("2", hidden)
        inference_bytes = link.link_bytes - before
        backend.close()

    per_candidate = {key: value / len(candidates) for key, value in totals.items()}
    per_candidate["inference_bytes"] = inference_bytes
    return per_candidate


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument(
        "--rate", type=float, default=0.01, help="fraction of genes mutated"
    )
    parser.add_argument("--baudrate", type=int, default=921600)
    parser.add_argument("--inputs", type=int, default=360, help="inference vectors")
    parser.add_argument("--tiles", type=int, default=8, help="tiles of the emulator")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    parent = {
        name.split(".")[0]: p.detach().numpy().copy()
        for name, p in mlp().named_parameters()
        if name.endswith("weight")
    }
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.rand(args.inputs, 64, generator=generator)

    print(
        "| mutation | mode | programming | cells / candidate | bytes / candidate | "
        f"link time / candidate at {args.baudrate} baud (s) | emulator wall / "
        f"candidate (s) | on-chip inference bytes, {args.inputs} inputs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind in MUTATIONS:
        rng = np.random.default_rng(args.seed)
        candidates = [
            mutate(parent, kind, args.rate, rng) for _ in range(args.candidates)
        ]
        for mode in ("onchip", "readback"):
            for label, extra in PROGRAMMING.items():
                options = {"baudrate": str(args.baudrate), "mode": mode, **extra}
                result = run_case(
                    parent, candidates, inputs, options=options, tiles=args.tiles
                )
                print_row(kind, mode, label, result)


def print_row(kind: str, mode: str, label: str, result: dict[str, float]) -> None:
    """Print one Markdown table row of per-candidate figures."""
    inference = result["inference_bytes"] if mode == "onchip" else 0
    figures = (
        f"{result['cells']:.0f} | {result['bytes']:.0f} | {result['link_s']:.4f} | "
        f"{result['wall_s']:.4f} | {inference:.0f}"
    )
    print(f"| {kind} | {mode} | {label} | {figures} |")


if __name__ == "__main__":
    main()
