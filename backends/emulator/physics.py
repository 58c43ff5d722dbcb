"""Device physics of the emulated array: write-verify, read noise, drift, faults, wear.

Every figure comes from a device profile. A pulse sets a cell to its target plus
Gaussian noise of `write_verify.pulse_noise_us`, clipped at 0 µS only, so a cell may
land slightly outside [g_min, g_max] as a real one can. Every read adds Gaussian noise
of `weights.read_noise / sqrt(2)` times the conductance window per cell. The
difference of a cell pair, the weight, then has noise of `read_noise` of its range, as
the profile defines it. A cell read `t` seconds after its last pulse has drifted by
`(t / t0_s) ** -nu`. Stuck cells are drawn per tile from the
seed, and a cell sticks once its pulses reach `endurance.cycles`.

The noise of a pulse or a read (READ and PROGRAM's verify reads) is a hash of the seed,
the cell's tile and address, its pulse count and its reads since the last pulse, not a
draw from one shared stream. So a cell's own history decides its noise, whatever other
cells the host programs in the same request. On a noisy link the host cuts programming
into smaller requests, and the cells still end in the same state as on a clean link.
MVM draws its noise from a seeded stream, which the cells' state does not depend on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from memdeploy.profiles import DeviceProfile

logger = logging.getLogger(__name__)

FREE, STUCK_AT_MIN, STUCK_AT_MAX = 0, 1, 2
READ_NOISE, PULSE_NOISE = 1, 2
"""Kinds of keyed noise, part of each draw's key."""
DIGEST_ARRAYS = ("tiles", "conductance_us", "stuck", "wear")
"""Arrays of `ArrayPhysics.state_arrays` that `state_digest` hashes, in this order."""
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

    reads_since_pulse: np.ndarray
    """Noisy reads of each cell since its last pulse (or since the tile was made)."""


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
        self._noise_key = np.random.SeedSequence([seed, 1 << 22]).generate_state(
            1, np.uint64
        )[0]
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
            reads_since_pulse=np.zeros(shape, dtype=np.int64),
        )

    def read(self, tile: int, rows, cols) -> np.ndarray:
        """Read cells (index arrays or slices) with drift and read noise, in µS.

        Each read counts towards the cells' `reads_since_pulse`, so the next read
        draws new noise.
        """
        state = self.tile(tile)
        row_index, col_index = np.indices(state.stuck.shape)
        noise = self._keyed_normal(
            READ_NOISE, tile, row_index[rows, cols], col_index[rows, cols],
            state.wear[rows, cols], state.reads_since_pulse[rows, cols],
        )  # fmt: skip
        np.add.at(state.reads_since_pulse, (rows, cols), 1)
        return self._drifted(state, rows, cols) + self._read_sigma() * noise

    def _drifted(self, state: TileState, rows, cols) -> np.ndarray:
        conductance = state.conductance_us[rows, cols]
        elapsed = self.clock() - state.programmed_at_s[rows, cols]
        t0 = self.profile.drift.t0_s
        factor = np.where(
            elapsed > t0,
            np.power(np.maximum(elapsed, t0) / t0, -state.nu[rows, cols]),
            1.0,
        )
        return conductance * factor

    def _read_sigma(self) -> float:
        window = self.g_max_us - self.g_min_us
        return self.profile.weights.read_noise * window / math.sqrt(2.0)

    def _keyed_normal(self, kind, tile, rows, cols, pulses, reads) -> np.ndarray:
        """Return standard normal draws keyed by cell and event, one per cell given."""
        fields = (kind, tile, rows, cols, pulses, reads)
        return keyed_standard_normal(self._noise_key, *fields)

    def program(self, tile: int, rows, cols, targets_us, tolerance_us, max_pulses):
        """Write-verify cells with distinct addresses; return a ProgramOutcome.

        Each round reads the cells not yet verified and pulses those out of
        tolerance that are neither stuck nor out of pulses. The block ends after a
        round without pulses.

        NOTE: an unverified cell that gets no pulse (stuck, or out of pulses) is read
        in every round, so its `reads_since_pulse`, and the noise of its later reads,
        depend on how many rounds the other cells of its block took.
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
            worn |= self._pulse(
                tile, state, rows[pulse], cols[pulse], targets[pulse], pulse
            )
            pulses += pulse

        stuck = state.stuck[rows, cols] != FREE
        return ProgramOutcome(achieved, pulses, verified, stuck, worn, rounds)

    def _pulse(self, tile, state, rows, cols, targets, mask) -> np.ndarray:
        sigma = self.profile.write_verify.pulse_noise_us
        noise = sigma * self._keyed_normal(
            PULSE_NOISE, tile, rows, cols, state.wear[rows, cols], 0
        )
        state.conductance_us[rows, cols] = np.maximum(targets + noise, 0.0)
        state.programmed_at_s[rows, cols] = self.clock()
        state.wear[rows, cols] += 1
        state.reads_since_pulse[rows, cols] = 0
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

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Return a copy of the cell state of the tiles in use, stacked by tile.

        `tiles` lists the tiles that commands have touched, in increasing order. The
        arrays leave out every other tile, which still has the state its seed gives
        it. They also leave out `programmed_at_s`, which is clock time and so differs
        between runs.
        """
        tiles = sorted(self._tiles)
        states = [self._tiles[index] for index in tiles]
        shape = (len(tiles), self.rows, self.cols)

        def stacked(field: str, dtype) -> np.ndarray:
            if not states:
                return np.zeros(shape, dtype=dtype)
            return np.stack([getattr(state, field) for state in states]).astype(dtype)

        return {
            "tiles": np.asarray(tiles, dtype=np.int64),
            "conductance_us": stacked("conductance_us", np.float64),
            "stuck": stacked("stuck", np.uint8),
            "wear": stacked("wear", np.int64),
            "reads_since_pulse": stacked("reads_since_pulse", np.int64),
            "nu": stacked("nu", np.float64),
            "pulses_total": np.array(self.pulses_total, dtype=np.int64),
            "seed": np.array(str(self.seed)),
        }

    def stuck_map(self, tile: int, row0: int, col0: int, rows: int, cols: int):
        """Return the stuck codes of a rectangle: 0 free, 1 at g_min, 2 at g_max."""
        return self.tile(tile).stuck[row0 : row0 + rows, col0 : col0 + cols].copy()

    def mvm(self, tile: int, row0: int, col0: int, cols: int, voltages_v: np.ndarray):
        """Return bit-line currents in µA for read voltages (batch, rows) in V."""
        rows = voltages_v.shape[1]
        grid = np.ix_(np.arange(row0, row0 + rows), np.arange(col0, col0 + cols))
        # The read noise of an MVM comes from the stream, and the MVM does not count
        # as a read of the cells, so MVMs leave the noise of later reads unchanged.
        conductance = self._drifted(self.tile(tile), *grid)
        conductance = conductance + self._read_sigma() * self._noise.standard_normal(
            conductance.shape
        )
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


