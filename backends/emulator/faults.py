"""Link faults the emulator injects: corrupted bytes, lost frames, delays, a reset."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaultSettings:
    """Faults of the emulated link; the defaults make a clean link."""

    corrupt_rate: float = 0.0
    """Probability that each byte, in either direction, is replaced by another value."""

    drop_rate: float = 0.0
    """Probability that a received frame is discarded, and that a reply is not sent."""

    delay_s: float = 0.0
    """Delay of every reply, in s."""

    reset_after_frames: int | None = None
    """Reset the device once, while it receives the frame after this many frames."""

    def __post_init__(self) -> None:
        for name in ("corrupt_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.delay_s < 0:
            raise ValueError(f"delay_s must be 0 or more, got {self.delay_s}")
        if self.reset_after_frames is not None and self.reset_after_frames < 0:
            raise ValueError(
                f"reset_after_frames must be 0 or more, got {self.reset_after_frames}"
            )


class FaultInjector:
    """Applies `FaultSettings` to the bytes and frames of one emulated link.

    Args:
        settings: The faults to inject.
        seed: Seed of the fault draws, separate from the device physics.
    """

    def __init__(self, settings: FaultSettings, *, seed: int = 0) -> None:
        self.settings = settings
        self._generator = np.random.default_rng([seed, 1 << 21])
        self.frames_seen = 0
        self.reset_done = False
        self.bytes_corrupted = 0
        self.frames_dropped = 0

    def corrupt(self, data: bytes) -> bytes:
        """Return `data` with each byte replaced by a different value at the rate."""
        rate = self.settings.corrupt_rate
        if rate <= 0 or not data:
            return data
        values = np.frombuffer(data, dtype=np.uint8).copy()
        hit = self._generator.random(len(values)) < rate
        # XOR with 1..255 always changes the byte, so the rate is the rate of changes.
        flips = self._generator.integers(1, 256, size=int(hit.sum()), dtype=np.uint8)
        values[hit] ^= flips
        self.bytes_corrupted += int(hit.sum())
        return values.tobytes()

    def drop(self) -> bool:
        """Draw whether the next frame (received or sent) is lost."""
        if self.settings.drop_rate <= 0:
            return False
        dropped = bool(self._generator.random() < self.settings.drop_rate)
        self.frames_dropped += dropped
        return dropped

    def reset_now(self) -> bool:
        """Count a received frame; return True if the device resets receiving it."""
        limit = self.settings.reset_after_frames
        self.frames_seen += 1
        if limit is None or self.reset_done or self.frames_seen <= limit:
            return False
        self.reset_done = True
        logger.info("injecting a device reset at received frame %d", self.frames_seen)
        return True
