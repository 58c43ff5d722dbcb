"""What the aihwkit backend adds to the contract: tiles, drift, PCM and the RPU config."""

from __future__ import annotations

import math
import re
import sys

import pytest
import torch

from backends import CrossbarLayer, open_backend
from backends.aihwkit_backend import (
    AihwkitBackend,
    aihwkit_import_problem,
    compiled_tiles_problem,
)
from memdeploy.errors import (
    BackendError,
    BackendSpecError,
    BackendUnavailableError,
    ProfileError,
)
from memdeploy.profiles import load_profile, profile_from_dict
from memdeploy.quantize import quantize

pytestmark = pytest.mark.skipif(
    aihwkit_import_problem() is not None, reason=str(aihwkit_import_problem())
)

LINEAR = CrossbarLayer("fc", "linear", (64, 96))


def uniform_weights(shape, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) * 2.0 - 1.0


def programmed(profile, layers, weights, spec: str = "aihwkit") -> AihwkitBackend:
    backend = open_backend(spec, profile, seed=0)
    backend.setup(layers)
    backend.program(weights, noise_seed=1)
    return backend


def shipped_profile(name: str, **sections: dict):
    data = load_profile(name).model_dump()
    for section, values in sections.items():
        data[section].update(values)
    return profile_from_dict(data)


DRIFT = {"nu": 0.1, "nu_std": 0.0, "t0_s": 20.0, "t_inference_s": 3600.0}


def test_large_layer_spans_several_tiles(make_profile):
    backend = open_backend("aihwkit", make_profile(tile={"rows": 16, "cols": 8}))
    linear = CrossbarLayer("fc", "linear", (20, 40))
    conv = CrossbarLayer("conv", "conv2d", (10, 3, 3, 3))

    backend.setup([linear, conv])

    modules = backend.analog_modules
    # ceil(40 / 16) input splits times ceil(20 / 4) output splits: a pair per
    # output takes two of the 8 bit lines.
    assert len(list(modules["fc"].analog_tiles())) == 15
    # 3 x 3 x 3 = 27 inputs make two input splits, and 10 outputs three output splits
    assert len(list(modules["conv"].analog_tiles())) == 6


def test_layer_within_one_tile_uses_one_tile(make_profile):
    backend = open_backend("aihwkit", make_profile(tile={"rows": 96, "cols": 128}))

    backend.setup([LINEAR])

    assert len(list(backend.analog_modules["fc"].analog_tiles())) == 1


@torch.no_grad()
def test_split_layer_reproduces_digital_outputs(make_profile):
    weight = uniform_weights((20, 40))
    layer = CrossbarLayer("fc", "linear", (20, 40))
    backend = programmed(
        make_profile(tile={"rows": 16, "cols": 8}), [layer], {"fc": weight}
    )
    inputs = torch.randn(8, 40, generator=torch.Generator().manual_seed(1))

    expected = inputs @ weight.T

    # float32 sums of 40 products differ by their order, so compare at 1e-4
    assert (backend.forward("fc", inputs) - expected).abs().max() < 1e-4
    assert (backend.mvm("fc", inputs) - expected).abs().max() < 1e-4
    assert (backend.read_weights()["fc"] - weight).abs().max() < 1e-6


def test_programming_reuses_the_analog_modules(make_profile):
    backend = programmed(make_profile(), [LINEAR], {"fc": uniform_weights((64, 96))})
    before = backend.analog_modules["fc"]

    backend.program({"fc": uniform_weights((64, 96), seed=1)})

    assert backend.analog_modules["fc"] is before


def test_low_bit_weights_read_back_on_their_levels(make_profile):
    profile = make_profile(weights={"quantization": "uniform", "bits": 2})
    weight = uniform_weights(LINEAR.weight_shape)
    backend = programmed(profile, [LINEAR], {"fc": weight})

    read = backend.read_weights()["fc"]

    assert len(torch.unique(read)) == 4
    assert (read - quantize(weight, profile.weights)).abs().max() < 1e-6


def drift_ratio(backend, weight: torch.Tensor) -> torch.Tensor:
    return backend.read_weights()["fc"] / weight


def test_drift_scales_weights_by_profile_factor(make_profile):
    profile = make_profile(drift={**DRIFT, "compensation": False})
    weight = uniform_weights(LINEAR.weight_shape)
    backend = programmed(profile, [LINEAR], {"fc": weight})

    ratio = drift_ratio(backend, weight)

    assert (ratio - profile.drift_factor()).abs().max() < 1e-4


