"""A physical crossbar array on a test board, driven over a serial link.

The backend speaks the protocol of docs/serial-protocol.md through any pyserial URL:
a device path (`/dev/ttyUSB0`), `socket://HOST:PORT`, `loop://`, or a device path
wrapped as `spy://` to dump the traffic. Weights are quantized to the profile's levels,
mapped to differential cell pairs on two adjacent bit lines (see `serial_mapping`) and
written with write-verify. Between candidates, only cells whose target changed are
written again.

Fitness comes from one of two modes. `onchip` runs every matrix-vector product on the
array. `readback` computes inference on the host from the conductances the array
reports, through the profile's periphery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np
import torch

from backends.base import (
    BackendCapabilities,
    CrossbarBackend,
    ProgrammingStats,
    positive_float,
)
from backends.serial_client import ArrayClient, compare_with_profile
from backends.serial_inference import infer_from_weights, mvm_on_chip
from backends.serial_link import SerialLink
from backends.serial_mapping import (
    checked_weight,
    conductances_to_levels,
    levels_to_conductances,
    place_layers,
)
from backends.serial_port import (
    bits_per_byte,
    non_negative_int,
    open_port,
    parse_flag,
    parse_mode,
    parse_parity,
    positive_int,
    u16_count,
)
from backends.serial_transfers import REPLY_ALL_CELLS, REPLY_SUMMARY
from memdeploy.errors import BackendError
from memdeploy.quantize import layer_scale, quantize_levels

logger = logging.getLogger(__name__)

OPTIONS = {
    "target", "baudrate", "timeout", "retries", "mode", "delta", "parity",
    "tolerance_us", "max_pulses", "dump", "t_inference_s", "fixed_scale",
}  # fmt: skip
FREE = 0


class SerialArrayBackend(CrossbarBackend):
    """A crossbar array reached over a serial port (`serial://PORT?options`).

    Options: `baudrate` (default 921600), `timeout` (reply timeout in s, default 1),
    `retries` (resends per request, default 5), `mode` (`onchip` or `readback`),
    `delta` (1 writes only changed cells, 0 rewrites all), `parity` (N, E or O),
    `tolerance_us` and `max_pulses` (override the profile's write-verify),
    `t_inference_s` (override the profile's inference time), `fixed_scale` (1 keeps
    each layer's scale from its first programming, so that a later candidate changes
    only the cells of changed weights and saturates beyond the old max|w|), `dump`
    (file for a hex dump of the traffic through pyserial's spy://; device paths only).

    The array drifts in real time. With a drifting profile, inference and read-back
    wait until `t_inference_s` after the last programming. `clock` and `sleep` are
    attributes, so that tests can share a fake clock with an emulator.
    """

    name = "serial"

    def __init__(self, profile, *, seed=0, options=None) -> None:
        super().__init__(profile, seed=seed, options=options)
        self.reject_unknown_options(OPTIONS)
        self.target = self.options.get("target", "")
        if not self.target:
            raise BackendError("serial backend needs a port: use serial:///dev/ttyUSB0")
        self.baudrate = self.option("baudrate", positive_int, 921600)
        self.mode = self.option("mode", parse_mode, "onchip")
        self.delta = self.option("delta", parse_flag, True)
        self.fixed_scale = self.option("fixed_scale", parse_flag, False)
        write_verify = profile.write_verify
        self.tolerance_us = self.option(
            "tolerance_us", positive_float, write_verify.tolerance_us
        )
        self.max_pulses = self.option("max_pulses", u16_count, write_verify.max_pulses)
        self.t_inference_s = self.option(
            "t_inference_s", positive_float, profile.drift.t_inference_s
        )
        parity = self.option("parity", parse_parity, "N")
        self.bits_per_byte = bits_per_byte(parity)
        self.clock = time.monotonic
        self.sleep = time.sleep
        self._programmed_at: float | None = None
        self._image_stale = False
        self._reopens_seen = 0
        self._generator = torch.Generator().manual_seed(self.seed)

        timeout_s = self.option("timeout", positive_float, 1.0)
        retries = self.option("retries", non_negative_int, 5)

        self._port = open_port(self._url(), self.baudrate, parity)
        link = SerialLink(
            self._port, timeout_s=timeout_s, retries=retries, name=self.target
        )
        self.client = ArrayClient(link)
        try:
            self.info = self.client.hello()
        except BackendError:
            self._port.close()
            raise
        compare_with_profile(self.info, profile, self.target)

    def _url(self) -> str:
        dump = self.options.get("dump")
        return f"spy://{self.target}?file={dump}" if dump else self.target

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import serial  # noqa: F401
        except ImportError:
            return "pyserial is not installed: pip install pyserial"
        return None

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            physical=True,
            drift=self.profile.drift.nu > 0,
            on_chip_inference=self.mode == "onchip",
            readback=True,
            fault_map=True,
            notes=(f"mode={self.mode}", f"device {self.info.device_id}"),
        )

    def _setup(self) -> None:
        info = self.info
        self.blocks = place_layers(
            self.layers.values(), tiles=info.tiles, rows=info.rows, cols=info.cols
        )
        self._scales: dict[str, float] = {}
        self._sent: dict[str, np.ndarray] = {}
        self._stuck: dict[str, np.ndarray] = {}
        self._image: dict[str, np.ndarray] = {}
        for name, layer in self.layers.items():
            shape = (2, layer.out_features, layer.in_features)
            self._sent[name] = np.full(shape, np.nan, dtype=np.float32)
        self._refresh_stuck_maps()
        self._read_images()
        logger.info(
            "mapped %d layers onto %d blocks of %s",
            len(self.layers), sum(len(b) for b in self.blocks.values()), self.target,
        )  # fmt: skip

    def _layer_array(self, name: str, fetch, dtype) -> np.ndarray:
        layer = self.layers[name]
        values = np.empty((2, layer.out_features, layer.in_features), dtype=dtype)
        for block in self.blocks[name]:
            values[:, block.outputs, block.inputs] = block.from_rect(fetch(block))
        return values

    def _refresh_stuck_maps(self) -> None:
        for name in self.layers:
            self._stuck[name] = self._layer_array(
                name, lambda b: self.client.stuck_map(b.tile, b.rect), np.uint8
            )

    def _read_images(self) -> None:
        for name in self.layers:
            self._image[name] = self._layer_array(
                name, lambda b: self.client.read(b.tile, b.rect), np.float32
            )

    def program(
        self, weights: Mapping[str, torch.Tensor], *, noise_seed: int | None = None
    ) -> ProgrammingStats:
        """Program weights; a physical array ignores `noise_seed`."""
        checked = {
            name: checked_weight(weights, layer) for name, layer in self.layers.items()
        }
        link = self.client.link
        if link.reopens != self._reopens_seen:
            self._forget_written_cells(link.reopens - self._reopens_seen)
        sent_before, received_before = link.bytes_sent, link.bytes_received
        started = time.monotonic()
        stats = ProgrammingStats()

        for name, weight in checked.items():
            self._program_layer(name, weight, stats)
            stats.stuck_cells += int((self._stuck[name] != FREE).sum())

        stats.bytes_sent = link.bytes_sent - sent_before
        stats.bytes_received = link.bytes_received - received_before
        stats.link_time_s = (
            (stats.bytes_sent + stats.bytes_received)
            * self.bits_per_byte
            / self.baudrate
        )
        self.total_stats = self.total_stats + stats
        self._programmed_at = self.clock()
        self._image_stale = self.capabilities.drift
        logger.info(
            "programmed %d cells in %d verify rounds (%d pulses, %d unverified), "
            "%d bytes, link time %.3f s, wall %.3f s",
            stats.cells_written, stats.verify_rounds, stats.pulses,
            stats.verify_failures, stats.bytes_sent + stats.bytes_received,
            stats.link_time_s, time.monotonic() - started,
        )  # fmt: skip
        return stats

    def _program_layer(self, name: str, weight: torch.Tensor, stats) -> None:
        spec = self.profile.weights
        if self.fixed_scale and name in self._scales:
            scale = torch.tensor(self._scales[name])
        else:
            scale = layer_scale(weight, spec)
        levels = quantize_levels(weight, spec, scale).reshape(weight.shape[0], -1)
        targets = levels_to_conductances(
            levels.numpy(), self.info.g_min_us, self.info.g_max_us
        ).astype(np.float32)
        self._scales[name] = float(scale)

        sent, stuck = self._sent[name], self._stuck[name]
        write = stuck == FREE
        if self.delta:
            write &= targets != sent
        for block in self.blocks[name]:
            self._program_block(name, block, targets, write, stats)

    def _forget_written_cells(self, reopens: int) -> None:
        """Write every cell next time, since the device may have restarted.

        A physical array keeps its conductances through a restart, so the rewrite
        costs only verify reads there. An emulator restarted in a new process does
        not keep them.
        NOTE: cells written before a reopen in the same program() call are not
        written again until the next call.
        """
        logger.warning(
            "port %s was opened again %d time(s): writing every cell again",
            self.target, reopens,
        )  # fmt: skip
        self._reopens_seen = self.client.link.reopens
        for sent in self._sent.values():
            sent.fill(np.nan)
        self._refresh_stuck_maps()

    def _program_block(self, name, block, targets, write, stats) -> None:
        region = (slice(None), block.outputs, block.inputs)
        sign, output, input_ = np.nonzero(write[region])
        if sign.size == 0:
            return
        output, input_ = output + block.outputs.start, input_ + block.inputs.start
        rows, cols = block.cell_address(sign, output, input_)
        cell_targets = targets[sign, output, input_]
        mode = REPLY_ALL_CELLS if self.mode == "readback" else REPLY_SUMMARY

        result = self.client.program(
            block.tile, rows, cols, cell_targets,
            tolerance_us=self.tolerance_us, max_pulses=self.max_pulses, reply_mode=mode,
        )  # fmt: skip
        stats.cells_written += int(sign.size)
        stats.pulses += result.pulses
        stats.verify_rounds += result.rounds
        stats.verify_failures += int((~result.verified).sum())

        # A cell that failed verification is written again next time, unless stuck.
        self._sent[name][sign, output, input_] = np.where(
            result.verified, cell_targets, np.nan
        )
        listed = ~np.isnan(result.achieved_us)
        self._image[name][sign[listed], output[listed], input_[listed]] = (
            result.achieved_us[listed]
        )
        if result.stuck.any():
            self._stuck[name][region] = block.from_rect(
                self.client.stuck_map(block.tile, block.rect)
            )
            logger.warning(
                "%d cells of layer %r are stuck after programming",
                result.stuck.sum(),
                name,
            )

    def _weights_from_image(self, name: str) -> torch.Tensor:
        levels = conductances_to_levels(
            self._image[name], self.info.g_min_us, self.info.g_max_us
        )
        weight = torch.from_numpy(levels.astype(np.float32)) * self._scales[name]
        return weight.reshape(self.layers[name].weight_shape)

    def _require_programmed(self, name: str) -> None:
        if name not in self._scales:
            raise BackendError(
                f"layer {name!r} was not programmed: call program() first"
            )

    def read_weights(self) -> dict[str, torch.Tensor]:
        """Read every layer's conductances from the array and return the weights."""
        for name in self.layers:
            self._require_programmed(name)
        self._await_inference_time()
        self._read_images()
        self._image_stale = False
        return {name: self._weights_from_image(name) for name in self.layers}

    def stuck_cells(self) -> dict[str, torch.Tensor]:
        """Read the stuck-cell map; return per layer an int8 (2, *weight_shape) map."""
        self._refresh_stuck_maps()
        return {
            name: torch.from_numpy(self._stuck[name].astype(np.int8)).reshape(
                2, *layer.weight_shape
            )
            for name, layer in self.layers.items()
        }

    def mvm(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        layer = self.layers[name]
        if self.mode == "readback":
            weight = self._inference_weights(name)
            return infer_from_weights(
                layer, weight, inputs, self.profile.periphery, self._generator,
                unrolled=True,
            )  # fmt: skip
        self._require_programmed(name)
        self._await_inference_time()
        vectors = inputs.detach().to(torch.float32).cpu().numpy()
        return mvm_on_chip(
            self.client, self.info, self.blocks[name], self._scales[name], vectors,
            layer.out_features,
        )  # fmt: skip

    def forward(self, name: str, inputs: torch.Tensor) -> torch.Tensor:
        if self.mode == "onchip":
            return super().forward(name, inputs)
        weight = self._inference_weights(name)
        return infer_from_weights(
            self.layers[name], weight, inputs, self.profile.periphery, self._generator
        )

    def set_inference_time(self, t_inference_s: float) -> None:
        """Set how long after programming inference runs, in s (a wait, on hardware)."""
        if t_inference_s <= 0:
            raise ValueError(f"t_inference_s must be positive, got {t_inference_s}")
        self.t_inference_s = float(t_inference_s)
        self._image_stale = self.capabilities.drift

    def _await_inference_time(self) -> None:
        """Wait until `t_inference_s` after programming, when the profile drifts.

        NOTE: `drift.compensation` is not applied; outputs carry the array's drift.
        """
        if not self.capabilities.drift or self._programmed_at is None:
            return
        remaining = self._programmed_at + self.t_inference_s - self.clock()
        if remaining > 0:
            logger.info(
                "waiting %.3g s so that inference runs %g s after programming",
                remaining,
                self.t_inference_s,
            )
            self.sleep(remaining)

    def _inference_weights(self, name: str) -> torch.Tensor:
        """Weights from the read-back conductances, read again once drift has acted."""
        self._require_programmed(name)
        self._await_inference_time()
        if self._image_stale:
            self._read_images()
            self._image_stale = False
        return self._weights_from_image(name)

    def close(self) -> None:
        if not self._closed:
            self._port.close()
        super().close()
