"""Gene bounds from stuck-cell maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memdeploy.faults import bounded, count_stuck, reachable_bounds
from memdeploy.genome import Genome

FREE, OFF, ON = 0, 1, 2

CASES = [
    # (positive cell, negative cell, low, high) in units of the layer scale
    (FREE, FREE, -np.inf, np.inf),
    (ON, FREE, 0.0, 1.0),
    (FREE, ON, -1.0, 0.0),
    (OFF, FREE, -1.0, 0.0),
    (FREE, OFF, 0.0, 1.0),
    (ON, ON, 0.0, 0.0),
    (ON, OFF, 1.0, 1.0),
    (OFF, ON, -1.0, -1.0),
]


@pytest.mark.parametrize("positive, negative, low, high", CASES)
def test_pair_state_bounds_weight(positive, negative, low, high):
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(-0.5)
    model = torch.nn.Sequential(layer)
    genome = Genome(model)
    baseline = genome.vector(model)
    state = torch.tensor([positive, negative], dtype=torch.int8).view(2, 1, 1)
    lows, highs = reachable_bounds(genome, {"0": state}, baseline)
    assert lows[0] == pytest.approx(low * 0.5)
    assert highs[0] == pytest.approx(high * 0.5)


def test_count_stuck_counts_cells():
    maps = {"a": torch.tensor([[0, 1], [2, 0]], dtype=torch.int8), "b": torch.zeros(3)}
    assert count_stuck(maps) == 2


def test_bounded_mutation_clips_offspring():
    low = np.array([-np.inf, 0.0, -1.0], dtype=np.float32)
    high = np.array([np.inf, 1.0, -1.0], dtype=np.float32)

    def explode(offspring, ga):
        return offspring * 100.0

    mutate = bounded(explode, low, high)
    result = mutate(np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=np.float32), None)
    assert result.tolist() == [[100.0, 1.0, -1.0], [-100.0, 0.0, -1.0]]
