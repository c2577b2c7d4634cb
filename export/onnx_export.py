"""``to_onnx``: an interface model to one ONNX graph that computes energy, forces and virial.

ONNX Runtime and TensorRT have no autograd, so the graph must contain the backward pass. The
route: trace the joint forward+backward function (``torch.autograd.grad`` inside) with
``make_fx(tracing_mode="symbolic")``, then export that graph with ``torch.onnx.export(dynamo=True)``
and dynamic atoms, neighbors/pairs and structures. Models with ``atomic_energies`` are traced on
the scatter-free neighbor table; other interface modules on the pair list (with a warning).

Nothing is written until the graph has passed every check (interface, opset, symbolic axes,
``onnx.checker`` full check, and the caller's ``check`` of the written bytes, e.g. parity with
eager PyTorch: :class:`mlff_export.runtime.parity.OnnxParityCheck`); the file then appears at once
(temporary file + rename), sealed with its integrity record (:mod:`.metadata`).
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import mlff_export
from mlff_export.export.errors import ExportError
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE, OUTPUT_AXES, PAIR_LIST, GraphLayout
from mlff_export.export.interface_check import check_declares_interface, check_interface_outputs
from mlff_export.export.joint_graph import trace_joint_graph
from mlff_export.export.joint_graph_ops import ONNX_TRANSLATIONS
from mlff_export.export.metadata import FORCE_METHOD, ArtifactMetadata, graph_sha256, non_finite_initializers, sealed_model_bytes
from mlff_export.export.precision import PRECISIONS, model_for_precision, weights_sha256
from mlff_export.forces import has_pair_energy
from mlff_export.interface import INTERFACE_VERSION, OUTPUT_NAMES

MIN_OPSET = 18  # Split(num_outputs), ReduceSum(axes input) and the onnxscript translations
DEFAULT_OPSET = 18  # the smallest that works: widest runtime support (TensorRT, older ORT)

SCATTER_OPS = ("ScatterND", "ScatterElements")


class ScatterGraphWarning(UserWarning):
    """The exported graph contains scatters with a reduction (a model written with ``index_add``)."""


def to_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Export ``model`` to ``path``: inputs float32/int64, outputs energy [B] (eV), forces [N, 3]
    (eV/Å), virial [B, 3, 3] (eV), all float32, with atoms, neighbors/pairs and structures dynamic.

    Args:
        model: an interface module (declares ``cutoff`` and ``species``; see docs/interface.md).
            With ``atomic_energies(pair_vectors, species, layout)`` the graph takes the
            ``neighbor_table`` inputs and is scatter-free; otherwise the ``pair_list`` inputs.
        path: the ``.onnx`` file to write (parent folders are created).
        precision: ``"fp32"``, or ``"fp16"`` (network body in float16, geometry and sums in
            float32; needs ``atomic_energies``).
        opset: ONNX opset, from :data:`MIN_OPSET` to what the installed onnx supports.
        check: called with the path of the complete, sealed file before it is renamed to ``path``
            (e.g. ``OnnxParityCheck``); whatever it raises propagates and nothing is left behind.

    Returns:
        ``path``. Raises :class:`ExportError` (nothing written) for a module that breaks the
        interface, an unsupported opset or precision, or a graph whose sizes were specialised.
    """
    import onnx

    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give the path of the .onnx file to write")
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ExportError(
            f"opset | received {opset!r} | expected {MIN_OPSET}..{max_opset}: the traced graph needs opset "
            f">= {MIN_OPSET}, and onnx {onnx.__version__} knows up to {max_opset}"
        )
    if precision not in PRECISIONS:
        raise ExportError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    check_declares_interface(model)
    layout = NEIGHBOR_TABLE if has_pair_energy(model) else PAIR_LIST
    if precision == "fp16" and layout is PAIR_LIST:
        raise ExportError(
            f"fp16 needs a model with `atomic_energies(pair_vectors, species, layout)` that runs its body in its "
            f"weights' dtype (as PaiNN does); {type(model).__name__} has none: export it with precision='fp32'"
        )
    export_model = model_for_precision(model, precision)  # CPU, float32 (body float16 for fp16)
    check_interface_outputs(export_model)
    model_proto = _trace_to_onnx(export_model, layout, opset)
    _check_axes(model_proto, layout)
    if layout.has_scatter:
        _warn_about_scatters(model_proto, type(model).__name__)

    metadata = ArtifactMetadata(
        interface_version=INTERFACE_VERSION,
        cutoff=float(model.cutoff),
        species=tuple(int(z) for z in model.species),
        precision=precision,
        input_layout=layout.name,
        force_method=FORCE_METHOD,
        model_sha256=graph_sha256(model_proto),
        weights_sha256=weights_sha256(model),
        exporter=f"mlff-export {mlff_export.__version__}",
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        opset=opset,
    )
    broken = non_finite_initializers(model_proto)
    if broken:
        raise ExportError(f"weights {broken[:5]} hold NaN or inf: fix the model's weights (a sealed artifact has finite weights)")
    onnx.helper.set_model_props(model_proto, metadata.to_props())
    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the exported graph fails onnx.checker (full): {error}") from None
    _write_atomically(sealed_model_bytes(model_proto), path, check)
    return path


