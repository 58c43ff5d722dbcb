"""The interface every crossbar backend implements.

A backend owns one crossbar array, simulated or physical. The optimizer hands it the
model's crossbar layers once (`setup`), then for every candidate programs weights
(`program`), runs inference through what it programmed (`forward`) and can read the
effective weights back (`read_weights`). Linear layers map directly; a Conv2d layer is
mapped as its unrolled weight matrix of shape (out_channels, in_channels / groups x
kernel height x kernel width), inputs on the word lines and outputs on the bit lines.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from memdeploy.errors import BackendSpecError, UnsupportedLayerError, WeightsError
from memdeploy.profiles import DeviceProfile

logger = logging.getLogger(__name__)

LayerKind = Literal["linear", "conv2d"]


@dataclass(frozen=True)
class CrossbarLayer:
    """One model layer that runs on the crossbar."""

    name: str
    """Module path inside the model, as `named_modules` gives it."""

    kind: LayerKind
    weight_shape: tuple[int, ...]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    @property
    def out_features(self) -> int:
        """Bit lines used by the unrolled matrix (one output per row of it)."""
        return self.weight_shape[0]

    @property
    def in_features(self) -> int:
        """Word lines used by the unrolled matrix."""
        size = 1
        for extent in self.weight_shape[1:]:
            size *= extent
        return size

    @property
    def cells(self) -> int:
        """Cells the layer occupies on a differential-pair array."""
        return 2 * self.out_features * self.in_features

    @classmethod
    def from_module(cls, name: str, module: torch.nn.Module) -> CrossbarLayer:
        """Describe a `nn.Linear` or `nn.Conv2d` module; other types are rejected."""
        if isinstance(module, torch.nn.Linear):
            return cls(name, "linear", tuple(module.weight.shape))
        if isinstance(module, torch.nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise UnsupportedLayerError(
                    f"layer {name!r}: Conv2d with padding={module.padding!r} and "
                    f"padding_mode={module.padding_mode!r} is not supported; use "
                    "numeric zero padding"
                )
            return cls(
                name,
                "conv2d",
                tuple(module.weight.shape),
                stride=tuple(module.stride),
                padding=tuple(module.padding),
                dilation=tuple(module.dilation),
                groups=module.groups,
            )
        raise UnsupportedLayerError(
            f"layer {name!r} of type {type(module).__name__} cannot be mapped onto a "
            "crossbar: only nn.Linear and nn.Conv2d are supported"
        )


def checked_layer_weight(
    weights: Mapping[str, torch.Tensor], name: str, shape: tuple[int, ...]
) -> torch.Tensor:
    """Return layer `name`'s weight as float32, rejecting a missing, misshaped or
    non-finite one before anything is programmed."""
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
            f"weights for layer {name!r} contain NaN or infinite values; they cannot "
            "be programmed"
        )
    return weight


@dataclass
class ProgrammingStats:
    """What programming cost. Simulators fill the first two fields only."""

    cells_written: int = 0
    stuck_cells: int = 0
    pulses: int = 0
    verify_rounds: int = 0
    verify_failures: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    link_time_s: float = 0.0

    def __add__(self, other: ProgrammingStats) -> ProgrammingStats:
        values = {
            item.name: getattr(self, item.name) + getattr(other, item.name)
            for item in dataclasses.fields(self)
        }
        return ProgrammingStats(**values)

    def as_dict(self) -> dict[str, float]:
        """Return the fields as a plain dictionary (for JSON and CSV)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do, so callers choose a path without trial and error."""

    layer_kinds: frozenset[str] = frozenset({"linear", "conv2d"})
    physical: bool = False
    """True for real hardware, where the same seed does not give the same draw."""

    drift: bool = False
    """The backend models (or has) conductance drift, so inference time matters."""

    on_chip_inference: bool = False
    """Matrix-vector products run on the array itself."""

    readback: bool = True
    """`read_weights` returns the weights as the array holds them."""

    fault_map: bool = False
    """`stuck_cells` reports which cells are stuck and where."""

    notes: tuple[str, ...] = field(default_factory=tuple)


class CrossbarBackend(ABC):
    """A crossbar array that programs weights and runs inference through them.

    Subclasses implement `program`, `read_weights` and `mvm`; simulators usually
    override `forward` too, to run convolutions natively instead of unrolled.

    Args:
        profile: The device profile that states the array's physics.
        seed: Seed of every random draw the backend makes (stuck map, noise).
        options: Backend-specific options from the spec string's query.
    """

    name: ClassVar[str] = "abstract"

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        seed: int = 0,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.profile = profile
        self.seed = int(seed)
        self.options = dict(options or {})
        self.layers: dict[str, CrossbarLayer] = {}
        self.total_stats = ProgrammingStats()
        self._closed = False

    def option(self, key: str, convert, default):
        """Return option `key` converted by `convert`, or `default` when absent."""
        if key not in self.options:
            return default
        raw = self.options[key]
        try:
            return convert(raw)
        except (TypeError, ValueError) as err:
            raise BackendSpecError(
                f"{self.name} backend option {key}={raw!r} is invalid: {err}"
            ) from err

    def reject_unknown_options(self, known: set[str]) -> None:
        """Raise for options this backend does not take, naming the ones it does."""
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise BackendSpecError(
                f"{self.name} backend does not take option(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(sorted(known)) or 'none'}"
            )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Return why the backend cannot run here, or None when it can."""
        return None

    @property
    @abstractmethod
    def capabilities(self) -> BackendCapabilities:
        """What this backend supports."""

    def setup(self, layers: Sequence[CrossbarLayer]) -> None:
        """Map the model's crossbar layers onto the array; call once per model."""
        for layer in layers:
            if layer.kind not in self.capabilities.layer_kinds:
                raise UnsupportedLayerError(
                    f"layer {layer.name!r} ({layer.kind}) cannot be mapped by the "
                    f"{self.name} backend, which maps "
                    f"{', '.join(sorted(self.capabilities.layer_kinds))}"
                )
        self.layers = {layer.name: layer for layer in layers}
        self._setup()
        logger.debug("%s backend set up with %d layers", self.name, len(layers))

    def _setup(self) -> None:
        """Hook for subclasses: allocate per-layer state after `setup`."""

    @abstractmethod
    def program(
        self, weights: Mapping[str, torch.Tensor], *, noise_seed: int | None = None
    ) -> ProgrammingStats:
        """Program float weights (each in its layer's shape) onto the array.

        The backend quantizes them to the profile's levels. `noise_seed` fixes the
        programming noise draw of a simulator, so that candidates compared within a
        generation see the same noise; a physical array ignores it.
        """

    @abstractmethod
    def read_weights(self) -> dict[str, torch.Tensor]:
        """Read the effective weights back from the array, each in its layer's shape."""

    @abstractmethod
    def mvm(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        """Multiply a batch of input vectors (batch, in) by layer `name`'s matrix."""

    def forward(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        """Run a layer's input through the programmed layer, without its bias."""
        layer = self.layers[name]
        if layer.kind == "linear":
            flat = inputs.reshape(-1, inputs.shape[-1])
            return self.mvm(name, flat).reshape(*inputs.shape[:-1], layer.out_features)
        return self._conv_by_mvm(layer, inputs)

    def _conv_by_mvm(self, layer: CrossbarLayer, inputs: torch.Tensor) -> torch.Tensor:
        out_channels, in_per_group, kernel_h, kernel_w = layer.weight_shape
        batch, _, height, width = inputs.shape
        columns = F.unfold(
            inputs, (kernel_h, kernel_w), layer.dilation, layer.padding, layer.stride
        )
        out_h = (height + 2 * layer.padding[0] - layer.dilation[0] * (kernel_h - 1) - 1)
        out_h = out_h // layer.stride[0] + 1
        out_w = (width + 2 * layer.padding[1] - layer.dilation[1] * (kernel_w - 1) - 1)
        out_w = out_w // layer.stride[1] + 1
        if layer.groups != 1:
            raise UnsupportedLayerError(
                f"layer {layer.name!r}: grouped convolution (groups={layer.groups}) is "
                f"not supported by the {self.name} backend's unrolled inference"
            )
        vectors = columns.transpose(1, 2).reshape(-1, in_per_group * kernel_h * kernel_w)
        outputs = self.mvm(layer.name, vectors)
        outputs = outputs.reshape(batch, out_h * out_w, out_channels).transpose(1, 2)
        return outputs.reshape(batch, out_channels, out_h, out_w)

    def set_inference_time(self, t_inference_s: float) -> None:
        """Set the time after programming at which inference runs (drifting backends)."""
        if self.capabilities.drift:
            raise NotImplementedError(
                f"{type(self).__name__} declares drift but does not set inference time"
            )

    def stuck_cells(self) -> dict[str, torch.Tensor]:
        """Return per layer an int8 map of shape (2, *weight_shape): 0 free, 1 stuck at
        g_min, 2 stuck at g_max, for the positive (index 0) and negative cell."""
        return {}

    def close(self) -> None:
        """Release the array (ports, threads, memory). Safe to call twice."""
        self._closed = True

    def __enter__(self) -> CrossbarBackend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def positive_float(text: str) -> float:
    """Parse an option that is a finite number above 0."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a finite number above 0, got {text!r}")
    return value
