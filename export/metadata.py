"""The capabilities and provenance stored in an exported graph's ``metadata_props``, and the reader.

Every artifact records what a runtime needs to use it (interface version, cutoff, species, input
layout, precision) and where it came from (hashes, versions). :func:`parse_metadata` refuses an
artifact whose metadata is missing or written for another interface version, with the fix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mlff_export.interface import INTERFACE_VERSION

FORCE_METHOD = "conservative: -dE/dr via autograd, traced"
REEXPORT_HINT = "re-export it with `mlff-export export` (or mlff_export.export.to_onnx)"

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
    """An ONNX file without our metadata, or with metadata this version cannot use."""


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
        model_sha256: sha256 of the serialized ONNX graph (metadata excluded).
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


def parse_metadata(props: dict[str, str], source: str | Path = "ONNX model") -> ArtifactMetadata:
    """Check ``metadata_props`` (as a dict) and return them typed; raise with the fix otherwise."""
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise ArtifactMetadataError(
            f"{source}: metadata lacks {missing}; it was not written by mlff-export or is too old: {REEXPORT_HINT}"
        )
    if props["interface_version"] != INTERFACE_VERSION:
        raise ArtifactMetadataError(
            f"{source}: exported for interface version {props['interface_version']!r}, this mlff-export "
            f"uses version {INTERFACE_VERSION!r}: {REEXPORT_HINT}"
        )
    try:
        return ArtifactMetadata(
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


def graph_sha256(model_proto) -> str:
    """sha256 of an ``onnx.ModelProto``'s graph (nodes and weights, not the metadata)."""
    return hashlib.sha256(model_proto.graph.SerializeToString(deterministic=True)).hexdigest()


def read_metadata(path: str | Path) -> ArtifactMetadata:
    """Load an exported ``.onnx`` file's metadata, check it, and check the graph's hash."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ArtifactMetadataError(f"{path} does not exist")
    try:
        model_proto = onnx.load(str(path))
    except DecodeError as error:
        raise ArtifactMetadataError(f"{path} is not a readable ONNX file ({error})") from None
    metadata = parse_metadata({prop.key: prop.value for prop in model_proto.metadata_props}, path)
    if graph_sha256(model_proto) != metadata.model_sha256:
        raise ArtifactMetadataError(
            f"{path}: graph sha256 differs from the recorded model_sha256 (the graph was modified "
            f"after export): {REEXPORT_HINT}"
        )
    return metadata
