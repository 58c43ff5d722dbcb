"""Shared fixtures: tiny models and datasets that make end-to-end tests fast."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture
def tiny_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)
    )


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def summary_without_times(path) -> dict:
    """Read a run's summary.json without its wall times, which differ between runs."""
    import json
    from pathlib import Path

    summary = json.loads(Path(path).read_text())
    assert set(summary.pop("ga_time")) >= {"generation_s", "overhead_s"}
    return summary
