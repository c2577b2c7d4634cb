"""Pair list to neighbor table: the scatter-free rewrite of a traced joint graph.

A model written the ordinary way sums pair values onto atoms with ``index_add``,
``scatter_add``, ``scatter_reduce(sum)`` or ``index_put(accumulate=True)`` over ``pair_index``,
and the backward pass of every gather ``x[pair_index[k]]`` is such a scatter too. In ONNX these
are ScatterND / ScatterElements with a reduction: TensorRT needs a plugin for them and ONNX
Runtime's CPU kernel races with several threads. :func:`rewrite_to_neighbor_table` takes the
traced joint (energy, forces, virial) graph on the pair-list inputs and returns the same function
on the neighbor-table inputs (docs/interface.md), every such scatter replaced by

* a row sum, for sums onto ``pair_index[0]`` (the centers);
* a gather through ``reverse_index`` and a row sum, for sums onto ``pair_index[1]`` (neighbors);
* a one-hot sum, for sums onto ``structure_index`` (and onto the structure of each pair).

Table slots become pairs: slot ``(i, k)`` is the pair ``(i, neighbor_index[i, k])`` with shift
``neighbor_shifts[i, k]``. A padding slot (mask 0) becomes the atom's own image
:data:`PADDING_DISTANCE_IN_CUTOFFS` cutoffs away: a pair beyond the cutoff, which the interface
requires to contribute exactly nothing, so every value the model computes on it is finite; and
every rewritten sum multiplies by the mask, so padding adds exact zeros.

What is proved before a scatter is replaced: its index is ``pair_index[0]``, ``pair_index[1]``,
``structure_index`` or ``structure_index`` of centers or neighbors, reached through views,
expands, unsqueezes and integer copies only; it runs along the axis the index varies along and
covers its source; and it reduces by sum (or mean). Anything else is left alone and the rewrite
is refused (:class:`RewriteRefused`, naming the node, the user's source line and the reason).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from mlff_export.export.functional import functionalized
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.interface import INPUT_NAMES
from mlff_export.pair_layouts import NeighborTable, sum_through_reverse

aten = torch.ops.aten

PADDING_DISTANCE_IN_CUTOFFS = 2.0
"""A padding slot is the atom's own image this many cutoffs away (beyond the cutoff: contributes nothing)."""


class RewriteRefused(ValueError):
    """A scatter the rewrite could not prove to be a sum over pairs or atoms; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# What replaces the pair-list inputs and the scatters (called from the rewritten graph).


def table_pair_index(neighbor_index: torch.Tensor) -> torch.Tensor:
    """``pair_index`` [2, N*K] of the table's slots: (row atom, neighbor atom)."""
    num_atoms, width = neighbor_index.shape
    centers = torch.arange(num_atoms, device=neighbor_index.device).unsqueeze(1).expand(num_atoms, width)
    return torch.stack([centers.reshape(-1), neighbor_index.reshape(-1)])


def table_pair_shifts(neighbor_shifts: torch.Tensor, neighbor_mask: torch.Tensor, padding_distance: float) -> torch.Tensor:
    """``pair_shifts`` [N*K, 3] in Å: the slots' shifts, padding slots moved ``padding_distance`` away."""
    # Built from the inputs alone (no host-made tensor): a CUDA graph capture allows no host copies.
    padding = (1.0 - neighbor_mask).to(neighbor_shifts.dtype).unsqueeze(2)
    moved_x = neighbor_shifts[..., :1] + padding * padding_distance
    return torch.cat([moved_x, neighbor_shifts[..., 1:]], dim=2).reshape(-1, 3)


