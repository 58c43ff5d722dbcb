"""Exception hierarchy: one root, each leaf also a fitting built-in exception."""

from __future__ import annotations


class MemdeployError(Exception):
    """Root of every error memdeploy raises on purpose."""


class ProfileError(MemdeployError, ValueError):
    """A device profile is missing, malformed or fails validation."""


class BackendError(MemdeployError, RuntimeError):
    """A crossbar backend failed to program, read or infer."""


class BackendUnavailableError(MemdeployError, ImportError):
    """A backend's optional dependency is missing or does not work here."""


class UnsupportedLayerError(MemdeployError, TypeError):
    """A backend cannot map a layer of the model onto its crossbar."""


class BackendSpecError(MemdeployError, ValueError):
    """A backend spec string names no known backend or has bad options."""


class DatasetError(MemdeployError, OSError):
    """A dataset is missing or its files are malformed."""


class ModelSpecError(MemdeployError, ValueError):
    """A model name or `module:factory` path cannot be resolved."""


class RunFolderError(MemdeployError, OSError):
    """A run folder is missing, incomplete or was made with other settings."""


class WeightsError(MemdeployError, ValueError):
    """Weights are malformed: wrong shape, NaN or infinite values."""
