"""The deploy journal: which blocks of a map are already programmed on which device.

A deploy rewrites `deploy-journal.json` in the map folder atomically after every
block, so a deploy that is interrupted, even killed, resumes at the first block the
journal does not list, and the cells of listed blocks are not programmed again.
"""

from __future__ import annotations

from pathlib import Path

from memdeploy.errors import MemdeployError
from memdeploy.runfolder import read_json, write_json
from memdeploy.weightmap.format import WeightMapError, utc_timestamp

JOURNAL_FILE = "deploy-journal.json"
JOURNAL_VERSION = 1


class DeployJournal:
    """Blocks programmed so far, keyed by `block_key`, for one map and one device.

    Args:
        path: The journal file.
        identity: What the journal belongs to: the map's weights hash, the device id
            and the write-verify settings.
        blocks: Entries of the blocks already programmed.
    """

    def __init__(self, path: Path, identity: dict, blocks: dict[str, dict]) -> None:
        self.path = path
        self.identity = identity
        self.blocks = blocks

    @classmethod
    def open(cls, map_dir: Path, identity: dict, *, restart: bool) -> DeployJournal:
        """Continue the journal in `map_dir`, or start one when there is none.

        Raises:
            WeightMapError: The journal belongs to another map, device or write-verify
                setting, and `restart` is False.
        """
        path = Path(map_dir) / JOURNAL_FILE
        if restart or not path.exists():
            return cls(path, identity, {})
        try:
            stored = read_json(path)
        except MemdeployError as err:
            raise WeightMapError(
                f"{err}: the deploy journal is damaged; rerun with --restart to "
                "program every block again"
            ) from err
        _check_layout(path, stored)
        if stored.get("journal_version") != JOURNAL_VERSION:
            raise WeightMapError(
                f"{path}: journal_version {stored.get('journal_version')!r} is not "
                f"{JOURNAL_VERSION}: rerun with --restart to program every block again"
            )
        differences = [
            f"{key}: journal has {stored.get('identity', {}).get(key)!r}, now {value!r}"
            for key, value in identity.items()
            if stored.get("identity", {}).get(key) != value
        ]
        if differences:
            raise WeightMapError(
                f"{path} records a deploy of another map, device or setting ("
                + "; ".join(differences)
                + "): rerun with --restart to program every block again"
            )
        return cls(path, identity, dict(stored.get("blocks", {})))

    def is_done(self, key: str) -> bool:
        """Return whether a block is programmed."""
        return key in self.blocks

    def record(self, key: str, entry: dict) -> None:
        """Mark a block programmed, with its counters, and save the journal."""
        self.blocks[key] = {**entry, "repair_pulses": 0}
        self.save()

    def add_repair_pulses(self, key: str, pulses: int) -> None:
        """Add pulses spent repairing a programmed block."""
        self.blocks[key]["repair_pulses"] += int(pulses)

    def pulses_by_tile(self) -> dict[int, int]:
        """Return the programming and repair pulses spent on each tile."""
        totals: dict[int, int] = {}
        for entry in self.blocks.values():
            pulses = entry["pulses"] + entry["repair_pulses"]
            totals[entry["tile"]] = totals.get(entry["tile"], 0) + pulses
        return totals

    def save(self) -> None:
        """Write the journal atomically."""
        write_json(
            self.path,
            {
                "journal_version": JOURNAL_VERSION,
                "identity": self.identity,
                "updated": utc_timestamp(),
                "blocks": self.blocks,
            },
        )


def _check_layout(path: Path, stored: dict) -> None:
    """Raise WeightMapError unless the journal has the fields `open` and `save` use."""
    identity, blocks = stored.get("identity", {}), stored.get("blocks", {})
    valid = isinstance(identity, dict) and isinstance(blocks, dict)
    for entry in blocks.values() if valid else ():
        fields = ("tile", "pulses", "repair_pulses")
        if not isinstance(entry, dict) or not all(
            type(entry.get(name)) is int for name in fields
        ):
            valid = False
            break
    if not valid:
        raise WeightMapError(
            f"{path}: the deploy journal is damaged (expected an 'identity' object and "
            "'blocks' entries with integer tile, pulses and repair_pulses): rerun with "
            "--restart to program every block again"
        )


def block_key(layer_index: int, tile: int, row0: int, col0: int) -> str:
    """Name a block in the journal.

    >>> block_key(1, 4, 0, 16)
    'layer1:tile4:row0:col16'
    """
    return f"layer{layer_index}:tile{tile}:row{row0}:col{col0}"