def sum_onto(
    kind: str,
    source: torch.Tensor,
    dim: int,
    size: int,
    index: torch.Tensor,
    neighbor_index: torch.Tensor,
    neighbor_shifts: torch.Tensor,
    neighbor_mask: torch.Tensor,
    reverse_index: torch.Tensor,
) -> torch.Tensor:
    """``source`` summed along ``dim`` onto ``size`` rows, scatter-free, by what ``kind`` says.

    ``kind``: ``"centers"`` / ``"neighbors"`` (table slots [N*K] onto atoms [N]);
    ``"pair_structures"`` (slots onto structures by ``index``, the structure of each atom);
    ``"rows"`` (any 1-D ``index`` with values in ``0..size-1``, by a one-hot product: exactly
    ``index_add``, at a cost of ``size`` x ``len(index)``, so only used for small ``size``).
    """
    table = NeighborTable(neighbor_index, neighbor_shifts, neighbor_mask, reverse_index)
    moved = source.movedim(dim, 0)
    if kind in ("centers", "pair_structures"):
        moved = table.sum_to_centers(table.mask_pairs(moved))
    elif kind == "neighbors":  # the function itself: the rewritten graph is differentiated already
        moved = sum_through_reverse(moved, neighbor_index.shape[0], reverse_index.reshape(-1), neighbor_mask.reshape(-1))
    if kind in ("rows", "pair_structures"):
        moved = NeighborTable.sum_to_structures(moved, index, size)
    return moved.movedim(0, dim)


