"""Tiling: where every weight of a model's crossbar layers sits on the array's tiles.

The placement is the serial backend's own (`backends.serial_mapping.place_layers`), so
a map deployed cell by cell lands at the addresses the serial backend programs. A
layer's unrolled weight matrix (outputs x inputs) is cut into blocks of at most
`rows` inputs by `cols // 2` outputs. Weight (output `o`, input `i`) of a block drives
word line `row0 + i - inputs.start` and sits on a differential pair of two adjacent bit
lines: G+ on `col0 + 2 (o - outputs.start)` and G- on the next one.

The map's cell table has one record per weight (per cell pair), with the fields of
`CELL_FIELDS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backends.base import CrossbarLayer
from backends.serial_mapping import (
    Block,
    cut_layer,
    levels_to_conductances,
    place_layers,
)

CELL_FIELDS: dict[str, np.dtype] = {
    "tile": np.dtype(np.int32),
    "row": np.dtype(np.int32),
    "col": np.dtype(np.int32),
    "layer": np.dtype(np.int32),
    "weight_index": np.dtype(np.int64),
    "level": np.dtype(np.float32),
    "g_plus_us": np.dtype(np.float32),
    "g_minus_us": np.dtype(np.float32),
}
"""Fields of the cell table. `row` is the word line and `col` the bit line of G+
(G- is on the next one). `layer` indexes the map's layer table, and `weight_index`
is the flat index into the layer's weight tensor. `level` is the normalized weight
in [-1, 1], and `g_plus_us` and `g_minus_us` are the pair's conductances in µS."""


def place_on_tiles(
    layers: Sequence[CrossbarLayer], rows: int, cols: int
) -> dict[str, list[Block]]:
    """Place layers on as many tiles of `rows` x `cols` cells as they need.

    The serial backend places first-fit on the lowest free tile, so the result equals
    its placement on any device that has at least the tiles used here.

    >>> fc = CrossbarLayer("fc", "linear", (20, 40))
    >>> [(b.tile, b.row0, b.col0) for b in place_on_tiles([fc], 32, 32)["fc"]]
    [(0, 0, 0), (1, 0, 0), (2, 0, 0), (1, 8, 0)]
    """
    pieces = sum(len(cut_layer(layer, rows, cols)) for layer in layers)
    return place_layers(layers, tiles=max(pieces, 1), rows=rows, cols=cols)


def block_to_dict(block: Block) -> dict:
    """Describe a placed block as plain values for the map's manifest."""
    return {
        "tile": block.tile,
        "row0": block.row0,
        "col0": block.col0,
        "rows": block.rows,
        "cols": block.cols,
        "inputs": [block.inputs.start, block.inputs.stop],
        "outputs": [block.outputs.start, block.outputs.stop],
    }


def block_from_dict(layer: str, data: dict) -> Block:
    """Rebuild a placed block from its manifest entry."""
    return Block(
        layer,
        int(data["tile"]),
        int(data["row0"]),
        int(data["col0"]),
        slice(*data["inputs"]),
        slice(*data["outputs"]),
    )


def build_cell_table(
    layers: Sequence[CrossbarLayer],
    placement: dict[str, list[Block]],
    levels: dict[str, np.ndarray],
    g_min_us: float,
    g_max_us: float,
) -> dict[str, np.ndarray]:
    """Return the cell table, sorted by tile, row and column.

    Args:
        layers: Crossbar layers, in the order of the map's layer table.
        placement: Blocks of each layer, from `place_on_tiles`.
        levels: Each layer's float32 levels in [-1, 1], shaped like its weight.
        g_min_us: Conductance of level 0 and of the idle cell of a pair, in µS.
        g_max_us: Conductance of level 1 (G+) or -1 (G-), in µS.
    """
    parts = [
        _block_cells(index, layer, block, levels[layer.name])
        for index, layer in enumerate(layers)
        for block in placement[layer.name]
    ]
    table = {
        name: np.concatenate([part[name] for part in parts]).astype(dtype)
        if parts
        else np.empty(0, dtype=dtype)
        for name, dtype in CELL_FIELDS.items()
        if name not in ("g_plus_us", "g_minus_us")
    }
    pair = levels_to_conductances(table["level"], g_min_us, g_max_us)
    table["g_plus_us"] = pair[0].astype(np.float32)
    table["g_minus_us"] = pair[1].astype(np.float32)
    order = np.lexsort((table["col"], table["row"], table["tile"]))
    return {name: values[order] for name, values in table.items()}


def _block_cells(index: int, layer: CrossbarLayer, block: Block, levels: np.ndarray):
    outputs = np.arange(block.outputs.start, block.outputs.stop)
    inputs = np.arange(block.inputs.start, block.inputs.stop)
    output, input_ = (
        grid.ravel() for grid in np.meshgrid(outputs, inputs, indexing="ij")
    )
    rows, cols = block.cell_address(0, output, input_)
    matrix = levels.reshape(layer.out_features, layer.in_features)
    return {
        "tile": np.full(output.size, block.tile),
        "row": rows,
        "col": cols,
        "layer": np.full(output.size, index),
        "weight_index": output.astype(np.int64) * layer.in_features + input_,
        "level": matrix[output, input_],
    }


def block_mask(
    cells: dict[str, np.ndarray], layer_index: int, block: Block
) -> np.ndarray:
    """Return which records of the cell table belong to `block`."""
    return (
        (cells["layer"] == layer_index)
        & (cells["tile"] == block.tile)
        & (cells["row"] >= block.row0)
        & (cells["row"] < block.row0 + block.rows)
        & (cells["col"] >= block.col0)
        & (cells["col"] < block.col0 + block.cols)
    )


def physical_cells(cells: dict[str, np.ndarray], mask: np.ndarray):
    """Return rows, columns and targets in µS of the G+ and G- cells of some pairs.

    `mask` selects the pairs: a boolean mask or indices into the cell table.

    The G+ cells come first, then the G- cells, each in table order.
    """
    rows = np.concatenate([cells["row"][mask], cells["row"][mask]])
    cols = np.concatenate([cells["col"][mask], cells["col"][mask] + 1])
    targets = np.concatenate([cells["g_plus_us"][mask], cells["g_minus_us"][mask]])
    return rows, cols, targets
