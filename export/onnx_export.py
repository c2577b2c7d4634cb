"""``to_onnx``: an interface model to one ONNX graph that computes energy, forces and virial.

ONNX Runtime and TensorRT have no autograd, so the graph must contain the backward pass. The
route: trace the joint forward+backward function (``torch.autograd.grad`` inside) with
``make_fx(tracing_mode="symbolic")``, then export that graph with ``torch.onnx.export(dynamo=True)``
and dynamic atoms, neighbors/pairs and structures. Every graph that can be is on the
scatter-free neighbor table: models with ``atomic_energies`` are traced on it, other interface
modules (a user's model written with ``index_add``/``scatter``) are traced on the pair list and
rewritten to it (:mod:`~.table_rewrite`); where the rewrite is refused the pair-list graph is
exported with a warning that says why.

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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import mlff_export
from mlff_export.export.errors import ExportError
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE, OUTPUT_AXES, PAIR_LIST, GraphLayout
from mlff_export.export.interface_check import check_declares_interface, check_interface_outputs
from mlff_export.export.functional import functionalized
from mlff_export.export.half_gemms import with_half_weight_products
from mlff_export.export.joint_graph import RewriteRefused, rewritten_to_neighbor_table, trace_joint_graph, trace_pair_list_graph
from mlff_export.export.joint_graph_ops import ONNX_TRANSLATIONS
from mlff_export.export.metadata import FORCE_METHOD, ArtifactMetadata, graph_sha256, non_finite_initializers, sealed_model_bytes
from mlff_export.export.precision import PRECISIONS, frozen, model_for_precision, weights_sha256
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
    model_source: str | None = None,
) -> Path:
    """Export ``model`` to ``path``: inputs float32/int64, outputs energy [B] (eV), forces [N, 3]
    (eV/Å), virial [B, 3, 3] (eV), all float32, with atoms, neighbors/pairs and structures dynamic.

    Args:
        model: an interface module (declares ``cutoff`` and ``species``; see docs/interface.md),
            written with the layout primitives or the ordinary way (``index_add``, ``scatter``).
            The graph takes the scatter-free ``neighbor_table`` inputs, or the ``pair_list``
            inputs where the rewrite is refused (:class:`ScatterGraphWarning` says why).
        path: the ``.onnx`` file to write (parent folders are created).
        precision: ``"fp32"``, or ``"fp16"`` (weights' matrix products in float16; geometry,
            sums, forces and virial in float32).
        opset: ONNX opset, from :data:`MIN_OPSET` to what the installed onnx supports.
        check: called with the path of the complete, sealed file before it is renamed to ``path``
            (e.g. ``OnnxParityCheck``); whatever it raises propagates and nothing is left behind.
        model_source: where the model came from, stored in the metadata
            (:func:`mlff_export.model_intake.load_model` gives it); default: the module's class.

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
    export = export_graph(model, precision)
    graph = functionalized(export.graph, export.example_args)  # the ONNX exporter takes no in-place ops
    model_proto = traced_to_model_proto(graph, export.example_args, export.layout, opset)
    _check_axes(model_proto, export.layout)
    if export.layout.has_scatter:
        _warn_about_scatters(model_proto, type(model).__name__, export.refusal)

    metadata = ArtifactMetadata(
        interface_version=INTERFACE_VERSION,
        cutoff=float(model.cutoff),
        species=tuple(int(z) for z in model.species),
        precision=precision,
        input_layout=export.layout.name,
        force_method=FORCE_METHOD,
        model_sha256=graph_sha256(model_proto),
        weights_sha256=weights_sha256(model),
        exporter=f"mlff-export {mlff_export.__version__}",
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        opset=opset,
        model_source=model_source or f"module {type(model).__module__}.{type(model).__qualname__}",
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


@dataclass
class ExportGraph:
    """What is exported: the joint graph, its example inputs and layout, and (for a pair-list
    graph of a user's model) why the scatter-free rewrite was refused."""

    graph: torch.fx.GraphModule
    example_args: tuple[torch.Tensor, ...]
    layout: GraphLayout
    refusal: str | None = None


def export_graph(model: nn.Module, precision: str) -> ExportGraph:
    """The joint energy/forces/virial graph of ``model`` in ``precision``, on the neighbor table
    where possible.

    * A model with ``atomic_energies`` (PaiNN) is traced on the table; its FP16 copy runs the
      body in float16 (:func:`~.precision.model_for_precision`).
    * Any other interface module is traced on the pair list as written and rewritten to the table
      (:mod:`~.table_rewrite`); where the rewrite is refused the pair-list graph is kept and the
      reason returned. Its FP16 graph runs the matrix products with the weights in float16
      (:mod:`~.half_gemms`).
    """
    if has_pair_energy(model):
        native = model_for_precision(model, precision)  # CPU, float32 (body float16 for fp16)
        with frozen(native):
            check_interface_outputs(native)
            graph, args = trace_joint_graph(native, NEIGHBOR_TABLE)
        return ExportGraph(graph, args, NEIGHBOR_TABLE)
    user_model = model_for_precision(model, "fp32")
    with frozen(user_model):
        pair_graph, pair_args = trace_pair_list_graph(user_model)
        try:
            export = ExportGraph(*rewritten_to_neighbor_table(user_model, pair_graph, pair_args), NEIGHBOR_TABLE)
        except RewriteRefused as refusal:
            export = ExportGraph(pair_graph, pair_args, PAIR_LIST, str(refusal))
    if precision == "fp16":
        export.graph = with_half_weight_products(export.graph, type(model).__name__)
    return export


def scatters_with_reduction(model_proto) -> list[str]:
    """``Op(reduction=...)`` of every scatter with a reduction in an ONNX graph (TensorRT needs plugins for them)."""
    return [
        f"{node.op_type}(reduction={attribute.s.decode()})"
        for node in model_proto.graph.node
        if node.op_type in SCATTER_OPS
        for attribute in node.attribute
        if attribute.name == "reduction" and attribute.s not in (b"", b"none")
    ]


def traced_to_model_proto(traced: torch.fx.GraphModule, args: tuple, layout: GraphLayout, opset: int):
    """Convert the traced joint graph to an ONNX ModelProto (dynamic axes from ``layout``)."""
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
            optimize=False,
            verbose=False,
        )
    _optimize(program.model)
    return program.model_proto


