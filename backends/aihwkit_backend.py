"""Crossbar simulated by IBM's aihwkit: analog tiles with its inference noise models.

`setup` turns every crossbar layer into one aihwkit analog module (`AnalogLinear` or
`AnalogConv2d`, without bias) once. Every `program` then writes the candidate's
quantized levels into those tiles, applies aihwkit's programming noise and drifts the
tiles to the inference time, with torch's random generator seeded from `noise_seed`.
A layer larger than the profile's tile is split across several tiles by aihwkit.

Weights reach the tiles as levels in [-1, 1] and each layer's scale is applied
digitally at the output. Spec options: `tiles=torch` (default, aihwkit's pure-torch
tiles) or `tiles=compiled` (its C++ tiles, where they work), and `t_inference_s` to
override the profile's inference time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from collections.abc import Iterator, Mapping

import torch

from backends.base import (
    BackendCapabilities,
    CrossbarBackend,
    ProgrammingStats,
    checked_layer_weight,
    positive_float,
)
from memdeploy.errors import (
    BackendError,
    BackendUnavailableError,
    ProfileError,
    UnsupportedLayerError,
)
from memdeploy.quantize import layer_scale, quantize_levels

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install aihwkit==1.1.0"
TILE_KINDS = ("torch", "compiled")
STUCK_FREE, STUCK_OFF, STUCK_ON = 0, 1, 2


@functools.cache
def aihwkit_import_problem() -> str | None:
    """Return why aihwkit cannot be imported here, or None when it can."""
    try:
        importlib.import_module("aihwkit")
        importlib.import_module("aihwkit.simulator.configs")
    except (ImportError, OSError, RuntimeError) as err:
        return (
            f"aihwkit cannot be imported ({type(err).__name__}: {err}); {INSTALL_HINT}"
        )
    return None


@functools.cache
def compiled_tiles_problem() -> str | None:
    """Return why aihwkit's compiled C++ tiles fail here, or None when they work.

    The probe builds, programs and runs a 2x2 `InferenceRPUConfig` layer once per
    process. The C++ extension fails at run time when torch differs from the release
    it was built against, so any exception it raises counts as not working.
    """
    problem = aihwkit_import_problem()
    if problem is not None:
        return problem

    from aihwkit.nn import AnalogLinear
    from aihwkit.simulator.configs import InferenceRPUConfig

    try:
        with _seeded(0):
            layer = AnalogLinear(2, 2, bias=False, rpu_config=InferenceRPUConfig())
            layer.eval().set_weights(torch.eye(2))
            layer(torch.ones(1, 2))
    except Exception as err:  # noqa: BLE001 - any failure of the extension counts
        return f"{type(err).__name__}: {err}"
    return None


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global CPU generator for aihwkit's draws, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        # torch.manual_seed would also queue a seeding call for every accelerator
        # type, with a formatted stack trace each, on every program and forward.
        torch.default_generator.manual_seed(seed)
        yield


def _tile_kind(text: str) -> str:
    if text not in TILE_KINDS:
        raise ValueError(f"expected one of {', '.join(TILE_KINDS)}")
    return text


class AihwkitBackend(CrossbarBackend):
    """Crossbar simulated with aihwkit's analog tiles and noise models.

    Options (spec query): `tiles` is `torch` or `compiled`; `t_inference_s`
    overrides the profile's inference time in s.
    """

    name = "aihwkit"

    def __init__(self, profile, *, seed=0, options=None) -> None:
        super().__init__(profile, seed=seed, options=options)
        self.reject_unknown_options({"tiles", "t_inference_s"})
        self.tiles = self.option("tiles", _tile_kind, "torch")
        self.t_inference_s = self.option(
            "t_inference_s", positive_float, profile.drift.t_inference_s
        )
        _check_inference_time(self.t_inference_s)

        problem = aihwkit_import_problem()
        if problem is not None:
            raise BackendUnavailableError(problem)
        compiled_problem = compiled_tiles_problem()
        if self.tiles == "compiled" and compiled_problem is not None:
            raise BackendUnavailableError(
                f"aihwkit compiled tiles (tiles=compiled) do not work here: "
                f"{compiled_problem}. Use the default torch tiles (spec 'aihwkit'), or "
                "install the torch release that aihwkit's C++ extension was built "
                "against"
            )
        self._notes = (f"{self.tiles} tiles", _compiled_note(compiled_problem))

        from backends.aihwkit_config import build_rpu_config

        self.rpu_config = build_rpu_config(profile, compiled=self.tiles == "compiled")
        self._modules: dict[str, torch.nn.Module] = {}
        self._scales: dict[str, torch.Tensor] = {}
        self._stuck: dict[str, torch.Tensor] = {}
        self._read_generator = torch.Generator().manual_seed(self.seed)
        self._noise_seed = self.seed
        self._programs = 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return aihwkit_import_problem()

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(drift=True, fault_map=True, notes=self._notes)

    @property
    def analog_modules(self) -> dict[str, torch.nn.Module]:
        """The aihwkit module of each crossbar layer, built once in `setup`."""
        return dict(self._modules)

    def _setup(self) -> None:
        for state in (self._modules, self._scales, self._stuck):
            state.clear()

        generator = torch.Generator().manual_seed(self.seed)
        with _seeded(self.seed):
            for name, layer in self.layers.items():
                self._modules[name] = self._build_module(layer)
                self._stuck[name] = _draw_stuck_map(
                    (2, *layer.weight_shape), self.profile.faults, generator
                )
        tiles = sum(
            len(list(module.analog_tiles())) for module in self._modules.values()
        )
        logger.info(
            "aihwkit backend mapped %d layers onto %d %s tiles of %dx%d",
            len(self._modules),
            tiles,
            self.tiles,
            self.profile.tile.rows,
            self.profile.tile.cols,
        )

    def _build_module(self, layer) -> torch.nn.Module:
        from aihwkit.nn import AnalogConv2d, AnalogLinear

        if layer.kind == "linear":
            out_features, in_features = layer.weight_shape
            module = AnalogLinear(
                in_features, out_features, bias=False, rpu_config=self.rpu_config
            )
            return module.eval()

        if layer.groups != 1:
            raise UnsupportedLayerError(
                f"layer {layer.name!r}: grouped convolution (groups={layer.groups}) "
                "cannot be mapped by the aihwkit backend, whose AnalogConv2d takes "
                "groups=1 only; use the gaussian backend for this model"
            )
        out_channels, in_channels, kernel_h, kernel_w = layer.weight_shape
        module = AnalogConv2d(
            in_channels,
            out_channels,
            (kernel_h, kernel_w),
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=False,
            rpu_config=self.rpu_config,
        )
        return module.eval()

    def program(
        self, weights: Mapping[str, torch.Tensor], *, noise_seed: int | None = None
    ) -> ProgrammingStats:
        if noise_seed is None:
            noise_seed = self.seed * 1_000_003 + self._programs
        self._programs += 1
        self._noise_seed = int(noise_seed)

        # Every layer is checked before any tile is written, so a bad layer leaves
        # the previous candidate in place.
        checked = {
            name: checked_layer_weight(weights, name, layer.weight_shape)
            for name, layer in self.layers.items()
        }

        stats = ProgrammingStats()
        for name, layer in self.layers.items():
            levels = self._target_levels(name, checked[name])
            self._modules[name].set_weights(
                levels.reshape(layer.out_features, -1), apply_weight_scaling=False
            )
            stats.cells_written += layer.cells
            stats.stuck_cells += int((self._stuck[name] != STUCK_FREE).sum())

        with _seeded(self._noise_seed):
            for module in self._modules.values():
                module.program_analog_weights()
        self._drift()

        self._read_generator.manual_seed(self._noise_seed + 1)
        self.total_stats = self.total_stats + stats
        return stats

    def _target_levels(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        spec = self.profile.weights
        scale = layer_scale(weight, spec)
        levels = quantize_levels(weight, spec, scale)
        self._scales[name] = scale

        # NOTE: a stuck cell is folded into the target level, so aihwkit still adds
        # programming noise to it and re-derives the pair from the difference.
        stuck = self._stuck[name]
        if self.profile.faults.stuck_rate > 0.0:
            cells = torch.stack([levels.clamp(min=0.0), (-levels).clamp(min=0.0)])
            cells = torch.where(stuck == STUCK_OFF, torch.zeros_like(cells), cells)
            cells = torch.where(stuck == STUCK_ON, torch.ones_like(cells), cells)
            levels = cells[0] - cells[1]
        return levels

    def _drift(self) -> None:
        drift = self.profile.drift
        if drift.nu == 0.0 and drift.nu_std == 0.0:
            return
        # aihwkit counts inference time from the end of programming, the profile
        # from t0, when the programmed conductance is defined.
        t_after_t0 = max(self.t_inference_s - drift.t0_s, 0.0)
        with _seeded(self._noise_seed + 2):
            for module in self._modules.values():
                module.drift_analog_weights(t_after_t0)

    def set_inference_time(self, t_inference_s: float) -> None:
        """Re-drift the programmed tiles to `t_inference_s` after programming, in s.

        The drift exponents drawn at programming are kept, so each call moves the
        same cells along their own power law.
        """
        _check_inference_time(t_inference_s)
        self.t_inference_s = float(t_inference_s)
        if self._scales:
            self._drift()

    def stuck_cells(self) -> dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self._stuck.items()}

    def read_weights(self) -> dict[str, torch.Tensor]:
        read_noise = self.profile.weights.read_noise
        weights = {}
        for name, layer in self.layers.items():
            matrix = _programmed_matrix(self._programmed_module(name))
            if read_noise > 0.0:
                noise = torch.randn(matrix.shape, generator=self._read_generator)
                matrix = matrix + read_noise * noise
            weights[name] = (matrix * self._scales[name]).reshape(layer.weight_shape)
        return weights

    def mvm(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        module = self._programmed_module(name)
        with torch.no_grad(), _seeded(self._next_read_seed()):
            outputs = module.analog_module(inputs)
        return outputs * self._scales[name]

    def forward(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        module = self._programmed_module(name)
        with torch.no_grad(), _seeded(self._next_read_seed()):
            outputs = module(inputs)
        return outputs * self._scales[name]

    def _programmed_module(self, name: str) -> torch.nn.Module:
        if name not in self.layers:
            raise BackendError(
                f"no crossbar layer {name!r} on the aihwkit backend; set up layers: "
                f"{', '.join(self.layers) or 'none'}"
            )
        if name not in self._scales:
            raise BackendError(
                f"layer {name!r} was not programmed: call program() first"
            )
        return self._modules[name]

    def _next_read_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self._read_generator))

    def close(self) -> None:
        self._modules.clear()
        self._scales.clear()
        super().close()


def _compiled_note(problem: str | None) -> str:
    if problem is None:
        return "compiled tiles work here (spec aihwkit?tiles=compiled)"
    return f"compiled tiles unavailable: {problem}"


def _check_inference_time(t_inference_s: float) -> None:
    if not t_inference_s > 0.0:
        raise ProfileError(
            f"inference time {t_inference_s} s is invalid: drift.t_inference_s and "
            "the t_inference_s option must be positive"
        )




def _draw_stuck_map(shape, faults, generator: torch.Generator) -> torch.Tensor:
    """Draw which cells are stuck at g_min (1) or g_max (2); 0 marks a free cell."""
    stuck = torch.rand(shape, generator=generator) < faults.stuck_rate
    stuck_on = torch.rand(shape, generator=generator) < faults.stuck_on_fraction
    state = torch.full(shape, STUCK_FREE, dtype=torch.int8)
    state[stuck & ~stuck_on] = STUCK_OFF
    state[stuck & stuck_on] = STUCK_ON
    return state


def _programmed_matrix(module: torch.nn.Module) -> torch.Tensor:
    """Return a module's effective (out, in) matrix, in levels, from all its tiles."""
    analog = module.analog_module
    if not hasattr(analog, "array"):
        return _tile_matrix(analog)
    columns = [
        torch.cat([_tile_matrix(tile) for tile in tiles]) for tiles in analog.array
    ]
    return torch.cat(columns, dim=1)


def _tile_matrix(tile) -> torch.Tensor:
    weight, _ = tile.get_weights(apply_weight_scaling=True)
    if getattr(tile.rpu_config, "drift_compensation", None) is not None:
        # The compensation scales the tile's outputs, so it belongs to its weights.
        weight = weight * tile.alpha.detach().cpu()
    return weight