def test_drift_compensation_restores_weight_scale(make_profile):
    profile = make_profile(drift={**DRIFT, "compensation": True})
    weight = uniform_weights(LINEAR.weight_shape)
    backend = programmed(profile, [LINEAR], {"fc": weight})

    ratio = drift_ratio(backend, weight)

    assert profile.drift_factor() < 0.6
    assert (ratio - 1.0).abs().max() < 1e-4


def test_set_inference_time_keeps_drift_exponents(make_profile):
    drift = {**DRIFT, "nu": 0.06, "nu_std": 0.02, "compensation": False}
    profile = make_profile(drift=drift)
    weight = uniform_weights(LINEAR.weight_shape).abs() + 0.1
    backend = programmed(profile, [LINEAR], {"fc": weight})

    hour = -torch.log(drift_ratio(backend, weight)) / math.log(3600.0 / 20.0)
    backend.set_inference_time(86400.0)
    day = -torch.log(drift_ratio(backend, weight)) / math.log(86400.0 / 20.0)
    backend.set_inference_time(20.0)
    at_t0 = drift_ratio(backend, weight)

    assert (day - hour).abs().max() < 1e-4
    assert (at_t0 - 1.0).abs().max() < 1e-5


def test_t_inference_option_overrides_the_profile(make_profile):
    profile = make_profile(drift={**DRIFT, "compensation": False})
    weight = uniform_weights(LINEAR.weight_shape)

    backend = programmed(
        profile, [LINEAR], {"fc": weight}, "aihwkit?t_inference_s=86400"
    )

    assert (
        drift_ratio(backend, weight) - profile.drift_factor(86400.0)
    ).abs().max() < 1e-4


def test_drift_exponents_spread_as_profile_states(make_profile):
    drift = {**DRIFT, "nu": 0.06, "nu_std": 0.02, "compensation": False}
    profile = make_profile(drift=drift)
    weight = uniform_weights(LINEAR.weight_shape).abs() + 0.1
    backend = programmed(profile, [LINEAR], {"fc": weight})

    exponents = -torch.log(drift_ratio(backend, weight)) / math.log(3600.0 / 20.0)

    assert (exponents.mean() - 0.06).abs() < 5 * 0.02 / math.sqrt(exponents.numel())
    assert 0.85 < exponents.std() / 0.02 < 1.15


def test_read_noise_is_drawn_anew_at_every_forward(make_profile):
    profile = make_profile(weights={"read_noise": 0.05})
    weight = uniform_weights(LINEAR.weight_shape)
    backend = programmed(profile, [LINEAR], {"fc": weight})
    # One-hot inputs read one weight per output, so outputs are weights plus noise.
    inputs = torch.eye(96)

    difference = backend.forward("fc", inputs) - backend.forward("fc", inputs)

    expected = math.sqrt(2.0) * 0.05 * weight.abs().max()
    assert 0.85 < difference.std() / expected < 1.15


def test_forward_runs_under_inference_mode(make_profile):
    weight = uniform_weights(LINEAR.weight_shape)
    backend = programmed(make_profile(), [LINEAR], {"fc": weight})
    inputs = torch.randn(4, 96)

    with torch.inference_mode():
        outputs = backend.forward("fc", inputs)

    # float32 sums of 96 products differ by their order (up to 1.2e-5 seen)
    assert (outputs - inputs @ weight.T).abs().max() < 1e-4


def test_forward_before_program_is_rejected(make_profile):
    backend = open_backend("aihwkit", make_profile())
    backend.setup([LINEAR])

    with pytest.raises(BackendError, match=r"'fc' was not programmed"):
        backend.forward("fc", torch.zeros(1, 96))


def test_pcm_noise_model_takes_profile_g_max():
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel

    profile = shipped_profile("pcm-ibm", conductance={"g_max_us": 40.0})

    model = AihwkitBackend(profile).rpu_config.noise_model

    assert isinstance(model, PCMLikeNoiseModel)
    assert model.g_max == 40.0
    assert model.g_converter.g_max == 40.0
    assert model.t_0 == profile.drift.t0_s