def add_along_rows(base: torch.Tensor, columns: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``base[i, columns[i]] += values[i]`` for every row ``i`` of a 2-D ``base``, scatter-free."""
    one_hot = columns.unsqueeze(1) == torch.arange(base.shape[1], device=base.device).unsqueeze(0)
    return base + one_hot.to(base.dtype) * values.unsqueeze(1)


def scatter_mean(summed: torch.Tensor, counts: torch.Tensor, base: torch.Tensor, include_self: bool) -> torch.Tensor:
    """``scatter_reduce(mean)`` from the sum and the count of each row (untouched rows keep ``base``)."""
    if include_self:
        return torch.where(counts > 0, (base + summed) / (counts + 1), base)
    return torch.where(counts > 0, summed / counts.clamp_min(1), base)


# ---------------------------------------------------------------------------------------------
# Index provenance: which tensors are (broadcast copies of) which index maps.


@dataclass(frozen=True)
class IndexMap:
    """An integer tensor whose values are an index map, constant along every axis but ``axis``.

    ``kind``: ``"pairs"`` (``pair_index`` itself, [2, E]); ``"centers"``, ``"neighbors"`` (its
    rows); ``"pair_structures"`` (``structure_index`` of the centers); ``"identity"``
    (``arange`` of a size); ``"rows"`` (any other 1-D integer tensor: ``vector``, such as
    ``structure_index``). ``vector`` is the 1-D node whose values it repeats (``"rows"``).
    """

    kind: str
    axis: int = 0
    vector: fx.Node | None = None


_SAME_VALUES = {
    aten.alias.default, aten.detach.default, aten.clone.default, aten.lift_fresh_copy.default,
    aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.contiguous.default,
}
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.squeeze.dim, aten.squeeze.dims}
_FUNCTIONAL_SCATTER = {
    aten.index_add.default: aten.index_add.default, aten.index_add_.default: aten.index_add.default,
    aten.scatter_add.default: aten.scatter_add.default, aten.scatter_add_.default: aten.scatter_add.default,
    aten.scatter_reduce.two: aten.scatter_reduce.two, aten.scatter_reduce_.two: aten.scatter_reduce.two,
    aten.index_put.default: aten.index_put.default, aten.index_put_.default: aten.index_put.default,
    aten._index_put_impl_.default: aten.index_put.default, aten.index_reduce.default: aten.index_reduce.default,
    aten.index_reduce_.default: aten.index_reduce.default,
}
_FRESH = {
    aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default, aten.empty.memory_format,
    aten.new_empty.default, aten.empty_like.default, aten.full.default, aten.new_full.default, aten.full_like.default,
}
_ZEROS = {aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default}
_INTEGERS = (torch.int64, torch.int32)


def _val(node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _same_size(a, b) -> bool:
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt) and a.node.expr == b.node.expr
    return a == b


def _only_axis(shape) -> int | None:
    """The one axis of ``shape`` that is not of size 1 (``None`` if there is not exactly one)."""
    axes = [axis for axis, size in enumerate(shape) if not (isinstance(size, int) and size == 1)]
    return axes[0] if len(axes) == 1 else None


def _propagate(node: fx.Node, tags: dict[fx.Node, IndexMap]) -> IndexMap | None:
    """The index map ``node`` computes from its inputs' maps (or a fresh ``"rows"`` map for a
    1-D integer tensor of unknown origin), if any. Index values may pass through floats (a
    broadcast written as ``ones * index``, then ``.long()``)."""
    out = _val(node)
    if node.op != "call_function" or not isinstance(out, torch.Tensor):
        return None
    derived = _derived(node, tags, out)
    if derived is None and out.dim() == 1 and out.dtype in _INTEGERS:
        if node.target in (aten.arange.default, aten.arange.start) and node.args[-1] is not None:
            return IndexMap("identity")
        return IndexMap("rows", 0, node)
    return derived


def _derived(node: fx.Node, tags: dict[fx.Node, IndexMap], out) -> IndexMap | None:
    source = node.args[0] if node.args else None
    tag = tags.get(source) if isinstance(source, fx.Node) else None
    if node.target in (aten.index.Tensor, aten.index_select.default):
        return _composed(node, tags)
    if node.target is aten.mul.Tensor:
        return _broadcast_by_ones(node, tags, out)
    if tag is None:
        return None
    into = _val(source)
    if tag.kind == "pairs":
        if node.target is aten.select.int and node.args[1] == 0 and node.args[2] in (0, 1, -2, -1):
            return IndexMap("centers" if node.args[2] in (0, -2) else "neighbors")
        return None
    if node.target in _SAME_VALUES:
        return tag
    if node.target is aten.unsqueeze.default:
        return IndexMap(tag.kind, tag.axis + (node.args[1] % out.dim() <= tag.axis), tag.vector)
    if node.target is aten.expand.default:
        shift = out.dim() - into.dim()
        kept = _same_size(out.shape[tag.axis + shift], into.shape[tag.axis])
        return IndexMap(tag.kind, tag.axis + shift, tag.vector) if kept else None
    if node.target in _RESHAPES:
        axis = _only_axis(out.shape)
        if _only_axis(into.shape) == tag.axis and axis is not None and _same_size(out.shape[axis], into.shape[tag.axis]):
            return IndexMap(tag.kind, axis, tag.vector)
        return None
    if node.target is aten.permute.default:
        return IndexMap(tag.kind, [d % out.dim() for d in node.args[1]].index(tag.axis), tag.vector)
    if node.target is aten.transpose.int:
        first, second = (d % out.dim() for d in node.args[1:3])
        swapped = {first: second, second: first}.get(tag.axis, tag.axis)
        return IndexMap(tag.kind, swapped, tag.vector)
    if node.target is aten.slice.Tensor:
        dim = node.args[1] if len(node.args) > 1 else 0
        start = node.args[2] if len(node.args) > 2 else 0
        step = node.args[4] if len(node.args) > 4 else 1
        whole = start in (0, None) and step == 1 and _same_size(out.shape[dim % out.dim()], into.shape[dim % into.dim()])
        return tag if whole else None
    return None


_ONES = {aten.ones_like.default, aten.ones.default, aten.new_ones.default}
_LAYOUT_ONLY = {aten.transpose.int, aten.permute.default, aten.view.default, aten.reshape.default, aten.expand.default,
                aten.clone.default, aten._to_copy.default, aten.unsqueeze.default}


def _is_ones(node) -> bool:
    """Whether ``node`` is a tensor of ones (created so, then only reshaped or copied)."""
    while isinstance(node, fx.Node) and node.target in _LAYOUT_ONLY:
        node = node.args[0]
    return isinstance(node, fx.Node) and node.target in _ONES


def _broadcast_by_ones(node: fx.Node, tags: dict[fx.Node, IndexMap], out) -> IndexMap | None:
    """``ones * index`` (right-aligned broadcasting): the index map, spread over ``out``'s shape."""
    first, second = node.args[:2]
    for index, ones in ((first, second), (second, first)):
        tag = tags.get(index) if isinstance(index, fx.Node) else None
        if tag is not None and tag.kind != "pairs" and _is_ones(ones):
            axis = tag.axis + out.dim() - _val(index).dim()
            return IndexMap(tag.kind, axis, tag.vector) if _same_size(out.shape[axis], _val(index).shape[tag.axis]) else None
    return None


