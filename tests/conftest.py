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
