"""Backend spec strings and the registry."""

from __future__ import annotations

import pytest

from backends import (
    backend_class,
    list_backends,
    open_backend,
    parse_backend_spec,
    register_backend,
)
from backends.gaussian import GaussianNoiseBackend
from backends.registry import ENV_VAR, resolve_spec
from memdeploy.errors import BackendSpecError


def test_serial_spec_keeps_port_and_options():
    spec = parse_backend_spec("serial:///dev/ttyUSB0?baudrate=921600&timeout=2")
    assert spec.name == "serial"
    assert spec.target == "/dev/ttyUSB0"
    assert spec.options == {"baudrate": "921600", "timeout": "2"}


def test_serial_spec_accepts_nested_pyserial_url():
    spec = parse_backend_spec("serial://socket://127.0.0.1:7000")
    assert spec.target == "socket://127.0.0.1:7000"


def test_serial_spec_without_port_is_rejected():
    with pytest.raises(BackendSpecError, match="names no port"):
        parse_backend_spec("serial")


def test_empty_spec_is_rejected():
    with pytest.raises(BackendSpecError, match="empty backend spec"):
        parse_backend_spec("  ")


def test_unknown_backend_lists_known_ones():
    with pytest.raises(BackendSpecError, match="unknown backend 'quantum'.*gaussian"):
        backend_class("quantum")


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "gaussian?t_inference_s=100")
    spec = resolve_spec(None)
    assert spec.name == "gaussian"
    assert spec.options == {"t_inference_s": "100"}


def test_registered_class_is_opened_by_name():
    class _Custom(GaussianNoiseBackend):
        name = "custom"

    register_backend("custom", _Custom)
    backend = open_backend("custom", "paper-protonet-mnist")
    assert isinstance(backend, _Custom)


def test_backend_listing_reports_gaussian_available():
    infos = {info.name: info for info in list_backends()}
    assert infos["gaussian"].available
    assert infos["gaussian"].reason == ""


def test_backend_is_a_context_manager():
    with open_backend("gaussian", "paper-protonet-mnist") as backend:
        assert not backend._closed
    assert backend._closed
