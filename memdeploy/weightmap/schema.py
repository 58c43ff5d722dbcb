"""The layout of a weight map's manifest, checked before any field is used.

A map folder may come from another machine or have been edited by hand, so every
field that loading, evaluating or deploying reads is validated here first. Errors
name the field path and the value found. Fields this release does not read are
allowed, so that a later minor version may add some.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_IMAGE_SIDE = 4096
"""Largest image dimension a map may record. It is far above the datasets memdeploy
loads (32 pixels at most) and stops a damaged manifest from building a huge model."""

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Size = Annotated[int, Field(ge=1)]
ImageSide = Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class FileEntry(_Entry):
    """Size and hash of one file of the map folder."""

    sha256: Sha256
    bytes: Count


class BlockEntry(_Entry):
    """One block of a layer placed on a tile."""

    tile: Count
    row0: Count
    col0: Count
    rows: Count
    cols: Count
    inputs: Annotated[list[Count], Field(min_length=2, max_length=2)]
    """First and one-past-last input of the layer that the block holds."""

    outputs: Annotated[list[Count], Field(min_length=2, max_length=2)]
    """First and one-past-last output of the layer that the block holds."""


class LayerEntry(_Entry):
    """One crossbar layer of the map's layer table."""

    name: str
    weight_shape: Annotated[list[Size], Field(min_length=1, max_length=6)]
    dtype: Literal["float16", "bfloat16", "float32", "float64"] = "float32"
    scale: Annotated[float, Field(ge=0)]
    """Weight of level 1, so a cell pair's weight is its level times this."""

    blocks: list[BlockEntry]


class ProfileEntry(_Entry):
    """The device profile the map was made for."""

    name: str
    source: str
    sha256: Sha256
    content: dict


class ModelEntry(_Entry):
    """The model the map's weights belong to."""

    name: str
    architecture_sha256: Sha256
    weights_sha256: Sha256


class DatasetEntry(_Entry):
    """The dataset shape the model was built for."""

    image_shape: Annotated[list[ImageSide], Field(min_length=3, max_length=3)]
    num_classes: Size


class TileEntry(_Entry):
    """Geometry of the array's tiles in cells."""

    rows: Size
    cols: Size


class MapManifest(_Entry):
    """Every manifest field this release reads."""

    kind: Literal["export", "readback"]
    model: ModelEntry
    settings: dict
    dataset: DatasetEntry
    profile: ProfileEntry
    tile: TileEntry
    tiles_used: Count
    layers: list[LayerEntry]
    files: dict[str, FileEntry]


def manifest_problems(manifest: dict) -> list[str]:
    """Return one line per invalid or missing field of a map manifest ([] if valid).

    >>> manifest_problems({"kind": "export"})[0]
    'model: missing'
    """
    try:
        MapManifest.model_validate(manifest)
    except ValidationError as err:
        return [_describe(problem) for problem in err.errors()]
    return []


def _describe(problem) -> str:
    path = ".".join(str(part) for part in problem["loc"]) or "<top level>"
    if problem["type"] == "missing":
        return f"{path}: missing"
    found = repr(problem.get("input"))
    if len(found) > 60:
        found = found[:57] + "..."
    return f"{path}: found {found}: {problem['msg']}"
