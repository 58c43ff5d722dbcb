"""Stacked programming of the Gaussian backend against one-by-one programming."""

from __future__ import annotations

import pytest
import torch

from backends import CrossbarLayer, open_backend
from memdeploy.errors import WeightsError
from memdeploy.profiles import profile_from_dict

LAYERS = [
    CrossbarLayer("conv", "conv2d", (4, 2, 3, 3), padding=(1, 1)),
    CrossbarLayer("fc", "linear", (3, 16)),
]

PROFILES = {
    "noisy": {"weights": {"bits": 2, "programming_noise": 0.05}},
    "ternary": {"weights": {"quantization": "ternary", "programming_noise": 0.05}},
    "drift-faults-read": {
        "weights": {"bits": 4, "programming_noise": 0.03, "read_noise": 0.02},
        "drift": {"nu": 0.05, "nu_std": 0.02, "t_inference_s": 3600.0},
        "faults": {"stuck_rate": 0.05},
        "periphery": {"dac_bits": 6, "adc_bits": 6, "output_noise": 0.01},
    },
}


def _backend(name: str):
    data = {"schema_version": 1, "name": name} | PROFILES[name]
    backend = open_backend("gaussian", profile_from_dict(data), seed=3)
    backend.setup(LAYERS)
    return backend


def _stacked_weights(sets: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        layer.name: torch.randn((sets, *layer.weight_shape), generator=generator)
        for layer in LAYERS
    }


def _one(weights: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    return {name: stack[index] for name, stack in weights.items()}


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_stacked_set_reads_back_as_programmed_alone(profile_name):
    weights = _stacked_weights(3)
    stacked, alone = _backend(profile_name), _backend(profile_name)
    stacked.program_stack(weights, noise_seed=11)
    for index in range(3):
        stacked.select_stacked(index)
        alone.program(_one(weights, index), noise_seed=11)
        expected = alone.read_weights()
        for name, read in stacked.read_weights().items():
            assert torch.equal(read, expected[name]), (index, name)


@pytest.mark.parametrize("profile_name", sorted(PROFILES))
def test_stacked_set_forwards_as_programmed_alone(profile_name):
    weights = _stacked_weights(2)
    inputs = torch.randn(5, 2, 6, 6)
    stacked, alone = _backend(profile_name), _backend(profile_name)
    stacked.program_stack(weights, noise_seed=4)
    for index in range(2):
        stacked.select_stacked(index)
        alone.program(_one(weights, index), noise_seed=4)
        assert torch.equal(
            stacked.forward("conv", inputs), alone.forward("conv", inputs)
        )


def test_stacked_set_drifts_as_programmed_alone():
    weights = _stacked_weights(2)
    stacked, alone = _backend("drift-faults-read"), _backend("drift-faults-read")
    stacked.program_stack(weights, noise_seed=8)
    stacked.select_stacked(1)
    stacked.set_inference_time(86400.0)
    alone.program(_one(weights, 1), noise_seed=8)
    alone.set_inference_time(86400.0)
    assert torch.equal(stacked.read_weights()["fc"], alone.read_weights()["fc"])


def test_stack_statistics_count_every_set():
    weights = _stacked_weights(4)
    stacked, alone = _backend("drift-faults-read"), _backend("drift-faults-read")
    stats = stacked.program_stack(weights, noise_seed=1)
    single = alone.program(_one(weights, 0), noise_seed=1)
    assert len(stats) == 4
    assert all(item == single for item in stats)
    assert stacked.total_stats.cells_written == 4 * single.cells_written


def test_stack_of_wrong_shape_is_rejected():
    weights = _stacked_weights(2)
    weights["fc"] = weights["fc"][0]
    with pytest.raises(WeightsError, match=r"layer 'fc' have shape \(3, 16\)"):
        _backend("noisy").program_stack(weights, noise_seed=0)


def test_stack_with_nan_names_the_set():
    weights = _stacked_weights(3)
    weights["conv"][2, 0, 0, 0, 0] = float("nan")
    with pytest.raises(WeightsError, match="layer 'conv' of set 2 contain NaN"):
        _backend("noisy").program_stack(weights, noise_seed=0)


def test_select_without_stack_is_rejected():
    with pytest.raises(RuntimeError, match="call program_stack"):
        _backend("noisy").select_stacked(0)


def test_program_discards_the_stack():
    weights = _stacked_weights(2)
    backend = _backend("noisy")
    backend.program_stack(weights, noise_seed=0)
    backend.program(_one(weights, 0), noise_seed=0)
    with pytest.raises(RuntimeError, match="call program_stack"):
        backend.select_stacked(1)
