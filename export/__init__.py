"""ONNX export of interface models (energy, forces and virial in the graph).

:func:`to_onnx` writes the graph; :func:`read_metadata` reads and checks what it declares.
"""

from mlff_export.export.errors import ExportError
from mlff_export.export.metadata import ArtifactMetadata, ArtifactMetadataError, read_metadata
from mlff_export.export.onnx_export import ScatterGraphWarning, to_onnx

__all__ = ["ArtifactMetadata", "ArtifactMetadataError", "ExportError", "ScatterGraphWarning", "read_metadata", "to_onnx"]
