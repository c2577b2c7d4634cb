"""The joint forward+backward graph: energy, forces and virial as one FX graph of aten ops.

Both the ONNX exporter and the torch.compile backend start here: tracing
``torch.autograd.grad`` with ``make_fx`` leaves a graph with no autograd in it, which exports
(dynamo ONNX) and compiles (Inductor, CUDA graphs) without graph breaks.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE, GraphLayout, example_inputs, graph_function
from mlff_export.export.joint_graph_ops import TRACE_DECOMPOSITIONS


def trace_joint_graph(
    model: nn.Module, layout: GraphLayout = NEIGHBOR_TABLE, device: torch.device | str = "cpu", weighted: bool = False
) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    """Trace ``model``'s energy/forces/virial function on ``layout`` with symbolic sizes.

    ``model`` must already be on ``device``. Returns the graph module (inputs in
    ``layout.input_names`` order, outputs energy [B], forces [N, 3], virial [B, 3, 3]) and the
    example inputs it was traced with (on ``device``; every dynamic size >= 2 and distinct).
    """
    example = layout.feeds(example_inputs(tuple(model.species)).to(device))
    args = tuple(example.values())
    if weighted:  # one more input: per-atom energy weights [N] (see graph_function)
        args += (torch.ones_like(example["positions"][:, 0]),)
    # The weights are real tensors closed over by the function: allowing them (they become graph
    # constants, hence initializers) is what _allow_non_fake_inputs does.
    traced = make_fx(
        graph_function(model, layout, weighted),
        tracing_mode="symbolic",
        decomposition_table=TRACE_DECOMPOSITIONS,
        _allow_non_fake_inputs=True,
    )(*args)
    return traced.eval(), args
