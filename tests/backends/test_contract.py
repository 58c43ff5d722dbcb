"""One contract for every crossbar backend, run against each registered backend.

Noise and fault figures are checked statistically against the profile. A residual
standard deviation must lie within 15% of the profile's figure over a few thousand
weights, where the standard error of the estimate is about 1%. Fault counts must lie
within five binomial standard deviations of the profile's rate.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from backends import CrossbarLayer
from memdeploy.errors import UnsupportedLayerError, WeightsError
from memdeploy.quantize import quantize


class TinyNet(nn.Module):
    """A Conv2d and a Linear layer on 1x6x6 inputs, with three classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(inputs)).flatten(1))

    def crossbar_layers(self) -> list[CrossbarLayer]:
        return [
            CrossbarLayer.from_module("conv", self.conv),
            CrossbarLayer.from_module("fc", self.fc),
        ]

    def weights(self) -> dict[str, torch.Tensor]:
        return {"conv": self.conv.weight.detach(), "fc": self.fc.weight.detach()}

    def forward_on(self, backend, inputs: torch.Tensor) -> torch.Tensor:
        """Run the model with both layers on `backend`, adding biases digitally."""
        hidden = backend.forward("conv", inputs) + self.conv.bias.view(1, -1, 1, 1)
        return backend.forward("fc", torch.relu(hidden).flatten(1)) + self.fc.bias


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def programmed(make_backend, profile, layers, weights, *, seed=0, noise_seed=1):
    backend = make_backend(profile, seed)
    backend.setup(layers)
    backend.program(weights, noise_seed=noise_seed)
    return backend


def uniform_weights(shape, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) * 2.0 - 1.0


LINEAR = CrossbarLayer("fc", "linear", (64, 96))
"""A 64x96 layer: 6,144 weights, enough for 15% bounds on a standard deviation."""


@torch.no_grad()
def test_ideal_profile_reproduces_digital_outputs(make_backend, make_profile):
    model = tiny_net()
    backend = programmed(
        make_backend, make_profile(), model.crossbar_layers(), model.weights()
    )
    inputs = torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))

    expected = model(inputs)
    outputs = model.forward_on(backend, inputs)

    error = (outputs - expected).abs().max() / expected.abs().max()
    assert error < 1e-5


@torch.no_grad()
def test_ideal_profile_keeps_digital_accuracy(make_backend, make_profile):
    model = tiny_net()
    backend = programmed(
        make_backend, make_profile(), model.crossbar_layers(), model.weights()
    )
    generator = torch.Generator().manual_seed(2)
    inputs = torch.randn(300, 1, 6, 6, generator=generator)
    labels = torch.randint(0, 3, (300,), generator=generator)

    digital = (model(inputs).argmax(1) == labels).float().mean()
    on_backend = (model.forward_on(backend, inputs).argmax(1) == labels).float().mean()

    assert on_backend == digital


def test_ideal_profile_reads_back_weights(make_backend, make_profile):
    model = tiny_net()
    weights = model.weights()
    backend = programmed(make_backend, make_profile(), model.crossbar_layers(), weights)

    read = backend.read_weights()

    for name, weight in weights.items():
        assert (read[name] - weight).abs().max() < 1e-5 * weight.abs().max()


@pytest.mark.parametrize(
    ("programming_noise", "read_noise"), [(0.05, 0.0), (0.03, 0.04)]
)
def test_readback_residual_matches_profile_noise(
    make_backend, make_profile, programming_noise, read_noise
):
    profile = make_profile(
        weights={
            "quantization": "uniform",
            "bits": 4,
            "programming_noise": programming_noise,
            "read_noise": read_noise,
        }
    )
    weight = uniform_weights(LINEAR.weight_shape)
    backend = programmed(make_backend, profile, [LINEAR], {"fc": weight})

    residual = backend.read_weights()["fc"] - quantize(weight, profile.weights)

    expected_std = math.hypot(programming_noise, read_noise) * weight.abs().max()
    assert 0.85 < residual.std() / expected_std < 1.15
    assert residual.mean().abs() < 5 * expected_std / math.sqrt(residual.numel())


def test_same_noise_seed_repeats_the_draw(make_backend, make_profile):
    profile = make_profile(weights={"programming_noise": 0.05, "read_noise": 0.02})
    weight = uniform_weights(LINEAR.weight_shape)
    backend = make_backend(profile, 0)
    if backend.capabilities.physical:
        pytest.skip("a physical array does not repeat its noise for a seed")
    backend.setup([LINEAR])

    backend.program({"fc": weight}, noise_seed=7)
    first = backend.read_weights()["fc"]
    backend.program({"fc": weight}, noise_seed=7)
    second = backend.read_weights()["fc"]

    assert torch.equal(first, second)


def test_different_noise_seeds_draw_independent_noise(make_backend, make_profile):
    profile = make_profile(weights={"programming_noise": 0.05})
    weight = uniform_weights(LINEAR.weight_shape)
    backend = make_backend(profile, 0)
    backend.setup([LINEAR])

    backend.program({"fc": weight}, noise_seed=1)
    first = backend.read_weights()["fc"] - weight
    backend.program({"fc": weight}, noise_seed=2)
    second = backend.read_weights()["fc"] - weight

    correlation = torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1]
    assert correlation.abs() < 5 / math.sqrt(first.numel())
    spread = (first - second).std() / (math.sqrt(2) * 0.05 * weight.abs().max())
    assert 0.85 < spread < 1.15


