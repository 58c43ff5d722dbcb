"""The run manifest, and the check that a resumed run keeps its settings."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import memdeploy
from memdeploy.errors import RunFolderError
from memdeploy.profiles import DeviceProfile
from memdeploy.runfolder import read_json
from memdeploy.settings import OptimizeSettings, make_settings

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
        "machine": {"platform": platform.platform(), "processor": platform.machine()},
    }


def check_resume_settings(
    run_dir: Path, settings: OptimizeSettings | None, overrides: dict
) -> OptimizeSettings:
    """Return the settings a run folder was made with, refusing any that differ.

    Settings given explicitly (in `settings` or as keywords) must equal the stored
    ones; a difference is named in the error.
    """
    manifest = read_json(Path(run_dir) / "manifest.json")
    try:
        stored = make_settings(**manifest["settings"])
    except (KeyError, TypeError) as err:
        raise RunFolderError(f"{run_dir}/manifest.json has no valid settings") from err

    given = dict(overrides)
    if settings is not None:
        given = settings.model_dump(exclude_unset=True) | given
    stored_values = stored.model_dump()
    differences = []
    for key, value in given.items():
        if key not in stored_values:
            raise RunFolderError(f"unknown setting {key!r}")
        if _normalize(value) != _normalize(stored_values[key]):
            differences.append(f"{key}: run has {stored_values[key]!r}, given {value!r}")
    if differences:
        raise RunFolderError(
            f"cannot resume {run_dir} with other settings ("
            + "; ".join(differences)
            + "): drop those options or start a new run with --out"
        )
    return stored


def _normalize(value):
    return tuple(value) if isinstance(value, list) else value
