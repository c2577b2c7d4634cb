"""FP16 for graphs of users' models: matrix products with the weights in float16, the rest float32.

The bundled PaiNN runs its whole body in its weights' dtype (:mod:`~.precision`); a user's model
makes no such promise, so halving its parameters would break it (float32 activations meet float16
weights). Instead this pass works on the traced joint graph: every matrix product
(``mm``/``addmm``/``bmm``) one of whose operands is computed from the weights alone (a constant of
the graph) casts both operands to float16 and its result back to float32. Geometry (pair vectors,
distances, the strain products), elementwise maths, sums and every other tensor stay float32, so
the energy sum, forces and virial accumulate in float32; in the backward pass the products with
the weights' transposes run in float16 too. Whether the result is close enough is not assumed:
the exporter compares it with eager float32 under the FP16 tolerances.
"""

from __future__ import annotations

import torch
from torch import fx

from mlff_export.export.errors import ExportError

aten = torch.ops.aten

_PRODUCTS = {aten.mm.default: (0, 1), aten.bmm.default: (0, 1), aten.addmm.default: (1, 2)}


def _constant_nodes(graph: fx.Graph) -> set[fx.Node]:
    """Nodes computed from graph constants (weights) alone: no input reaches them."""
    constant: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "get_attr" or (
            node.op == "call_function" and node.all_input_nodes and all(arg in constant for arg in node.all_input_nodes)
        ):
            constant.add(node)
    return constant


def _is_float32(node: fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype == torch.float32


def half_precision_products(graph_module: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """``graph_module`` with its weight products in float16 (a new module); and how many there are."""
    graph_module = fx.GraphModule(graph_module, graph_module.graph.__deepcopy__())
    graph = graph_module.graph
    constant = _constant_nodes(graph)
    converted = 0
    for node in list(graph.nodes):
        operands = _PRODUCTS.get(node.target) if node.op == "call_function" else None
        if operands is None:
            continue
        left, right = (node.args[position] for position in operands)
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            continue
        if (left in constant) == (right in constant) or not (_is_float32(left) and _is_float32(right)):
            continue  # two activations (geometry, strain) or two constants: float32
        with graph.inserting_before(node):
            halves = [graph.call_function(aten._to_copy.default, (operand,), {"dtype": torch.float16}) for operand in (left, right)]
            product_target = aten.bmm.default if node.target is aten.bmm.default else aten.mm.default
            product = graph.call_function(product_target, tuple(halves))
            result = graph.call_function(aten._to_copy.default, (product,), {"dtype": torch.float32})
            if node.target is aten.addmm.default:
                result = graph.call_function(aten.add.Tensor, (node.args[0], result))
        node.replace_all_uses_with(result)
        graph.erase_node(node)
        converted += 1
    graph.lint()
    graph_module.recompile()
    return graph_module, converted


def with_half_weight_products(graph_module: fx.GraphModule, model_name: str) -> fx.GraphModule:
    """:func:`half_precision_products` of ``graph_module`` (``model_name``'s joint graph); raises
    :class:`ExportError` when it has no weight product to run in float16 (FP16 would change nothing)."""
    graph_module, products = half_precision_products(graph_module)
    if products == 0:
        raise ExportError(f"fp16: {model_name}'s graph has no matrix product with its weights to run in float16; use precision 'fp32'")
    return graph_module
