"""Device profiles: validated, versioned descriptions of a crossbar array.

A profile states everything a backend needs to program weights onto an array: the
weight levels a cell pair can hold, the conductance range, programming and read noise,
drift, stuck-at faults, the periphery (DAC and ADC) and the tile geometry. Profiles are
TOML files; the ones shipped with memdeploy live in ``device_profiles/`` and are
selected by name, any other file by its path.

Noise figures are fractions of the layer's weight range: a ``programming_noise`` of 0.05
adds Gaussian noise with standard deviation 0.05 x max|w| to every programmed weight of
a layer, which is how "5% noise" is meant in the GA training literature. In the
conductance domain that range is ``g_max_us - g_min_us`` of one cell of the
differential pair.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

import device_profiles
from memdeploy.errors import ProfileError

SCHEMA_VERSION = 1
PROFILE_DIR = Path(device_profiles.__file__).resolve().parent
MAX_PROFILE_BYTES = 1 << 20
"""Largest profile file read, in bytes; shipped profiles are about 2 kB."""

U16_MAX = 65535
"""Largest tile size and pulse count: the serial protocol carries them as u16."""

# TOML types are exact, so a profile is validated strictly: a string, a bool or a
# float where an integer belongs is a mistake, not something to convert. NaN and
# infinity are rejected in every float field.
_MODEL_CONFIG = ConfigDict(
    extra="forbid",
    use_attribute_docstrings=True,
    frozen=True,
    strict=True,
    allow_inf_nan=False,
)


class _Section(BaseModel):
    model_config = _MODEL_CONFIG


class WeightSpec(_Section):
    """How weights are quantized and disturbed, in the weight domain."""

    quantization: Literal["uniform", "ternary", "none"] = "uniform"
    """Weight levels: `uniform` has 2**bits symmetric levels spanning +-max|w| of the
    layer; `ternary` has {-a, 0, +a} with the threshold of ternary weight networks;
    `none` keeps float weights."""

    bits: int = Field(default=4, ge=1, le=16)
    """Bits per weight for `uniform` quantization (ignored by the other kinds)."""

    programming_noise: float = Field(default=0.0, ge=0.0, le=1.0)
    """Standard deviation of the programming error, as a fraction of the layer's
    max|w| (0.05 is "5% noise"). Drawn once per programming."""

    read_noise: float = Field(default=0.0, ge=0.0, le=1.0)
    """Standard deviation of the read noise, as a fraction of the layer's max|w|.
    Drawn anew at every read and every inference batch."""


class ConductanceSpec(_Section):
    """Conductance range of one cell; a weight is the difference of a cell pair."""

    g_min_us: float = Field(default=0.0, ge=0.0)
    """Lowest programmable conductance in µS (the reset state)."""

    g_max_us: float = Field(default=25.0, gt=0.0)
    """Highest programmable conductance in µS (the set state)."""


class DriftSpec(_Section):
    """Power-law conductance drift, G(t) = G(t0) (t / t0) ** -nu."""

    nu: float = Field(default=0.0, ge=0.0, le=1.0)
    """Mean drift exponent (PCM is about 0.05 to 0.1; 0 disables drift)."""

    nu_std: float = Field(default=0.0, ge=0.0, le=1.0)
    """Cell-to-cell standard deviation of the drift exponent."""

    t0_s: float = Field(default=20.0, gt=0.0)
    """Time after programming at which the programmed conductance is defined, in s."""

    t_inference_s: float = Field(default=20.0, gt=0.0)
    """Time after programming at which inference runs, in s."""

    compensation: bool = True
    """Whether a global drift compensation rescales each layer's outputs."""


