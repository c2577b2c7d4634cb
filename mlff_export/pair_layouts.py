"""The two pair layouts of the interface and the aggregation primitive written for each.

A model never indexes pairs itself: it asks its layout to move values between atoms and pairs.

* :class:`PairList` (COO): pairs are ``pair_index[:, e]``; sums onto atoms are ``index_add``
  (ScatterND with a reduction in ONNX). What users and vesin produce.
* :class:`NeighborTable` (padded, ``[N, K]``): pair slot ``(i, k)`` holds the ``k``-th neighbor of
  atom ``i``, with a mask for padding and the flat slot of the reverse pair. Sums onto centers are
  row sums and sums onto neighbors are gathers through the reverse index, so neither the forward
  pass nor its gradient contains a scatter (what TensorRT wants).

Both expose the same per-pair tensors, flat over ``E`` pair slots (``E = N * K`` for the table):
``centers [E]``, ``neighbors [E]``, ``shifts [E, 3]``, and the same operations:

* ``gather_centers(x)`` / ``gather_neighbors(x)``: ``[N, ...] -> [E, ...]``;
* ``sum_to_centers(m)`` / ``sum_to_neighbors(m)``: ``[E, ...] -> [N, ...]``;
* ``mask_pairs(m)``: zero the padding slots (identity for a pair list);
* ``sum_to_structures(x, structure_index, num_structures)``: ``[N, ...] -> [B, ...]``, accumulated
  in float64 and returned in ``x``'s dtype (see :data:`STRUCTURE_SUM_DTYPE`).

Per-pair values a model sums onto atoms must be zero on padding slots (``mask_pairs`` does it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlff_export.interface import InterfaceError


STRUCTURE_SUM_DTYPE = torch.float64
"""Structure sums (energies, virials) accumulate in float64: 10,125 float32 per-atom energies of
water summed in float32 land up to 1 eV from the float64 total (one float32 rounding of the
result, 0.03 eV at -4.6e5 eV, is all that is left). Exported graphs keep these float64 sums for
ONNX Runtime (double ReduceSum on CPU and CUDA); TensorRT has no float64 and builds its engines from
a float32 copy (:mod:`mlff_export.export.float32_for_tensorrt`)."""


def _broadcast_rows(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``weights [E]`` viewed as ``[E, 1, ..., 1]`` to multiply ``like [E, ...]``."""
    return weights.reshape((-1,) + (1,) * (like.dim() - 1)).to(like.dtype)


@dataclass
class PairList:
    """COO pair layout: ``pair_index [2, E]`` (center, neighbor) and ``pair_shifts [E, 3]``."""

    pair_index: torch.Tensor
    pair_shifts: torch.Tensor
    num_atoms: int

    @property
    def centers(self) -> torch.Tensor:
        return self.pair_index[0]

    @property
    def neighbors(self) -> torch.Tensor:
        return self.pair_index[1]

    @property
    def shifts(self) -> torch.Tensor:
        return self.pair_shifts

    def gather_centers(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.centers]

    def gather_neighbors(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.neighbors]

    def sum_to_centers(self, m: torch.Tensor) -> torch.Tensor:
        return m.new_zeros((self.num_atoms,) + m.shape[1:]).index_add(0, self.centers, m)

    def sum_to_neighbors(self, m: torch.Tensor) -> torch.Tensor:
        return m.new_zeros((self.num_atoms,) + m.shape[1:]).index_add(0, self.neighbors, m)

    def mask_pairs(self, m: torch.Tensor) -> torch.Tensor:
        return m

    @staticmethod
    def sum_to_structures(x: torch.Tensor, structure_index: torch.Tensor, num_structures: int) -> torch.Tensor:
        wide = x.to(STRUCTURE_SUM_DTYPE)
        return wide.new_zeros((num_structures,) + x.shape[1:]).index_add(0, structure_index, wide).to(x.dtype)


# Both functions take the table as (neighbor_index [N, K], flat reverse [N*K], flat mask [N*K]).


