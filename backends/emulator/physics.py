"""Device physics of the emulated array: write-verify, read noise, drift, faults, wear.

Every figure comes from a device profile. A pulse sets a cell to its target plus
Gaussian noise of `write_verify.pulse_noise_us`, clipped at 0 µS only, so a cell may
land slightly outside [g_min, g_max] as a real one can. Every read adds Gaussian noise
of `weights.read_noise / sqrt(2)` times the conductance window per cell. The
difference of a cell pair, the weight, then has noise of `read_noise` of its range, as
the profile defines it. A cell read `t` seconds after its last pulse has drifted by
`(t / t0_s) ** -nu`. Stuck cells are drawn per tile from the
seed, and a cell sticks once its pulses reach `endurance.cycles`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from memdeploy.profiles import DeviceProfile

logger = logging.getLogger(__name__)

FREE, STUCK_AT_MIN, STUCK_AT_MAX = 0, 1, 2
DEFAULT_V_READ_V = 0.2
"""Largest read voltage in V, low enough not to disturb RRAM or PCM cells."""


@dataclass
class TileState:
    """Per-cell state of one tile; every array has shape (rows, cols)."""

    conductance_us: np.ndarray
    stuck: np.ndarray
    nu: np.ndarray
    wear: np.ndarray
    """Pulses each cell has taken in its lifetime."""

    programmed_at_s: np.ndarray
    """Clock time of each cell's last pulse, in s."""


@dataclass(frozen=True)
class ProgramOutcome:
    """Per-cell result of one write-verify block."""

    achieved_us: np.ndarray
    pulses: np.ndarray
    verified: np.ndarray
    stuck: np.ndarray
    worn: np.ndarray
    rounds: int


