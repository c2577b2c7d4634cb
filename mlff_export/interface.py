"""The precomputed-neighbor interface every model, exporter and runtime backend obeys.

The full contract, with units and the two pair layouts, is written in ``docs/interface.md``;
this module holds it in code: the version string stored in every artifact, the tensor names,
:class:`AtomicInputs` (the inputs of one call, for any number of structures) and its checks.

Conventions (ASE units: Å, eV):

* pair ``e = (i, j)`` with ``i = pair_index[0, e]`` (the *center*) and ``j = pair_index[1, e]``
  (the *neighbor*) has the pair vector ``r_e = positions[j] - positions[i] + pair_shifts[e]``;
* the list is *full*: every pair ``(i, j, s)`` appears with its reverse ``(j, i, -s)``;
* pairs longer than the model's cutoff are allowed and contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

INTERFACE_VERSION = "1"

INPUT_NAMES = ("positions", "species", "pair_index", "pair_shifts", "structure_index", "cell")
OUTPUT_NAMES = ("energy", "forces", "virial")


class InterfaceError(ValueError):
    """Inputs that break the interface contract; the message names the tensor and the fix."""


@dataclass
class AtomicInputs:
    """Inputs of one model call, for ``B`` structures with ``N`` atoms and ``E`` pairs in all.

    Attributes:
        positions: [N, 3] float, Cartesian positions in Å.
        species: [N] int64, atomic numbers.
        pair_index: [2, E] int64, (center, neighbor) atom indices of each pair, full list.
        pair_shifts: [E, 3] float, Cartesian periodic shift of each pair in Å
            (``integer_shift @ cell``; zero for pairs inside one image).
        structure_index: [N] int64, structure of each atom, in ``0..B-1``, non-decreasing.
        cell: [B, 3, 3] float, lattice vectors as rows, Å; zeros for non-periodic structures.
        lattice_shifts: optional [E, 3] int64, the integer shifts behind ``pair_shifts``
            (``pair_shifts[e] = lattice_shifts[e] @ cell[b]``, ``b`` the structure of the pair's
            center), where the neighbor search gave them; not a model input (neighbor tables are
            built faster with them: :meth:`~mlff_export.pair_layouts.NeighborTable.from_pair_list`).
    """

    positions: torch.Tensor
    species: torch.Tensor
    pair_index: torch.Tensor
    pair_shifts: torch.Tensor
    structure_index: torch.Tensor
    cell: torch.Tensor
    lattice_shifts: torch.Tensor | None = None

    @property
    def num_atoms(self) -> int:
        return self.positions.shape[0]

    @property
    def num_pairs(self) -> int:
        return self.pair_index.shape[1]

    @property
    def num_structures(self) -> int:
        return self.cell.shape[0]

    def pair_lengths(self) -> torch.Tensor:
        """[E] the length of each pair's vector ``x_j - x_i + shift``, Å."""
        centers, neighbors = self.pair_index
        return torch.linalg.vector_norm(self.positions[neighbors] - self.positions[centers] + self.pair_shifts, dim=1)

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        """The tensors in :data:`INPUT_NAMES` order, the positional order of a model call."""
        return tuple(getattr(self, name) for name in INPUT_NAMES)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AtomicInputs:
        """A copy on ``device`` with floating tensors cast to ``dtype`` (integers stay int64)."""
        moved = {}
        for field in fields(self):
            tensor = getattr(self, field.name)
            cast = dtype if tensor is not None and tensor.is_floating_point() else None
            moved[field.name] = None if tensor is None else tensor.to(device=device, dtype=cast)
        return AtomicInputs(**moved)

    def check(self) -> None:
        """Raise :class:`InterfaceError` where shapes, dtypes or values break the contract."""
        n, e, b = self.num_atoms, self.num_pairs, self.num_structures
        expected = {
            "positions": (n, 3),
            "species": (n,),
            "pair_index": (2, e),
            "pair_shifts": (e, 3),
            "structure_index": (n,),
            "cell": (b, 3, 3),
        }
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape:
                raise InterfaceError(
                    f"Input tensor: {name} | received shape {tuple(tensor.shape)} | expected {shape}"
                )
        for name in ("species", "pair_index", "structure_index"):
            if getattr(self, name).dtype != torch.int64:
                raise InterfaceError(f"Input tensor: {name} | received {getattr(self, name).dtype} | expected int64")
        if n == 0:
            raise InterfaceError("Input tensor: positions | received shape (0, 3) | expected at least 1 atom")
        for name in ("positions", "pair_shifts", "cell"):
            tensor = getattr(self, name)
            if not tensor.is_floating_point():
                raise InterfaceError(f"Input tensor: {name} | received {tensor.dtype} | expected a float dtype")
            if not bool(torch.isfinite(tensor).all()):
                raise InterfaceError(f"Input tensor: {name} | contains NaN or inf | expected finite values")
        if e and (int(self.pair_index.min()) < 0 or int(self.pair_index.max()) >= n):
            raise InterfaceError(f"Input tensor: pair_index | indices outside 0..{n - 1}")
        if int(self.structure_index.min()) < 0 or int(self.structure_index.max()) >= b:
            raise InterfaceError(f"Input tensor: structure_index | values outside 0..{b - 1} (cell has B={b})")
        if bool((self.structure_index[1:] < self.structure_index[:-1]).any()):
            raise InterfaceError("Input tensor: structure_index | must be non-decreasing (atoms grouped by structure)")
        if self.lattice_shifts is not None:
            self._check_lattice_shifts()

    def _check_lattice_shifts(self) -> None:
        """Raise :class:`InterfaceError` unless ``lattice_shifts`` are int64 [E, 3] and give
        ``pair_shifts`` through the cell (to 1e-4 Å plus float rounding)."""
        lattice = self.lattice_shifts
        if tuple(lattice.shape) != (self.num_pairs, 3) or lattice.dtype != torch.int64:
            raise InterfaceError(
                f"Input tensor: lattice_shifts | received {lattice.dtype} {tuple(lattice.shape)} | "
                f"expected int64 {(self.num_pairs, 3)} or None"
            )
        cells = self.cell.double()[self.structure_index[self.pair_index[0]]]
        expected = torch.einsum("ec,ecx->ex", lattice.double(), cells)
        tolerance = 1e-4 + 1e-6 * expected.abs()
        wrong = (self.pair_shifts.double() - expected).abs() > tolerance
        if bool(wrong.any()):
            pair = int(torch.nonzero(wrong.any(dim=1))[0, 0])
            raise InterfaceError(
                f"Input tensor: lattice_shifts | pair {pair}: {lattice[pair].tolist()} @ cell = "
                f"{expected[pair].tolist()} Å, pair_shifts has {self.pair_shifts[pair].tolist()} | "
                "give the integer shifts the pair shifts were made from, or leave lattice_shifts out"
            )


def interface_declaration_problem(model) -> str | None:
    """What is wrong with ``model``'s declaration of ``cutoff`` (> 0, Å) and ``species`` (atomic
    numbers), as text naming the attribute; ``None`` if both are fine."""
    cutoff = getattr(model, "cutoff", None)
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not cutoff > 0:
        return f"attribute `cutoff` | received {cutoff!r} | expected a cutoff > 0 in Å (see docs/interface.md)"
    species = getattr(model, "species", None)
    if not species or not all(isinstance(z, int) and 1 <= z <= 118 for z in species):
        return f"attribute `species` | received {species!r} | expected atomic numbers (see docs/interface.md)"
    return None
