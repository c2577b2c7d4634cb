"""The joint forward+backward graph: energy, forces and virial as one FX graph of aten ops.

Both the ONNX exporter and the torch.compile backend start here: tracing
``torch.autograd.grad`` with ``make_fx`` leaves a graph with no autograd in it, which exports
(dynamo ONNX) and compiles (Inductor, CUDA graphs) without graph breaks.

Two kinds of model reach the neighbor-table graph (scatter-free, what TensorRT runs natively):

* models with ``atomic_energies(pair_vectors, species, layout)`` (the bundled PaiNN) are traced
  on the table directly;
* any other interface module (a user's model written with ``index_add``/``scatter`` over
  ``pair_index``) is traced on the pair list, as it is written
  (:mod:`~mlff_export.export.ordinary_code`), and the traced graph is rewritten to the table
  (:mod:`~mlff_export.export.table_rewrite`); :class:`RewriteRefused` says why where it cannot be.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE, PAIR_LIST, GraphLayout, example_inputs, graph_function
from mlff_export.export.interface_check import check_interface_outputs
from mlff_export.export.joint_graph_ops import TRACE_DECOMPOSITIONS
from mlff_export.export.ordinary_code import check_sizes_stayed_symbolic, explain_trace_failure, tracing_ordinary_code
from mlff_export.export.precision import frozen
from mlff_export.export.table_rewrite import RewriteRefused, rewrite_to_neighbor_table
from mlff_export.export.parity import Deviation, compare_with_tolerances
from mlff_export.forces import has_pair_energy
from mlff_export.interface import OUTPUT_NAMES, AtomicInputs

__all__ = ["RewriteRefused", "rewritten_to_neighbor_table", "trace_joint_graph", "trace_pair_list_graph"]


def _trace(model: nn.Module, layout: GraphLayout, args: tuple, weighted: bool) -> torch.fx.GraphModule:
    """``make_fx`` (symbolic sizes) of ``model``'s energy/forces/virial function on ``layout``."""
    with frozen(model), tracing_ordinary_code(model):
        try:
            # The weights are real tensors closed over by the function: allowing them (they become
            # graph constants, hence initializers) is what _allow_non_fake_inputs does.
            traced = make_fx(
                graph_function(model, layout, weighted),
                tracing_mode="symbolic",
                decomposition_table=TRACE_DECOMPOSITIONS,
                _allow_non_fake_inputs=True,
                record_stack_traces=True,
            )(*args)
        except Exception as error:  # the user's code failed under the tracer: say where
            raise explain_trace_failure(error, model) from error
    check_sizes_stayed_symbolic(traced, layout.input_axes, model)
    _detach_weights(traced)
    scalar_constants_on(traced, args[0].device)
    return traced.eval()


def _detach_weights(graph: torch.fx.GraphModule) -> None:
    """Give ``graph`` its own frozen handles on the model's weights (same storage): the model's
    ``requires_grad`` flags, restored after tracing, must not make the graph's outputs carry an
    autograd history (nor make ``torch.compile`` build a backward of the backward)."""
    for name, parameter in list(graph.named_parameters()):
        owner, attribute = _owner(graph, name)
        setattr(owner, attribute, nn.Parameter(parameter.detach(), requires_grad=False))


def _owner(graph: torch.fx.GraphModule, qualified_name: str) -> tuple[nn.Module, str]:
    """The submodule of ``graph`` holding the attribute ``qualified_name`` ("a.b.weight"), and its name there."""
    module_name, _, attribute = qualified_name.rpartition(".")
    return (graph.get_submodule(module_name) if module_name else graph), attribute


def scalar_constants_on(graph: torch.fx.GraphModule, device: torch.device) -> None:
    """Move ``graph``'s 0-dim tensor constants (a model's ``torch.tensor(0.0)`` in ``forward``,
    made on the CPU whatever the device) to ``device``. Eager PyTorch copies such a scalar to the
    device at each use, from pageable host memory, which a CUDA graph capture refuses; on the
    device once, it gives the same numbers. The weights are left as they are."""
    parameters = {id(value) for value in graph.parameters()}
    for node in graph.graph.nodes:
        if node.op != "get_attr":
            continue
        owner, attribute = _owner(graph, node.target)
        value = getattr(owner, attribute)
        if isinstance(value, torch.Tensor) and id(value) not in parameters and value.dim() == 0 and value.device != device:
            setattr(owner, attribute, value.to(device))


def trace_pair_list_graph(model: nn.Module, device: torch.device | str = "cpu") -> tuple[torch.fx.GraphModule, tuple]:
    """The joint graph of any interface module on the pair-list inputs (strain route), as the
    model is written, and the example inputs it was traced with. The module is checked against
    the interface first (:func:`~.interface_check.check_interface_outputs`)."""
    with frozen(model):
        check_interface_outputs(model, device)
    args = tuple(PAIR_LIST.feeds(example_inputs(tuple(model.species)).to(device)).values())
    return _trace(model, PAIR_LIST, args, weighted=False), args


