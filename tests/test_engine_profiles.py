"""Engine shape profiles: the shipped spec, MIN:OPT:MAX parsing, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from mlff_export.export.engine_profiles import (
    PROFILES_FORMAT,
    ProfileSpecError,
    SizeRange,
    load_profiles,
    profile_from_ranges,
    select_profiles,
)
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE


def write_spec(tmp_path, profiles, **header):
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"format": PROFILES_FORMAT, "version": 1, **header, "profiles": profiles}))
    return path


def test_shipped_profiles_are_valid():
    profiles = load_profiles()
    assert {"small-molecules", "medium", "bulk"} <= set(profiles)
    for profile in profiles.values():
        assert profile.structures.maximum >= 2  # room for the padding structure


def test_every_graph_input_gets_min_opt_max_shapes_from_n_k_b():
    profile = profile_from_ranges("1:32:256", "4:24:64", "1:2:16")
    shapes = profile.input_shapes()
    assert list(shapes) == list(NEIGHBOR_TABLE.input_names)
    assert shapes["positions"] == ((1, 3), (32, 3), (256, 3))
    assert shapes["neighbor_shifts"] == ((1, 4, 3), (32, 24, 3), (256, 64, 3))
    assert shapes["reverse_index"] == ((1, 4), (32, 24), (256, 64))
    assert shapes["cell"] == ((1, 3, 3), (2, 3, 3), (16, 3, 3))


def test_size_range_round_trips_through_its_text():
    assert str(SizeRange.parse("2:8:64", "atoms")) == "2:8:64"


@pytest.mark.parametrize("text", ["1:32", "1:2:3:4", "a:b:c", "0:1:2", "4:2:8", "1:9:8", ""])
def test_bad_ranges_name_the_field_and_the_expected_form(text):
    with pytest.raises(ProfileSpecError, match=r"custom\.atoms \| received .* \| expected"):
        profile_from_ranges(text, "1:1:1", "1:1:2")


def test_several_named_profiles_in_the_order_given():
    assert [p.name for p in select_profiles(["medium", "small-molecules"])] == ["medium", "small-molecules"]


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileSpecError, match=r"\['huge'\] not in .*expected one of \['bulk', 'medium', 'small-molecules'"):
        select_profiles(["huge"])


def test_a_profile_named_twice_is_refused():
    with pytest.raises(ProfileSpecError, match="more than once"):
        select_profiles(["medium", "medium"])


def test_spec_file_errors(tmp_path):
    with pytest.raises(ProfileSpecError, match="does not exist"):
        load_profiles(tmp_path / "missing.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(ProfileSpecError, match="not valid JSON"):
        load_profiles(bad_json)
    with pytest.raises(ProfileSpecError, match="version"):
        load_profiles(write_spec(tmp_path, {"a": {}}, version=2))
    with pytest.raises(ProfileSpecError, match=r"missing \['structures'\], unknown \['pairs'\]"):
        load_profiles(write_spec(tmp_path, {"a": {"atoms": "1:1:1", "neighbors": "1:1:1", "pairs": "1:1:1"}}))
    with pytest.raises(ProfileSpecError, match=r"missing \[\], unknown \['pairs'\]"):  # every size given, one too many
        load_profiles(write_spec(tmp_path, {"a": {"atoms": "1:1:1", "neighbors": "1:1:1", "structures": "1:1:1", "pairs": "1"}}))
    with pytest.raises(ProfileSpecError, match=r"missing \['atoms'\], unknown \[\]"):
        load_profiles(write_spec(tmp_path, {"a": {"neighbors": "1:1:1", "structures": "1:1:1", "description": "no atoms"}}))
    for empty in ({}, ["a"]):
        with pytest.raises(ProfileSpecError, match='expected a non-empty "profiles" object'):
            load_profiles(write_spec(tmp_path, empty))
    with pytest.raises(ProfileSpecError, match=r"profiles.json: a.neighbors \| received '8:4:2'"):
        load_profiles(write_spec(tmp_path, {"a": {"atoms": "1:1:1", "neighbors": "8:4:2", "structures": "1:1:2"}}))
