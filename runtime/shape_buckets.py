"""Shape buckets: pad a call's neighbor-table inputs to fixed sizes inside an engine profile.

A TensorRT engine accepts any sizes inside its profiles, but a captured CUDA graph fixes them.
Padding each call up to a *bucket* (powers of two, finer above 64, finest for the table width; clamped to the profile's range) lets one graph
per (profile, bucket) serve every call that fits it. Nothing here needs TensorRT or CUDA.

Padding contributes exactly nothing to the real outputs (docs/interface.md, neighbor table):

* padded neighbor slots (K grows) have mask 0, shift 0, the row's own atom as neighbor and their
  own slot as reverse, like the table's own padding;
* padded atoms (N grows) have no neighbors at all, a species the model knows (so their energy is
  finite) and belong to one extra structure ``B_real`` whose outputs are dropped; this is why a
  bucket with padded atoms needs one structure more than the call has;
* padded structures (B grows) have a zero cell and, beyond ``B_real``, no atoms.

Feeds are dicts of graph input name -> tensor (``export.graph_layouts.NEIGHBOR_TABLE`` names):
positions [N, 3], species [N], neighbor_index / neighbor_mask / reverse_index [N, K],
neighbor_shifts [N, K, 3], structure_index [N], cell [B, 3, 3].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlff_export.export.engine_profiles import ShapeProfile, SizeRange


class ShapeOutOfRangeError(ValueError):
    """A call larger than every profile of an engine; the message names the limits."""


@dataclass(frozen=True)
class ShapeBucket:
    """Padded sizes of one call and the engine profile that holds them."""

    profile_index: int
    atoms: int
    neighbors: int
    structures: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.atoms, self.neighbors, self.structures


def table_sizes(feeds: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(N atoms, K table width, B structures) of neighbor-table feeds."""
    num_atoms, max_neighbors = feeds["neighbor_index"].shape
    return num_atoms, max_neighbors, feeds["cell"].shape[0]


FINE_BUCKETS_FROM = 64  # above this, buckets are finer than powers of two
ATOM_STEPS_PER_DOUBLING = 4
"""Atoms (and structures) above :data:`FINE_BUCKETS_FROM`: 64, 80, 96, 112, 128, 160, ... Padding
wastes at most 25 %, and a workload of many sizes compiles or captures few buckets."""
NEIGHBOR_STEPS_PER_DOUBLING = 8
"""Table widths above :data:`FINE_BUCKETS_FROM`: 64, 72, 80, 88, ... Padding wastes at most 12.5 %
of every row, and a workload's widest row varies little: water within 5 Å has rows of 54 pairs on
average and 65 at most in 98,304 atoms, so 72 slots instead of 80 (10 % fewer slots; on the H200 the
FP16 body's call 115 -> 108 ms, 39.0 -> 35.2 GiB: ``bench/results/2026-12-01-h200-table-build``)."""