def rewritten_to_neighbor_table(
    model: nn.Module, pair_graph: torch.fx.GraphModule, pair_args: tuple
) -> tuple[torch.fx.GraphModule, tuple]:
    """``pair_graph`` (of ``model``) rewritten to the neighbor table, checked on the example
    inputs against the pair-list graph; and the table example inputs.

    Raises :class:`RewriteRefused` for a scatter the rewrite cannot prove, or if the rewritten
    graph gives other numbers (beyond float32 rounding) on the example inputs.
    """
    table_graph = rewrite_to_neighbor_table(pair_graph, pair_args, float(model.cutoff)).eval()
    inputs = AtomicInputs(*pair_args)
    # One more slot per row than the longest row, so padding slots are exercised too.
    table_args = tuple(NEIGHBOR_TABLE.feeds(inputs, width=inputs_width(inputs) + 1).values())
    expected = dict(zip(OUTPUT_NAMES, pair_graph(*pair_args)))
    actual = dict(zip(OUTPUT_NAMES, table_graph(*table_args)))
    deviations = compare_with_tolerances(actual, expected, "fp32", inputs.structure_index)
    failed = {name: deviation for name, deviation in deviations.items() if not deviation.passed}
    if failed:
        details = ", ".join(f"{name} by {d.difference:.2e} (allowed {d.allowed:.2e})" for name, d in failed.items())
        raise RewriteRefused(f"the rewritten graph differs from the pair-list graph on the example inputs: {details}")
    return table_graph, tuple(NEIGHBOR_TABLE.feeds(inputs).values())


def trace_joint_graph(
    model: nn.Module, layout: GraphLayout = NEIGHBOR_TABLE, device: torch.device | str = "cpu", weighted: bool = False
) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    """Trace ``model``'s energy/forces/virial function on ``layout`` with symbolic sizes.

    ``model`` must already be on ``device``. Returns the graph module (inputs in
    ``layout.input_names`` order, outputs energy [B], forces [N, 3], virial [B, 3, 3]) and the
    example inputs it was traced with (on ``device``; every dynamic size >= 2 and distinct).
    A model without ``atomic_energies`` reaches the neighbor table through the scatter-free
    rewrite (raises :class:`RewriteRefused` where it cannot be proved); ``weighted`` (one more
    input, per-atom energy weights [N]; either layout) needs ``atomic_energies``.
    """
    if weighted and not has_pair_energy(model):
        raise ValueError(f"weighted graphs need `atomic_energies`; {type(model).__name__} has none")
    if layout is NEIGHBOR_TABLE and not has_pair_energy(model):
        return rewritten_to_neighbor_table(model, *trace_pair_list_graph(model, device))
    if layout is NEIGHBOR_TABLE:
        args = table_example_inputs(model.species, device, weighted)
    else:
        args = tuple(layout.feeds(example_inputs(tuple(model.species)).to(device)).values())
        args += (torch.ones_like(args[0][:, 0]),) if weighted else ()
    return _trace(model, layout, args, weighted), args


def inputs_width(inputs: AtomicInputs) -> int:
    """The longest row of ``inputs``' pair list (the neighbor table's natural width)."""
    return int(torch.bincount(inputs.pair_index[0], minlength=inputs.num_atoms).max())


def table_example_inputs(species: tuple[int, ...], device: torch.device | str, weighted: bool = False) -> tuple[torch.Tensor, ...]:
    """The neighbor-table example inputs :func:`trace_joint_graph` traces with and returns;
    ``weighted``: one more input, per-atom energy weights [N] of one (see ``graph_function``)."""
    args = tuple(NEIGHBOR_TABLE.feeds(example_inputs(tuple(species)).to(device)).values())
    return args + (torch.ones_like(args[0][:, 0]),) if weighted else args


def graph_deviations_from_model(
    graph: torch.fx.GraphModule, model: nn.Module, device: torch.device | str, precision: str, weighted: bool = False
) -> dict[str, Deviation]:
    """How far the neighbor-table joint graph ``graph`` (of :func:`trace_joint_graph`; ``weighted``:
    the one with atom weights, given weights of one) is from ``model`` evaluated as written
    (eagerly, forces and virial by autograd; on the pair list for a model without
    ``atomic_energies``), on the tracing example on ``device``, under ``precision``'s tolerances."""
    inputs = example_inputs(tuple(model.species)).to(device)
    layout = NEIGHBOR_TABLE if has_pair_energy(model) else PAIR_LIST
    with frozen(model):
        outputs = graph_function(model, layout)(*layout.feeds(inputs).values())
        expected = {name: output.detach() for name, output in zip(OUTPUT_NAMES, outputs)}
    with torch.no_grad():
        actual = dict(zip(OUTPUT_NAMES, graph(*table_example_inputs(model.species, device, weighted))))
    return compare_with_tolerances(actual, expected, precision, inputs.structure_index)