def gather_neighbors_masked(x: torch.Tensor, neighbor_index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``out[e] = x[neighbors[e]] * mask[e]`` for the flat slots ``e`` of a table (no autograd of its own)."""
    out = x[neighbor_index.reshape(-1)]
    return out * _broadcast_rows(mask, out)


def sum_through_reverse(m: torch.Tensor, num_atoms: int, reverse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``out[j] = sum_k mask[j, k] * m[reverse[j, k]]``: the sum over the pairs whose neighbor is ``j``
    (no autograd of its own). Exact because the list is full: the pairs pointing at ``j`` are the
    reverses of ``j``'s own."""
    gathered = m[reverse]
    gathered = gathered * _broadcast_rows(mask, gathered)
    return gathered.reshape((num_atoms, -1) + m.shape[1:]).sum(1)


class _GatherNeighbors(torch.autograd.Function):
    """:func:`gather_neighbors_masked`; its gradient is :class:`_SumToNeighbors` (no scatter)."""

    @staticmethod
    def forward(ctx, x, neighbor_index, reverse, mask):
        ctx.save_for_backward(neighbor_index, reverse, mask)
        return gather_neighbors_masked(x, neighbor_index, mask)

    @staticmethod
    def backward(ctx, grad_out):
        neighbor_index, reverse, mask = ctx.saved_tensors
        return _SumToNeighbors.apply(grad_out, neighbor_index, reverse, mask), None, None, None


class _SumToNeighbors(torch.autograd.Function):
    """:func:`sum_through_reverse`; its gradient is :class:`_GatherNeighbors`, so any order of
    derivative stays scatter-free."""

    @staticmethod
    def forward(ctx, m, neighbor_index, reverse, mask):
        ctx.save_for_backward(neighbor_index, reverse, mask)
        return sum_through_reverse(m, neighbor_index.shape[0], reverse, mask)

    @staticmethod
    def backward(ctx, grad_out):
        neighbor_index, reverse, mask = ctx.saved_tensors
        return _GatherNeighbors.apply(grad_out, neighbor_index, reverse, mask), None, None, None


@dataclass
class NeighborTable:
    """Padded per-atom neighbor table (all ``[N, K]``).

    Attributes:
        neighbor_index: [N, K] int64, neighbor atom of each slot (the row's own atom on padding).
        neighbor_shifts: [N, K, 3] float, Cartesian periodic shift of each slot in Å (0 on padding).
        neighbor_mask: [N, K] float, 1 for a real pair, 0 for padding.
        reverse_index: [N, K] int64, flat slot ``j * K + k'`` of the reverse pair (own slot on padding).
    """

    neighbor_index: torch.Tensor
    neighbor_shifts: torch.Tensor
    neighbor_mask: torch.Tensor
    reverse_index: torch.Tensor

    @property
    def num_atoms(self) -> int:
        return self.neighbor_index.shape[0]

    @property
    def max_neighbors(self) -> int:
        return self.neighbor_index.shape[1]

    @property
    def centers(self) -> torch.Tensor:
        n, k = self.neighbor_index.shape
        rows = torch.arange(n, device=self.neighbor_index.device)
        return rows.unsqueeze(1).expand(n, k).reshape(-1)

    @property
    def neighbors(self) -> torch.Tensor:
        return self.neighbor_index.reshape(-1)

    @property
    def shifts(self) -> torch.Tensor:
        return self.neighbor_shifts.reshape(-1, 3)

    def _function_args(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.neighbor_index, self.reverse_index.reshape(-1), self.neighbor_mask.reshape(-1)

    def gather_centers(self, x: torch.Tensor) -> torch.Tensor:
        n, k = self.neighbor_index.shape
        return x.unsqueeze(1).expand((n, k) + x.shape[1:]).reshape((n * k,) + x.shape[1:])

    def gather_neighbors(self, x: torch.Tensor) -> torch.Tensor:
        return _GatherNeighbors.apply(x, *self._function_args())

    def sum_to_centers(self, m: torch.Tensor) -> torch.Tensor:
        n, k = self.neighbor_index.shape
        return m.reshape((n, k) + m.shape[1:]).sum(1)

    def sum_to_neighbors(self, m: torch.Tensor) -> torch.Tensor:
        return _SumToNeighbors.apply(m, *self._function_args())

    def mask_pairs(self, m: torch.Tensor) -> torch.Tensor:
        return m * _broadcast_rows(self.neighbor_mask.reshape(-1), m)

    @staticmethod
    def sum_to_structures(x: torch.Tensor, structure_index: torch.Tensor, num_structures: int) -> torch.Tensor:
        # One-hot multiply and reduce (no scatter, no matmul: TF32 or FusedMatMul would cost digits).
        structures = torch.arange(num_structures, device=x.device)
        one_hot = (structure_index.unsqueeze(0) == structures.unsqueeze(1)).to(STRUCTURE_SUM_DTYPE)
        flat = x.reshape(x.shape[0], -1).to(STRUCTURE_SUM_DTYPE)
        summed = (one_hot.unsqueeze(2) * flat.unsqueeze(0)).sum(1)
        return summed.reshape((num_structures,) + x.shape[1:]).to(x.dtype)

    @classmethod
    def from_pair_list(
        cls,
        pair_index: torch.Tensor,
        pair_shifts: torch.Tensor,
        num_atoms: int,
        max_neighbors: int | None = None,
        lattice_shifts: torch.Tensor | None = None,
        num_rows: int | None = None,
    ) -> NeighborTable:
        """Convert a full pair list to a table with ``K = max_neighbors`` (default: the largest row).

        ``lattice_shifts`` [E, 3] int, where the neighbor search gave them: the pairs' integer cell
        shifts (``pair_shifts = lattice_shifts @ cell``); reverse pairs are then matched on them,
        which skips ranking the float shifts (a sort of every shift value and a wait for the device).
        ``num_rows`` (default ``num_atoms``): rows of the table; those from ``num_atoms`` on are
        atoms without pairs, all padding (a shape bucket's rows, built here instead of added after).

        Raises :class:`InterfaceError` if some pair has no reverse (the list is not full) or a row
        has more than ``max_neighbors`` pairs.
        """
        rows = num_atoms if num_rows is None else num_rows
        if rows < num_atoms:
            raise ValueError(f"num_rows={rows} is fewer than the {num_atoms} atoms")
        counts = torch.bincount(pair_index[0], minlength=rows)
        largest_row, reach = _largest_row_and_reach(counts, lattice_shifts)
        k = largest_row if max_neighbors is None else max_neighbors
        if largest_row > k:
            raise InterfaceError(
                f"neighbor table: atom {int(counts.argmax())} has {largest_row} pairs | "
                f"max_neighbors={k} | use a larger max_neighbors (shape bucket)"
            )
        k = max(k, 1)
        centers, neighbors = pair_index[0], pair_index[1]
        order = torch.argsort(centers, stable=True)
        sorted_centers = centers[order]
        row_start = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(order)
        slot[order] = sorted_centers * k + torch.arange(centers.shape[0], device=centers.device) - row_start[sorted_centers]

        reverse_pair = _reverse_pairs(pair_index, pair_shifts, num_atoms, lattice_shifts, reach)
        flat_slots = torch.arange(rows * k, device=centers.device)
        neighbor_index = flat_slots // k
        neighbor_index[slot] = neighbors
        reverse_index = flat_slots.clone()
        reverse_index[slot] = slot[reverse_pair]
        neighbor_shifts = pair_shifts.new_zeros((rows * k, 3))
        neighbor_shifts[slot] = pair_shifts
        neighbor_mask = pair_shifts.new_zeros(rows * k)
        neighbor_mask[slot] = 1.0
        return cls(
            neighbor_index=neighbor_index.reshape(rows, k),
            neighbor_shifts=neighbor_shifts.reshape(rows, k, 3),
            neighbor_mask=neighbor_mask.reshape(rows, k),
            reverse_index=reverse_index.reshape(rows, k),
        )


def _largest_row_and_reach(counts: torch.Tensor, lattice_shifts: torch.Tensor | None) -> tuple[int, int]:
    """The most pairs of one center and the largest lattice shift component (0 without them),
    read from the device together: one wait instead of two."""
    if lattice_shifts is None or lattice_shifts.shape[0] == 0:
        return int(counts.max()) if counts.numel() else 0, 0
    largest_row, reach = torch.stack([counts.max(), lattice_shifts.abs().max().to(counts.dtype)]).tolist()
    return largest_row, reach


def _lexicographic_order(keys: torch.Tensor) -> torch.Tensor:
    """Row order that sorts ``keys [E, C]`` lexicographically (stable sorts, last column first)."""
    order = torch.arange(keys.shape[0], device=keys.device)
    for column in reversed(range(keys.shape[1])):
        order = order[torch.argsort(keys[order, column], stable=True)]
    return order


def _shift_codes(pair_shifts: torch.Tensor, lattice_shifts: torch.Tensor | None, reach: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Codes of every pair's shift ``s`` and of ``-s`` ([E, 3] non-negative integers, equal exactly
    where the shift components are) and their radix.

    Integer lattice shifts are their own codes, offset by ``reach`` (their largest magnitude).
    Cartesian shifts (to 1e-4 Å) are replaced by their rank among the values that occur, as ``s`` or
    ``-s``, in any component: one sort. Either way the set of values is symmetric, so the code of
    ``-s`` is ``radix - 1`` minus the code of ``s``.
    """
    if lattice_shifts is not None:
        codes, radix = lattice_shifts.to(torch.int64) + reach, 2 * reach + 1
    else:
        shift_key = torch.round(pair_shifts.double() * 1e4).to(torch.int64)
        values, ranks = torch.unique(torch.cat([shift_key, -shift_key]), return_inverse=True)
        codes, radix = ranks[: shift_key.shape[0]], values.numel()
    return codes, (radix - 1) - codes, max(radix, 1)


def _pair_keys(
    pair_index: torch.Tensor, codes: torch.Tensor, reverse_codes: torch.Tensor, num_atoms: int, radix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer keys of ``(i, j, s)`` and of ``(j, i, -s)`` for every pair, one row each: five
    columns (two atoms, three shift codes of ``radix``: :func:`_shift_codes`), combined into one
    int64 (mixed radix: one sort instead of five) where they fit."""
    if num_atoms**2 * radix**3 >= 2**62:
        return torch.cat([pair_index.T, codes], dim=1), torch.cat([pair_index.flip(0).T, reverse_codes], dim=1)
    centers, neighbors = pair_index[0], pair_index[1]
    key, reverse_key = torch.add(neighbors, centers, alpha=num_atoms), torch.add(centers, neighbors, alpha=num_atoms)
    for component in range(3):  # key * radix + code, one kernel each
        key = torch.add(codes[:, component], key, alpha=radix)
        reverse_key = torch.add(reverse_codes[:, component], reverse_key, alpha=radix)
    return key.unsqueeze(1), reverse_key.unsqueeze(1)


def _reverse_pairs(
    pair_index: torch.Tensor,
    pair_shifts: torch.Tensor,
    num_atoms: int,
    lattice_shifts: torch.Tensor | None = None,
    reach: int | None = None,
) -> torch.Tensor:
    """For each pair ``(i, j, s)`` the index of ``(j, i, -s)``; shifts are matched exactly on
    ``lattice_shifts`` where given, else on ``pair_shifts`` to 1e-4 Å. Atoms are ``0..num_atoms-1``;
    ``reach``: the lattice shifts' largest component, where the caller has read it already.
    Raises :class:`InterfaceError` naming a pair without one.

    The keys ``(i, j, s)`` and the reverse keys ``(j, i, -s)`` of a full list are the same set:
    sorting both lines every pair up with its reverse (exact, O(E log E), no hashing).
    """
    if pair_index.shape[1] == 0:
        return pair_index.new_zeros(0)
    if reach is None:
        reach = int(lattice_shifts.abs().max()) if lattice_shifts is not None else 0
    codes, reverse_codes, radix = _shift_codes(pair_shifts, lattice_shifts, reach)
    keys, reverse_keys, key_order, reverse_order = _sorted_keys(pair_index, codes, reverse_codes, num_atoms, radix)
    if bool((keys[key_order] != reverse_keys[reverse_order]).any()):
        _raise_missing_reverse(pair_index, codes, reverse_codes, num_atoms, radix)
    reverse = torch.empty_like(key_order)
    reverse[reverse_order] = key_order
    return reverse


def _sorted_keys(pair_index: torch.Tensor, codes: torch.Tensor, reverse_codes: torch.Tensor, num_atoms: int, radix: int):
    """The keys and reverse keys of :func:`_pair_keys` and the orders that sort each."""
    keys, reverse_keys = _pair_keys(pair_index, codes, reverse_codes, num_atoms, radix)
    return keys, reverse_keys, _lexicographic_order(keys), _lexicographic_order(reverse_keys)


def _raise_missing_reverse(pair_index: torch.Tensor, codes: torch.Tensor, reverse_codes: torch.Tensor, num_atoms: int, radix: int):
    """Raise the :class:`InterfaceError` of a list whose keys and reverse keys differ, naming the
    pair without a reverse that comes first in the sorted keys."""
    keys, reverse_keys, key_order, reverse_order = _sorted_keys(pair_index, codes, reverse_codes, num_atoms, radix)
    differs = keys[key_order] != reverse_keys[reverse_order]
    # At the first mismatch the smaller row has no partner: a key nobody reverses to, or a
    # reverse key that is nobody's key. Either way that row's pair has no reverse.
    row = int(torch.nonzero(differs.any(dim=1))[0, 0])
    column = int(torch.nonzero(differs[row])[0, 0])
    key_is_smaller = bool(keys[key_order[row], column] < reverse_keys[reverse_order[row], column])
    missing = int(key_order[row] if key_is_smaller else reverse_order[row])
    i, j = (int(v) for v in pair_index[:, missing])
    raise InterfaceError(
        f"pair_index: pair {missing} ({i} -> {j}) has no reverse pair ({j} -> {i}, opposite shift) | "
        "the interface needs a full neighbor list (both directions)"
    )