def bucket_size(size: int, size_range: SizeRange, steps_per_doubling: int = ATOM_STEPS_PER_DOUBLING) -> int:
    """The bucket for ``size``, clamped into ``size_range`` (``size`` must fit it).

    Powers of two up to :data:`FINE_BUCKETS_FROM`, then ``steps_per_doubling`` equal steps per
    doubling (4: 64, 80, 96, 112, 128, 160, ...): few buckets for small calls, little wasted work
    for large ones.
    """
    size = max(size, 1)
    power = 1 << (size - 1).bit_length()
    if power > FINE_BUCKETS_FROM:
        step = power // (2 * steps_per_doubling)
        power = -(-size // step) * step
    return min(max(power, size_range.minimum), size_range.maximum)


def _bucket_in_profile(index: int, profile: ShapeProfile, atoms: int, neighbors: int, structures: int):
    if atoms > profile.atoms.maximum or neighbors > profile.neighbors.maximum:
        return None
    if structures > profile.structures.maximum:
        return None
    padded_atoms = bucket_size(atoms, profile.atoms)
    if padded_atoms > atoms and structures + 1 > profile.structures.maximum:
        if atoms < profile.atoms.minimum:
            return None  # would need padding atoms, and there is no structure left to hold them
        padded_atoms = atoms
    needed_structures = structures + (padded_atoms > atoms)
    return ShapeBucket(
        profile_index=index,
        atoms=padded_atoms,
        neighbors=bucket_size(neighbors, profile.neighbors, NEIGHBOR_STEPS_PER_DOUBLING),
        structures=bucket_size(needed_structures, profile.structures),
    )


def choose_bucket(atoms: int, neighbors: int, structures: int, profiles: list[ShapeProfile]) -> ShapeBucket:
    """The bucket for a call of ``atoms`` N, table width ``neighbors`` K and ``structures`` B.

    Among the profiles that hold the call, the one whose bucket has the fewest pair slots
    (N * K) wins, then the fewest structures, then the earlier profile. Raises
    :class:`ShapeOutOfRangeError` naming every profile's limits when none holds it.
    """
    neighbors = max(neighbors, 1)
    candidates = [
        bucket
        for index, profile in enumerate(profiles)
        if (bucket := _bucket_in_profile(index, profile, atoms, neighbors, structures)) is not None
    ]
    if not candidates:
        limits = "; ".join(
            f"'{p.name}': atoms {p.atoms.minimum}..{p.atoms.maximum}, neighbors per atom <= {p.neighbors.maximum}, "
            f"structures <= {p.structures.maximum} (one more than the call's when atoms are padded)"
            for p in profiles
        )
        raise ShapeOutOfRangeError(
            f"call with {atoms} atoms, {neighbors} neighbors per atom (largest row), {structures} structures "
            f"fits no profile of this engine ({limits}); split the call or rebuild the engine with a larger "
            "profile (mlff-export build-engine --atoms MIN:OPT:MAX --pairs MIN:OPT:MAX --structures MIN:OPT:MAX)"
        )
    return min(candidates, key=lambda b: (b.atoms * b.neighbors, b.structures, b.profile_index))


def pad_table_feeds(feeds: dict[str, torch.Tensor], bucket: ShapeBucket, padding_species: int) -> dict[str, torch.Tensor]:
    """Neighbor-table feeds padded to ``bucket`` (N, K, B); ``padding_species`` is a species the model knows.

    Real atoms keep their rows (first N_real), real structures their indices (first B_real);
    reverse indices are renumbered for the new width ``K``. A table already built with the
    bucket's rows and width (``NeighborTable.from_pair_list(num_rows=...)``) is kept as it is.
    """
    num_atoms, num_structures = feeds["positions"].shape[0], feeds["cell"].shape[0]
    table_rows, width = feeds["neighbor_index"].shape
    padded_atoms, padded_width, padded_structures = bucket.shape
    if padded_atoms < table_rows or padded_width < width or padded_structures < num_structures:
        raise ValueError(f"bucket {bucket.shape} is smaller than the feeds {(table_rows, width, num_structures)}")
    if padded_atoms > num_atoms and padded_structures == num_structures:
        raise ValueError(f"bucket {bucket.shape} pads atoms but has no spare structure to hold them")
    device = feeds["neighbor_index"].device
    table = {name: feeds[name] for name in TABLE_NAMES}
    if (table_rows, width) != (padded_atoms, padded_width):
        table = _padded_table(table, padded_atoms, padded_width)

    positions = feeds["positions"].new_zeros((padded_atoms, 3))
    positions[:num_atoms] = feeds["positions"]
    species = torch.full((padded_atoms,), int(padding_species), dtype=feeds["species"].dtype, device=device)
    species[:num_atoms] = feeds["species"]
    structure_index = torch.full((padded_atoms,), num_structures, dtype=feeds["structure_index"].dtype, device=device)
    structure_index[:num_atoms] = feeds["structure_index"]
    cell = feeds["cell"].new_zeros((padded_structures, 3, 3))
    cell[:num_structures] = feeds["cell"]
    padded = {"positions": positions, "species": species, **table, "structure_index": structure_index, "cell": cell}
    return {name: padded[name] for name in feeds}


TABLE_NAMES = ("neighbor_index", "neighbor_shifts", "neighbor_mask", "reverse_index")
"""The feeds of the table itself ([N, K] and [N, K, 3]); the others are per atom or per structure."""


def _padded_table(table: dict[str, torch.Tensor], padded_atoms: int, padded_width: int) -> dict[str, torch.Tensor]:
    """The :data:`TABLE_NAMES` tensors of ``table`` grown to ``padded_atoms`` rows of
    ``padded_width`` slots: new slots are padding (own row, own slot, mask 0, shift 0)."""
    index = table["neighbor_index"]
    num_rows, width = index.shape
    rows = torch.arange(padded_atoms, device=index.device)
    columns = torch.arange(padded_width, device=index.device)
    own_slots = rows.unsqueeze(1) * padded_width + columns.unsqueeze(0)  # [N', K'] flat slot of (i, k)
    neighbor_index = rows.unsqueeze(1).expand(padded_atoms, padded_width).clone()
    neighbor_index[:num_rows, :width] = index
    old_reverse = table["reverse_index"]
    reverse_index = own_slots.clone()
    reverse_index[:num_rows, :width] = (old_reverse // width) * padded_width + old_reverse % width
    neighbor_mask = table["neighbor_mask"].new_zeros((padded_atoms, padded_width))
    neighbor_mask[:num_rows, :width] = table["neighbor_mask"]
    neighbor_shifts = table["neighbor_shifts"].new_zeros((padded_atoms, padded_width, 3))
    neighbor_shifts[:num_rows, :width] = table["neighbor_shifts"]
    return {"neighbor_index": neighbor_index, "neighbor_shifts": neighbor_shifts, "neighbor_mask": neighbor_mask, "reverse_index": reverse_index}


def strip_padding(outputs: dict[str, torch.Tensor], num_atoms: int, num_structures: int) -> dict[str, torch.Tensor]:
    """Outputs of a padded call cut back to the real atoms and structures (views, not copies)."""
    return {
        "energy": outputs["energy"][:num_structures],
        "forces": outputs["forces"][:num_atoms],
        "virial": outputs["virial"][:num_structures],
    }
