"""Crossbar backends: the `CrossbarBackend` interface, its registry and implementations.

Concrete backends are imported lazily by the registry, so that a missing optional
dependency (aihwkit, pyserial) only affects the backend that needs it.
"""

from backends.base import (
    BackendCapabilities,
    CrossbarBackend,
    CrossbarLayer,
    ProgrammingStats,
)
from backends.registry import (
    BackendInfo,
    BackendSpec,
    backend_class,
    list_backends,
    open_backend,
    parse_backend_spec,
    register_backend,
    resolve_spec,
)

__all__ = [
    "BackendCapabilities",
    "BackendInfo",
    "BackendSpec",
    "CrossbarBackend",
    "CrossbarLayer",
    "ProgrammingStats",
    "backend_class",
    "list_backends",
    "open_backend",
    "parse_backend_spec",
    "register_backend",
    "resolve_spec",
]
