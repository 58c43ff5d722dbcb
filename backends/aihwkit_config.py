"""aihwkit inference configuration built from a device profile.

The aihwkit backend hands its tiles normalized weight levels in [-1, 1], so a layer's
max|w| is weight 1 on every tile and the profile's noise figures, which are fractions
of max|w|, become plain weight units on the tile. This module turns a `DeviceProfile`
into the RPU configuration for such tiles. The configuration sets the noise model
(aihwkit's `PCMLikeNoiseModel` for PCM, a Gaussian cell model otherwise), drift and
its global compensation, DAC and ADC resolution, output and read noise, weight
clipping and the tile geometry. The module imports aihwkit at module level, so import
it only where aihwkit is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from aihwkit.inference.compensation.drift import GlobalDriftCompensation
from aihwkit.inference.converter.base import BaseConductanceConverter
from aihwkit.inference.noise.base import BaseNoiseModel
from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig
from aihwkit.simulator.parameters.enums import WeightClipType, WeightNoiseType
from aihwkit.simulator.tiles.torch_tile import TorchSimulatorTile

from memdeploy.profiles import DeviceProfile, WeightSpec

LEVEL_GRID = 257
"""Magnitudes used to average over levels when a profile has float or >8-bit weights."""


class DifferentialPairConverter(BaseConductanceConverter):
    """Map normalized weights onto a cell pair over the profile's conductance window.

    Weight v >= 0 becomes G+ = g_min + v (g_max - g_min) and G- = g_min, and the other
    way round for v < 0. aihwkit's `SinglePairConductanceConverter` maps each tile's
    own max|w| to g_max instead, which would give every tile of a split layer its own
    conductance scale. Programmed weights outside [-1, 1] are not clipped, because the
    Gaussian noise figure is defined without clipping.

    Args:
        g_min_us: Conductance of the reset state in µS.
        g_max_us: Conductance of the set state in µS.
    """

    def __init__(self, g_min_us: float, g_max_us: float) -> None:
        self.g_min = float(g_min_us)
        self.g_max = float(g_max_us)

    def convert_to_conductances(self, weights: torch.Tensor) -> tuple[list, dict]:
        span = self.g_max - self.g_min
        positive = self.g_min + weights.clamp(min=0.0) * span
        negative = self.g_min + (-weights).clamp(min=0.0) * span
        return [positive, negative], {}

    def convert_back_to_weights(self, conductances: list, params: dict) -> torch.Tensor:
        positive, negative = conductances
        return (positive - negative) / (self.g_max - self.g_min)


class GaussianCellNoiseModel(BaseNoiseModel):
    """Gaussian programming noise per cell and power-law drift, as profiles state them.

    Each cell of a pair gets programming noise with standard deviation
    programming_noise x (g_max - g_min) / sqrt(2), so the pair's weight has noise of
    programming_noise x max|w|, the definition of the Gaussian backend. Drift follows
    G(t) = G(t0) (t / t0) ** -nu with one exponent per cell drawn from N(nu, nu_std).

    Args:
        g_converter: The differential pair converter of the profile's window.
        programming_noise: Weight noise as a fraction of max|w|.
        nu: Mean drift exponent.
        nu_std: Cell-to-cell standard deviation of the drift exponent.
        t0_s: Time after programming at which the programmed conductance holds, in s.
    """

    def __init__(
        self,
        g_converter: DifferentialPairConverter,
        programming_noise: float,
        nu: float,
        nu_std: float,
        t0_s: float,
    ) -> None:
        super().__init__(g_converter)
        span = g_converter.g_max - g_converter.g_min
        self.cell_noise_us = programming_noise * span / math.sqrt(2.0)
        self.nu = nu
        self.nu_std = nu_std
        self.t_0 = t0_s

    def apply_programming_noise_to_conductance(
        self, g_target: torch.Tensor
    ) -> torch.Tensor:
        if self.cell_noise_us == 0.0:
            return g_target.clone()
        return g_target + self.cell_noise_us * torch.randn_like(g_target)

    def generate_drift_coefficients(
        self, g_target: torch.Tensor
    ) -> torch.Tensor | None:
        if self.nu == 0.0 and self.nu_std == 0.0:
            return None
        return self.nu + self.nu_std * torch.randn_like(g_target)

    def apply_drift_noise_to_conductance(
        self, g_prog: torch.Tensor, drift_noise_param: Any, t_inference: float
    ) -> torch.Tensor:
        # aihwkit counts t_inference from the end of programming, the profile from t0.
        t = t_inference + self.t_0
        if drift_noise_param is None or t <= self.t_0:
            return g_prog
        return g_prog * torch.pow(t / self.t_0, -drift_noise_param)


class ReadNoiseTorchSimulatorTile(TorchSimulatorTile):
    """aihwkit's torch tile with read noise drawn anew on the weights at every forward.

    aihwkit's torch tiles reject `forward.w_noise` and apply weight modifiers only in
    training, so the profile's read noise is added here, in inference forwards only.
    """

    def __init__(
        self, x_size: int, d_size: int, rpu_config: Any, **kwargs: Any
    ) -> None:
        super().__init__(x_size, d_size, rpu_config, **kwargs)
        self.read_noise = float(getattr(rpu_config, "read_noise", 0.0))

    def forward(
        self,
        x_input: torch.Tensor,
        bias: bool = False,
        in_trans: bool = False,
        out_trans: bool = False,
        is_test: bool = False,
        non_blocking: bool = False,
    ) -> torch.Tensor:
        if not is_test or self.read_noise == 0.0 or in_trans or out_trans:
            return super().forward(
                x_input, bias, in_trans, out_trans, is_test, non_blocking
            )

        weight = self.weight + self.read_noise * torch.randn_like(self.weight)
        return self._analog_mvm.matmul(
            weight,
            x_input,
            self._f_io,
            False,
            is_test=True,
            out_noise_values=self.out_noise_values,
        )


@dataclass
class ReadNoiseTorchInferenceRPUConfig(TorchInferenceRPUConfig):
    """`TorchInferenceRPUConfig` whose tiles add read noise at every inference forward."""

    simulator_tile_class: type = ReadNoiseTorchSimulatorTile

    read_noise: float = 0.0
    """Standard deviation of the read noise in normalized weight units (max|w| = 1)."""


def level_magnitudes(spec: WeightSpec) -> list[float]:
    """Return the distinct |level| values of a weight spec, in [0, 1].

    >>> level_magnitudes(WeightSpec(bits=2))
    [0.3333333333333333, 1.0]
    """
    if spec.quantization == "ternary":
        return [0.0, 1.0]
    if spec.quantization == "none" or spec.bits > 8:
        return [k / (LEVEL_GRID - 1) for k in range(LEVEL_GRID)]
    steps = 2**spec.bits - 1
    # Level k is (2k - steps) / steps; deduplicating the integer numerators avoids
    # treating two roundings of the same magnitude as two levels.
    numerators = sorted({abs(2 * k - steps) for k in range(steps + 1)})
    return [numerator / steps for numerator in numerators]


def _clipped_error_moments(g: float, sigma: float) -> tuple[float, float]:
    """Mean and mean square of max(g + sigma Z, 0) - g for standard normal Z."""
    if sigma <= 0.0:
        return 0.0, 0.0
    a = g / sigma
    cdf = 0.5 * (1.0 + math.erf(a / math.sqrt(2.0)))
    pdf = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    mean_y = g * cdf + sigma * pdf
    mean_y2 = (g * g + sigma * sigma) * cdf + g * sigma * pdf
    return mean_y - g, mean_y2 - 2.0 * g * mean_y + g * g


def _pcm_weight_rms(
    model: PCMLikeNoiseModel, magnitudes: list[float], scale: float
) -> float:
    converter = model.g_converter
    span = converter.g_max - converter.g_min

    def sigma(g: float) -> float:
        relative = g / model.g_max
        value = sum(c * relative**power for power, c in enumerate(model.prog_coeff))
        return scale * value * model.g_max / model.prog_coeff_g_max_reference

    total = 0.0
    for v in magnitudes:
        g_on, g_off = converter.g_min + v * span, converter.g_min
        mean_on, square_on = _clipped_error_moments(g_on, sigma(g_on))
        mean_off, square_off = _clipped_error_moments(g_off, sigma(g_off))
        total += (square_on + square_off - 2.0 * mean_on * mean_off) / span**2
    return math.sqrt(total / len(magnitudes))


def pcm_programming_noise_scale(
    model: PCMLikeNoiseModel, spec: WeightSpec, target: float
) -> float:
    """Return the `prog_noise_scale` at which PCM programming noise has RMS `target`.

    The RMS is the weight error as a fraction of max|w|, averaged with equal weight
    over the profile's level magnitudes, with aihwkit's clipping of conductances at 0.
    """
    if target <= 0.0:
        return 0.0

    magnitudes = level_magnitudes(spec)
    low, high = 0.0, 1.0
    while _pcm_weight_rms(model, magnitudes, high) < target:
        high *= 2.0
    for _ in range(60):
        middle = 0.5 * (low + high)
        if _pcm_weight_rms(model, magnitudes, middle) < target:
            low = middle
        else:
            high = middle
    return 0.5 * (low + high)


def pcm_drift_scale(model: PCMLikeNoiseModel, spec: WeightSpec, nu: float) -> float:
    """Return the `drift_scale` at which PCM's mean drift exponent equals `nu`.

    The mean is taken over the set cells of the nonzero levels, 64 draws each, under a
    fixed seed, so the result does not depend on the caller's random state.
    """
    if nu <= 0.0:
        return 0.0

    converter = model.g_converter
    span = converter.g_max - converter.g_min
    levels = [v for v in level_magnitudes(spec) if v > 0.0]
    g_on = converter.g_min + span * torch.tensor(levels, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        exponents = model.generate_drift_coefficients(g_on.repeat(64))
    return model.drift_scale * nu / float(exponents.mean())


def build_noise_model(profile: DeviceProfile) -> BaseNoiseModel:
    """Build the programming noise and drift model that the profile's technology selects."""
    conductance, drift, weights = profile.conductance, profile.drift, profile.weights
    converter = DifferentialPairConverter(conductance.g_min_us, conductance.g_max_us)
    if profile.technology != "pcm":
        return GaussianCellNoiseModel(
            converter, weights.programming_noise, drift.nu, drift.nu_std, drift.t0_s
        )

    # NOTE: PCM's accumulated 1/f noise is switched off because the profile's
    # read_noise takes its place, drawn at every forward as on the other backends.
    model = PCMLikeNoiseModel(
        g_converter=converter, t_0=drift.t0_s, read_noise_scale=0.0
    )
    model.prog_noise_scale = pcm_programming_noise_scale(
        model, weights, weights.programming_noise
    )
    model.drift_scale = pcm_drift_scale(model, weights, drift.nu)
    return model