class ArrayPhysics:
    """The cells of an emulated crossbar array.

    Args:
        profile: Device profile with the figures of the physics.
        tiles: Number of tiles of `profile.tile` geometry.
        seed: Seed of the stuck-cell map and of every noise draw.
        clock: Time source in s, for drift; tests pass a fake one.
    """

    def __init__(
        self,
        profile: DeviceProfile,
        *,
        tiles: int,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.tiles = tiles
        self.rows = profile.tile.rows
        self.cols = profile.tile.cols
        self.g_min_us = profile.conductance.g_min_us
        self.g_max_us = profile.conductance.g_max_us
        self.v_read_v = DEFAULT_V_READ_V
        self.seed = seed
        self.clock = clock
        self.pulses_total = 0
        self._noise = np.random.default_rng([seed, 1 << 20])
        self._tiles: dict[int, TileState] = {}

    def tile(self, index: int) -> TileState:
        """Return a tile's state, drawing its stuck map on first use."""
        if index not in self._tiles:
            self._tiles[index] = self._fresh_tile(index)
        return self._tiles[index]

    def _fresh_tile(self, index: int) -> TileState:
        shape = (self.rows, self.cols)
        generator = np.random.default_rng([self.seed, index])
        faults, drift = self.profile.faults, self.profile.drift

        stuck_cells = generator.random(shape) < faults.stuck_rate
        stuck_on = generator.random(shape) < faults.stuck_on_fraction
        stuck = np.where(
            stuck_cells, np.where(stuck_on, STUCK_AT_MAX, STUCK_AT_MIN), FREE
        )

        # Fresh cells sit near g_min, spread as one pulse would spread them.
        spread = self.profile.write_verify.pulse_noise_us
        conductance = self.g_min_us + np.abs(spread * generator.standard_normal(shape))
        conductance[stuck == STUCK_AT_MIN] = self.g_min_us
        conductance[stuck == STUCK_AT_MAX] = self.g_max_us
        nu = np.clip(
            drift.nu + drift.nu_std * generator.standard_normal(shape), 0, None
        )
        return TileState(
            conductance_us=conductance,
            stuck=stuck.astype(np.uint8),
            nu=nu,
            wear=np.zeros(shape, dtype=np.int64),
            programmed_at_s=np.full(shape, self.clock()),
        )

    def read(self, tile: int, rows, cols) -> np.ndarray:
        """Read cells (index arrays or slices) with drift and read noise, in µS."""
        state = self.tile(tile)
        conductance = state.conductance_us[rows, cols]
        elapsed = self.clock() - state.programmed_at_s[rows, cols]
        t0 = self.profile.drift.t0_s
        factor = np.where(
            elapsed > t0,
            np.power(np.maximum(elapsed, t0) / t0, -state.nu[rows, cols]),
            1.0,
        )
        window = self.g_max_us - self.g_min_us
        sigma = self.profile.weights.read_noise * window / math.sqrt(2.0)
        noise = sigma * self._noise.standard_normal(np.shape(conductance))
        return conductance * factor + noise

    def program(self, tile: int, rows, cols, targets_us, tolerance_us, max_pulses):
        """Write-verify cells with distinct addresses; return a ProgramOutcome.

        Each round reads the cells not yet verified and pulses those out of
        tolerance that are neither stuck nor out of pulses. The block ends after a
        round without pulses.
        """
        rows, cols = np.asarray(rows), np.asarray(cols)
        targets = np.asarray(targets_us, dtype=np.float64)
        state = self.tile(tile)
        count = len(targets)
        achieved = np.zeros(count)
        pulses = np.zeros(count, dtype=np.int64)
        verified = np.zeros(count, dtype=bool)
        worn = np.zeros(count, dtype=bool)
        rounds = 0

        while True:
            rounds += 1
            pending = ~verified
            achieved[pending] = self.read(tile, rows[pending], cols[pending])
            verified[pending] = (
                np.abs(achieved[pending] - targets[pending]) <= tolerance_us
            )

            stuck = state.stuck[rows, cols] != FREE
            pulse = ~verified & ~stuck & (pulses < max_pulses)
            if count == 0 or not pulse.any():
                break
            worn |= self._pulse(state, rows[pulse], cols[pulse], targets[pulse], pulse)
            pulses += pulse

        stuck = state.stuck[rows, cols] != FREE
        return ProgramOutcome(achieved, pulses, verified, stuck, worn, rounds)

    def _pulse(self, state, rows, cols, targets, mask) -> np.ndarray:
        sigma = self.profile.write_verify.pulse_noise_us
        noise = sigma * self._noise.standard_normal(len(targets))
        state.conductance_us[rows, cols] = np.maximum(targets + noise, 0.0)
        state.programmed_at_s[rows, cols] = self.clock()
        state.wear[rows, cols] += 1
        self.pulses_total += len(targets)

        worn_out = state.wear[rows, cols] >= self.profile.endurance.cycles
        if worn_out.any():
            self._stick_worn(state, rows[worn_out], cols[worn_out])
        worn = np.zeros(len(mask), dtype=bool)
        worn[np.flatnonzero(mask)[worn_out]] = True
        return worn

    def _stick_worn(self, state, rows, cols) -> None:
        conductance = state.conductance_us[rows, cols]
        nearer_max = (self.g_max_us - conductance) < (conductance - self.g_min_us)
        state.stuck[rows, cols] = np.where(nearer_max, STUCK_AT_MAX, STUCK_AT_MIN)
        logger.info("%d cells wore out and are stuck from now on", len(rows))

    def stuck_map(self, tile: int, row0: int, col0: int, rows: int, cols: int):
        """Return the stuck codes of a rectangle: 0 free, 1 at g_min, 2 at g_max."""
        return self.tile(tile).stuck[row0 : row0 + rows, col0 : col0 + cols].copy()

    def mvm(self, tile: int, row0: int, col0: int, cols: int, voltages_v: np.ndarray):
        """Return bit-line currents in µA for read voltages (batch, rows) in V."""
        rows = voltages_v.shape[1]
        grid = np.ix_(np.arange(row0, row0 + rows), np.arange(col0, col0 + cols))
        conductance = self.read(tile, *grid)
        periphery = self.profile.periphery

        voltages = _quantize(
            voltages_v.astype(np.float64), periphery.dac_bits, self.v_read_v
        )
        currents = voltages @ conductance
        bound = float(np.abs(currents).max()) if currents.size else 0.0
        if periphery.output_noise > 0:
            noise = self._noise.standard_normal(currents.shape)
            currents = currents + noise * (periphery.output_noise * bound)
        bound = float(np.abs(currents).max()) if currents.size else 0.0
        return _quantize(currents, periphery.adc_bits, bound)


def _quantize(values: np.ndarray, bits: int, bound: float) -> np.ndarray:
    """Round to `2**(bits-1) - 1` steps each side of zero over +-bound (0 bits: off)."""
    if bits <= 0 or bound <= 0:
        return values
    steps = max(2 ** (bits - 1) - 1, 1)
    return np.round(np.clip(values / bound, -1, 1) * steps) * (bound / steps)