def _trace_to_onnx(model: nn.Module, layout: GraphLayout, opset: int):
    """Trace the joint energy/forces/virial function symbolically and convert it to a ModelProto."""
    traced, args = trace_joint_graph(model, layout)
    with warnings.catch_warnings():
        # Notes of torch's exporter about its own internals, not about the user's model.
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        program = torch.onnx.export(
            traced,
            args,
            dynamo=True,
            input_names=list(layout.input_names),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=layout.dynamic_shapes(),
            opset_version=opset,
            custom_translation_table=ONNX_TRANSLATIONS,
            verbose=False,
        )
    return program.model_proto


def _check_axes(model_proto, layout: GraphLayout) -> None:
    """Every declared dynamic axis must be symbolic, under its name, on inputs and outputs.

    The tracer can specialise a size silently (e.g. B baked in as the example's value) while the
    file still declares it dynamic; this catches it before anything is written.
    """
    declared = {**layout.input_axes, **OUTPUT_AXES}
    for value in [*model_proto.graph.input, *model_proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        actual = tuple(dim.dim_param if dim.HasField("dim_param") else dim.dim_value for dim in dims)
        expected = declared.get(value.name)
        if actual != expected:
            raise ExportError(
                f"graph {'input' if value in model_proto.graph.input else 'output'} {value.name} | "
                f"exported axes {actual} | expected {expected}: a dynamic size was specialised while "
                "tracing (a model that branches on or reshapes to a concrete size?)"
            )


def _warn_about_scatters(model_proto, model_name: str) -> None:
    scatters = sorted(
        {
            f"{node.op_type}(reduction={attribute.s.decode()})"
            for node in model_proto.graph.node
            if node.op_type in SCATTER_OPS
            for attribute in node.attribute
            if attribute.name == "reduction" and attribute.s not in (b"", b"none")
        }
    )
    if scatters:
        warnings.warn(
            f"{model_name} was exported on the pair list with {', '.join(scatters)} (from index_add or the "
            "gradient of indexing). TensorRT has no native layer for these: it rejects ScatterND with a "
            "reduction and needs its ScatterElements plugin (atomics) for ScatterElements(reduction=add). ONNX Runtime's CPU ScatterND(add) races with "
            "intra_op_num_threads > 1 (wrong forces, no error): run it on one thread, as the mlff-export "
            "ORT backend does. Give the model `atomic_energies(pair_vectors, species, layout)` over a pair "
            "layout for a scatter-free neighbor-table graph.",
            ScatterGraphWarning,
            stacklevel=3,
        )


def _write_atomically(data: bytes, path: Path, check: Callable[[Path], None] | None) -> None:
    """Write ``data`` to a temporary file beside ``path``, run ``check`` on it, then rename: readers
    never see half a file, and a failed check leaves nothing (folders created here included)."""
    created = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")  # unique: concurrent exports
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as handle:
            handle.write(data)
        if check is not None:
            check(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
