"""Fuzzing the device profile loader: only ProfileError may escape it."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from memdeploy.errors import ProfileError
from memdeploy.profiles import (
    PROFILE_DIR,
    DeviceProfile,
    load_profile,
    profile_from_dict,
)

from .budget import fuzz_settings

SECTIONS = {
    name: sorted(field.annotation.model_fields)
    for name, field in DeviceProfile.model_fields.items()
    if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")
}
KEYS = sorted(DeviceProfile.model_fields) + ["bogus", ""]
SHIPPED_TEXT = (PROFILE_DIR / "lab-array-32x32.toml").read_text(encoding="utf-8")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 65535, 65536, 1e308, -0.0, math.nan, math.inf]),
    st.text(max_size=20),
    st.sampled_from(["uniform", "ternary", "none", "rram", "pcm", "1"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def profile_like(draw) -> dict:
    """A dictionary shaped like a profile: known keys and sections, random values."""
    data = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=len(KEYS), unique=True)):
        if key in SECTIONS and draw(st.booleans()):
            fields = SECTIONS[key] + ["bogus"]
            chosen = draw(st.lists(st.sampled_from(fields), max_size=4, unique=True))
            data[key] = {field: draw(values) for field in chosen}
        else:
            data[key] = draw(values)
    if draw(st.booleans()):
        data["schema_version"] = draw(st.sampled_from([1, 1, 2, 0, "1", True, 1.0]))
    if draw(st.booleans()):
        data["name"] = draw(st.text(max_size=10))
    return data


@fuzz_settings(300)
@given(profile_like())
def test_profile_like_dictionary_gives_profile_or_profile_error(data):
    try:
        profile = profile_from_dict(data, source="fuzz")
    except ProfileError as err:
        assert str(err).startswith("fuzz: ")
        return
    assert profile.schema_version == 1
    assert all(math.isfinite(value) for value in _floats(profile.model_dump()))


def _floats(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _floats(value)
    elif isinstance(tree, float):
        yield tree


@fuzz_settings(150)
@given(st.binary(max_size=3000))
def test_random_bytes_give_profile_error(tmp_path, content):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(content)

    try:
        load_profile(path)
    except ProfileError as err:
        assert str(path) in str(err)


@st.composite
def mutated_profile_text(draw) -> str:
    """The shipped lab profile with characters deleted, inserted or replaced."""
    text = SHIPPED_TEXT
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["delete", "insert", "replace", "cut"]))
        piece = draw(st.text(alphabet="=[]{}\"'.,#\n 0123456789-+eEinfa_", max_size=6))
        if edit == "delete":
            text = text[:position] + text[position + len(piece) + 1 :]
        elif edit == "insert":
            text = text[:position] + piece + text[position:]
        elif edit == "replace":
            text = text[:position] + piece + text[position + len(piece) :]
        else:
            text = text[:position]
    return text


@fuzz_settings(200)
@given(mutated_profile_text())
def test_mutated_profile_text_gives_profile_or_profile_error(tmp_path, text):
    path = tmp_path / "mutated.toml"
    path.write_text(text, encoding="utf-8")

    try:
        profile = load_profile(path)
    except ProfileError as err:
        assert str(path) in str(err)
        return
    assert profile.g_range_us > 0
