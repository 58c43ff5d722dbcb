"""The connection a deploy programs through: the serial backend's client on a port.

Deploying a map writes cells by address, which only the serial array protocol offers,
so a deploy takes a `serial://PORT?options` spec and talks to the device through the
serial backend's `ArrayClient`. pyserial and the serial modules are imported only
here, when a deploy opens a port.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Self

import numpy as np

from backends.registry import parse_backend_spec
from memdeploy.errors import BackendSpecError
from memdeploy.profiles import DeviceProfile

logger = logging.getLogger(__name__)

OPTIONS = {"baudrate", "timeout", "retries", "parity", "tolerance_us", "max_pulses"}


@dataclass
class ArrayConnection:
    """An open serial connection to an array, with the write-verify settings."""

    client: object
    """The serial backend's `ArrayClient`."""

    info: object
    """The device's HELLO reply (`DeviceInfo`)."""

    port: object
    url: str
    tolerance_us: float
    """Verify tolerance in µS."""

    max_pulses: int

    def close(self) -> None:
        """Close the port."""
        self.port.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_array(spec: str, profile: DeviceProfile) -> ArrayConnection:
    """Open `serial://PORT?options` and exchange HELLO with the device.

    Options: `baudrate` (default 921600), `timeout` (reply timeout in s, default 1),
    `retries` (default 5), `parity` (N, E or O), and `tolerance_us` and
    `max_pulses` to override the profile's write-verify settings.

    Raises:
        BackendSpecError: The spec names another backend or an unknown option.
        BackendError: The port cannot be opened or the device does not reply.
    """
    from backends.serial_client import ArrayClient
    from backends.serial_link import SerialLink
    from backends.serial_port import open_port, parse_parity

    parsed = parse_backend_spec(spec)
    if parsed.name != "serial":
        raise BackendSpecError(
            f"deploy writes cells by tile address, which only the serial backend "
            f"does; backend spec {spec!r} names {parsed.name!r}: use serial://PORT"
        )
    unknown = sorted(set(parsed.options) - OPTIONS)
    if unknown:
        raise BackendSpecError(
            f"deploy does not take option(s) {', '.join(unknown)} in {spec!r}; it "
            f"takes: {', '.join(sorted(OPTIONS))}"
        )
    options = _Options(parsed.options)
    baudrate = options.get("baudrate", int, 921600)
    parity = options.get("parity", parse_parity, "N")
    port = open_port(parsed.target, baudrate, parity)
    try:
        link = SerialLink(
            port,
            timeout_s=options.get("timeout", float, 1.0),
            retries=options.get("retries", int, 5),
            name=parsed.target,
        )
        client = ArrayClient(link)
        info = client.hello()
        connection = ArrayConnection(
            client,
            info,
            port,
            parsed.target,
            tolerance_us=options.get(
                "tolerance_us", float, profile.write_verify.tolerance_us
            ),
            max_pulses=options.get("max_pulses", int, profile.write_verify.max_pulses),
        )
    except BaseException:
        port.close()
        raise
    logger.info(
        "deploying to %s on %s: %d tiles of %dx%d cells, %g to %g µS",
        info.device_id,
        parsed.target,
        info.tiles,
        info.rows,
        info.cols,
        info.g_min_us,
        info.g_max_us,
    )
    return connection


class _Options:
    def __init__(self, raw: dict[str, str]) -> None:
        self.raw = raw

    def get(self, key: str, convert, default):
        if key not in self.raw:
            return default
        try:
            return convert(self.raw[key])
        except (TypeError, ValueError) as err:
            raise BackendSpecError(
                f"deploy option {key}={self.raw[key]!r} is invalid: {err}"
            ) from err


def check_device_fits(connection: ArrayConnection, manifest: dict, targets_us) -> None:
    """Raise unless the device has the map's tile geometry, enough tiles and range.

    Raises:
        BackendSpecError: The device cannot hold the map as placed.
    """
    info, tile = connection.info, manifest["tile"]
    if (info.rows, info.cols) != (tile["rows"], tile["cols"]):
        raise BackendSpecError(
            f"device {info.device_id} has tiles of {info.rows}x{info.cols} cells, but "
            f"the map was placed on {tile['rows']}x{tile['cols']} tiles (profile "
            f"{manifest['profile']['name']}): export the map for a profile with the "
            "device's tile geometry"
        )
    if info.tiles < manifest["tiles_used"]:
        raise BackendSpecError(
            f"the map needs {manifest['tiles_used']} tiles and device {info.device_id} "
            f"has {info.tiles}: use an array with more tiles (the emulator's --tiles) "
            "or a smaller model"
        )
    targets = np.asarray(targets_us)
    # The device compares float32 targets with its float32 range.
    low, high = np.float32(info.g_min_us), np.float32(info.g_max_us)
    if targets.size and (targets.min() < low or targets.max() > high):
        raise BackendSpecError(
            f"the map's targets span {targets.min():g} to {targets.max():g} µS, outside "
            f"device {info.device_id}'s range of {info.g_min_us:g} to {info.g_max_us:g} "
            "µS: export the map for a profile with the device's conductance range"
        )
