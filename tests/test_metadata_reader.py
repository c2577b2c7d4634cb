"""The artifact reader on small hand-made ONNX models: metadata parsing, the seal, the wire-format
reader of the metadata entries, external data and non-finite weights.

No exported graph is needed: a one-node ONNX model with an mlff-export metadata block is enough to
exercise every check of :mod:`mlff_export.export.metadata`, in milliseconds. Expected outcomes
come from the documented contract (module and function docstrings, docs/reliability.md), not from
running the reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mlff_export.export.metadata import (  # noqa: E402
    INTEGRITY_KEY,
    ArtifactMetadata,
    ArtifactMetadataError,
    non_finite_initializers,
    parse_metadata,
    sealed_model_bytes,
    verify_model_bytes,
)
from mlff_export.interface import INTERFACE_VERSION  # noqa: E402

# A complete, valid metadata block, written out by hand (every required key once).
VALID_PROPS = {
    "interface_version": INTERFACE_VERSION,
    "cutoff": "4.5",
    "species": "[1, 6, 8]",
    "precision": "fp32",
    "input_layout": "neighbor_table",
    "force_method": "conservative: -dE/dr via autograd, traced",
    "model_sha256": "a" * 64,
    "weights_sha256": "b" * 64,
    "exporter": "mlff-export test",
    "torch_version": "0.0",
    "onnx_version": "0.0",
    "opset": "18",
}


def props_with(**changes: str) -> dict[str, str]:
    return {**VALID_PROPS, **changes}


def tiny_model(initializers: list | None = None, props: dict[str, str] | None = None):
    """A one-node ONNX model (y = x + w) with ``initializers`` (default: w = 1.0) and metadata ``props``."""
    initializers = initializers if initializers is not None else [numpy_helper.from_array(np.array([1.0], np.float32), "w")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=initializers,
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model_proto, VALID_PROPS if props is None else props)
    return model_proto


def varint(value: int) -> bytes:
    """Protobuf base-128 varint encoding (written out here, independently of the reader)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def seal(body: bytes) -> bytes:
    """``body`` followed by the documented integrity record: metadata entry (field 14)
    ``artifact_sha256 = sha256(body)``, built from the wire format by hand."""
    entry = onnx.StringStringEntryProto(key=INTEGRITY_KEY, value=hashlib.sha256(body).hexdigest()).SerializeToString()
    return body + varint(14 << 3 | 2) + varint(len(entry)) + entry


# ----------------------------------------------------------------------------------------------
# parse_metadata


def test_valid_metadata_is_typed():
    """Every value comes back with its documented type: cutoff float, species tuple of ints, opset int."""
    metadata = parse_metadata(VALID_PROPS)
    assert metadata.cutoff == 4.5 and metadata.species == (1, 6, 8) and metadata.opset == 18
    assert metadata.model_source == ""  # optional key, "" when not given


@pytest.mark.parametrize("cutoff", ["0.5", "1e-3", "12"])
def test_any_finite_positive_cutoff_is_accepted(cutoff):
    """The contract is a finite cutoff > 0 Å: sub-ångström cutoffs are legal too."""
    assert parse_metadata(props_with(cutoff=cutoff)).cutoff == float(cutoff)


@pytest.mark.parametrize(
    "changes",
    [{"cutoff": "0"}, {"cutoff": "-0.5"}, {"cutoff": "-3"}, {"cutoff": "nan"}, {"cutoff": "inf"}, {"species": "[]"}],
    ids=["zero", "minus-half", "minus-three", "nan", "inf", "no-species"],
)
def test_a_cutoff_that_is_not_finite_and_positive_or_no_species_is_refused(changes):
    with pytest.raises(ArtifactMetadataError, match="expected a finite cutoff > 0 and at least one element") as error:
        parse_metadata(props_with(**changes), "model.onnx")
    assert str(error.value).startswith("model.onnx: ") and "mlff-export export" in str(error.value)


@pytest.mark.parametrize(
    "changes",
    [
        # ValueError inside the reader: text that is no number, no JSON
        {"cutoff": "four"},
        {"opset": "18.5"},
        {"species": "[1, 6"},
        {"species": '["H"]'},
        # TypeError inside the reader: JSON of the wrong shape
        {"species": "6"},
        {"species": "null"},
        {"species": "[[1, 6]]"},
    ],
    ids=["cutoff-word", "opset-fraction", "species-cut-json", "species-symbols", "species-number", "species-null", "species-nested"],
)
def test_unreadable_values_are_one_metadata_error(changes):
    """Values of the wrong form (whether Python calls them ValueError or TypeError) are refused as
    :class:`ArtifactMetadataError` naming the file and the fix, never another exception."""
    with pytest.raises(ArtifactMetadataError, match="unreadable metadata") as error:
        parse_metadata(props_with(**changes), "model.onnx")
    assert str(error.value).startswith("model.onnx: ") and "mlff-export export" in str(error.value)


