"""The capabilities and provenance stored in an exported graph's ``metadata_props``, its integrity
record, and the one reader that checks both.

Every artifact records what a runtime needs to use it (interface version, cutoff, species, input
layout, precision) and where it came from (hashes, versions). :func:`parse_metadata` refuses an
artifact whose metadata is missing or written for another interface version, with the fix.

**Integrity.** The exporter writes ``sealed_model_bytes(model_proto)``: the serialized model (graph,
opsets, every metadata key, whatever keys later versions add) followed by one last metadata
entry, ``artifact_sha256``, the sha256 of every byte before it. Protobuf readers (ONNX Runtime,
TensorRT's parser, ``onnx.load``) accept an entry at the end like any other. Checking it is one
sha256 over the file's bytes and a read of the metadata entries (no parse of the graph, no
re-serialization), so every loader does it: :func:`read_verified_artifact` is the only way the
runtime opens an ``.onnx`` file, and it hands on the checked bytes, not the path, so a file
replaced after the check is never run. The exporter refuses non-finite weights, so a sealed file
has none. The hash catches damaged and edited files, not a forger who recomputes it (that would
take a signature).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from mlff_export.interface import INTERFACE_VERSION

FORCE_METHOD = "conservative: -dE/dr via autograd, traced"
REEXPORT_HINT = "re-export it with `mlff-export export` (or mlff_export.export.to_onnx)"
INTEGRITY_KEY = "artifact_sha256"

REQUIRED_KEYS = (
    "interface_version",
    "cutoff",
    "species",
    "precision",
    "input_layout",
    "force_method",
    "model_sha256",
    "weights_sha256",
    "exporter",
    "torch_version",
    "onnx_version",
    "opset",
)


OPTIONAL_KEYS = ("model_source",)


class ArtifactMetadataError(ValueError):
    """An ONNX artifact that must not be used: missing, unreadable (empty, truncated, not ONNX),
    without our metadata or written for another interface version, modified since export, with
    external data, or with non-finite weights. The message names the file and the fix."""


@dataclass(frozen=True)
class ArtifactMetadata:
    """What an exported graph declares about itself.

    Attributes:
        interface_version: :data:`mlff_export.interface.INTERFACE_VERSION` it was exported for.
        cutoff: model cutoff in Å (neighbor lists must hold every pair closer than this).
        species: atomic numbers the model supports.
        precision: ``"fp32"`` or ``"fp16"`` (network body; inputs and outputs are float32).
        input_layout: ``"neighbor_table"`` or ``"pair_list"`` (see :mod:`.graph_layouts`).
        force_method: how forces are produced.
        model_sha256: sha256 of the serialized ONNX graph (metadata excluded): the graph's identity.
        weights_sha256: sha256 of the source model's float32 state dict (same for fp32 and fp16).
        exporter, torch_version, onnx_version, opset: provenance.
        model_source: where the model came from (checkpoint card, factory and its arguments,
            weights file or ``.pt2`` program with their sha256); optional, "" when not given.
    """

    interface_version: str
    cutoff: float
    species: tuple[int, ...]
    precision: str
    input_layout: str
    force_method: str
    model_sha256: str
    weights_sha256: str
    exporter: str
    torch_version: str
    onnx_version: str
    opset: int
    model_source: str = ""

    def to_props(self) -> dict[str, str]:
        """String key/values for ``ModelProto.metadata_props``."""
        values = {name: getattr(self, name) for name in (*REQUIRED_KEYS, *OPTIONAL_KEYS)}
        values["species"] = json.dumps(list(self.species))
        return {name: str(value) for name, value in values.items()}


@dataclass(frozen=True)
class VerifiedArtifact:
    """An exported ``.onnx`` file after every load-time check.

    Attributes:
        path: where it was read from (for messages).
        metadata: its checked, typed metadata.
        model_bytes: the exact bytes that were checked: give these to a runtime, not the path.
        artifact_sha256: the seal (sha256 of the file up to its integrity record): the identity of
            graph and metadata together, e.g. for a record of what an engine was built from.
    """

    path: Path
    metadata: ArtifactMetadata
    model_bytes: bytes
    artifact_sha256: str


def parse_metadata(props: dict[str, str], source: str | Path = "ONNX model") -> ArtifactMetadata:
    """Check ``metadata_props`` (as a dict) and return them typed; raise with the fix otherwise."""
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise ArtifactMetadataError(
            f"{source}: metadata lacks {missing}; it was not written by mlff-export, is too old or is "
            f"truncated: {REEXPORT_HINT}"
        )
    if props["interface_version"] != INTERFACE_VERSION:
        raise ArtifactMetadataError(
            f"{source}: exported for interface version {props['interface_version']!r}, this mlff-export "
            f"uses version {INTERFACE_VERSION!r}: {REEXPORT_HINT}"
        )
    try:
        metadata = ArtifactMetadata(
            interface_version=props["interface_version"],
            cutoff=float(props["cutoff"]),
            species=tuple(int(z) for z in json.loads(props["species"])),
            precision=props["precision"],
            input_layout=props["input_layout"],
            force_method=props["force_method"],
            model_sha256=props["model_sha256"],
            weights_sha256=props["weights_sha256"],
            exporter=props["exporter"],
            torch_version=props["torch_version"],
            onnx_version=props["onnx_version"],
            opset=int(props["opset"]),
            model_source=props.get("model_source", ""),
        )
    except (TypeError, ValueError) as error:
        raise ArtifactMetadataError(f"{source}: unreadable metadata ({error}): {REEXPORT_HINT}") from None
    if not (math.isfinite(metadata.cutoff) and metadata.cutoff > 0) or not metadata.species:
        raise ArtifactMetadataError(
            f"{source}: metadata declares cutoff {metadata.cutoff} Å and species {list(metadata.species)}; "
            f"expected a finite cutoff > 0 and at least one element: {REEXPORT_HINT}"
        )
    return metadata


def graph_sha256(model_proto) -> str:
    """sha256 of an ``onnx.ModelProto``'s graph (nodes and weights, not the metadata)."""
    return hashlib.sha256(model_proto.graph.SerializeToString(deterministic=True)).hexdigest()


