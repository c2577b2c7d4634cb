"""Engine sidecars: written beside the plan with an integrity hash over engine and metadata, checked
before loading, refusals that say how to rebuild."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mlff_export.checkpoint import file_sha256
from mlff_export.export.engine_profiles import profile_from_ranges, select_profiles
from mlff_export.export.engine_sidecar import (
    EngineMismatchError,
    EngineSidecar,
    check_engine,
    integrity_sha256,
    read_sidecar,
    rebuild_command,
    runtime_cache_path,
    sidecar_path,
    write_sidecar,
)

HERE = {"tensorrt_flavour": "tensorrt", "tensorrt_version": "10.16.0", "compute_capability": "8.6"}


@pytest.fixture
def engine(tmp_path):
    """A plan file (arbitrary bytes) with a sidecar as the builder writes it."""
    plan = tmp_path / "painn-fp32.plan"
    plan.write_bytes(b"serialized engine bytes")
    profiles = select_profiles(["small-molecules"]) + [profile_from_ranges("1:64:512", "1:32:64", "1:2:4")]
    sidecar = EngineSidecar(
        plan_sha256=file_sha256(plan),
        tensorrt_flavour="tensorrt",
        tensorrt_version="10.16.0",
        gpu_name="NVIDIA GeForce RTX 3080 Ti",
        compute_capability="8.6",
        precision="fp32",
        profiles=[p.to_dict() for p in profiles],
        onnx_path="exports/painn fp32.onnx",
        onnx_sha256="a" * 64,
        weights_sha256="b" * 64,
        interface_version="1",
        cutoff=5.0,
        species=[1, 6, 7, 8],
        build_time="2026-11-24T12:00:00+00:00",
        build_seconds=12.5,
    )
    write_sidecar(plan, sidecar)
    return plan


def test_sidecar_sits_beside_the_plan_and_round_trips(engine):
    assert sidecar_path(engine).name == "painn-fp32.plan.json"
    sidecar = read_sidecar(engine)
    assert sidecar.species == [1, 6, 7, 8] and sidecar.compute_capability == "8.6"
    assert [p.name for p in sidecar.shape_profiles()] == ["small-molecules", "custom"]
    assert not sidecar_path(engine).with_name("painn-fp32.plan.json.tmp").exists()


def test_a_matching_engine_passes(engine):
    assert check_engine(engine, **HERE).cutoff == 5.0


def test_rebuild_command_names_profiles_and_ranges(engine):
    command = rebuild_command(read_sidecar(engine), engine)
    assert command.startswith("mlff-export build-engine --onnx 'exports/painn fp32.onnx' --precision fp32")
    assert "--profile small-molecules --atoms 1:64:512 --pairs 1:32:64 --structures 1:2:4" in command
    assert command.endswith(f"--out {engine}")


def refusal(engine, **here) -> str:
    with pytest.raises(EngineMismatchError) as error:
        check_engine(engine, **{**HERE, **here})
    message = str(error.value)
    assert "Rebuild it: mlff-export build-engine --onnx" in message
    return message


def test_a_damaged_plan_is_refused(engine):
    engine.write_bytes(b"serialized engine bytes, truncated or replaced")
    assert "the engine's bytes differ from those its sidecar recorded" in refusal(engine)


def edit_sidecar(engine, **changes) -> None:
    """Change fields of the sidecar as a careless (or hostile) colleague would: the hash stays as it was."""
    path = sidecar_path(engine)
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=2))


@pytest.mark.parametrize(
    "changes",
    [{"cutoff": 3.0}, {"species": [1, 6, 7, 8, 26]}, {"profiles": []}, {"plan_sha256": "0" * 64},
     {"integrity_sha256": "0" * 64}],
)
def test_an_edited_sidecar_is_refused(engine, changes):
    edit_sidecar(engine, **changes)
    with pytest.raises(EngineMismatchError) as error:
        check_engine(engine, **HERE)
    message = str(error.value)
    assert "does not match its integrity hash (edited or damaged since the build)" in message
    assert "rebuild the engine with `mlff-export build-engine ... --out" in message


def test_an_edited_sidecar_with_a_matching_plan_hash_is_still_refused(engine):
    """Replacing the engine AND recording its hash in the sidecar is caught by the sidecar's own hash."""
    engine.write_bytes(b"another engine")
    edit_sidecar(engine, plan_sha256=file_sha256(engine))
    with pytest.raises(EngineMismatchError, match="does not match its integrity hash"):
        check_engine(engine, **HERE)


