"""Programming a map's blocks on the array, reading them back, and repairing cells.

A block is one layer's rectangle on one tile. Conductances read back are arrays of
shape (2, pairs) in the order of the map's cell table: index 0 the G+ cells, index 1
the G- cells.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from backends.serial_mapping import Block
from backends.serial_transfers import REPLY_SUMMARY
from memdeploy.weightmap.connection import ArrayConnection
from memdeploy.weightmap.format import WeightMap
from memdeploy.weightmap.journal import DeployJournal, block_key
from memdeploy.weightmap.tiles import block_from_dict, block_mask, physical_cells
from memdeploy.weightmap.verify import target_pairs

logger = logging.getLogger(__name__)

REPAIR_TOLERANCE_FRACTION = 0.5
"""Fraction of the verify tolerance a repaired cell is programmed to, so that it lands
well inside the tolerance and the noise of later reads does not push it out again."""


@dataclass(frozen=True)
class MapBlock:
    """A block of the map, with the records of the cell table it contains."""

    key: str
    layer_index: int
    block: Block
    records: np.ndarray
    """Indices into the cell table."""


def map_blocks(weight_map: WeightMap) -> list[MapBlock]:
    """Return the map's blocks in the order a deploy programs them: tile, row, column."""
    blocks = []
    for index, layer in enumerate(weight_map.manifest["layers"]):
        for entry in layer["blocks"]:
            block = block_from_dict(layer["name"], entry)
            records = np.flatnonzero(block_mask(weight_map.cells, index, block))
            key = block_key(index, block.tile, block.row0, block.col0)
            blocks.append(MapBlock(key, index, block, records))
    return sorted(
        blocks, key=lambda item: (item.block.tile, item.block.row0, item.block.col0)
    )


class BlockProgrammer:
    """Programs, reads and repairs a map's blocks on one array.

    Args:
        connection: The open array.
        cells: The map's cell table.
        journal: Where finished blocks and pulses are recorded.
        reads: Reads averaged per cell when reading back.
    """

    def __init__(
        self,
        connection: ArrayConnection,
        cells: dict[str, np.ndarray],
        journal: DeployJournal,
        reads: int,
    ) -> None:
        self.connection = connection
        self.cells = cells
        self.journal = journal
        self.reads = reads
        self.targets = target_pairs(cells)
        self.readback = np.full(self.targets.shape, np.nan)
        """Latest read of every cell in µS, shape (2, pairs)."""

        self.stuck = np.zeros(self.targets.shape, dtype=np.uint8)
        """Stuck codes of every cell (0 free, 1 at g_min, 2 at g_max)."""

    def program(self, item: MapBlock) -> None:
        """Write-verify every cell of a block and record the block in the journal."""
        rows, cols, targets = physical_cells(self.cells, item.records)
        result = self._write(item, rows, cols, targets, self.connection.tolerance_us)
        unverified = int((~result.verified).sum())
        self.journal.record(
            item.key,
            {
                "tile": item.block.tile,
                "layer": item.layer_index,
                "cells": int(targets.size),
                "verified": int(targets.size) - unverified,
                "stuck_reported": int(result.stuck.sum()),
                "pulses": int(result.pulses),
                "rounds": int(result.rounds),
            },
        )
        logger.info(
            "tile %d: programmed %d cells of layer %r in %d verify rounds "
            "(%d pulses, %d unverified)",
            item.block.tile,
            targets.size,
            item.block.layer,
            result.rounds,
            result.pulses,
            unverified,
        )

    def _write(self, item: MapBlock, rows, cols, targets, tolerance_us: float):
        return self.connection.client.program(
            item.block.tile,
            rows,
            cols,
            targets.astype(np.float32),
            tolerance_us=tolerance_us,
            max_pulses=self.connection.max_pulses,
            reply_mode=REPLY_SUMMARY,
        )

    def read(self, item: MapBlock, only: np.ndarray | None = None) -> None:
        """Read a block's conductances and stuck codes into `readback` and `stuck`.

        With `only`, a boolean array of shape (2, block records), only those cells are
        updated, so that every cell keeps the value of its latest read.
        """
        block, client = item.block, self.connection.client
        reads = [client.read(block.tile, block.rect) for _ in range(self.reads)]
        image = np.mean(reads, axis=0)
        codes = client.stuck_map(block.tile, block.rect)
        rows = self.cells["row"][item.records] - block.row0
        cols = self.cells["col"][item.records] - block.col0
        for sign in (0, 1):
            update = slice(None) if only is None else only[sign]
            records = item.records[update]
            self.readback[sign, records] = image[rows, cols + sign][update]
            self.stuck[sign, records] = codes[rows, cols + sign][update]

    def failing(self) -> np.ndarray:
        """Return which cells are free and out of tolerance, shape (2, pairs)."""
        error = np.abs(self.readback - self.targets)
        return (error > self.connection.tolerance_us) & (self.stuck == 0)

    def repair(self, blocks: list[MapBlock], rounds: int) -> int:
        """Program again the free cells out of tolerance; return the rounds run."""
        for done in range(rounds):
            failing = self.failing()
            if not failing.any():
                return done
            logger.info(
                "repair round %d: %d cells out of tolerance", done + 1, failing.sum()
            )
            for item in blocks:
                repaired = failing[:, item.records]
                sign, position = np.nonzero(repaired)
                if sign.size:
                    self._repair_block(item, sign, item.records[position])
                    self.read(item, only=repaired)
        return rounds

    def _repair_block(
        self, item: MapBlock, sign: np.ndarray, records: np.ndarray
    ) -> None:
        rows = self.cells["row"][records]
        cols = self.cells["col"][records] + sign
        tolerance_us = self.connection.tolerance_us * REPAIR_TOLERANCE_FRACTION
        targets = self.targets[sign, records]
        result = self._write(item, rows, cols, targets, tolerance_us)
        self.journal.add_repair_pulses(item.key, result.pulses)
