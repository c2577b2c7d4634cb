"""The experiment's pass as it ran (not part of the package; see ../README.md). Run 1 used
SMALL_CONTRACTION = 64, run 3 SMALL_CONTRACTION = 0. CompiledBackend applied ``rematerialized`` to
its traced graph (and the domain path's weighted graph) before compiling, when
``CompiledBackend.recomputes_pair_tensors`` was set (the toggle scripts set it)."""

from __future__ import annotations

import operator

import sympy
import torch
from torch import fx

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE

aten = torch.ops.aten

SMALL_CONTRACTION = 64  # 0 in run 3: no matrix product recomputed

_VIEWS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.squeeze.default, aten.expand.default, aten.permute.default, aten.t.default, aten.transpose.int,
    aten.slice.Tensor, aten.select.int, aten.split.Tensor, aten.split_with_sizes.default, aten.alias.default,
    aten.clone.default, aten.cat.default, aten.constant_pad_nd.default, operator.getitem,
}
_GATHERS = {aten.index.Tensor, aten.gather.default, aten.index_select.default, aten.embedding.default}
_SMALL_REDUCTIONS = {aten.sum.dim_IntList, aten.amax.default, aten.amin.default, aten.mean.dim}
_PRODUCTS = {aten.mm.default: (0, 1), aten.addmm.default: (1, 2)}
_SIZE_QUERIES = {aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int, aten.sym_storage_offset.default}


def table_width_symbol(graph: fx.Graph) -> sympy.Symbol | None:
    placeholders = [node for node in graph.nodes if node.op == "placeholder"]
    position = NEIGHBOR_TABLE.input_names.index("neighbor_index")
    if len(placeholders) <= position:
        return None
    value = placeholders[position].meta.get("val")
    width = value.shape[1] if isinstance(value, torch.Tensor) and value.dim() == 2 else None
    expression = width.node.expr if isinstance(width, torch.SymInt) else None
    return expression if isinstance(expression, sympy.Symbol) else None


def _values(node: fx.Node) -> list[torch.Tensor]:
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, torch.Tensor)]
    return []


def _is_pair_tensor(node: fx.Node, width: sympy.Symbol) -> bool:
    for value in _values(node):
        for size in value.shape:
            if isinstance(size, torch.SymInt) and width in size.node.expr.free_symbols:
                return True
    return False


def _is_recomputable(node: fx.Node, width: sympy.Symbol) -> bool:
    if node.op != "call_function":
        return False
    target = node.target
    if target in _VIEWS or target in _GATHERS:
        return True
    if target in _SMALL_REDUCTIONS:
        return _is_pair_tensor(node, width)
    if target in _PRODUCTS:
        left = _values(node.args[_PRODUCTS[target][0]])
        contraction = left[0].shape[1] if left else None
        return isinstance(contraction, int) and contraction <= SMALL_CONTRACTION
    tags = getattr(target, "tags", ())
    return torch.Tag.pointwise in tags and torch.Tag.nondeterministic_seeded not in tags


def _forward_nodes(graph: fx.Graph) -> set[fx.Node]:
    output = next(node for node in reversed(graph.nodes) if node.op == "output")
    forward: set[fx.Node] = set()
    stack = [output.args[0][0]]
    while stack:
        node = stack.pop()
        if node not in forward:
            forward.add(node)
            stack.extend(node.all_input_nodes)
    return forward


def _reads_data(user: fx.Node) -> bool:
    return not (user.op == "call_function" and user.target in _SIZE_QUERIES)


def saved_pair_tensors(graph: fx.Graph) -> list[fx.Node]:
    width = table_width_symbol(graph)
    if width is None:
        return []
    forward = _forward_nodes(graph)
    return [
        node for node in graph.nodes
        if node in forward and node.op == "call_function" and _is_pair_tensor(node, width)
        and any(user not in forward and _reads_data(user) for user in node.users)
    ]


class _Recomputation:
    def __init__(self, graph: fx.Graph, width: sympy.Symbol):
        self.graph = graph
        self.width = width
        self.kept = set(saved_pair_tensors(graph))
        self.shared: dict[fx.Node, fx.Node] = {}

    def recomputes(self, node: fx.Node) -> bool:
        return _is_pair_tensor(node, self.width) and _is_recomputable(node, self.width) and self._sources_kept(node, set())

    def _sources_kept(self, node: fx.Node, seen: set[fx.Node]) -> bool:
        for source in node.all_input_nodes:
            if source in seen or source.op in ("placeholder", "get_attr") or not _is_pair_tensor(source, self.width):
                continue
            seen.add(source)
            if _is_recomputable(source, self.width):
                if not self._sources_kept(source, seen):
                    return False
            elif source not in self.kept:
                return False
        return True

    def copy(self, node: fx.Node, before: fx.Node, copies: dict[fx.Node, fx.Node]) -> fx.Node:
        if node.op != "call_function" or not _is_pair_tensor(node, self.width) or not _is_recomputable(node, self.width):
            return node
        if node in copies:
            return copies[node]
        if node in self.shared:
            return self.shared[node]
        args = fx.map_arg(node.args, lambda source: self.copy(source, before, copies))
        kwargs = fx.map_arg(node.kwargs, lambda source: self.copy(source, before, copies))
        with self.graph.inserting_before(before):
            duplicate = self.graph.call_function(node.target, args, kwargs)
        duplicate.meta = dict(node.meta)
        (self.shared if node.target in _PRODUCTS else copies)[node] = duplicate
        return duplicate


def rematerialized(graph_module: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    graph_module = fx.GraphModule(graph_module, graph_module.graph.__deepcopy__())
    graph = graph_module.graph
    width = table_width_symbol(graph)
    if width is None:
        return graph_module, 0
    recomputation = _Recomputation(graph, width)
    forward = _forward_nodes(graph)
    recomputed = {node for node in recomputation.kept if recomputation.recomputes(node)}
    for reader in [node for node in graph.nodes if node not in forward and _reads_data(node)]:
        copies: dict[fx.Node, fx.Node] = {}
        for source in reader.all_input_nodes:
            if source in recomputed:
                reader.replace_input_with(source, recomputation.copy(source, reader, copies))
    graph.eliminate_dead_code()
    graph.lint()
    graph_module.recompile()
    return graph_module, len(recomputed)
