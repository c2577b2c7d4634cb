"""Experiment: each matrix product whose contraction is at most SMALL long (the radial basis -> filter
products of a pair tensor) written as an unrolled sum of broadcast products, so Inductor may fuse it
into its readers instead of keeping its [pairs, features] output. Not package code.

The H200 run of section 2 used a first version that read the contraction length from the nodes'
shape metadata, which a stored traced graph lacks (it unrolled nothing there); this version reads
the weight's shape: the CPU runs of section 2 (this file reformatted since, same logic)."""
import functools

import torch

aten = torch.ops.aten
SMALL = 32


def unroll_small_matmuls(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph_module`` with each ``mm``/``addmm`` by a weight of contraction <= SMALL unrolled (in place)."""
    graph = graph_module.graph
    unrolled = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.addmm.default, aten.mm.default) or node.kwargs:
            continue
        bias, left, right = node.args[:3] if node.target is aten.addmm.default else (None, *node.args[:2])
        transposed = right.op == "call_function" and right.target is aten.t.default
        weight = right.args[0] if transposed else right
        if weight.op != "get_attr":
            continue
        tensor = functools.reduce(getattr, weight.target.split("."), graph_module)
        contraction = tensor.shape[1] if transposed else tensor.shape[0]
        if tensor.dim() != 2 or contraction > SMALL:
            continue
        with graph.inserting_before(node):
            total = bias
            for index in range(contraction):
                column = graph.call_function(aten.slice.Tensor, (left, 1, index, index + 1))
                row = graph.call_function(aten.slice.Tensor, (right, 0, index, index + 1))
                term = graph.call_function(aten.mul.Tensor, (column, row))
                total = term if total is None else graph.call_function(aten.add.Tensor, (total, term))
        node.replace_all_uses_with(total)
        graph.erase_node(node)
        unrolled += 1
    graph.lint()
    graph_module.recompile()
    print("unrolled", unrolled, flush=True)
    return graph_module