def _integrity_record(digest: str) -> bytes:
    """The serialized ``metadata_props`` entry ``artifact_sha256 = digest`` that ends a sealed file."""
    import onnx

    entry = onnx.StringStringEntryProto(key=INTEGRITY_KEY, value=digest)
    return onnx.ModelProto(metadata_props=[entry]).SerializeToString()


def sealed_model_bytes(model_proto) -> bytes:
    """``model_proto`` serialized and sealed: followed by ``artifact_sha256``, the sha256 of every
    byte before it (graph, opsets and all metadata keys present now). Seal last, after every key
    is set, and write the bytes as they are (``onnx.save`` would move the record)."""
    if any(prop.key == INTEGRITY_KEY for prop in model_proto.metadata_props):
        raise ValueError(f"the model already holds an {INTEGRITY_KEY} entry; seal a model once")
    body = model_proto.SerializeToString()
    return body + _integrity_record(hashlib.sha256(body).hexdigest())


def _check_no_external_data(model_proto, source: Path) -> None:
    """mlff-export artifacts hold their weights inside the file; refuse references to other files
    (naming one that would escape the artifact's folder) before anything could open them."""
    import onnx

    folder = source.parent.resolve()
    for tensor in model_proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        escapes = not (folder / location).resolve().is_relative_to(folder)
        where = "outside the artifact's folder" if escapes else "in another file"
        raise ArtifactMetadataError(
            f"{source}: initializer {tensor.name} keeps its data {where} ({location!r}); mlff-export "
            f"artifacts hold every weight inside the .onnx file: {REEXPORT_HINT}"
        )


def non_finite_initializers(model_proto) -> list[str]:
    """Names of the float initializers holding NaN or inf (the exporter refuses to write them, so
    a sealed artifact has none)."""
    import numpy as np
    from onnx import numpy_helper

    names = []
    for tensor in model_proto.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            names.append(tensor.name)
    return names


def _is_sealed(data: bytes) -> bool:
    """Whether ``data`` ends with an integrity record whose digest is the sha256 of every byte before it."""
    digest = data[-64:].decode("ascii", errors="replace")
    record = _integrity_record(digest)
    return data.endswith(record) and hashlib.sha256(memoryview(data)[: -len(record)]).hexdigest() == digest