def test_metadata_cannot_be_changed_after_reading():
    """The metadata a loader checked is the metadata every later user sees: it is frozen."""
    metadata = parse_metadata(VALID_PROPS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        metadata.cutoff = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        metadata.species = (1,)
    assert metadata.cutoff == 4.5 and metadata.species == (1, 6, 8)
    assert isinstance(metadata, ArtifactMetadata)


# ----------------------------------------------------------------------------------------------
# The seal and the metadata entries of sealed bytes


def test_a_sealed_tiny_model_verifies_with_its_metadata():
    data = sealed_model_bytes(tiny_model())
    verified = verify_model_bytes(data, "tiny.onnx")
    assert verified.metadata == parse_metadata(VALID_PROPS)
    assert verified.artifact_sha256 == data[-64:].decode("ascii")
    assert verified.model_bytes == data


@pytest.mark.parametrize("digest", ["0" * 64, "f" * 64, "8" * 64], ids=["zeros", "fs", "eights"])
def test_a_seal_with_another_digest_is_refused(digest):
    """The recorded digest must equal the sha256 of the bytes before it: a record holding any
    other digest (below, above or in the middle of the hex range) is an edited file."""
    body = tiny_model().SerializeToString()
    assert hashlib.sha256(body).hexdigest() != digest
    entry = onnx.StringStringEntryProto(key=INTEGRITY_KEY, value=digest).SerializeToString()
    forged = body + varint(14 << 3 | 2) + varint(len(entry)) + entry
    with pytest.raises(ArtifactMetadataError, match="modified after export"):
        verify_model_bytes(forged, "edited.onnx")


def test_the_hand_built_seal_matches_the_documented_record():
    """The integrity record is one metadata entry, the sha256 of every byte before it: sealing by
    hand from the wire format gives the exporter's bytes."""
    model_proto = tiny_model()
    assert sealed_model_bytes(model_proto) == seal(model_proto.SerializeToString())


def unknown_field(field: int, wire_type: int, payload: bytes) -> bytes:
    """A top-level protobuf field ONNX does not define (a later ONNX version might)."""
    return varint(field << 3 | wire_type) + payload


@pytest.mark.parametrize(
    "extra",
    [
        unknown_field(1000, 5, b"\xff\xff\xff\x7f"),  # fixed32
        unknown_field(1001, 1, b"\xff" * 7 + b"\x7f"),  # fixed64
        unknown_field(1002, 1, b"\x01" * 8),  # fixed64
        unknown_field(1003, 0, varint(2**40)),  # varint
        unknown_field(1004, 2, varint(3) + b"abc"),  # length-delimited
    ],
    ids=["fixed32", "fixed64-high-bytes", "fixed64-low-bytes", "varint", "bytes"],
)
def test_metadata_after_fields_of_every_wire_type_is_read(extra):
    """The reader of sealed bytes walks the protobuf wire format: a field of any wire type (0, 1,
    2, 5) before the metadata is skipped by its own length, and every entry after it is still read
    (protobuf readers accept fields in any order, and unknown ones)."""
    model_proto = tiny_model()
    data = seal(extra + model_proto.SerializeToString())
    assert onnx.load_model_from_string(data).metadata_props[0].key == "interface_version"  # protobuf agrees it is well formed
    assert verify_model_bytes(data, "future.onnx").metadata == parse_metadata(VALID_PROPS)


def test_fields_of_every_wire_type_together_are_skipped():
    extra = b"".join(
        [
            unknown_field(1000, 5, b"\x80\x80\x80\x80"),
            unknown_field(1001, 1, b"\x80" * 8),
            unknown_field(1002, 0, varint(300)),
            unknown_field(1003, 2, varint(0)),
        ]
    )
    body = extra + tiny_model().SerializeToString() + extra
    assert verify_model_bytes(seal(body), "future.onnx").metadata.species == (1, 6, 8)


@pytest.mark.parametrize("key", ["cutoff", "species", "interface_version"])
def test_a_key_written_twice_is_refused_even_when_sealed(key):
    """A sealed file whose metadata holds a key twice (the runtime would see one, a reader the
    other) is refused, naming the key."""
    body = tiny_model().SerializeToString()
    repeated = onnx.ModelProto(metadata_props=[onnx.StringStringEntryProto(key=key, value=VALID_PROPS[key])])
    with pytest.raises(ArtifactMetadataError, match=rf"\['{key}'\] appear more than once"):
        verify_model_bytes(seal(body + repeated.SerializeToString()), "twice.onnx")


def test_every_key_once_is_not_a_duplicate():
    """Keys that appear exactly once are never reported as duplicated (an unsealed file reaches
    the precise reason instead: here, the missing seal)."""
    with pytest.raises(ArtifactMetadataError, match=f"lacks \\['{INTEGRITY_KEY}'\\]") as error:
        verify_model_bytes(tiny_model().SerializeToString(), "unsealed.onnx")
    assert "more than once" not in str(error.value)


# ----------------------------------------------------------------------------------------------
# External data (unsealed files: the reason they are refused)


def external_initializer(entries: list[tuple[str, str]]):
    """Initializer ``w`` whose data is declared to live in another file, with ``entries`` (key, value)."""
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in entries:
        tensor.external_data.add(key=key, value=value)
    return tensor


# Keys sort as checksum < length < location < offset: each order puts another key first.
ENTRY_ORDERS = {
    "location-first": ["location", "offset", "length"],
    "offset-first": ["offset", "location", "length"],
    "length-first": ["length", "location", "offset"],
    "checksum-length-offset-first": ["checksum", "length", "offset", "location"],
}


def external_entries(location: str, order: list[str]) -> list[tuple[str, str]]:
    values = {"location": location, "offset": "0", "length": "4", "checksum": "c0ffee"}
    return [(key, values[key]) for key in order]


@pytest.mark.parametrize("order", ENTRY_ORDERS.values(), ids=ENTRY_ORDERS.keys())
@pytest.mark.parametrize(
    ("location", "where"),
    [
        ("../../secrets.bin", "outside the artifact's folder"),
        ("../elsewhere/weights.bin", "outside the artifact's folder"),
        ("weights.bin", "in another file"),
        ("sub/../weights.bin", "in another file"),
    ],
)
def test_external_data_is_refused_naming_its_location(tmp_path, location, where, order):
    """The message names the initializer and the ``location`` entry (wherever it stands among the
    other external-data entries) and says whether that path leaves the artifact's folder."""
    source = tmp_path / "model" / "artifact.onnx"
    model_proto = tiny_model([external_initializer(external_entries(location, order))])
    with pytest.raises(ArtifactMetadataError) as error:
        verify_model_bytes(model_proto.SerializeToString(), source)
    message = str(error.value)
    assert message.startswith(f"{source}: initializer w keeps its data {where} ({location!r})"), message
    assert "mlff-export export" in message


def test_external_data_without_a_location_is_in_another_file(tmp_path):
    """No ``location`` entry at all: the data is still elsewhere (the folder itself), not escaping."""
    model_proto = tiny_model([external_initializer([("offset", "0"), ("length", "4")])])
    with pytest.raises(ArtifactMetadataError, match=r"keeps its data in another file \(''\)"):
        verify_model_bytes(model_proto.SerializeToString(), tmp_path / "artifact.onnx")


# ----------------------------------------------------------------------------------------------
# non_finite_initializers


def initializer(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values), name)


