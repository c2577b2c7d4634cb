"""Is the artifact the reference model? Integrity and provenance checks from the artifact's metadata.

For an exported ``.onnx`` graph (see :mod:`mlff_export.export.metadata`): the file's bytes, graph
and metadata, match the ``artifact_sha256`` sealed at export (nothing was edited since), the
recorded weights sha256 is the reference model's (it was exported from these weights), and cutoff
and species agree.
Artifacts without our metadata get no provenance checks (a note says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass
class ProvenanceCheck:
    """One yes/no fact about the artifact; ``detail`` says what was found."""

    name: str
    passed: bool
    detail: str


def check_provenance(artifact: str | Path, reference_model: nn.Module) -> list[ProvenanceCheck]:
    """Provenance checks of ``artifact`` against ``reference_model`` (none for non-ONNX artifacts)."""
    if Path(artifact).suffix != ".onnx":
        return []
    from mlff_export.export import ArtifactMetadataError, read_metadata
    from mlff_export.export.precision import weights_sha256

    try:
        metadata = read_metadata(artifact)
    except ArtifactMetadataError as error:
        return [ProvenanceCheck("graph integrity", False, str(error))]
    reference_weights = weights_sha256(reference_model)
    same_species = tuple(metadata.species) == tuple(int(z) for z in reference_model.species)
    same_cutoff = abs(metadata.cutoff - float(reference_model.cutoff)) < 1e-6
    return [
        ProvenanceCheck("graph integrity", True, f"graph and metadata match the artifact_sha256 sealed at export (graph {metadata.model_sha256[:12]}…)"),
        ProvenanceCheck(
            "weights match the reference",
            metadata.weights_sha256 == reference_weights,
            f"artifact exported from weights {metadata.weights_sha256[:12]}…, reference weights {reference_weights[:12]}…"
            + ("" if metadata.weights_sha256 == reference_weights else ": pass --reference the checkpoint it was exported from"),
        ),
        ProvenanceCheck(
            "species and cutoff match",
            same_species and same_cutoff,
            f"artifact species {list(metadata.species)}, cutoff {metadata.cutoff} Å; reference species "
            f"{list(reference_model.species)}, cutoff {float(reference_model.cutoff)} Å",
        ),
    ]
