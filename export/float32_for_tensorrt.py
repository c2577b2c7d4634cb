"""The float32 copy of an exported graph that TensorRT builds its engines from.

Exported graphs sum structure energies and virials in float64
(:data:`mlff_export.pair_layouts.STRUCTURE_SUM_DTYPE`): ONNX Runtime runs double ``Mul`` and
``ReduceSum`` on CPU and CUDA. TensorRT has no float64 arithmetic (its ONNX parser "attempts to
cast DOUBLE down to FLOAT", NVIDIA's onnx-tensorrt operator notes), so rather than leave that to
the parser of each version, :func:`float32_graph` makes the float32 graph explicitly: every
``Cast`` to double becomes a cast to float32 and every double constant a float32 one. TensorRT then
sums in float32 (its reductions are tree reductions on the GPU). The graph's inputs and outputs are
float32 in both versions, so the engine keeps the artifact's interface.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import numpy_helper

from mlff_export.export.metadata import INTEGRITY_KEY, graph_sha256, sealed_model_bytes

DOUBLE, FLOAT = 11, 1  # onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT


def _float32_tensor(tensor) -> None:
    """A double ``TensorProto`` rewritten in place as float32 (same name and shape)."""
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name))


def float32_graph(model_proto) -> int:
    """Rewrite ``model_proto`` (in place) so that no tensor is float64; returns how many casts,
    constants and value types were changed (0: the graph had no float64)."""
    graph = model_proto.graph
    changed = 0
    for initializer in graph.initializer:
        if initializer.data_type == DOUBLE:
            _float32_tensor(initializer)
            changed += 1
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == DOUBLE:
                attribute.i = FLOAT
                changed += 1
            elif attribute.type == attribute.TENSOR and attribute.t.data_type == DOUBLE:
                _float32_tensor(attribute.t)
                changed += 1
    for value in [*graph.value_info, *graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == DOUBLE:
            value.type.tensor_type.elem_type = FLOAT
            changed += 1
    return changed


@contextlib.contextmanager
def float32_onnx_file(onnx_path: Path) -> Iterator[Path]:
    """``onnx_path`` itself where its graph has no float64, else a temporary float32 copy (see
    :func:`float32_graph`), removed on exit. A file that is not there is passed on as it is: the
    parser reports it."""
    if not Path(onnx_path).is_file():
        yield onnx_path
        return
    model_proto = onnx.load(str(onnx_path))
    if float32_graph(model_proto) == 0:
        yield onnx_path
        return
    reseal(model_proto)
    with tempfile.TemporaryDirectory(prefix="mlff-export-float32-") as folder:
        path = Path(folder) / Path(onnx_path).name
        path.write_bytes(sealed_model_bytes(model_proto))
        yield path


def reseal(model_proto) -> None:
    """Make the rewritten ``model_proto`` an artifact of its own: its ``model_sha256`` the new
    graph's, the old seal dropped (:func:`~.metadata.sealed_model_bytes` seals it again), so the
    copy loads like any export; the metadata keeps everything else (weights hash, provenance)."""
    props = {prop.key: prop.value for prop in model_proto.metadata_props if prop.key != INTEGRITY_KEY}
    props["model_sha256"] = graph_sha256(model_proto)
    del model_proto.metadata_props[:]
    onnx.helper.set_model_props(model_proto, props)