def test_pcm_programming_noise_matches_profile_rms():
    profile = shipped_profile(
        "pcm-ibm",
        weights={"read_noise": 0.0},
        drift={"nu": 0.0, "nu_std": 0.0},
        periphery={"dac_bits": 0, "adc_bits": 0},
    )
    weight = uniform_weights(LINEAR.weight_shape)
    backend = programmed(profile, [LINEAR], {"fc": weight})

    residual = backend.read_weights()["fc"] - quantize(weight, profile.weights)

    rms = residual.pow(2).mean().sqrt() / weight.abs().max()
    assert 0.85 < rms / profile.weights.programming_noise < 1.15


def test_pcm_drift_exponents_average_profile_nu():
    profile = shipped_profile(
        "pcm-ibm",
        weights={"programming_noise": 0.0, "read_noise": 0.0},
        drift={"compensation": False},
        periphery={"dac_bits": 0, "adc_bits": 0},
    )
    weight = uniform_weights(LINEAR.weight_shape)
    backend = programmed(profile, [LINEAR], {"fc": weight})

    ratio = backend.read_weights()["fc"] / quantize(weight, profile.weights)
    exponents = -torch.log(ratio) / math.log(profile.drift.t_inference_s / 20.0)

    assert 0.9 < exponents.mean() / profile.drift.nu < 1.1


def test_rram_profile_uses_gaussian_cell_noise():
    profile = load_profile("rram-generic")

    model = AihwkitBackend(profile).rpu_config.noise_model

    assert type(model).__name__ == "GaussianCellNoiseModel"
    assert model.cell_noise_us == pytest.approx(0.02 * (40.0 - 1.0) / math.sqrt(2.0))


def test_periphery_sets_converters_and_output_noise():
    config = AihwkitBackend(load_profile("lab-array-32x32")).rpu_config

    assert config.forward.is_perfect is False
    assert config.forward.inp_res == pytest.approx(1 / 254)
    assert config.forward.out_res == pytest.approx(1 / 1022)
    assert config.forward.out_noise == pytest.approx(0.005 * config.forward.out_bound)


def test_ideal_periphery_gives_a_perfect_forward(make_profile):
    config = AihwkitBackend(make_profile()).rpu_config

    assert config.forward.is_perfect is True


def test_tile_geometry_comes_from_the_profile():
    config = AihwkitBackend(load_profile("lab-array-32x32")).rpu_config

    assert config.mapping.max_input_size == 32
    # 32 bit lines hold 16 differential pairs, one per output.
    assert config.mapping.max_output_size == 16


def test_compiled_config_carries_read_noise_as_weight_noise():
    from aihwkit.simulator.configs import InferenceRPUConfig
    from aihwkit.simulator.parameters.enums import WeightNoiseType

    from backends.aihwkit_config import build_rpu_config

    config = build_rpu_config(load_profile("rram-generic"), compiled=True)

    assert type(config) is InferenceRPUConfig
    assert config.forward.w_noise_type == WeightNoiseType.ADDITIVE_CONSTANT
    assert config.forward.w_noise == 0.01


def test_compiled_tile_probe_in_notes(make_profile):
    notes = AihwkitBackend(make_profile()).capabilities.notes
    problem = compiled_tiles_problem()

    expected = "compiled tiles work here" if problem is None else problem
    assert any(expected in note for note in notes)


def test_compiled_tiles_option_names_failure(make_profile):
    problem = compiled_tiles_problem()
    if problem is None:
        pytest.skip("aihwkit's compiled tiles work with this torch")

    with pytest.raises(BackendUnavailableError, match=re.escape(problem)):
        open_backend("aihwkit?tiles=compiled", make_profile())


def test_unknown_tiles_option_is_rejected(make_profile):
    with pytest.raises(BackendSpecError, match=r"tiles='cuda'.*torch, compiled"):
        open_backend("aihwkit?tiles=cuda", make_profile())


def test_nonpositive_inference_time_is_rejected(make_profile):
    backend = open_backend("aihwkit", make_profile())

    with pytest.raises(ProfileError, match=r"inference time -1\.0 s is invalid"):
        backend.set_inference_time(-1.0)


def test_missing_aihwkit_names_install_command(monkeypatch, make_profile):
    aihwkit_import_problem.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "aihwkit", None)
            reason = AihwkitBackend.unavailable_reason()
            with pytest.raises(BackendUnavailableError, match="pip install aihwkit"):
                AihwkitBackend(make_profile())
    finally:
        aihwkit_import_problem.cache_clear()

    assert "pip install aihwkit==1.1.0" in reason
