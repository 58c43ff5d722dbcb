"""Deploy a weight map onto an array: program with write-verify, read back, report.

A deploy programs the map block by block (a block is one layer's rectangle on one
tile) and records each finished block in the map's journal, so a rerun after an
interruption skips the blocks already programmed. It then reads every deployed cell
back (averaging `reads` reads), programs again the cells that are neither stuck nor
within tolerance (up to `repair_rounds` times), and writes the read-back map
(`readback/`), the report (`verify.json`) and pictures (`pictures/`).

NOTE: the read-back is taken right after programming. On a drifting device it does
not show the conductances at the profile's `drift.t_inference_s`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from memdeploy.runfolder import write_json
from memdeploy.weightmap.connection import check_device_fits, open_array
from memdeploy.weightmap.format import WeightMapError, write_map
from memdeploy.weightmap.journal import DeployJournal
from memdeploy.weightmap.load import load_map
from memdeploy.weightmap.pictures import PICTURE_FOLDER, draw_deploy_pictures
from memdeploy.weightmap.programming import BlockProgrammer, map_blocks
from memdeploy.weightmap.verify import (
    READBACK_FOLDER,
    REPORT_FILE,
    build_readback_map,
    build_report,
    target_pairs,
)

logger = logging.getLogger(__name__)


def deploy_map(
    map_dir: str | Path,
    backend: str,
    *,
    restart: bool = False,
    reads: int = 4,
    repair_rounds: int = 3,
    tile_pictures: int | None = 16,
    after_block: Callable[[str], None] | None = None,
) -> dict:
    """Program a map onto an array, read it back and write the verify report.

    Args:
        map_dir: A map folder written by `memdeploy export`.
        backend: `serial://PORT?options` of the array (see `connection.open_array`).
        restart: Ignore the journal and program every block again.
        reads: Reads averaged per cell for the read-back.
        repair_rounds: Times the cells out of tolerance and not stuck are programmed
            again after the read-back.
        tile_pictures: Tiles to draw heat maps of (the first ones); None for all.
        after_block: Called with each block's journal key once it is recorded.

    Returns:
        The verify report, also written to `map_dir/verify.json`.
    """
    if reads < 1 or repair_rounds < 0:
        raise ValueError(
            f"reads must be at least 1 and repair_rounds at least 0, got {reads} and "
            f"{repair_rounds}"
        )
    map_dir = Path(map_dir)
    weight_map, _, profile = load_map(map_dir)
    if weight_map.manifest["kind"] != "export":
        raise WeightMapError(
            f"{map_dir} is a {weight_map.manifest['kind']} map, not an exported one: "
            "deploy the map folder written by `memdeploy export`"
        )
    blocks = map_blocks(weight_map)

    with open_array(backend, profile) as connection:
        check_device_fits(
            connection, weight_map.manifest, target_pairs(weight_map.cells)
        )
        journal = _open_journal(map_dir, weight_map, connection, restart)
        resumed = sum(journal.is_done(item.key) for item in blocks)
        if resumed:
            logger.info(
                "resuming: %d of %d blocks already programmed", resumed, len(blocks)
            )
        programmer = BlockProgrammer(connection, weight_map.cells, journal, reads)
        for item in blocks:
            if not journal.is_done(item.key):
                programmer.program(item)
                if after_block is not None:
                    after_block(item.key)

        for item in blocks:
            programmer.read(item)
        rounds = programmer.repair(blocks, repair_rounds)
        journal.save()

    details = {
        "map_dir": str(map_dir),
        "backend": backend,
        "device_id": connection.info.device_id,
        "max_pulses": connection.max_pulses,
        "reads": reads,
        "repair_rounds_used": rounds,
        "blocks": len(blocks),
        "blocks_resumed": resumed,
    }
    readback, stuck = programmer.readback, programmer.stuck
    report = build_report(
        weight_map.cells,
        readback,
        stuck != 0,
        journal.pulses_by_tile(),
        connection.tolerance_us,
        details,
    )
    _write_outputs(map_dir, weight_map, profile, readback, stuck, report, tile_pictures)
    _log_report(report)
    return report


def _open_journal(map_dir, weight_map, connection, restart: bool) -> DeployJournal:
    identity = {
        "weights_sha256": weight_map.manifest["model"]["weights_sha256"],
        "device_id": connection.info.device_id,
        "tolerance_us": connection.tolerance_us,
        "max_pulses": connection.max_pulses,
    }
    return DeployJournal.open(map_dir, identity, restart=restart)


def _write_outputs(
    map_dir, weight_map, profile, readback, stuck, report, tile_pictures
):
    """Write the read-back map, the pictures and then the report."""
    source = {
        "map_dir": str(map_dir),
        "device_id": report["device_id"],
        "reads": report["reads"],
    }
    readback_map = build_readback_map(weight_map, readback, stuck, profile, source)
    write_map(map_dir / READBACK_FOLDER, readback_map, replace=True)
    report["readback"] = READBACK_FOLDER
    report["readback_weights_sha256"] = readback_map.manifest["model"]["weights_sha256"]

    tile = weight_map.manifest["tile"]
    report["pictures"] = draw_deploy_pictures(
        map_dir / PICTURE_FOLDER,
        weight_map.cells,
        target_pairs(weight_map.cells),
        readback,
        stuck != 0,
        (tile["rows"], tile["cols"]),
        report["tolerance_us"],
        (profile.conductance.g_min_us, profile.conductance.g_max_us),
        max_tiles=tile_pictures,
    )
    write_json(map_dir / REPORT_FILE, report)


def _log_report(report: dict) -> None:
    logger.info(
        "verified %d of %d cells within %g µS (%d stuck, %d unverified), max error "
        "%.3g µS, %d pulses",
        report["within_tolerance"],
        report["cells"],
        report["tolerance_us"],
        report["stuck"],
        report["unverified"],
        report["max_error_us"],
        report["pulses"],
    )
    if report["unverified"]:
        logger.warning(
            "%d cells that are not stuck are out of tolerance after the deploy",
            report["unverified"],
        )
