"""Device profiles: shipped files, validation errors, lookup."""

from __future__ import annotations

import pytest

from memdeploy.errors import ProfileError
from memdeploy.profiles import (
    DeviceProfile,
    list_profiles,
    load_profile,
    profile_from_dict,
)

PAPER_SETTINGS = {
    "paper-protonet-mnist": ("uniform", 2, 0.05),
    "paper-protonet-fashion": ("uniform", 3, 0.20),
    "paper-mobilenetv2-cifar10": ("uniform", 2, 0.05),
    "paper-micronet-cifar100": ("ternary", None, 0.05),
}


def test_every_required_profile_ships():
    required = set(PAPER_SETTINGS) | {"rram-generic", "pcm-ibm", "lab-array-32x32"}
    assert required <= set(list_profiles())


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_profiles_state_table_settings(name):
    quantization, bits, noise = PAPER_SETTINGS[name]
    profile = load_profile(name)
    assert profile.weights.quantization == quantization
    if bits is not None:
        assert profile.weights.bits == bits
    assert profile.weights.programming_noise == noise


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profile_cites_sources(name):
    profile = load_profile(name)
    assert profile.sources, f"{name} names no source for its figures"
    assert profile.name == name


def test_every_field_has_a_docstring():
    from memdeploy import profiles

    sections = [DeviceProfile] + [
        getattr(profiles, name) for name in ("WeightSpec", "ConductanceSpec", "DriftSpec",
        "FaultSpec", "PeripherySpec", "TileSpec", "WriteVerifySpec", "EnduranceSpec")
    ]
    for section in sections:
        for field_name, field in section.model_fields.items():
            if field.annotation in sections:
                continue
            assert field.description, f"{section.__name__}.{field_name} has no docstring"


def test_profile_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('schema_version = 1\nname = "typo"\n[weights]\nbitz = 3\n')
    with pytest.raises(ProfileError, match=r"(?s)typo.toml.*weights\.bitz: found 3: no such field"):
        load_profile(path)


def test_profile_error_names_field_value_and_expectation(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('schema_version = 1\nname = "bad"\n[weights]\nprogramming_noise = -0.1\n')
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    message = str(caught.value)
    assert str(path) in message
    assert "weights.programming_noise" in message
    assert "-0.1" in message
    assert "greater than or equal to 0" in message


def test_profile_missing_schema_version_is_rejected():
    with pytest.raises(ProfileError, match="schema_version: this field is required"):
        profile_from_dict({"name": "x"}, "inline")


def test_newer_schema_version_is_rejected_with_advice():
    with pytest.raises(ProfileError, match="schema_version 2 is not supported.*upgrade"):
        profile_from_dict({"schema_version": 2, "name": "x"}, "inline")


def test_inverted_conductance_range_is_rejected():
    data = {"schema_version": 1, "name": "x", "conductance": {"g_min_us": 30, "g_max_us": 20}}
    with pytest.raises(ProfileError, match=r"g_max_us \(20.0\) must be greater"):
        profile_from_dict(data, "inline")


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("schema_version = = 1")
    with pytest.raises(ProfileError, match="broken.toml: invalid TOML"):
        load_profile(path)


def test_unknown_profile_name_lists_shipped_ones():
    with pytest.raises(ProfileError, match="profile 'nope' not found.*pcm-ibm"):
        load_profile("nope")


def test_missing_profile_path_is_reported(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "absent.toml")


def test_content_hash_ignores_key_order():
    first = profile_from_dict({"schema_version": 1, "name": "a", "technology": "pcm"})
    second = profile_from_dict({"technology": "pcm", "name": "a", "schema_version": 1})
    assert first.content_hash() == second.content_hash()


def test_drift_factor_follows_power_law():
    profile = load_profile("pcm-ibm")
    expected = (3600.0 / 20.0) ** -0.06
    assert profile.drift_factor() == pytest.approx(expected)
    assert profile.drift_factor(10.0) == 1.0