def _composed(node: fx.Node, tags: dict[fx.Node, IndexMap]) -> IndexMap | None:
    """``structure_index[centers]`` (or of neighbors): the structure of each pair (the only
    placeholder tagged ``"rows"`` is ``structure_index``)."""
    source = tags.get(node.args[0])
    if node.target is aten.index.Tensor:
        index = node.args[1][0] if len(node.args[1]) == 1 else None
    else:
        index = node.args[2] if node.args[1] == 0 else None
    inner = tags.get(index) if isinstance(index, fx.Node) else None
    if (
        source is not None
        and source.kind == "rows"
        and source.vector.op == "placeholder"
        and inner is not None
        and inner.kind in ("centers", "neighbors")
    ):
        return IndexMap("pair_structures", 0, source.vector)
    return None


# ---------------------------------------------------------------------------------------------
# Reading each scatter, and what replaces it.


def _source_line(node: fx.Node) -> str:
    """Where in the user's code ``node`` comes from: its own stack trace, or for a backward
    scatter that of the forward gather through the same index."""
    from mlff_export.export.ordinary_code import _is_library_frame

    candidates = [node] + [user for arg in node.all_input_nodes for user in arg.users if user is not node]
    for candidate in candidates:
        lines = (candidate.meta.get("stack_trace") or "").strip().splitlines()
        for at in reversed(range(len(lines))):
            stripped = lines[at].strip()
            if stripped.startswith('File "') and not _is_library_frame(stripped.split('"')[1]):
                code = lines[at + 1].strip() if at + 1 < len(lines) else ""
                prefix = "" if candidate is node else "the gradient of the gather "
                return f"{prefix}{stripped.removeprefix('File ')}: `{code}`"
    return "(no source line: a backward-pass scatter)"


@dataclass
class _Scatter:
    """A scatter with a reduction, read as a sum of ``source`` along ``dim`` onto the rows of ``base``."""

    kind: str
    dim: int
    source: fx.Node
    base: fx.Node
    vector: fx.Node | None = None
    mean: bool = False
    include_self: bool = True
    scale: object = 1
    columns: fx.Node | None = None  # add_along_rows: base[i, columns[i]] += source[i]


def _index_put_arguments(node: fx.Node):
    indices, values = node.args[1], node.args[2]
    accumulate = node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False)
    return indices, values, accumulate


def _read_scatter(node: fx.Node, target, tags: dict[fx.Node, IndexMap], sizes: dict[str, object]) -> _Scatter | str:
    """The scatter ``node`` (its functional ``target``) as a sum over an index map, or the reason not."""
    base = node.args[0]
    if target is aten.index_put.default:
        indices, values, _ = _index_put_arguments(node)
        tagged = [tags.get(index) if isinstance(index, fx.Node) else None for index in indices]
        if len(indices) == 2 and tagged[0] == IndexMap("identity") and _val(base).dim() == 2 and _val(values).dim() == 1:
            if _same_size(_val(indices[0]).shape[0], _val(base).shape[0]):
                return _Scatter("along_rows", 1, values, base, columns=indices[1])
        real = [position for position, index in enumerate(indices) if index is not None]
        if len(real) != 1 or real[0] != len(indices) - 1:
            return "it indexes several axes at once"
        return _checked(_Scatter("", real[0], values, base), tagged[real[0]], _val(indices[real[0]]).dim() == 1, sizes)
    if target is aten.index_add.default:
        dim, index, source = node.args[1:4]
        alpha = node.kwargs.get("alpha", node.args[4] if len(node.args) > 4 else 1)
        scatter = _Scatter("", dim % _val(source).dim(), source, base, scale=alpha)
        return _checked(scatter, tags.get(index), _val(index).dim() == 1, sizes)
    if target in (aten.scatter_add.default, aten.scatter_reduce.two):
        dim, index, source = node.args[1:4]
        reduce = node.args[4] if target is aten.scatter_reduce.two else "sum"
        include_self = node.kwargs.get("include_self", node.args[5] if len(node.args) > 5 else True)
        if reduce not in ("sum", "mean"):
            return f"it reduces by {reduce!r}: only sums (and means) over pairs or atoms are rewritten"
        index_value, source_value = _val(index), _val(source)
        dim = dim % source_value.dim()
        tag = tags.get(index)
        if index_value.dim() != source_value.dim() or not all(_same_size(a, b) for a, b in zip(index_value.shape, source_value.shape)):
            return "its index covers only part of the source (index and source shapes differ)"
        scatter = _Scatter("", dim, source, base, mean=reduce == "mean", include_self=include_self)
        return _checked(scatter, tag, tag is not None and tag.axis == dim, sizes)
    return f"{target} is not rewritten (only index_add, scatter_add, scatter_reduce and index_put sums are)"


