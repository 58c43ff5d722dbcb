"""Gaussian-noise backend figures against the definition of "p% noise"."""

from __future__ import annotations

import pytest
import torch

from backends import CrossbarLayer, open_backend
from memdeploy.errors import BackendSpecError, WeightsError
from memdeploy.profiles import profile_from_dict
from memdeploy.quantize import quantize


def _profile(**weights):
    data = {"schema_version": 1, "name": "test", "weights": {"bits": 2} | weights}
    return profile_from_dict(data)


def _programmed(profile, weight, seed=0, noise_seed=1):
    backend = open_backend("gaussian", profile, seed=seed)
    backend.setup([CrossbarLayer("fc", "linear", tuple(weight.shape))])
    backend.program({"fc": weight}, noise_seed=noise_seed)
    return backend


def test_programming_noise_is_p_times_layer_max():
    torch.manual_seed(0)
    weight = torch.randn(200, 100)
    backend = _programmed(_profile(programming_noise=0.05), weight)
    residual = backend.read_weights()["fc"] - quantize(weight, backend.profile.weights)
    expected = 0.05 * weight.abs().max()
    assert residual.mean().abs() < 0.05 * expected
    assert residual.std() == pytest.approx(float(expected), rel=0.03)


def test_read_noise_is_drawn_per_read():
    weight = torch.randn(50, 40)
    backend = _programmed(_profile(read_noise=0.02), weight)
    first = backend.read_weights()["fc"]
    second = backend.read_weights()["fc"]
    spread = (first - second).std() / (0.02 * weight.abs().max() * 2**0.5)
    assert spread == pytest.approx(1.0, rel=0.05)


def test_same_noise_seed_programs_same_weights():
    weight = torch.randn(30, 20)
    profile = _profile(programming_noise=0.1)
    first = _programmed(profile, weight, noise_seed=5).read_weights()["fc"]
    second = _programmed(profile, weight, noise_seed=5).read_weights()["fc"]
    other = _programmed(profile, weight, noise_seed=6).read_weights()["fc"]
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_stuck_cells_follow_profile_rate_and_pin_weights():
    profile = profile_from_dict(
        {
            "schema_version": 1,
            "name": "faulty",
            "weights": {"bits": 4},
            "faults": {"stuck_rate": 0.05, "stuck_on_fraction": 1.0},
        }
    )
    weight = torch.zeros(100, 100)
    backend = _programmed(profile, weight)
    stuck = backend.stuck_cells()["fc"]
    assert (stuck != 0).float().mean() == pytest.approx(0.05, abs=0.006)
    read = backend.read_weights()["fc"]
    positive_only = (stuck[0] == 2) & (stuck[1] == 0)
    assert torch.all(read[positive_only] > 0)


def test_nan_weights_are_rejected_before_programming():
    weight = torch.ones(3, 3)
    weight[1, 1] = float("nan")
    with pytest.raises(WeightsError, match="layer 'fc' contain NaN or infinite"):
        _programmed(_profile(), weight)


def test_unknown_option_is_rejected():
    with pytest.raises(BackendSpecError, match="does not take option.*colour"):
        open_backend("gaussian?colour=red", _profile())


def test_conv_forward_matches_unrolled_matrix_product():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, stride=2)
    backend = open_backend("gaussian", _profile(programming_noise=0.05), seed=0)
    backend.setup([CrossbarLayer.from_module("conv", conv)])
    backend.program({"conv": conv.weight}, noise_seed=0)
    inputs = torch.randn(2, 3, 9, 9)
    native = backend.forward("conv", inputs)
    unrolled = backend._conv_by_mvm(backend.layers["conv"], inputs)
    assert torch.allclose(native, unrolled, atol=1e-5)


def test_drift_exponents_stay_fixed_across_inference_times():
    profile = profile_from_dict({
        "schema_version": 1, "name": "drifting", "weights": {"bits": 4},
        "drift": {"nu": 0.06, "nu_std": 0.03, "t_inference_s": 3600.0,
                  "compensation": False},
    })
    weight = torch.randn(40, 30)
    backend = _programmed(profile, weight)
    at_hour = backend.read_weights()["fc"]
    backend.set_inference_time(86400.0)
    backend.set_inference_time(3600.0)
    assert torch.equal(backend.read_weights()["fc"], at_hour)
