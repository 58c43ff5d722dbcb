"""Fault-map-aware gene bounds: keep genes within what their stuck cell pairs can hold.

A weight is stored as G+ - G- on a cell pair, each cell spanning normalized levels
0 to 1. A cell stuck at g_min holds 0 and one stuck at g_max holds 1, whatever is
written, so a pair with a stuck cell reaches only part of [-1, 1]: G+ stuck at g_max
gives [0, 1], G- stuck at g_max gives [-1, 0], both stuck give one value. Genes are
held inside that range, in weight units of the baseline's layer scale, so the GA
spends no mutations on weights the array cannot hold.
"""

from __future__ import annotations

import numpy as np
import torch

from memdeploy.genome import Genome

STUCK_OFF, STUCK_ON = 1, 2


def _cell_range(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low = np.where(state == STUCK_ON, 1.0, 0.0)
    high = np.where(state == STUCK_OFF, 0.0, 1.0)
    return low, high


def count_stuck(stuck_maps: dict[str, torch.Tensor]) -> int:
    """Return the number of stuck cells over every layer."""
    return int(sum(int((state != 0).sum()) for state in stuck_maps.values()))


def reachable_bounds(
    genome: Genome, stuck_maps: dict[str, torch.Tensor], baseline: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return per-gene (low, high) bounds; genes on free pairs are unbounded."""
    low = np.full(genome.size, -np.inf, dtype=np.float32)
    high = np.full(genome.size, np.inf, dtype=np.float32)
    for block in genome.blocks:
        if block.crossbar_layer not in stuck_maps:
            continue
        state = stuck_maps[block.crossbar_layer].numpy().reshape(2, -1)
        positive_low, positive_high = _cell_range(state[0])
        negative_low, negative_high = _cell_range(state[1])
        scale = float(np.abs(baseline[block.start : block.stop]).max())

        stuck = (state[0] != 0) | (state[1] != 0)
        span = slice(block.start, block.stop)
        low[span] = np.where(stuck, (positive_low - negative_high) * scale, -np.inf)
        high[span] = np.where(stuck, (positive_high - negative_low) * scale, np.inf)
    return low, high


def bounded(mutation, low: np.ndarray, high: np.ndarray):
    """Wrap a PyGAD mutation so its offspring stay within per-gene bounds."""

    def mutate(offspring, ga):
        return np.clip(mutation(offspring, ga), low, high)

    mutate.__name__ = f"bounded_{getattr(mutation, '__name__', 'mutation')}"
    return mutate