def _checked(scatter: _Scatter, tag: IndexMap | None, aligned: bool, sizes: dict[str, object]) -> _Scatter | str:
    """``scatter`` with its kind filled in from the index map ``tag``, or why it cannot be rewritten."""
    if tag is None or not aligned or tag.kind in ("pairs", "identity"):
        return "its index does not vary along the scatter axis alone (not a broadcast 1-D index)"
    rows = _val(scatter.base).shape[scatter.dim]
    if tag.kind in ("centers", "neighbors") and not _same_size(rows, sizes["atoms"]):
        return f"it sums pairs onto {rows} rows, not onto the atoms"
    if tag.kind == "rows" and _grows_with_atoms(rows, sizes):
        return (
            "it sums onto atoms (or pairs) by an index that is not pair_index[0] or pair_index[1]: only sums over "
            "the pair list's own indices become table sums (a one-hot sum would be quadratic)"
        )
    scatter.kind, scatter.vector = tag.kind, tag.vector
    return scatter


def _grows_with_atoms(rows, sizes: dict[str, object]) -> bool:
    """Whether a row count depends on the number of atoms or pairs (a one-hot sum onto it would
    cost atoms x pairs)."""
    if not isinstance(rows, torch.SymInt):
        return False
    grows = set()
    for name in ("atoms", "pairs"):
        if isinstance(sizes[name], torch.SymInt):
            grows |= sizes[name].node.expr.free_symbols
    return bool(rows.node.expr.free_symbols & grows)


def _emit(graph: fx.Graph, scatter: _Scatter, env: dict, table_nodes: tuple) -> fx.Node:
    """Nodes computing the scatter's result without a scatter; returns the result node."""
    base = env[scatter.base]
    source = env[scatter.source]
    if scatter.kind == "along_rows":
        return graph.call_function(add_along_rows, (base, env[scatter.columns], source))
    size = graph.call_function(aten.sym_size.int, (base, scatter.dim))
    vector = env[scatter.vector] if scatter.vector is not None else None

    def summed(values: fx.Node) -> fx.Node:
        return graph.call_function(sum_onto, (scatter.kind, values, scatter.dim, size, vector, *table_nodes))

    if scatter.mean or not scatter.include_self:
        counts = summed(graph.call_function(aten.ones_like.default, (source,)))
    if scatter.mean:
        return graph.call_function(scatter_mean, (summed(source), counts, base, scatter.include_self))
    total = summed(source)
    if not scatter.include_self:
        return graph.call_function(torch.where, (graph.call_function(aten.gt.Scalar, (counts, 0)), total, base))
    if scatter.scale != 1:
        total = graph.call_function(aten.mul.Tensor, (total, scatter.scale))
    if scatter.base.target in _ZEROS:
        return total
    return graph.call_function(aten.add.Tensor, (base, total))