def test_non_finite_float_initializers_are_named_in_order():
    """NaN and ±inf in float16/32/64 weights are found; finite floats and integer tensors are not."""
    model_proto = tiny_model(
        [
            initializer("finite32", np.array([1.0, -2.0], np.float32)),
            initializer("nan32", np.array([1.0, np.nan], np.float32)),
            initializer("indices", np.array([0, 3, -7], np.int64)),
            initializer("inf16", np.array([np.inf], np.float16)),
            initializer("flags", np.array([True, False])),
            initializer("minus_inf64", np.array([[0.0, -np.inf]], np.float64)),
            initializer("finite64", np.array([1e300], np.float64)),
        ]
    )
    assert non_finite_initializers(model_proto) == ["nan32", "inf16", "minus_inf64"]


def test_finite_weights_have_no_non_finite_initializers():
    model_proto = tiny_model([initializer("w", np.array([1.0], np.float32)), initializer("k", np.array([2], np.int32))])
    assert non_finite_initializers(model_proto) == []


def test_the_source_path_is_kept(tmp_path: Path):
    verified = verify_model_bytes(sealed_model_bytes(tiny_model()), tmp_path / "kept.onnx")
    assert verified.path == tmp_path / "kept.onnx"


# ----------------------------------------------------------------------------------------------
# Round 2: more of the reader's contract (wire format, sealing, versions, refusals)


def test_fields_after_the_metadata_are_skipped():
    """Protobuf fields may come in any order: a producer name and doc string written after the
    metadata entries (as a later tool might append them) are not part of any entry, so every
    entry keeps its own value (an entry is exactly the bytes its length prefix says)."""
    trailer = onnx.ModelProto(producer_name="later-tool", doc_string="appended notes").SerializeToString()
    data = seal(tiny_model().SerializeToString() + trailer)
    assert onnx.load_model_from_string(data).producer_name == "later-tool"  # protobuf reads it as a model field
    assert verify_model_bytes(data, "appended.onnx").metadata == parse_metadata(VALID_PROPS)


