"""Experiment: each matrix product whose contraction is at most SMALL long (the radial basis -> filter
products of a pair tensor) written as an unrolled sum of broadcast products, so Inductor may fuse it
into its readers instead of keeping its [pairs, features] output. Not package code."""
import torch
aten = torch.ops.aten
SMALL = 32

def unroll_small_matmuls(gm):
    g = gm.graph
    count = 0
    for node in list(g.nodes):
        if node.op != "call_function" or node.target not in (aten.addmm.default, aten.mm.default):
            continue
        if node.target is aten.addmm.default:
            if node.kwargs: continue
            bias, a, b = node.args[:3]
        else:
            bias, (a, b) = None, node.args[:2]
        weight = b.args[0] if b.op == "call_function" and b.target is aten.t.default else b
        if weight.op != "get_attr":
            continue
        tensor = getattr(gm, weight.target)  # stored graphs carry no shape metadata: read the weight
        k = tensor.shape[1] if weight is not b else tensor.shape[0]
        if tensor.dim() != 2 or k > SMALL: continue
        with g.inserting_before(node):
            total = bias
            for i in range(k):
                col = g.call_function(aten.slice.Tensor, (a, 1, i, i + 1))
                row = g.call_function(aten.slice.Tensor, (b, 0, i, i + 1))
                term = g.call_function(aten.mul.Tensor, (col, row))
                total = term if total is None else g.call_function(aten.add.Tensor, (total, term))
        node.replace_all_uses_with(total)
        g.erase_node(node)
        count += 1
    g.lint(); gm.recompile()
    print("unrolled", count, flush=True)
    return gm