def is_scatter_with_reduction(node: fx.Node) -> bool:
    """Whether ``node`` becomes an ONNX scatter with a reduction (ScatterND/ScatterElements add)."""
    if node.op != "call_function" or node.target not in _FUNCTIONAL_SCATTER:
        return False
    if _FUNCTIONAL_SCATTER[node.target] is aten.index_put.default:
        return bool(_index_put_arguments(node)[2])
    return True


def _in_place_is_safe(node: fx.Node, order: dict[fx.Node, int]) -> bool:
    """An in-place scatter reads as its functional twin when it writes into a fresh tensor that
    nothing reads afterwards (later readers use the op's own result in a make_fx graph)."""
    base = node.args[0]
    fresh = isinstance(base, fx.Node) and base.target in _FRESH
    return fresh and all(order[user] < order[node] for user in base.users if user is not node)


def _without_unsafe_mutations(pair_graph: fx.GraphModule, example_args: tuple) -> fx.GraphModule:
    """``pair_graph``, re-traced through functionalization if an in-place scatter could alias
    (which loses the recorded source lines, so only then)."""
    order = {node: position for position, node in enumerate(pair_graph.graph.nodes)}
    in_place = [node for node in pair_graph.graph.nodes if is_scatter_with_reduction(node) and node.target is not _FUNCTIONAL_SCATTER[node.target]]
    if all(_in_place_is_safe(node, order) for node in in_place):
        return pair_graph
    return functionalized(pair_graph, example_args)


def rewrite_to_neighbor_table(pair_graph: fx.GraphModule, example_args: tuple, cutoff: float) -> fx.GraphModule:
    """The joint graph ``pair_graph`` (inputs :data:`~mlff_export.interface.INPUT_NAMES`, outputs
    energy [B], forces [N, 3], virial [B, 3, 3]) as a graph of the neighbor-table inputs
    (``NEIGHBOR_TABLE.input_names``) with no scatter with a reduction.

    ``example_args`` are the pair-list inputs it was traced with; ``cutoff`` (Å) sets where
    padding slots are put. Raises :class:`RewriteRefused` naming each scatter it cannot prove.
    """
    pair_graph = _without_unsafe_mutations(pair_graph, example_args)
    graph = fx.Graph()
    table = {name: graph.placeholder(name) for name in NEIGHBOR_TABLE.input_names}
    table_nodes = tuple(table[name] for name in ("neighbor_index", "neighbor_shifts", "neighbor_mask", "reverse_index"))
    padding_distance = PADDING_DISTANCE_IN_CUTOFFS * float(cutoff)
    placeholders = dict(zip(INPUT_NAMES, (node for node in pair_graph.graph.nodes if node.op == "placeholder")))
    env: dict[fx.Node, fx.Node] = {
        placeholders["pair_index"]: graph.call_function(table_pair_index, (table["neighbor_index"],)),
        placeholders["pair_shifts"]: graph.call_function(
            table_pair_shifts, (table["neighbor_shifts"], table["neighbor_mask"], padding_distance)
        ),
    }
    env.update({node: table[name] for name, node in placeholders.items() if node not in env})
    tags = {placeholders["pair_index"]: IndexMap("pairs"), placeholders["structure_index"]: IndexMap("rows", 0, placeholders["structure_index"])}
    sizes = {"atoms": _val(placeholders["positions"]).shape[0], "pairs": _val(placeholders["pair_index"]).shape[1]}
    refusals = []
    for node in pair_graph.graph.nodes:
        if node.op == "placeholder":
            continue
        if is_scatter_with_reduction(node):
            scatter = _read_scatter(node, _FUNCTIONAL_SCATTER[node.target], tags, sizes)
            if isinstance(scatter, _Scatter):
                env[node] = _emit(graph, scatter, env, table_nodes)
                continue
            refusals.append(f"{node.target} {_source_line(node)}: {scatter}")
        env[node] = graph.node_copy(node, lambda arg: env[arg])
        tag = _propagate(node, tags)
        if tag is not None:
            tags[node] = tag
    if refusals:
        raise RewriteRefused("; ".join(refusals))
    graph.eliminate_dead_code()
    return fx.GraphModule(pair_graph, graph)
