"""keep_freed_memory: applied on glibc, left to the user's environment variables."""

from __future__ import annotations

import platform

import pytest

from memdeploy.allocator import keep_freed_memory

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)


@glibc
def test_applies_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert keep_freed_memory() is True


@pytest.mark.parametrize("name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"])
def test_user_setting_wins(monkeypatch, name):
    monkeypatch.setenv(name, "131072")
    assert keep_freed_memory() is False
