"""Backend spec strings and the name-to-class registry.

One spec string selects a backend everywhere: the Python API, the CLI's `--backend`
and the `MEMDEPLOY_BACKEND` environment variable. Its forms:

- `gaussian`, `aihwkit`: a backend by name, with options in a query
  (`aihwkit?tiles=compiled`);
- `serial://PORT?options`: the serial array backend on any pyserial URL
  (`serial:///dev/ttyUSB0?baudrate=921600`, `serial://socket://127.0.0.1:7000`).

Outside packages add backends through the `memdeploy.backends` entry-point group,
each entry pointing at a `CrossbarBackend` subclass.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from urllib.parse import parse_qsl

from backends.base import CrossbarBackend
from memdeploy.errors import BackendSpecError, BackendUnavailableError
from memdeploy.profiles import DeviceProfile, load_profile

logger = logging.getLogger(__name__)

ENV_VAR = "MEMDEPLOY_BACKEND"
ENTRY_POINT_GROUP = "memdeploy.backends"
DEFAULT_SPEC = "gaussian"

_BUILTIN: dict[str, str] = {
    "gaussian": "backends.gaussian:GaussianNoiseBackend",
    "aihwkit": "backends.aihwkit_backend:AihwkitBackend",
    "serial": "backends.serial_array:SerialArrayBackend",
}
_registered: dict[str, str | type[CrossbarBackend]] = {}


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend spec string."""

    name: str
    target: str = ""
    """What follows `name://`, without the query: a serial port URL, for example."""

    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text or self.name


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend and whether it can run here."""

    name: str
    location: str
    available: bool
    reason: str = ""


def parse_backend_spec(text: str) -> BackendSpec:
    """Split a spec string into backend name, target and options.

    >>> parse_backend_spec("serial:///dev/ttyUSB0?baudrate=921600").target
    '/dev/ttyUSB0'
    >>> parse_backend_spec("gaussian?read_noise=0").options
    {'read_noise': '0'}
    """
    text = text.strip()
    if not text:
        raise BackendSpecError("empty backend spec: use gaussian, aihwkit or serial://PORT")
    head, _, query = text.partition("?")
    name, separator, target = head.partition("://")
    name = name.strip().lower()
    if not separator:
        target = ""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise BackendSpecError(
            f"invalid backend spec {text!r}: expected a name such as gaussian or "
            "aihwkit, or serial://PORT?options"
        )
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as err:
        raise BackendSpecError(
            f"invalid options {query!r} in backend spec {text!r}: use key=value "
            "pairs joined by &"
        ) from err
    if name == "serial" and not target:
        raise BackendSpecError(
            f"backend spec {text!r} names no port: use serial:///dev/ttyUSB0 or "
            "serial://socket://HOST:PORT"
        )
    return BackendSpec(name=name, target=target, options=options, text=text)


def register_backend(name: str, backend: str | type[CrossbarBackend]) -> None:
    """Register a backend class, or a `module:Class` path imported on first use."""
    _registered[name.lower()] = backend


def _all_locations() -> dict[str, str | type[CrossbarBackend]]:
    locations: dict[str, str | type[CrossbarBackend]] = dict(_BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        locations.setdefault(entry.name.lower(), entry.value)
    locations.update(_registered)
    return locations


def backend_class(name: str) -> type[CrossbarBackend]:
    """Import and return the backend class registered under `name`."""
    locations = _all_locations()
    if name not in locations:
        known = ", ".join(sorted(locations))
        raise BackendSpecError(f"unknown backend {name!r}: known backends are {known}")
    location = locations[name]
    if not isinstance(location, str):
        return location
    module_name, _, class_name = location.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackendUnavailableError(
            f"backend {name!r} cannot be imported from {module_name}: {err}"
        ) from err
    backend = getattr(module, class_name, None)
    if not (isinstance(backend, type) and issubclass(backend, CrossbarBackend)):
        raise BackendSpecError(
            f"backend {name!r} points at {location}, which is not a CrossbarBackend "
            "subclass"
        )
    return backend


def list_backends() -> list[BackendInfo]:
    """Return every registered backend with whether it can run here and why not."""
    infos = []
    for name, location in sorted(_all_locations().items()):
        where = location if isinstance(location, str) else location.__qualname__
        try:
            reason = backend_class(name).unavailable_reason()
        except BackendUnavailableError as err:
            reason = str(err)
        infos.append(BackendInfo(name, where, reason is None, reason or ""))
    return infos


def resolve_spec(spec: str | BackendSpec | None) -> BackendSpec:
    """Parse `spec`, falling back to `MEMDEPLOY_BACKEND`, then to `gaussian`."""
    if isinstance(spec, BackendSpec):
        return spec
    if spec is None:
        spec = os.environ.get(ENV_VAR) or DEFAULT_SPEC
        logger.debug("backend spec %r taken from %s or the default", spec, ENV_VAR)
    return parse_backend_spec(spec)


def open_backend(
    spec: str | BackendSpec | None,
    profile: str | DeviceProfile,
    *,
    seed: int = 0,
) -> CrossbarBackend:
    """Create the backend a spec string names, for a device profile."""
    parsed = resolve_spec(spec)
    backend = backend_class(parsed.name)
    reason = backend.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"backend {parsed.name!r} is unavailable: {reason}")
    options = dict(parsed.options)
    if parsed.target:
        options["target"] = parsed.target
    logger.debug("opening backend %s (%s) with options %s", parsed.name, backend, options)
    return backend(load_profile(profile), seed=seed, options=options)