@pytest.mark.parametrize(
    "extra",
    [
        unknown_field(1003, 0, varint(127)),  # one byte, 0x7f: the largest value of a last byte
        unknown_field(1003, 0, varint(2**14 - 1)),  # 0xff 0x7f
        unknown_field(1003, 0, varint(2**21 - 1)),  # 0xff 0xff 0x7f
        unknown_field(2032, 0, varint(5)),  # its key (2032 << 3 = 16256) encodes as 0x80 0x7f
        unknown_field(1004, 2, varint(127) + b"x" * 127),  # a length of 127: 0x7f
    ],
    ids=["value-127", "value-2^14-1", "value-2^21-1", "key-ending-0x7f", "length-127"],
)
def test_varints_whose_last_byte_is_0x7f_are_read_to_their_end(extra):
    """A varint ends at its first byte below 0x80 (high bit clear): 0x7f, the largest such byte,
    ends it too. Values, keys and lengths ending in 0x7f before the metadata are skipped exactly."""
    assert b"\x7f" in extra
    data = seal(extra + tiny_model().SerializeToString())
    assert onnx.load_model_from_string(data).metadata_props[0].key == "interface_version"  # protobuf agrees it is well formed
    assert verify_model_bytes(data, "future.onnx").metadata == parse_metadata(VALID_PROPS)


@pytest.mark.parametrize("extra_key", ["about", "accuracy", "artifact", "artifact_sha2", "artifact_sha256_old", "zeta"])
def test_models_with_other_keys_are_sealed_and_verify(extra_key):
    """Sealing refuses only a model that already holds ``artifact_sha256``: any other key (sorting
    before it, as a prefix of it, or after it) is sealed with the rest and read back."""
    model_proto = tiny_model(props=props_with(**{extra_key: "kept"}))
    data = sealed_model_bytes(model_proto)
    assert data.startswith(model_proto.SerializeToString())
    assert verify_model_bytes(data, "extra.onnx").metadata == parse_metadata(VALID_PROPS)


def test_a_model_that_already_holds_a_seal_is_not_sealed_again():
    """A second seal would leave two ``artifact_sha256`` entries (a duplicate every reader refuses)."""
    model_proto = onnx.load_model_from_string(sealed_model_bytes(tiny_model()))
    with pytest.raises(ValueError, match="seal a model once"):
        sealed_model_bytes(model_proto)


@pytest.mark.parametrize("version", ["0", "99", f"{INTERFACE_VERSION}0", f"{INTERFACE_VERSION}.1", ""], ids=["older", "newer", "longer", "minor", "empty"])
def test_every_other_interface_version_is_refused(version):
    """Artifacts for any other interface version, older or newer, are refused with the fix: a
    newer artifact may need inputs or outputs this version does not provide."""
    assert version != INTERFACE_VERSION
    with pytest.raises(ArtifactMetadataError, match=f"exported for interface version {version!r}") as error:
        parse_metadata(props_with(interface_version=version), "model.onnx")
    assert str(error.value).startswith("model.onnx: ") and "mlff-export export" in str(error.value)


def test_external_data_after_inline_initializers_is_refused(tmp_path):
    """Every initializer is looked at: inline ones before an external one do not hide it."""
    inline = [initializer("bias", np.array([0.5], np.float32)), initializer("scale", np.array([2.0], np.float32))]
    model_proto = tiny_model([*inline, external_initializer(external_entries("weights.bin", ENTRY_ORDERS["location-first"]))])
    with pytest.raises(ArtifactMetadataError, match=r"initializer w keeps its data in another file \('weights.bin'\)"):
        verify_model_bytes(model_proto.SerializeToString(), tmp_path / "artifact.onnx")


@pytest.mark.parametrize(
    "data",
    [b"\xff" * 16, b"plain text, no protobuf at all", bytes(range(256))],
    ids=["0xff-bytes", "text", "every-byte"],
)
def test_bytes_that_are_not_onnx_are_one_metadata_error(data):
    """Bytes protobuf cannot parse are refused as :class:`ArtifactMetadataError` naming the file
    and the fix, never as protobuf's own DecodeError."""
    with pytest.raises(ArtifactMetadataError, match="not a readable ONNX file") as error:
        verify_model_bytes(data, "garbage.onnx")
    assert str(error.value).startswith("garbage.onnx is not a readable ONNX file") and "mlff-export export" in str(error.value)


def test_a_verified_artifact_cannot_be_changed_after_the_check():
    """The bytes handed to a runtime are the bytes that were checked: the result is frozen."""
    data = sealed_model_bytes(tiny_model())
    verified = verify_model_bytes(data, "tiny.onnx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.model_bytes = b"other bytes"
    with pytest.raises(dataclasses.FrozenInstanceError):
        verified.metadata = parse_metadata(props_with(cutoff="9"))
    assert verified.model_bytes == data and verified.metadata.cutoff == 4.5