def _optimize(model) -> None:
    """onnxscript's optimizer without its pattern rewriter (in place, on the ``onnx_ir`` model).

    Constant folding, dead-node removal, initializer deduplication and common-subexpression
    elimination, as ``torch.onnx.export(optimize=True)`` does; its rewriter, which looks for
    fusions (attention, normalisation) that these graphs never contain, is left out: it took half
    of a MACE export's time (13 of 26 minutes on the busy 2-core machine).
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import _constant_folding

    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                    output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                ),
                common.RemoveUnusedNodesPass(),
            ],
            steps=2,
            early_stop=True,
        ),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.NameFixPass(),
    )(model)


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


def _warn_about_scatters(model_proto, model_name: str, refusal: str | None) -> None:
    scatters = sorted(set(scatters_with_reduction(model_proto)))
    if scatters:
        warnings.warn(
            f"{model_name} was exported on the pair list with {len(scatters_with_reduction(model_proto))} scatters "
            f"({', '.join(scatters)}) because the scatter-free rewrite was refused: {refusal}. TensorRT has no native "
            "layer for these: it rejects ScatterND with a reduction and needs its ScatterElements plugin (atomics) for "
            "ScatterElements(reduction=add). ONNX Runtime's CPU ScatterND(add) races with intra_op_num_threads > 1 "
            "(wrong forces, no error): the mlff-export ORT backend runs such graphs on one thread. See "
            "docs/bring-your-own-model.md for the patterns the rewrite takes.",
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
