"""Graphs without in-place operations: what the ONNX exporter's decomposition step requires."""

from __future__ import annotations

import torch
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx


def mutating_nodes(graph_module: fx.GraphModule) -> list[fx.Node]:
    """The nodes of ``graph_module`` that write into one of their inputs (``copy_``, ``index_add_``, ...)."""
    return [
        node
        for node in graph_module.graph.nodes
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable
    ]


def functionalized(graph_module: fx.GraphModule, example_args: tuple) -> fx.GraphModule:
    """``graph_module`` re-traced (symbolic sizes) with every in-place operation made out-of-place,
    or ``graph_module`` itself when it has none. Re-tracing loses the recorded source lines."""
    if not mutating_nodes(graph_module):
        return graph_module
    functional = torch.func.functionalize(graph_module, remove="mutations")
    return make_fx(functional, tracing_mode="symbolic", _allow_non_fake_inputs=True, record_stack_traces=True)(*example_args)
