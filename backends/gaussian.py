"""Gaussian-noise crossbar simulator, the model of the GA training literature.

Each weight is quantized to the profile's levels and stored on a differential cell
pair. Programming adds Gaussian noise to both cells with standard deviation
p / sqrt(2) of the cell range, so the weight sees noise of p x max|w| of its layer
exactly ("p% noise"). Stuck cells keep g_min or g_max whatever is written. Drift
scales each cell by (t / t0) ** -nu with a per-cell exponent, followed by a global
drift compensation. Read noise is drawn anew for every inference batch.

Besides `program`, the simulator can program a stack of weight sets under one noise
seed (`program_stack`) and then switch the array to any of them (`select_stacked`).
Every set gets exactly the cells `program` would give it under that seed, because
the seed fixes the noise draw, so a GA population is programmed in one vectorized
pass instead of one pass per candidate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from backends.base import (
    BackendCapabilities,
    CrossbarBackend,
    ProgrammingStats,
    checked_layer_weight,
    positive_float,
)
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
            "t_inference_s", positive_float, profile.drift.t_inference_s
        )
        self._effective: dict[str, torch.Tensor] = {}
        self._scales: dict[str, torch.Tensor] = {}
        self._stuck: dict[str, torch.Tensor] = {}
        self._programmed_cells: dict[str, torch.Tensor] = {}
        self._drift_exponents: dict[str, torch.Tensor] = {}
        self._read_generator = torch.Generator().manual_seed(self.seed)
        self._programs = 0
        self._stack: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._stack_seed = 0

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
        self._stack = {}
        generator = torch.Generator().manual_seed(int(noise_seed))
        for name, layer in self.layers.items():
            weight = checked_layer_weight(weights, name, layer.weight_shape)
            cells = self._program_cells(name, weight, generator)
            self._programmed_cells[name] = cells
            self._drift_exponents[name] = self._draw_exponents(cells.shape, generator)
        self._read_generator.manual_seed(int(noise_seed) + 1)
        self._apply_drift()
        stats = self._programming_stats()
        self.total_stats = self.total_stats + stats
        return stats

    def program_stack(
        self, weights: Mapping[str, torch.Tensor], *, noise_seed: int
    ) -> list[ProgrammingStats]:
        """Program a stack of weight sets, each as `program` would under `noise_seed`.

        Args:
            weights: Per layer, a tensor of shape (sets, *weight_shape).
            noise_seed: The seed of the one noise draw all sets share.

        Returns:
            One `ProgrammingStats` per set. Call `select_stacked` to run one set.
        """
        generator = torch.Generator().manual_seed(int(noise_seed))
        stack = {}
        for name, layer in self.layers.items():
            weight = self._checked_stack(weights, name, layer.weight_shape)
            scales, levels = self._stacked_levels(weight)
            cells = self._write_cells(name, levels, generator)
            stack[name] = (cells, scales)
            self._drift_exponents[name] = self._draw_exponents(
                cells.shape[1:], generator
            )
        sets = len(next(iter(stack.values()))[1]) if stack else 0
        self._stack, self._stack_seed = stack, int(noise_seed)
        self._programs += sets
        per_set = self._programming_stats()
        stats = [dataclasses.replace(per_set) for _ in range(sets)]
        self.total_stats = sum(stats, self.total_stats)
        return stats

    def select_stacked(self, index: int) -> None:
        """Make set `index` of the last `program_stack` the programmed array."""
        if not self._stack:
            raise RuntimeError(
                "no stack of weight sets is programmed: call program_stack() first"
            )
        for name, (cells, scales) in self._stack.items():
            self._programmed_cells[name] = cells[index]
            self._scales[name] = scales[index]
        self._read_generator.manual_seed(self._stack_seed + 1)
        self._apply_drift()

    def _programming_stats(self) -> ProgrammingStats:
        stats = ProgrammingStats()
        for name, layer in self.layers.items():
            stats.cells_written += layer.cells
            stats.stuck_cells += int((self._stuck[name] != STUCK_FREE).sum())
        return stats

    def _checked_stack(self, weights, name, shape) -> torch.Tensor:
        if name not in weights:
            raise WeightsError(f"no weights given for crossbar layer {name!r}")
        stack = weights[name].detach().to(torch.float32)
        if stack.dim() != len(shape) + 1 or tuple(stack.shape[1:]) != tuple(shape):
            raise WeightsError(
                f"stacked weights for layer {name!r} have shape {tuple(stack.shape)}, "
                f"expected (sets, {', '.join(map(str, shape))})"
            )
        finite = torch.isfinite(stack.flatten(1)).all(dim=1)
        if not finite.all():
            first = int((~finite).nonzero()[0, 0])
            raise WeightsError(
                f"weights for layer {name!r} of set {first} contain NaN or infinite "
                "values; they cannot be programmed"
            )
        return stack

    def _program_cells(self, name, weight, generator) -> torch.Tensor:
        spec = self.profile.weights
        scale = layer_scale(weight, spec)
        self._scales[name] = scale
        return self._write_cells(name, quantize_levels(weight, spec, scale), generator)

    def _stacked_levels(self, weight: torch.Tensor):
        """Return each set's scale and levels, equal to `_program_cells`' per set."""
        spec = self.profile.weights
        if spec.quantization == "ternary":
            # Ternary thresholds use each set's mean |w|: quantize set by set.
            scales = torch.stack([layer_scale(w, spec) for w in weight])
            levels = [quantize_levels(w, spec, s) for w, s in zip(weight, scales)]
            return scales, torch.stack(levels)
        # Uniform scale of every set: its max|w|, as `layer_scale` computes it.
        scales = weight.abs().flatten(1).amax(dim=1)
        scales = torch.clamp(scales, min=torch.finfo(weight.dtype).tiny)
        per_set = scales.view(-1, *([1] * (weight.dim() - 1)))
        return scales, quantize_levels(weight, spec, per_set)

    def _write_cells(self, name, levels, generator) -> torch.Tensor:
        """Write levels onto cell pairs; leading stack dimensions share one draw."""
        spec = self.profile.weights
        pair_dim = levels.dim() - len(self.layers[name].weight_shape)
        cells = torch.stack(
            [levels.clamp(min=0.0), (-levels).clamp(min=0.0)], dim=pair_dim
        )

        noise = torch.randn(cells.shape[pair_dim:], generator=generator)
        cells = cells + noise * (spec.programming_noise / math.sqrt(2.0))

        stuck = self._stuck[name]
        cells = torch.where(stuck == STUCK_OFF, torch.zeros_like(cells), cells)
        return torch.where(stuck == STUCK_ON, torch.ones_like(cells), cells)

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
        try:
            self.t_inference_s = positive_float(t_inference_s)
        except ValueError as err:
            raise ValueError(f"t_inference_s: {err}") from err
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