def test_the_integrity_hash_covers_every_field_but_itself(engine):
    document = json.loads(sidecar_path(engine).read_text())
    assert document["integrity_sha256"] == integrity_sha256(document)
    for key in document:
        if key != "integrity_sha256":
            assert integrity_sha256({**document, key: "changed"}) != document["integrity_sha256"], key


@pytest.mark.parametrize("here", ["11.1.0", "10.1.0"], ids=["newer-here", "older-here"])
def test_another_tensorrt_version_is_refused(engine, here):
    assert f"built with tensorrt 10.16.0, this machine has tensorrt {here}" in refusal(engine, tensorrt_version=here)


def test_another_tensorrt_flavour_is_refused(engine):
    assert "tensorrt-rtx" in refusal(engine, tensorrt_flavour="tensorrt-rtx")


@pytest.mark.parametrize("here", ["9.0", "8.0"], ids=["newer-here", "older-here"])
def test_another_gpu_generation_is_refused(engine, here):
    message = refusal(engine, compute_capability=here)
    assert f"compute capability 8.6 (NVIDIA GeForce RTX 3080 Ti), this GPU has {here}" in message


@pytest.mark.parametrize("built_for", ["0", "2"], ids=["older-engine", "newer-engine"])
def test_another_interface_version_is_refused(engine, built_for):
    write_sidecar(engine, dataclasses.replace(read_sidecar(engine), interface_version=built_for))  # a consistent sidecar
    assert f"interface version '{built_for}'" in refusal(engine)


def test_a_sealed_sidecar_with_a_field_we_do_not_know_is_refused(engine):
    """A sidecar of a later mlff-export (or a tool) with an extra field, hash recomputed: refused
    with the rebuild hint, not a TypeError."""
    path = sidecar_path(engine)
    document = {**json.loads(path.read_text()), "sparsity": True}
    document["integrity_sha256"] = integrity_sha256(document)
    path.write_text(json.dumps(document))
    with pytest.raises(EngineMismatchError, match=r"unexpected fields .*sparsity.*; rebuild the engine"):
        check_engine(engine, **HERE)


def test_a_sidecar_reformatted_by_a_tool_still_loads(engine):
    """The integrity hash is over canonical JSON: key order and indentation may change."""
    path = sidecar_path(engine)
    document = json.loads(path.read_text())
    path.write_text(json.dumps(dict(reversed(list(document.items())))))
    assert check_engine(engine, **HERE).cutoff == 5.0


def test_a_sidecar_cannot_record_a_non_finite_number(engine):
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_sidecar(engine, dataclasses.replace(read_sidecar(engine), cutoff=float("nan")))


def test_the_runtime_cache_sits_beside_the_plan(tmp_path):
    assert runtime_cache_path(tmp_path / "painn.plan") == tmp_path / "painn.plan.runtime-cache"


def test_a_sidecar_of_the_first_format_is_refused_with_the_rebuild_hint(engine):
    path = sidecar_path(engine)
    document = json.loads(path.read_text())
    del document["integrity_sha256"]
    path.write_text(json.dumps({**document, "format_version": 1}))
    with pytest.raises(EngineMismatchError, match=r"engine sidecar version 1, this mlff-export reads version 2; rebuild"):
        check_engine(engine, **HERE)


def test_missing_or_foreign_sidecars_are_refused(engine):
    path = sidecar_path(engine)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(EngineMismatchError, match=r"not an mlff-export engine sidecar \(expected .*\); rebuild"):
        check_engine(engine, **HERE)
    path.unlink()
    with pytest.raises(EngineMismatchError, match=r"engine sidecar .*painn-fp32.plan.json does not exist; rebuild"):
        check_engine(engine, **HERE)


def test_a_missing_engine_says_how_to_build_one(tmp_path):
    with pytest.raises(EngineMismatchError, match="does not exist; build it with `mlff-export build-engine`"):
        check_engine(tmp_path / "none.plan", **HERE)
