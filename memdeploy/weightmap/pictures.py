"""Pictures of a deploy: a conductance heat map per tile, and target against read-back.

Each PNG has a fixed size in pixels (`TILE_SIZE_PX`, `SCATTER_SIZE_PX`) and is written
atomically.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from memdeploy.runfolder import atomic_write_bytes

logger = logging.getLogger(__name__)

DPI = 100
TILE_SIZE_PX = (1500, 450)
SCATTER_SIZE_PX = (600, 600)
PICTURE_FOLDER = "pictures"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def tile_image(cells: dict, values: np.ndarray, tile: int, rows: int, cols: int):
    """Return a tile's (rows, cols) image of per-cell values, NaN on unused cells.

    Args:
        cells: The map's cell table.
        values: One value per cell, shape (2, pairs): G+ cells, then G- cells.
        tile: The tile to draw.
        rows: Word lines per tile.
        cols: Bit lines per tile.
    """
    image = np.full((rows, cols), np.nan)
    in_tile = cells["tile"] == tile
    row, col = cells["row"][in_tile], cells["col"][in_tile]
    image[row, col] = values[0][in_tile]
    image[row, col + 1] = values[1][in_tile]
    return image


def plot_tile(
    tile: int,
    target_us: np.ndarray,
    readback_us: np.ndarray,
    stuck: np.ndarray,
    tolerance_us: float,
    window_us: tuple[float, float],
    path: Path,
) -> None:
    """Draw a tile's target, read-back and error heat maps to a PNG file.

    Conductances and errors are in µS. The error scale spans twice the tolerance
    each way, so that errors within tolerance stay visible next to stuck cells,
    which are marked with a cross.
    """
    plt = _pyplot()
    width, height = TILE_SIZE_PX
    figure, axes = plt.subplots(
        1, 3, figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained"
    )
    limit = 2.0 * tolerance_us
    panels = (
        ("target (µS)", target_us, "viridis", window_us),
        ("read-back (µS)", readback_us, "viridis", window_us),
        (
            "read-back - target (µS)",
            readback_us - target_us,
            "coolwarm",
            (-limit, limit),
        ),
    )
    for axis, (title, image, colormap, (low, high)) in zip(axes, panels):
        heat_map = axis.imshow(
            image, cmap=colormap, vmin=low, vmax=high, interpolation="nearest"
        )
        axis.set_title(title)
        axis.set_xlabel("bit line")
        axis.set_ylabel("word line")
        figure.colorbar(heat_map, ax=axis, shrink=0.85)
    rows, cols = np.nonzero(stuck)
    axes[2].scatter(cols, rows, marker="x", color="black", s=16, label="stuck cell")
    if rows.size:
        axes[2].legend(loc="upper right", fontsize="small")
    figure.suptitle(f"tile {tile}")
    _save(figure, plt, path)


def plot_scatter(
    target_us: np.ndarray,
    readback_us: np.ndarray,
    stuck: np.ndarray,
    tolerance_us: float,
    window_us: tuple[float, float],
    path: Path,
) -> None:
    """Draw read-back against target conductance (µS) of every cell to a PNG file."""
    plt = _pyplot()
    width, height = SCATTER_SIZE_PX
    figure, axis = plt.subplots(figsize=(width / DPI, height / DPI), dpi=DPI)

    line = np.array(window_us, dtype=np.float64)
    axis.fill_between(
        line,
        line - tolerance_us,
        line + tolerance_us,
        color="0.85",
        label=f"±{tolerance_us:g} µS tolerance",
    )
    axis.plot(line, line, color="0.4", linewidth=0.8)

    free = ~stuck
    axis.scatter(target_us[free], readback_us[free], s=4, alpha=0.5, label="free cells")
    if stuck.any():
        axis.scatter(
            target_us[stuck],
            readback_us[stuck],
            s=14,
            marker="x",
            color="red",
            label="stuck cells",
        )

    axis.set_xlabel("target conductance (µS)")
    axis.set_ylabel("read-back conductance (µS)")
    axis.set_title("read-back against target")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    _save(figure, plt, path)


def _save(figure, plt, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def draw_deploy_pictures(
    folder: Path,
    cells: dict,
    target_us,
    readback_us,
    stuck,
    geometry,
    tolerance_us,
    window_us,
    *,
    max_tiles: int | None,
) -> list[str]:
    """Draw the scatter and up to `max_tiles` tile heat maps into `folder`.

    Returns:
        The file names written, relative to `folder`'s parent.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{folder.name}/scatter.png"]
    plot_scatter(
        target_us.ravel(),
        readback_us.ravel(),
        stuck.ravel(),
        tolerance_us,
        window_us,
        folder / "scatter.png",
    )
    tiles = np.unique(cells["tile"]).tolist()
    drawn = tiles if max_tiles is None else tiles[:max_tiles]
    if len(drawn) < len(tiles):
        logger.info("drew heat maps of %d of %d tiles", len(drawn), len(tiles))
    rows, cols = geometry
    for tile in drawn:
        name = f"tile-{tile:03d}.png"
        stuck_image = tile_image(cells, stuck.astype(np.float32), tile, rows, cols) == 1
        plot_tile(
            tile,
            tile_image(cells, target_us, tile, rows, cols),
            tile_image(cells, readback_us, tile, rows, cols),
            stuck_image,
            tolerance_us,
            window_us,
            folder / name,
        )
        names.append(f"{folder.name}/{name}")
    return names
