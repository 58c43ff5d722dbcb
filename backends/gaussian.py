"""Gaussian-noise crossbar simulator, the model of the GA training literature.

Each weight is quantized to the profile's levels and stored on a differential cell
pair. Programming adds Gaussian noise to both cells with standard deviation
p / sqrt(2) of the cell range, so the weight sees noise of p x max|w| of its layer
exactly ("p% noise"). Stuck cells keep g_min or g_max whatever is written. Drift
scales each cell by (t / t0) ** -nu with a per-cell exponent, followed by a global
drift compensation. Read noise is drawn anew for every inference batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from backends.base import BackendCapabilities, CrossbarBackend, ProgrammingStats
from backends.periphery import convert_inputs, convert_outputs
from memdeploy.errors import WeightsError
from memdeploy.quantize import layer_scale, quantize_levels

STUCK_FREE, STUCK_OFF, STUCK_ON = 0, 1, 2


class GaussianNoiseBackend(CrossbarBackend):
    """Crossbar simulated as quantized weights plus Gaussian noise, faults and drift.

    Options (spec query): `t_inference_s` overrides the profile's inference time.
    """

    name = "gaussian"

    def __init__(self, profile, *, seed=0, options=None) -> None:
        super().__init__(profile, seed=seed, options=options)
        self.reject_unknown_options({"t_inference_s"})
        self.t_inference_s = self.option(
            "t_inference_s", float, profile.drift.t_inference_s
        )
        self._effective: dict[str, torch.Tensor] = {}
        self._scales: dict[str, torch.Tensor] = {}
        self._stuck: dict[str, torch.Tensor] = {}
        self._programmed_cells: dict[str, torch.Tensor] = {}
        self._drift_exponents: dict[str, torch.Tensor] = {}
        self._read_generator = torch.Generator().manual_seed(self.seed)
        self._programs = 0

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(drift=True, fault_map=True)

    def _setup(self) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        faults = self.profile.faults
        for name, layer in self.layers.items():
            shape = (2, *layer.weight_shape)
            stuck = torch.rand(shape, generator=generator) < faults.stuck_rate
            stuck_on = torch.rand(shape, generator=generator) < faults.stuck_on_fraction
            state = torch.full(shape, STUCK_FREE, dtype=torch.int8)
            state[stuck & ~stuck_on] = STUCK_OFF
            state[stuck & stuck_on] = STUCK_ON
            self._stuck[name] = state

    def program(
        self, weights: Mapping[str, torch.Tensor], *, noise_seed: int | None = None
    ) -> ProgrammingStats:
        if noise_seed is None:
            noise_seed = self.seed * 1_000_003 + self._programs
        self._programs += 1
        generator = torch.Generator().manual_seed(int(noise_seed))
        stats = ProgrammingStats()
        for name, layer in self.layers.items():
            weight = self._checked_weight(weights, name, layer.weight_shape)
            cells = self._program_cells(name, weight, generator)
            self._programmed_cells[name] = cells
            self._drift_exponents[name] = self._draw_exponents(cells.shape, generator)
            stats.cells_written += layer.cells
            stats.stuck_cells += int((self._stuck[name] != STUCK_FREE).sum())
        self._read_generator.manual_seed(int(noise_seed) + 1)
        self._apply_drift()
        self.total_stats = self.total_stats + stats
        return stats

    def _checked_weight(self, weights, name, shape) -> torch.Tensor:
        if name not in weights:
            raise WeightsError(f"no weights given for crossbar layer {name!r}")
        weight = weights[name].detach().to(torch.float32)
        if tuple(weight.shape) != tuple(shape):
            raise WeightsError(
                f"weights for layer {name!r} have shape {tuple(weight.shape)}, "
                f"expected {tuple(shape)}"
            )
        if not torch.isfinite(weight).all():
            raise WeightsError(
                f"weights for layer {name!r} contain NaN or infinite values; they "
                "cannot be programmed"
            )
        return weight

    def _program_cells(self, name, weight, generator) -> torch.Tensor:
        spec = self.profile.weights
        scale = layer_scale(weight, spec)
        levels = quantize_levels(weight, spec, scale)
        cells = torch.stack([levels.clamp(min=0.0), (-levels).clamp(min=0.0)])

        noise = torch.randn(cells.shape, generator=generator)
        cells = cells + noise * (spec.programming_noise / math.sqrt(2.0))

        stuck = self._stuck[name]
        cells = torch.where(stuck == STUCK_OFF, torch.zeros_like(cells), cells)
        cells = torch.where(stuck == STUCK_ON, torch.ones_like(cells), cells)
        self._scales[name] = scale
        return cells

    def _draw_exponents(self, shape, generator: torch.Generator) -> torch.Tensor:
        """Draw each cell's drift exponent; it stays fixed until the next programming."""
        drift = self.profile.drift
        if drift.nu == 0:
            return torch.zeros(shape)
        return drift.nu + drift.nu_std * torch.randn(shape, generator=generator)

    def _apply_drift(self) -> None:
        drift = self.profile.drift
        for name, cells in self._programmed_cells.items():
            if drift.nu > 0 and self.t_inference_s > drift.t0_s:
                nu = self._drift_exponents[name]
                drifted = cells * torch.pow(self.t_inference_s / drift.t0_s, -nu)
                if drift.compensation:
                    # One output scale per layer, as a reference read of the drifted
                    # array gives it (global drift compensation).
                    ratio = cells.abs().sum() / drifted.abs().sum().clamp(min=1e-12)
                    drifted = drifted * ratio
                cells = drifted
            self._effective[name] = (cells[0] - cells[1]) * self._scales[name]

    def set_inference_time(self, t_inference_s: float) -> None:
        if t_inference_s <= 0:
            raise ValueError(f"t_inference_s must be positive, got {t_inference_s}")
        self.t_inference_s = float(t_inference_s)
        if self._programmed_cells:
            self._apply_drift()

    def stuck_cells(self) -> dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self._stuck.items()}

    def _read(self, name: str) -> torch.Tensor:
        if name not in self._effective:
            raise RuntimeError(f"layer {name!r} was not programmed: call program() first")
        weight = self._effective[name]
        read_noise = self.profile.weights.read_noise
        if read_noise > 0:
            noise = torch.randn(weight.shape, generator=self._read_generator)
            weight = weight + noise * (read_noise * self._scales[name])
        return weight

    def read_weights(self) -> dict[str, torch.Tensor]:
        return {name: self._read(name) for name in self.layers}

    def mvm(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        weight = self._read(name).reshape(self.layers[name].out_features, -1)
        periphery = self.profile.periphery
        outputs = convert_inputs(inputs, periphery) @ weight.T
        return convert_outputs(outputs, periphery, self._read_generator)

    def forward(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        layer = self.layers[name]
        periphery = self.profile.periphery
        weight = self._read(name)
        inputs = convert_inputs(inputs, periphery)
        if layer.kind == "linear":
            outputs = F.linear(inputs, weight)
        else:
            outputs = F.conv2d(
                inputs, weight, None, layer.stride, layer.padding, layer.dilation,
                layer.groups,
            )
        return convert_outputs(outputs, periphery, self._read_generator)
