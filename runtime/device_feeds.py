"""Padded neighbor-table feeds for one structure, built where the graph runs.

The runtime's graphs take the padded neighbor table (``export.graph_layouts.NEIGHBOR_TABLE``,
padded to a shape bucket: :mod:`mlff_export.runtime.shape_buckets`). Three ways to get there:

* :func:`table_feeds`: from interface inputs (a pair list, e.g. a batch from the CPU neighbor
  list). Small calls build the table on the CPU (a few small ops beat kernel launches) and copy
  it over; from :data:`PAIRS_BUILT_ON_DEVICE` pairs on, or when the inputs already live on the
  device, sorting and padding run on the device.
* :class:`DeviceFeeds`, small molecules (non-periodic, at most :data:`DENSE_MAX_ATOMS` atoms):
  every other atom of the padded bucket is a neighbor. No neighbor search at all: an interface
  model's pair terms vanish beyond its cutoff (value and gradient, docs/interface.md), so pairs
  beyond it add exact zeros. The index tensors depend only on the atom count and are built once;
  a call moves the positions only (one copy from a pinned host buffer into the graph's input).
* :class:`DeviceFeeds`, everything else on a CUDA device: vesin-torch searches neighbors on the
  GPU and the table is built there; positions are the only host data that moves. With a Verlet
  ``skin`` (the calculator's) the search reaches ``cutoff + skin`` and its table is reused, only the
  positions moving, until an atom has moved more than ``skin / 2`` (:meth:`DeviceFeeds.reused`):
  the pairs that came within the cutoff meanwhile are in it, and those beyond add exact zeros.

:func:`closest_distance` is the structure sanity check of this path, on the device: the shortest
pair of the table, read back with the outputs (no extra wait for the GPU).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from ase import Atoms

from mlff_export.export.engine_profiles import profile_from_ranges
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.interface import AtomicInputs
from mlff_export.neighbors import KeptSearch
from mlff_export.runtime.shape_buckets import bucket_size, choose_bucket, pad_table_feeds, table_sizes

PAIRS_BUILT_ON_DEVICE = 20_000  # from this many pairs on, build the neighbor table on the device
DENSE_MAX_ATOMS = 64  # molecules up to this size take every atom as a neighbor (<= 4032 pair slots)

# Buckets only bound the number of compiled or captured shapes: one wide profile. Its minimums
# put every small molecule (<= 16 atoms, <= 16 neighbors) into one bucket.
UNBOUNDED = profile_from_ranges("16:64:16777216", "16:32:65536", "2:2:1048576", name="joint-graph")


def has_vesin_torch() -> bool:
    """Whether vesin-torch (GPU neighbor lists) is installed."""
    return importlib.util.find_spec("vesin_torch") is not None


def table_feeds(inputs: AtomicInputs, device: torch.device, padding_species: int) -> dict[str, torch.Tensor]:
    """Neighbor-table feeds of ``inputs`` padded to their bucket in :data:`UNBOUNDED`, on ``device``."""
    built_there = inputs.positions.device == device or inputs.num_pairs >= PAIRS_BUILT_ON_DEVICE
    inputs = inputs.to(device if built_there else torch.device("cpu"), torch.float32)
    bucket = choose_bucket(inputs.num_atoms, largest_row(inputs), inputs.num_structures, [UNBOUNDED])
    feeds = NEIGHBOR_TABLE.feeds(inputs, width=bucket.neighbors, rows=bucket.atoms)  # the table at the bucket's shape
    return on_device(pad_table_feeds(feeds, bucket, padding_species), device)


def largest_row(inputs: AtomicInputs) -> int:
    """The most pairs any atom of ``inputs`` is the center of (0 without pairs): the table's width."""
    return int(torch.bincount(inputs.pair_index[0]).max()) if inputs.num_pairs else 0