class FaultSpec(_Section):
    """Cells that no longer switch."""

    stuck_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Fraction of cells stuck at a fixed conductance."""

    stuck_on_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    """Of the stuck cells, the fraction stuck at g_max (the rest are stuck at g_min)."""


class PeripherySpec(_Section):
    """Digital-to-analog and analog-to-digital conversion around the array."""

    dac_bits: int = Field(default=0, ge=0, le=16)
    """Input DAC resolution in bits; 0 means ideal (no input quantization)."""

    adc_bits: int = Field(default=0, ge=0, le=16)
    """Output ADC resolution in bits; 0 means ideal (no output quantization)."""

    output_noise: float = Field(default=0.0, ge=0.0, le=1.0)
    """Standard deviation of additive output noise, as a fraction of the output range."""


class TileSpec(_Section):
    """Geometry of one physical crossbar tile."""

    rows: int = Field(default=512, ge=1, le=U16_MAX)
    """Word lines per tile: the inputs a tile takes."""

    cols: int = Field(default=512, ge=1, le=U16_MAX)
    """Bit lines per tile: the outputs a tile gives. A differential pair uses two."""


class WriteVerifySpec(_Section):
    """Closed-loop programming: pulse, read, compare, repeat."""

    tolerance_us: float = Field(default=1.0, gt=0.0)
    """A cell is verified when its read conductance is within this many µS of target."""

    max_pulses: int = Field(default=30, ge=1, le=U16_MAX)
    """Pulses per cell before programming gives up on it."""

    pulse_noise_us: float = Field(default=0.5, ge=0.0)
    """Standard deviation of the conductance change error of one pulse, in µS."""


class EnduranceSpec(_Section):
    """Wear of the cells."""

    cycles: float = Field(default=1e6, gt=0.0)
    """Programming pulses a cell survives before it sticks at its present state."""


class DeviceProfile(BaseModel):
    """A crossbar array as a backend sees it, loaded from a TOML profile file."""

    model_config = _MODEL_CONFIG

    schema_version: int
    """Version of the profile format; this release reads version 1."""

    name: str = Field(min_length=1)
    """Short name, also the file name without `.toml` for shipped profiles."""

    description: str = ""
    """One line on what the profile models."""

    technology: Literal["generic", "rram", "pcm"] = "generic"
    """Cell technology, which selects the noise model of physics-based backends."""

    weights: WeightSpec = WeightSpec()
    conductance: ConductanceSpec = ConductanceSpec()
    drift: DriftSpec = DriftSpec()
    faults: FaultSpec = FaultSpec()
    periphery: PeripherySpec = PeripherySpec()
    tile: TileSpec = TileSpec()
    write_verify: WriteVerifySpec = WriteVerifySpec()
    endurance: EnduranceSpec = EnduranceSpec()

    sources: dict[str, str] = {}
    """Where each figure comes from, keyed by field path (`conductance.g_max_us`)."""

    @model_validator(mode="after")
    def _check_consistency(self) -> DeviceProfile:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not supported; this "
                f"memdeploy reads version {SCHEMA_VERSION}: upgrade memdeploy or "
                "convert the profile"
            )
        if self.conductance.g_max_us <= self.conductance.g_min_us:
            raise ValueError(
                f"conductance.g_max_us ({self.conductance.g_max_us}) must be greater "
                f"than conductance.g_min_us ({self.conductance.g_min_us})"
            )
        return self

    @property
    def g_range_us(self) -> float:
        """Programmable conductance window of one cell in µS."""
        return self.conductance.g_max_us - self.conductance.g_min_us

    @property
    def weight_levels(self) -> int | None:
        """Number of distinct weight levels, or None for float weights."""
        spec = self.weights
        if spec.quantization == "ternary":
            return 3
        if spec.quantization == "uniform":
            return 2**spec.bits
        return None

    def drift_factor(self, t_s: float | None = None) -> float:
        """Mean conductance ratio G(t) / G(t0) at `t_s` (default: t_inference_s)."""
        t = self.drift.t_inference_s if t_s is None else t_s
        if self.drift.nu == 0.0 or t <= self.drift.t0_s:
            return 1.0
        return math.pow(t / self.drift.t0_s, -self.drift.nu)

    def content_hash(self) -> str:
        """SHA-256 of the profile's canonical JSON, stable across key order."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def list_profiles() -> list[str]:
    """Return the names of the profiles shipped in `device_profiles/`."""
    return sorted(path.stem for path in PROFILE_DIR.glob("*.toml"))


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """Find a profile file by shipped name or by path."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if text.endswith(".toml") or candidate.parent != Path("."):
        if candidate.is_dir():
            raise ProfileError(
                f"profile path {candidate} is a folder, expected a .toml file: give "
                "the path of the profile file inside it"
            )
        if not candidate.is_file():
            raise ProfileError(
                f"profile file {candidate} not found: check the path, or give the name "
                "of a shipped profile (`memdeploy profiles list`)"
            )
        return candidate
    shipped = PROFILE_DIR / f"{text}.toml"
    if shipped.is_file():
        return shipped
    names = ", ".join(list_profiles())
    if not names:
        raise ProfileError(
            f"profile {text!r} not found, and {PROFILE_DIR} contains no shipped profiles: "
            "give a path to a .toml file, or reinstall memdeploy (pip install .) so "
            "that its device_profiles are installed"
        )
    raise ProfileError(
        f"profile {text!r} not found: give a path to a .toml file or one of: {names}"
    )


def load_profile(name_or_path: str | Path | DeviceProfile) -> DeviceProfile:
    """Load and validate a profile by shipped name, by path, or pass one through."""
    if isinstance(name_or_path, DeviceProfile):
        return name_or_path
    path = resolve_profile_path(name_or_path)
    return profile_from_dict(_read_toml(path), source=str(path))


def _read_toml(path: Path) -> dict:
    try:
        size = path.stat().st_size
        if size > MAX_PROFILE_BYTES:
            raise ProfileError(
                f"{path} has {size} bytes, expected a TOML profile of at most "
                f"{MAX_PROFILE_BYTES} bytes: check that this is the profile file"
            )
        # utf-8-sig also reads files that an editor saved with a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ProfileError(
            f"{path}: not a UTF-8 text file ({err}): a profile is a TOML text file"
        ) from err
    except OSError as err:
        raise ProfileError(f"cannot read profile file {path}: {err}") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(
            f"{path}: invalid TOML: {err}; fix the syntax at that position"
        ) from err
    except RecursionError as err:
        raise ProfileError(
            f"{path}: arrays or tables are nested too deeply to parse, expected the "
            "flat tables of a device profile"
        ) from err


def profile_from_dict(data: dict, source: str = "<dict>") -> DeviceProfile:
    """Validate a profile given as a dictionary; errors name `source`."""
    if not isinstance(data, dict):
        raise ProfileError(
            f"{source}: a device profile is a table of fields, found "
            f"{type(data).__name__}"
        )
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as err:
        raise ProfileError(_describe_validation_error(err, source)) from err


def _describe_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid device profile ({err.error_count()} problem(s))"]
    for problem in err.errors():
        path = ".".join(str(part) for part in problem["loc"]) or "<top level>"
        found = problem.get("input")
        if problem["type"] == "extra_forbidden":
            expected = "no such field: remove it or check its spelling"
        elif problem["type"] == "missing":
            expected = "this field is required"
        elif problem["type"] == "value_error":
            # Raised by a validator across fields: its message names the fields
            # and values, so the whole input is not repeated.
            lines.append(f"  {problem['msg'].removeprefix('Value error, ')}")
            continue
        else:
            expected = problem["msg"]
        shown = "" if problem["type"] == "missing" else f" found {_shorten(found)}:"
        lines.append(f"  {path}:{shown} {expected}")
    lines.append(
        "  (`memdeploy profiles show rram-generic` prints a valid profile with every "
        "field)"
    )
    return "\n".join(lines)


def _shorten(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
