"""Pictures of a deploy: valid PNG files of the set size, and what they are drawn from."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from memdeploy.weightmap import read_map
from memdeploy.weightmap.pictures import (
    SCATTER_SIZE_PX,
    TILE_SIZE_PX,
    plot_scatter,
    plot_tile,
    tile_image,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Return (width, height) from a PNG's IHDR chunk, checking signature and CRC."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} has no PNG signature"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR", f"{path}: first chunk is {kind!r}, expected IHDR"
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(kind + body), f"{path}: IHDR CRC does not match"
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path} does not end with IEND"
    width, height = struct.unpack(">II", body[:8])
    return width, height


def test_deploy_writes_requested_pictures(deployed_map):
    map_dir, report = deployed_map
    assert report["pictures"] == ["pictures/scatter.png", "pictures/tile-000.png"]
    assert png_size(map_dir / "pictures" / "scatter.png") == SCATTER_SIZE_PX
    assert png_size(map_dir / "pictures" / "tile-000.png") == TILE_SIZE_PX
    assert not list((map_dir / "pictures").glob(".*"))


def test_tile_picture_has_set_size(tmp_path):
    rng = np.random.default_rng(0)
    target = rng.uniform(8, 90, (32, 32))
    stuck = np.zeros((32, 32), dtype=bool)
    stuck[3, 4] = True
    plot_tile(
        7,
        target,
        target + rng.normal(0, 1, (32, 32)),
        stuck,
        2.0,
        (8, 90),
        tmp_path / "t.png",
    )
    assert png_size(tmp_path / "t.png") == TILE_SIZE_PX


def test_scatter_has_set_size(tmp_path):
    target = np.linspace(8, 90, 50)
    stuck = np.zeros(50, dtype=bool)
    plot_scatter(target, target + 0.5, stuck, 2.0, (8, 90), tmp_path / "s.png")
    assert png_size(tmp_path / "s.png") == SCATTER_SIZE_PX


def test_tile_image_places_both_pair_cells(exported_map):
    cells = read_map(exported_map).cells
    values = np.stack(
        [np.full(cells["tile"].size, 1.0), np.full(cells["tile"].size, 2.0)]
    )
    image = tile_image(cells, values, 2, 32, 32)
    in_tile = cells["tile"] == 2
    assert np.all(image[cells["row"][in_tile], cells["col"][in_tile]] == 1.0)
    assert np.all(image[cells["row"][in_tile], cells["col"][in_tile] + 1] == 2.0)
    assert np.isnan(image).sum() == 32 * 32 - 2 * int(in_tile.sum())