def _resolution(bits: int) -> float:
    """Return aihwkit's converter resolution: 2**bits - 2 steps over the full range.

    One bit gives three levels, as in the Gaussian backend's periphery, and 0 bits
    give -1, which turns the converter off.
    """
    return 1.0 / max(2**bits - 2, 2) if bits > 0 else -1.0


def build_rpu_config(profile: DeviceProfile, *, compiled: bool = False):
    """Build the inference RPU config for a profile.

    Args:
        profile: The device profile.
        compiled: Use aihwkit's C++ tiles (`InferenceRPUConfig`) instead of its
            pure-torch tiles.

    Returns:
        An `InferenceRPUConfig` (compiled) or `ReadNoiseTorchInferenceRPUConfig`.
    """
    weights, periphery = profile.weights, profile.periphery
    if compiled:
        config = InferenceRPUConfig()
        config.forward.w_noise_type = WeightNoiseType.ADDITIVE_CONSTANT
        config.forward.w_noise = weights.read_noise
    else:
        config = ReadNoiseTorchInferenceRPUConfig(read_noise=weights.read_noise)

    config.noise_model = build_noise_model(profile)
    compensate = profile.drift.compensation and profile.drift.nu > 0.0
    config.drift_compensation = GlobalDriftCompensation() if compensate else None

    ideal = not (periphery.dac_bits or periphery.adc_bits or periphery.output_noise)
    config.forward.is_perfect = ideal and not (compiled and weights.read_noise)
    config.forward.inp_res = _resolution(periphery.dac_bits)
    config.forward.out_res = _resolution(periphery.adc_bits)
    # The output range is the ADC's full scale, aihwkit's default out_bound.
    config.forward.out_noise = periphery.output_noise * config.forward.out_bound

    # Quantization already clips the targets to [-1, 1]. This clip keeps aihwkit's
    # training updates, if any, inside the same window.
    config.clip.type = WeightClipType.FIXED_VALUE
    config.clip.fixed_value = 1.0

    # Each output's differential pair takes two of the tile's bit lines, as on the
    # serial array, so a layer spans the same number of tiles on both backends.
    config.mapping.max_input_size = profile.tile.rows
    config.mapping.max_output_size = max(profile.tile.cols // 2, 1)
    return config
