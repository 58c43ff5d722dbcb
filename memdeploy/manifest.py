"""The run manifest, and the check that a resumed run keeps its settings."""

from __future__ import annotations

import logging
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

import memdeploy
from memdeploy.errors import BackendSpecError, RunFolderError
from memdeploy.profiles import DeviceProfile
from memdeploy.runfolder import read_json
from memdeploy.settings import OptimizeSettings, SettingsError, make_settings

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
PACKAGES = ("torch", "numpy", "pygad", "pydantic", "pyserial", "aihwkit", "scikit-learn")


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each package a result depends on."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    versions["memdeploy"] = memdeploy.__version__
    return versions


def build_manifest(settings: OptimizeSettings, profile: DeviceProfile, data, status: str) -> dict:
    """Return the manifest: settings, seed, versions, backend, profile and data."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "status": status,
        "settings": settings.model_dump(mode="json"),
        "seed": settings.seed,
        "backend": settings.backend,
        "profile": {
            "name": profile.name,
            "sha256": profile.content_hash(),
            "content": profile.model_dump(mode="json"),
        },
        "dataset": data.describe(),
        "versions": package_versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            # The order of floating-point sums, and so the results of a seed,
            # depend on torch's thread count.
            "torch_threads": torch.get_num_threads(),
        },
    }


def read_run_settings(run_dir: Path) -> OptimizeSettings:
    """Return the settings a run folder's manifest records, validated.

    Raises:
        RunFolderError: The manifest is missing or damaged, or this release rejects
            the settings it records.
    """
    path = Path(run_dir) / "manifest.json"
    stored_settings = read_json(path).get("settings")
    if not isinstance(stored_settings, dict):
        found = "missing" if stored_settings is None else type(stored_settings).__name__
        raise RunFolderError(
            f"{path}: 'settings' is {found}, expected an object of settings: the "
            "manifest is damaged or not a run's manifest"
        )
    try:
        return make_settings(**stored_settings)
    except SettingsError as err:
        raise RunFolderError(
            f"{path} records settings this memdeploy rejects ({err}): the manifest "
            "was edited or written by another version; start a new run with --out"
        ) from err


def check_resume_settings(
    run_dir: Path, settings: OptimizeSettings | None, overrides: dict
) -> OptimizeSettings:
    """Return the settings a run folder was made with, refusing any that differ.

    Settings given explicitly (in `settings` or as keywords) must equal the stored
    ones; a difference is named in the error. The one exception is the port of the
    backend: a device that comes back on another port (a USB adapter plugged in
    again, an emulator restarted) may be given with the same backend name and
    options, and the returned settings carry the new spec.
    """
    stored = read_run_settings(run_dir)

    given = dict(overrides)
    if settings is not None:
        given = settings.model_dump(exclude_unset=True) | given
    stored_values = stored.model_dump()
    differences = []
    for key, value in given.items():
        if key not in stored_values:
            raise RunFolderError(
                f"unknown setting {key!r} given to resume {run_dir}: expected one of "
                f"{', '.join(stored_values)}"
            )
        if key == "backend" and _same_backend_on_other_port(value, stored.backend):
            logger.warning(
                "resuming %s on %s; the run started on %s",
                run_dir,
                value,
                stored.backend,
            )
            stored = stored.model_copy(update={"backend": value})
            continue
        if _normalize(value) != _normalize(stored_values[key]):
            differences.append(f"{key}: run has {stored_values[key]!r}, given {value!r}")
    if differences:
        raise RunFolderError(
            f"cannot resume {run_dir} with other settings ("
            + "; ".join(differences)
            + "): drop those options or start a new run with --out"
        )
    return stored


def _same_backend_on_other_port(given, stored: str) -> bool:
    """Return whether two backend specs differ only in their target (port)."""
    from backends.registry import parse_backend_spec

    if not isinstance(given, str) or given == stored:
        return False
    try:
        new, old = parse_backend_spec(given), parse_backend_spec(stored)
    except BackendSpecError:
        return False
    return new.name == old.name and new.options == old.options and bool(new.target)


def _normalize(value):
    return tuple(value) if isinstance(value, list) else value