def on_device(feeds: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``feeds`` with every tensor on ``device`` (:class:`DeviceFeeds` keeps positions on the host)."""
    return {name: tensor.to(device, non_blocking=True) for name, tensor in feeds.items()}


def closest_distance(feeds: dict[str, torch.Tensor]) -> torch.Tensor:
    """Smallest distance (Å) between two atoms, or an atom and its own periodic image, over the
    real slots of neighbor-table feeds: a [1] float32 tensor on their device (inf without pairs).
    Torch ops only, nothing waits for the device; the caller compares it with the minimum
    distance once the outputs are back (:mod:`mlff_export.structure_sanity`)."""
    positions = feeds["positions"]
    vectors = positions[feeds["neighbor_index"]] - positions.unsqueeze(1) + feeds["neighbor_shifts"]
    distances = torch.linalg.vector_norm(vectors, dim=-1)  # few kernels: it runs in every captured call
    return distances.masked_fill(feeds["neighbor_mask"] <= 0, torch.inf).amin().reshape(1)


def closest_pair_distance(inputs: AtomicInputs) -> torch.Tensor:
    """:func:`closest_distance` of a pair list: the shortest pair (Å), a [1] float32 tensor on the
    inputs' device (inf without pairs)."""
    if inputs.num_pairs == 0:
        return torch.full((1,), torch.inf, device=inputs.positions.device)
    return inputs.pair_lengths().amin().reshape(1).float()


class CapturedClosestDistance:
    """:func:`closest_distance` of fixed feed buffers captured as one CUDA graph: a single launch
    per call, for backends whose own graph cannot hold it (ONNX Runtime's CUDA graphs)."""

    def __init__(self, buffers: dict[str, torch.Tensor]):
        closest_distance(buffers)  # warm-up outside the capture
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = closest_distance(buffers)

    def __call__(self) -> torch.Tensor:
        self.graph.replay()
        return self.output


def dense_molecule_table(num_atoms: int, bucket_atoms: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Every-atom neighbor table of a molecule of ``num_atoms`` padded to ``bucket_atoms`` rows.

    Slot ``(i, k)`` holds atom ``j = (i + 1 + k) mod N`` (``K = N - 1``: every other row), whose
    reverse slot is ``(j, N - 2 - k)``. Slots touching a padding atom are masked. Real atoms are
    structure 0, padding atoms structure 1 (outputs dropped); both cells are zero.
    """
    if not 1 <= num_atoms <= bucket_atoms or bucket_atoms < 2:
        raise ValueError(f"need 1 <= num_atoms <= bucket_atoms and bucket_atoms >= 2; got {num_atoms}, {bucket_atoms}")
    width = bucket_atoms - 1
    rows = torch.arange(bucket_atoms, device=device).unsqueeze(1)
    columns = torch.arange(width, device=device).unsqueeze(0)
    neighbor_index = (rows + 1 + columns) % bucket_atoms
    real = torch.arange(bucket_atoms, device=device) < num_atoms
    return {
        "neighbor_index": neighbor_index,
        "neighbor_shifts": torch.zeros((bucket_atoms, width, 3), device=device),
        "neighbor_mask": (real.unsqueeze(1) & real[neighbor_index]).float(),
        "reverse_index": neighbor_index * width + (width - 1 - columns),
        "structure_index": (~real).long(),
        "cell": torch.zeros((2, 3, 3), device=device),
    }


def dense_batch_table(sizes: tuple[int, ...], padding_species: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Every-atom neighbor table of molecules of ``sizes`` atoms, one after the other, padded to
    their bucket in :data:`UNBOUNDED` (positions and species left out: they change every call).

    Atom ``i`` (local index ``l`` in a molecule of ``n`` atoms starting at row ``s``) holds in slot
    ``k < n - 1`` the atom ``s + (l + 1 + k) mod n``, whose reverse slot is ``n - 2 - k``; its
    other slots are padding (mask 0, its own row, its own slot). Structure ``m`` is molecule ``m``.
    """
    if not sizes or min(sizes) < 1:
        raise ValueError(f"need at least one molecule of at least one atom; got sizes {sizes}")
    counts = torch.tensor(sizes, device=device)
    molecule = torch.repeat_interleave(torch.arange(len(sizes), device=device), counts)
    start = (torch.cumsum(counts, 0) - counts)[molecule]
    size = counts[molecule].unsqueeze(1)
    rows = torch.arange(molecule.numel(), device=device).unsqueeze(1)
    width = max(max(sizes) - 1, 1)
    slots = torch.arange(width, device=device).unsqueeze(0)
    real = slots < size - 1
    neighbor_index = torch.where(real, start.unsqueeze(1) + (rows - start.unsqueeze(1) + 1 + slots) % size, rows)
    table = {
        "positions": torch.zeros((rows.numel(), 3), device=device),
        "species": torch.full((rows.numel(),), int(padding_species), device=device),
        "neighbor_index": neighbor_index,
        "neighbor_shifts": torch.zeros((rows.numel(), width, 3), device=device),
        "neighbor_mask": real.float(),
        "reverse_index": torch.where(real, neighbor_index * width + size - 2 - slots, rows * width + slots),
        "structure_index": molecule,
        "cell": torch.zeros((len(sizes), 3, 3), device=device),
    }
    padded = pad_table_feeds(table, choose_bucket(*table_sizes(table), [UNBOUNDED]), padding_species)
    return {name: padded[name] for name in NEIGHBOR_TABLE.input_names if name not in ("positions", "species")}


class DeviceFeeds:
    """Padded neighbor-table feeds of one ASE structure, built on a CUDA ``device``.

    ``__call__(atoms)`` returns the feeds (``NEIGHBOR_TABLE`` names), or ``None`` for a structure
    this object cannot build (periodic or larger than :data:`DENSE_MAX_ATOMS` without
    vesin-torch): the caller then uses the CPU neighbor list. Returned feeds stay valid until the
    next call. A small molecule's positions stay on the host, in a reused pinned buffer (the
    backend's captured graph copies them into its own input: one copy; :func:`on_device` for
    anything else); cached tensors are never modified,
    so a consumer may skip copying a tensor it has already seen.
    """

    def __init__(self, cutoff: float, padding_species: int, device: torch.device, skin: float = 0.0):
        """``skin``: Verlet skin in Å (0: search every call); the calculator sets its own."""
        self.cutoff = float(cutoff)
        self.padding_species = int(padding_species)
        self.device = device
        self.searches = 0  # how many times :meth:`search` ran (a skin's reused tables need none)
        self._kept = KeptSearch(skin)  # the last search's table, kept with a skin only
        self._tables: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        self._molecule_feeds: dict[tuple[int, bytes], dict[str, torch.Tensor]] = {}
        self._staging: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # per bucket: the buffer and its values
        self._batch_table: tuple[tuple[int, ...], dict[str, torch.Tensor]] | None = None
        self._searches: dict[float, object] | None = {} if has_vesin_torch() else None  # radius -> vesin-torch NeighborList

    @property
    def skin(self) -> float:
        """Verlet skin in Å. Setting it forgets the kept table (searched with the last skin)."""
        return self._kept.skin

    @skin.setter
    def skin(self, skin: float) -> None:
        self._kept.skin = skin

    def __call__(self, atoms: Atoms) -> dict[str, torch.Tensor] | None:
        if self.takes_dense(atoms):
            return self.dense(atoms)
        inputs = self.search(atoms)
        return None if inputs is None else table_feeds(inputs, self.device, self.padding_species)

    @staticmethod
    def takes_dense(atoms: Atoms) -> bool:
        """Whether ``atoms`` gets the every-atom table (a small molecule) rather than a search."""
        return not atoms.pbc.any() and len(atoms) <= DENSE_MAX_ATOMS

    def batch(self, structures: list[Atoms]) -> dict[str, torch.Tensor] | None:
        """Feeds of many molecules in one table (:func:`dense_batch_table`), or ``None`` unless
        every structure is non-periodic with at most :data:`DENSE_MAX_ATOMS` atoms. Same validity
        as ``__call__``'s feeds."""
        if not all(self.takes_dense(atoms) for atoms in structures):
            return None
        sizes = tuple(len(atoms) for atoms in structures)
        if self._batch_table is None or self._batch_table[0] != sizes:  # the last batch's table: repeated batches reuse it
            self._batch_table = (sizes, dense_batch_table(sizes, self.padding_species, self.device))
        table = self._batch_table[1]
        bucket_atoms = table["neighbor_index"].shape[0]
        numbers = np.full(bucket_atoms, self.padding_species, dtype=np.int64)
        numbers[: sum(sizes)] = np.concatenate([atoms.numbers for atoms in structures])
        species = torch.from_numpy(numbers).to(self.device, non_blocking=True)
        positions = self._staged_positions(np.concatenate([atoms.positions for atoms in structures]), bucket_atoms)
        feeds = {"positions": positions, "species": species, **table}
        return {name: feeds[name] for name in NEIGHBOR_TABLE.input_names}

    def _staged_positions(self, positions: np.ndarray, bucket_atoms: int) -> torch.Tensor:
        """``positions`` [n, 3] padded with zero rows to ``bucket_atoms``, float32 on the host: a
        reused pinned buffer on CUDA (the consumer copies it straight into its own device buffer),
        a new tensor on the CPU."""
        staged = self._staging.get(bucket_atoms)
        if staged is None:
            staging = torch.zeros((bucket_atoms, 3), pin_memory=self.device.type == "cuda")
            staged = self._staging[bucket_atoms] = (staging, staging.numpy())
        staging, values = staged
        values[: len(positions)] = positions
        values[len(positions) :] = 0.0
        return staging if self.device.type == "cuda" else staging.clone()

    def dense(self, atoms: Atoms) -> dict[str, torch.Tensor]:
        """The every-atom feeds of a molecule that :meth:`takes_dense`: on CUDA the same dict for
        the same elements (its positions are the bucket's staging buffer, rewritten in place), a
        new dict on the CPU."""
        num_atoms = len(atoms)
        bucket_atoms = bucket_size(num_atoms, UNBOUNDED.atoms)
        positions = self._staged_positions(atoms.positions, bucket_atoms)
        key = (bucket_atoms, atoms.numbers.tobytes())
        feeds = self._molecule_feeds.get(key)
        if feeds is None:
            table = self._tables.get((num_atoms, bucket_atoms))
            if table is None:
                table = self._tables[num_atoms, bucket_atoms] = dense_molecule_table(num_atoms, bucket_atoms, self.device)
            padded = np.full(bucket_atoms, self.padding_species, dtype=np.int64)
            padded[:num_atoms] = atoms.numbers
            built = {"positions": positions, "species": torch.from_numpy(padded).to(self.device), **table}
            feeds = self._molecule_feeds[key] = {name: built[name] for name in NEIGHBOR_TABLE.input_names}
        return feeds if feeds["positions"] is positions else {**feeds, "positions": positions}

    def search(self, atoms: Atoms) -> AtomicInputs | None:
        """``atoms`` as interface inputs (float32) with their pair list within ``cutoff + skin``,
        searched on the device by vesin-torch; ``None`` without vesin-torch."""
        if self._searches is None:
            return None
        radius = self.cutoff + self.skin
        if radius not in self._searches:
            from vesin_torch import NeighborList

            self._searches[radius] = NeighborList(cutoff=radius, full_list=True)
        periodic = atoms.pbc.tolist()
        cell = atoms.cell.array if any(periodic) else np.zeros((3, 3))
        positions = torch.from_numpy(atoms.positions).to(self.device)
        box = torch.from_numpy(np.ascontiguousarray(cell)).to(self.device)
        self.searches += 1
        pairs, shifts = self._searches[radius].compute(positions, box, torch.tensor(periodic, device=self.device), quantities="PS")
        return AtomicInputs(
            positions=positions.float(),
            species=torch.from_numpy(atoms.numbers.astype(np.int64)).to(self.device),
            pair_index=pairs.T.long(),
            pair_shifts=(shifts.to(box.dtype) @ box).float(),
            structure_index=torch.zeros(len(atoms), dtype=torch.int64, device=self.device),
            cell=box.float().unsqueeze(0),
            lattice_shifts=shifts.long(),
        )

    def keep(self, atoms: Atoms, feeds: dict[str, torch.Tensor]) -> None:
        """Keep the table ``feeds`` of ``atoms``, built from :meth:`search`, for :meth:`reused`
        (with a skin; without one nothing is kept)."""
        if self.skin > 0:
            self._kept.keep(atoms, feeds)

    def reused(self, atoms: Atoms) -> dict[str, torch.Tensor] | None:
        """The kept table with ``atoms``' positions (staged as for a small molecule: the same tensors
        as before but the positions), while the kept structure's search still holds every pair of
        ``atoms`` within the cutoff (:class:`~mlff_export.neighbors.KeptSearch`); else ``None``."""
        feeds = self._kept.get(atoms)
        if feeds is None:
            return None
        return {**feeds, "positions": self._staged_positions(atoms.positions, feeds["positions"].shape[0])}