def _varint(data: bytes, position: int) -> tuple[int, int]:
    """The protobuf varint at ``position``, and the position after it."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _metadata_entries(data: bytes) -> list[tuple[str, str]]:
    """(key, value) of every ``metadata_props`` entry of a serialized ``ModelProto``, in file order.

    Reads the top level of the protobuf wire format and parses only the entries (field 14): parsing
    the whole model takes ~7 ms for the reference graph, which ONNX Runtime parses again anyway.
    Only called on sealed bytes (written by the exporter, so well formed).
    """
    import onnx

    entries, position = [], 0
    while position < len(data):
        key, position = _varint(data, position)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            if field == 14:
                entry = onnx.StringStringEntryProto.FromString(data[position : position + length])
                entries.append((entry.key, entry.value))
            position += length
        else:
            position += {1: 8, 5: 4}[wire_type]
    return entries


def _check_entries(entries: list[tuple[str, str]], source: Path) -> ArtifactMetadata:
    """The typed metadata of ``entries`` after refusing duplicated keys (:func:`parse_metadata`)."""
    keys = [key for key, _ in entries]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ArtifactMetadataError(f"{source}: metadata keys {duplicated} appear more than once (edited after export): {REEXPORT_HINT}")
    return parse_metadata(dict(entries), source)


def _unsealed_error(data: bytes, source: Path) -> ArtifactMetadataError:
    """Why bytes that fail the seal check cannot be used, as precisely as a full parse can say."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model_proto = onnx.load_model_from_string(data)
    except DecodeError as error:
        return ArtifactMetadataError(f"{source} is not a readable ONNX file (truncated, or another format: {error}): {REEXPORT_HINT}")
    try:
        _check_entries([(prop.key, prop.value) for prop in model_proto.metadata_props], source)
        _check_no_external_data(model_proto, source)
    except ArtifactMetadataError as error:
        return error
    if INTEGRITY_KEY not in {prop.key for prop in model_proto.metadata_props}:
        return ArtifactMetadataError(
            f"{source}: metadata lacks ['{INTEGRITY_KEY}'] (exported before artifacts were sealed): {REEXPORT_HINT}"
        )
    return ArtifactMetadataError(
        f"{source}: its bytes differ from those sealed at export ({INTEGRITY_KEY}): the graph or its "
        f"metadata was modified after export: {REEXPORT_HINT}"
    )


def verify_model_bytes(data: bytes, source: str | Path = "ONNX model") -> VerifiedArtifact:
    """Check the bytes of an exported ``.onnx`` file: sealed (every byte before the integrity record
    matches it), with our metadata, once per key, for this interface version.

    Raises :class:`ArtifactMetadataError` (one line, with the fix); for bytes that fail the seal,
    the message says why as precisely as it can (not ONNX, truncated, foreign, old, external data,
    edited). A sealed file's weights are finite: the exporter refuses to write others.
    """
    source = Path(source)
    if not data:
        raise ArtifactMetadataError(f"{source} is empty (0 bytes): {REEXPORT_HINT}")
    if not _is_sealed(data):
        raise _unsealed_error(data, source)
    metadata = _check_entries(_metadata_entries(data), source)
    return VerifiedArtifact(path=source, metadata=metadata, model_bytes=data, artifact_sha256=data[-64:].decode("ascii"))


def read_verified_artifact(path: str | Path) -> VerifiedArtifact:
    """Read an exported ``.onnx`` file once and check it (:func:`verify_model_bytes`)."""
    path = Path(path)
    if path.is_dir():
        raise ArtifactMetadataError(f"{path} is a folder; expected an exported .onnx file")
    if not path.is_file():
        raise ArtifactMetadataError(f"{path} does not exist")
    return verify_model_bytes(path.read_bytes(), path)


def read_metadata(path: str | Path) -> ArtifactMetadata:
    """The checked metadata of an exported ``.onnx`` file (every check of :func:`verify_model_bytes`)."""
    return read_verified_artifact(path).metadata