def test_drift_scales_readback_by_profile_factor(make_backend, make_profile):
    drift = {"nu": 0.1, "t0_s": 20.0, "t_inference_s": 3600.0, "compensation": False}
    profile = make_profile(drift=drift)
    weight = uniform_weights(LINEAR.weight_shape)
    backend = make_backend(profile, 0)
    if not backend.capabilities.drift:
        pytest.skip(f"{backend.name} does not model drift")
    backend.setup([LINEAR])
    backend.program({"fc": weight}, noise_seed=1)

    hour = backend.read_weights()["fc"] / weight
    backend.set_inference_time(86400.0)
    day = backend.read_weights()["fc"] / weight

    assert (hour - profile.drift_factor()).abs().max() < 1e-4
    assert (day - profile.drift_factor(86400.0)).abs().max() < 1e-4


STUCK_RATE, STUCK_ON_FRACTION = 0.05, 0.3


def stuck_profile(make_profile):
    return make_profile(
        weights={"quantization": "uniform", "bits": 4},
        faults={"stuck_rate": STUCK_RATE, "stuck_on_fraction": STUCK_ON_FRACTION},
    )


def signed_ones(shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 2, shape, generator=generator).float() * 2.0 - 1.0


def within_binomial(count: int, trials: int, rate: float) -> bool:
    mean = trials * rate
    return abs(count - mean) < 5 * math.sqrt(mean * (1.0 - rate))


def test_stuck_cells_appear_at_profile_rate(make_backend, make_profile):
    weight = signed_ones(LINEAR.weight_shape)
    backend = programmed(
        make_backend, stuck_profile(make_profile), [LINEAR], {"fc": weight}
    )

    wrong = (backend.read_weights()["fc"] - weight).abs() > 0.5

    # A +1 weight is wrong when its positive cell is stuck at g_min or its negative
    # cell at g_max. A -1 weight mirrors that.
    stuck_off, stuck_on = (
        STUCK_RATE * (1 - STUCK_ON_FRACTION),
        STUCK_RATE * STUCK_ON_FRACTION,
    )
    rate = 1.0 - (1.0 - stuck_off) * (1.0 - stuck_on)
    assert within_binomial(int(wrong.sum()), wrong.numel(), rate)


def test_stuck_cell_map_explains_readback(make_backend, make_profile):
    weight = signed_ones(LINEAR.weight_shape)
    backend = programmed(
        make_backend, stuck_profile(make_profile), [LINEAR], {"fc": weight}
    )
    if not backend.capabilities.fault_map:
        pytest.skip(f"{backend.name} reports no stuck-cell map")

    state = backend.stuck_cells()["fc"]
    wrong = (backend.read_weights()["fc"] - weight).abs() > 0.5

    positive_cell_wrong = torch.where(weight > 0, state[0] == 1, state[0] == 2)
    negative_cell_wrong = torch.where(weight > 0, state[1] == 2, state[1] == 1)
    assert within_binomial(int((state != 0).sum()), state.numel(), STUCK_RATE)
    assert within_binomial(
        int((state == 2).sum()), int((state != 0).sum()), STUCK_ON_FRACTION
    )
    assert torch.equal(wrong, positive_cell_wrong | negative_cell_wrong)


def test_unmappable_layer_kind_is_rejected(make_backend, make_profile):
    backend = make_backend(make_profile(), 0)
    layer = CrossbarLayer("head.voxels", "conv3d", (2, 2, 3, 3, 3))

    with pytest.raises(UnsupportedLayerError, match=r"'head\.voxels'.*conv3d"):
        backend.setup([layer])


@torch.no_grad()
def test_grouped_conv_is_exact_or_rejected(make_backend, make_profile):
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
    layer = CrossbarLayer.from_module("block.grouped", conv)
    inputs = torch.randn(2, 4, 5, 5)
    backend = make_backend(make_profile(), 0)

    try:
        backend.setup([layer])
        backend.program({"block.grouped": conv.weight})
        outputs = backend.forward("block.grouped", inputs)
    except UnsupportedLayerError as err:
        assert "'block.grouped'" in str(err)
        assert "groups=2" in str(err)
        return
    expected = conv(inputs)
    assert (outputs - expected).abs().max() < 1e-5 * expected.abs().max()


def test_weights_of_wrong_shape_are_rejected(make_backend, make_profile):
    backend = make_backend(make_profile(), 0)
    backend.setup([LINEAR])

    with pytest.raises(WeightsError, match=r"'fc'.*\(96, 64\).*\(64, 96\)"):
        backend.program({"fc": torch.zeros(96, 64)})


def test_missing_layer_weights_are_rejected(make_backend, make_profile):
    backend = make_backend(make_profile(), 0)
    backend.setup([LINEAR])

    with pytest.raises(WeightsError, match="'fc'"):
        backend.program({})
