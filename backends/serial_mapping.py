"""Placement of crossbar layers on the tiles of a physical array.

A layer's unrolled weight matrix (outputs x inputs) is cut into blocks of at most
`rows` inputs by `cols // 2` outputs. Input `i` of a block drives word line
`row0 + i`. Output `j` uses two adjacent bit lines: `col0 + 2j` for the positive cell
(G+) and `col0 + 2j + 1` for the negative cell (G-). Blocks are placed largest first on
the free rectangles of the tiles (guillotine packing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from backends.base import CrossbarLayer
from backends.serial_commands import Rect
from backends.serial_errors import ArrayCapacityError
from memdeploy.errors import WeightsError


@dataclass(frozen=True)
class Block:
    """A rectangle of one layer's weights, placed on a tile."""

    layer: str
    tile: int
    row0: int
    col0: int
    inputs: slice
    """Range of the layer's unrolled inputs (columns of the weight matrix)."""

    outputs: slice
    """Range of the layer's outputs (rows of the weight matrix)."""

    @property
    def rows(self) -> int:
        """Word lines used."""
        return self.inputs.stop - self.inputs.start

    @property
    def cols(self) -> int:
        """Bit lines used: two per output."""
        return 2 * (self.outputs.stop - self.outputs.start)

    @property
    def rect(self) -> Rect:
        """The tile rectangle the block occupies."""
        return Rect(self.row0, self.col0, self.rows, self.cols)

    def cell_address(self, sign: int, output: np.ndarray, input_: np.ndarray):
        """Return (row, col) of cells of the layer: `sign` 0 for G+, 1 for G-."""
        rows = self.row0 + (input_ - self.inputs.start)
        cols = self.col0 + 2 * (output - self.outputs.start) + sign
        return rows, cols

    def from_rect(self, values: np.ndarray) -> np.ndarray:
        """Rearrange a (rows, cols) tile read-out into (2, outputs, inputs)."""
        return np.stack([values[:, 0::2].T, values[:, 1::2].T])


def cut_layer(layer: CrossbarLayer, rows: int, cols: int) -> list[tuple[slice, slice]]:
    """Cut a layer into (inputs, outputs) ranges that each fit one tile."""
    per_tile_outputs = cols // 2
    return [
        (
            slice(i, min(i + rows, layer.in_features)),
            slice(o, min(o + per_tile_outputs, layer.out_features)),
        )
        for o in range(0, layer.out_features, per_tile_outputs)
        for i in range(0, layer.in_features, rows)
    ]


def place_layers(
    layers: Iterable[CrossbarLayer], *, tiles: int, rows: int, cols: int
) -> dict[str, list[Block]]:
    """Place every layer's blocks on the tiles; raise when they do not fit.

    >>> fc = CrossbarLayer("fc", "linear", (10, 40))
    >>> blocks = place_layers([fc], tiles=2, rows=32, cols=32)["fc"]
    >>> [(block.tile, block.rows, block.cols) for block in blocks]
    [(0, 32, 20), (1, 8, 20)]
    """
    layers = list(layers)
    if cols < 2:
        raise ArrayCapacityError(
            f"tiles of {rows}x{cols} cells cannot hold a differential pair, which needs "
            "two bit lines"
        )
    pieces = [
        (layer, inputs, outputs)
        for layer in layers
        for inputs, outputs in cut_layer(layer, rows, cols)
    ]
    pieces.sort(key=lambda piece: -_area(piece[1], piece[2]))
    free = [(tile, 0, 0, rows, cols) for tile in range(tiles)]
    placed: dict[str, list[Block]] = {layer.name: [] for layer in layers}

    for layer, inputs, outputs in pieces:
        need_rows, need_cols = (
            inputs.stop - inputs.start,
            2 * (outputs.stop - outputs.start),
        )
        slot = next((s for s in free if s[3] >= need_rows and s[4] >= need_cols), None)
        if slot is None:
            raise _capacity_error(layer, layers, tiles, rows, cols)
        free.remove(slot)
        tile, row0, col0, free_rows, free_cols = slot
        placed[layer.name].append(Block(layer.name, tile, row0, col0, inputs, outputs))
        # Guillotine split: the strip right of the block, then the strip below it.
        if free_cols > need_cols:
            free.append(
                (tile, row0, col0 + need_cols, need_rows, free_cols - need_cols)
            )
        if free_rows > need_rows:
            free.append(
                (tile, row0 + need_rows, col0, free_rows - need_rows, free_cols)
            )
        free.sort(key=lambda s: (s[0], s[1], s[2]))

    for blocks in placed.values():
        blocks.sort(key=lambda b: (b.outputs.start, b.inputs.start))
    return placed


def _area(inputs: slice, outputs: slice) -> int:
    return (inputs.stop - inputs.start) * (outputs.stop - outputs.start)


def _capacity_error(layer, layers, tiles, rows, cols) -> ArrayCapacityError:
    needed = sum(item.cells for item in layers)
    capacity = tiles * rows * cols
    return ArrayCapacityError(
        f"layer {layer.name!r} ({layer.out_features}x{layer.in_features} weights, "
        f"{layer.cells} cells) does not fit on the array: the model needs {needed} "
        f"cells and the array has {tiles} tiles of {rows}x{cols} cells ({capacity} "
        "cells), of which the layers placed before it took their share; use an array "
        "with more tiles (the emulator's --tiles) or a smaller model"
    )


def levels_to_conductances(levels: np.ndarray, g_min_us: float, g_max_us: float):
    """Map weight levels in [-1, 1] to the cell pair's targets (2, ...) in µS.

    >>> levels_to_conductances(np.array([0.5, -1.0]), 10.0, 50.0).tolist()
    [[30.0, 10.0], [10.0, 50.0]]
    """
    window = g_max_us - g_min_us
    positive = g_min_us + np.maximum(levels, 0.0) * window
    negative = g_min_us + np.maximum(-levels, 0.0) * window
    return np.stack([positive, negative])


def conductances_to_levels(pair_us: np.ndarray, g_min_us: float, g_max_us: float):
    """Return the weight level (G+ - G-) / (g_max - g_min) of cell pairs (2, ...)."""
    return (pair_us[0] - pair_us[1]) / (g_max_us - g_min_us)


def checked_weight(weights, layer: CrossbarLayer) -> torch.Tensor:
    """Return a layer's weights as float32 on the CPU; raise if missing or malformed."""
    if layer.name not in weights:
        raise WeightsError(f"no weights given for crossbar layer {layer.name!r}")
    weight = weights[layer.name].detach().to(torch.float32).cpu()
    if tuple(weight.shape) != tuple(layer.weight_shape):
        raise WeightsError(
            f"weights for layer {layer.name!r} have shape {tuple(weight.shape)}, "
            f"expected {tuple(layer.weight_shape)}"
        )
    if not torch.isfinite(weight).all():
        raise WeightsError(
            f"weights for layer {layer.name!r} contain NaN or infinite values; they "
            "cannot be programmed"
        )
    return weight
