"""Weight quantization to cell-pair levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memdeploy.profiles import WeightSpec
from memdeploy.quantize import quantize, quantize_levels, quantize_ste


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_uniform_levels_count_and_span(bits):
    weight = torch.linspace(-2.0, 2.0, 1001)
    levels = quantize_levels(weight, WeightSpec(bits=bits))
    values = np.unique(np.round(levels.numpy(), 6))
    assert len(values) == 2**bits
    assert values.min() == -1.0
    assert values.max() == 1.0
    assert np.allclose(np.diff(values), 2.0 / (2**bits - 1), atol=1e-6)


def test_uniform_quantization_rounds_to_nearest_level():
    weight = torch.tensor([-1.0, -0.5, -0.2, 0.1, 0.7, 1.0])
    expected = np.array([-1.0, -1 / 3, -1 / 3, 1 / 3, 1.0, 1.0])
    assert np.allclose(quantize(weight, WeightSpec(bits=2)).numpy(), expected, atol=1e-6)


def test_ternary_levels_use_threshold_of_mean_magnitude():
    weight = torch.tensor([-1.0, -0.1, 0.05, 0.6, 0.9])
    threshold = 0.7 * weight.abs().mean()
    scale = weight.abs()[weight.abs() > threshold].mean()
    levels = quantize_levels(weight, WeightSpec(quantization="ternary"))
    assert levels.tolist() == [-1.0, 0.0, 0.0, 1.0, 1.0]
    assert torch.allclose(quantize(weight, WeightSpec(quantization="ternary")), levels * scale)


def test_no_quantization_keeps_weights():
    weight = torch.tensor([0.3, -0.7, 0.01])
    assert torch.allclose(quantize(weight, WeightSpec(quantization="none")), weight)


def test_all_zero_layer_stays_zero():
    weight = torch.zeros(5)
    assert torch.equal(quantize(weight, WeightSpec(bits=3)), weight)


def test_straight_through_gradient_is_identity():
    weight = torch.tensor([0.2, -0.9, 0.5], requires_grad=True)
    quantize_ste(weight, WeightSpec(bits=2)).sum().backward()
    assert torch.equal(weight.grad, torch.ones(3))