_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
"""Increment of the SplitMix64 generator: 2**64 divided by the golden ratio."""


def _mix64(values: np.ndarray) -> np.ndarray:
    """Scramble uint64 values with the finalizer of the SplitMix64 generator.

    The products wrap around modulo 2**64, as the finalizer requires.
    """
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def keyed_standard_normal(key: np.uint64, *fields) -> np.ndarray:
    """Return standard normal values, each a pure function of `key` and its fields.

    The fields are non-negative integers or integer arrays, broadcast together. Each
    is hashed into the key in turn, the hash gives two uniform values, and the
    Box-Muller transform turns them into one normal value. So equal keys and fields
    always give equal values, in any order and in any batch.
    """
    arrays = np.broadcast_arrays(*(np.asarray(field) for field in fields))
    hashed = np.full(arrays[0].shape, key, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for position, field in enumerate(arrays, start=1):
            salt = np.uint64(_GOLDEN_GAMMA * position % 2**64)
            hashed = _mix64(hashed ^ _mix64(field.astype(np.uint64) + salt))
        # The top 53 bits of a hash give a float64 in [0, 1) exactly.
        first = (_mix64(hashed ^ np.uint64(1)) >> np.uint64(11)) * 2.0**-53
        second = (_mix64(hashed ^ np.uint64(2)) >> np.uint64(11)) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log1p(-first))  # finite, because first < 1
    return radius * np.cos(2.0 * np.pi * second)


def state_digest(arrays: dict[str, np.ndarray]) -> str:
    """Return the SHA-256 hex digest of the `DIGEST_ARRAYS` of a state.

    Each array is hashed with its name, dtype and shape, and its values little-endian
    in C order. So equal digests mean equal tiles, conductances, stuck maps and wear.
    """
    digest = hashlib.sha256()
    for name in DIGEST_ARRAYS:
        array = np.asarray(arrays[name])
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        header = f"{name} {array.dtype.str} {array.shape}\n"
        digest.update(header.encode("ascii"))
        digest.update(array.tobytes())
    return digest.hexdigest()
