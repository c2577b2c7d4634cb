"""Memory-bounded evaluation of one large structure: spatial domains with a message-passing halo.

A message-passing model with ``L`` interaction blocks gives atom ``i`` an energy that depends only on
atoms at most ``L`` pair-hops away. So the energy of a *core* set of atoms is exact on the sub-graph
of its ``L``-hop neighborhood (all pairs between those atoms, periodic shifts kept), and

* total energy = sum over domains of their core energies,
* forces and virial = sums over domains of the gradients of those core energies (linear in E),

which :func:`evaluate_in_domains` computes domain by domain, never holding more than ``max_pairs``
pairs' activations at once. Cores are the cells of a grid over the fractional coordinates (slabs
while the halo is wide against the structure, columns and near-cubes as it grows: 1M atoms need
cubes); the halo comes from the pair graph itself, so periodic images and cells of any shape need
no special case. A domain leaves out the pairs between two atoms of its outermost hop (``L`` hops
from the core, both ends): such a pair only carries messages onto atoms ``L`` hops out, which reach
the core after ``L`` more blocks, one too many (about a tenth of a slab's pairs in water).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from mlff_export.interface import AtomicInputs
from mlff_export.memory import InsufficientMemoryError, MemoryBudget, is_out_of_memory, release_cached_gpu_memory

logger = logging.getLogger("mlff_export")

MIN_DOMAIN_PAIRS = 10_000  # below this, a device that still runs out of memory is not the structure's fault


@dataclass
class Domain:
    """One domain: its atoms (indices into the whole structure), its sub-structure inputs and which
    of its atoms are core (1.0) or halo (0.0)."""

    atom_ids: torch.Tensor
    inputs: AtomicInputs
    core_weights: torch.Tensor


def _grid_coordinates(inputs: AtomicInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Each atom's coordinates in [0, 1) along three axes ([N, 3]), and the structure's width (Å)
    along each: fractional coordinates and the distances between opposite cell faces for a cell,
    the bounding box for a structure without one. Any assignment of cores is exact; this one only
    decides how much halo the domains carry."""
    cell = inputs.cell[0].double()
    positions = inputs.positions.double()
    if bool((cell.norm(dim=1) > 0).all()):
        coordinates = torch.linalg.solve(cell.T, positions.T).T % 1.0
        face_areas = torch.linalg.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]).norm(dim=1)
        return coordinates, torch.linalg.det(cell).abs() / face_areas
    low, high = positions.min(0).values, positions.max(0).values
    extent = (high - low).clamp_min(1e-6)
    return ((positions - low) / extent).clamp(max=1 - 1e-9), extent


def _grid_shape(num_domains: int, widths: torch.Tensor, halo: float) -> tuple[int, int, int]:
    """Cores per axis with product ``num_domains``, chosen so that a domain (core plus ``halo`` Å
    on both sides, at most the whole width) is smallest: slabs where the halo is wide against the
    structure, near-cubes in large ones."""
    width = [float(w) for w in widths]

    def domain_volume(split: tuple[int, int, int]) -> float:
        return math.prod(min(w, w / n + 2 * halo) for w, n in zip(width, split))

    splits = [(a, b, num_domains // (a * b)) for a in _divisors(num_domains) for b in _divisors(num_domains // a)]
    return min(splits, key=lambda split: (domain_volume(split), [-n for n in split]))  # ties: the first axes


def _divisors(number: int) -> list[int]:
    return [d for d in range(1, number + 1) if number % d == 0]


def _core_ids(coordinates: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """The grid cell (domain index) of each atom."""
    counts = torch.tensor(shape, device=coordinates.device)
    cells = torch.minimum((coordinates * counts).long(), counts - 1)
    return (cells[:, 0] * shape[1] + cells[:, 1]) * shape[2] + cells[:, 2]


def _domain_masks(inputs: AtomicInputs, core_ids: torch.Tensor, hops: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Of each non-empty domain: the core and core + halo atom masks, and its pair mask (both ends
    in the domain, not both in its outermost hop; the list stays full: a pair and its reverse go
    together)."""
    centers, neighbors = inputs.pair_index
    for domain in torch.unique(core_ids).tolist():
        core = core_ids == domain
        extended, inner = core.clone(), core
        for _ in range(hops):  # a full list: i is one hop from the set if some pair (i, j) has j in it
            inner = extended.clone()
            extended[centers[extended[neighbors]]] = True
        outermost = extended & ~inner if hops else torch.zeros_like(core)
        yield core, extended, extended[centers] & extended[neighbors] & ~(outermost[centers] & outermost[neighbors])


def _largest_domain(inputs: AtomicInputs, core_ids: torch.Tensor, hops: int, max_pairs: int) -> int:
    """Pairs of the largest domain, stopping at the first above ``max_pairs``."""
    largest = 0
    for _, _, kept_pairs in _domain_masks(inputs, core_ids, hops):
        largest = max(largest, int(kept_pairs.sum()))
        if largest > max_pairs:
            break
    return largest


def _domains(inputs: AtomicInputs, core_ids: torch.Tensor, hops: int) -> Iterator[Domain]:
    """The domains of ``core_ids``, each core with its ``hops``-hop halo, built one at a time."""
    for core, extended, kept_pairs in _domain_masks(inputs, core_ids, hops):
        atom_ids = torch.nonzero(extended).squeeze(1)
        new_index = torch.cumsum(extended, 0) - 1
        yield Domain(
            atom_ids=atom_ids,
            inputs=AtomicInputs(
                positions=inputs.positions[atom_ids],
                species=inputs.species[atom_ids],
                pair_index=new_index[inputs.pair_index[:, kept_pairs]],
                pair_shifts=inputs.pair_shifts[kept_pairs],
                lattice_shifts=None if inputs.lattice_shifts is None else inputs.lattice_shifts[kept_pairs],
                structure_index=torch.zeros(atom_ids.numel(), dtype=torch.int64, device=atom_ids.device),
                cell=inputs.cell,
            ),
            core_weights=core[atom_ids].to(inputs.positions.dtype),
        )


def _longest_pair(inputs: AtomicInputs) -> float:
    """The longest pair distance (Å): one hop's reach, at most the cutoff."""
    return float(inputs.pair_lengths().max()) if inputs.num_pairs else 0.0


WeightedEvaluate = Callable[[AtomicInputs, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def evaluate_in_domains(
    evaluate: WeightedEvaluate, inputs: AtomicInputs, hops: int, max_pairs: int
) -> dict[str, torch.Tensor]:
    """Energy [1], forces [N, 3], virial [1, 3, 3] of one structure, domain by domain.

    ``evaluate(sub_inputs, core_weights)`` returns energy, forces and virial of the weighted
    energy ``sum_i w_i E_i`` of a sub-structure. Cores are the cells of a grid
    (:func:`_grid_shape`: slabs, columns or near-cubes, whichever carries the least halo); their
    number starts at the power of two at or above ``E / max_pairs`` and doubles until every
    domain (core + halo) has at most ``max_pairs`` pairs, then the smallest count above the last
    power of two that fits is taken (3 domains rather than 4: less halo in all). Raises
    ``ValueError`` when smaller cores stop helping (the halo alone is too large).
    """
    if inputs.num_structures != 1:
        raise ValueError(f"domains split one structure; got {inputs.num_structures}")
    coordinates, widths = _grid_coordinates(inputs)
    halo = hops * _longest_pair(inputs)

    def split(num_domains: int) -> tuple[tuple[int, int, int], torch.Tensor, int]:
        """The grid of ``num_domains`` cores, each atom's core, and the largest domain's pairs."""
        shape = _grid_shape(num_domains, widths, halo)
        core_ids = _core_ids(coordinates, shape)
        return shape, core_ids, _largest_domain(inputs, core_ids, hops, max_pairs)

    num_domains = 1 << max(0, math.ceil(inputs.num_pairs / max_pairs) - 1).bit_length()
    previous = None
    while True:
        shape, core_ids, largest = split(num_domains)
        if largest <= max_pairs:
            break
        if num_domains >= inputs.num_atoms or (previous is not None and largest > 0.99 * previous):
            raise ValueError(
                f"a domain's {hops}-hop halo alone holds about {largest} pairs, more than max_pairs={max_pairs}: "
                "give the evaluation more memory (a larger max_pairs) or use a smaller cutoff"
            )
        previous, num_domains = largest, 2 * num_domains
    # Every domain carries its own halo: the fewest domains that fit evaluate the fewest pairs, so
    # counts between the last power of two that did not fit and the one that does are tried too.
    for fewer in range(max(num_domains // 2 + 1, math.ceil(inputs.num_pairs / max_pairs)), num_domains):
        candidate = split(fewer)
        if candidate[2] <= max_pairs:
            shape, core_ids, largest = candidate
            break
    logger.info("mlff-export: %d atoms in %d domains of <= %d pairs (grid %s)", inputs.num_atoms,
                int(torch.unique(core_ids).numel()), largest, shape)
    energy = inputs.positions.new_zeros(1)
    forces = torch.zeros_like(inputs.positions)
    virial = inputs.positions.new_zeros((1, 3, 3))
    for part in _domains(inputs, core_ids, hops):
        part_energy, part_forces, part_virial = evaluate(part.inputs, part.core_weights)
        energy += part_energy.detach()
        forces.index_add_(0, part.atom_ids, part_forces.detach())
        virial += part_virial.detach()
    return {"energy": energy, "forces": forces, "virial": virial}


class DomainSplitter:
    """Decides, before each call, how a backend evaluates it: whole, in domains, or not at all.

    A single structure goes into domains above ``max_pairs`` pairs or above what fits in free
    memory (``pairs x bytes_per_pair`` against ``memory``: :class:`~mlff_export.memory.MemoryBudget`).
    A call that cannot be split (a batch, or a model without a declared reach) and does not fit is
    refused with :class:`~mlff_export.memory.InsufficientMemoryError` naming estimate and limit
    (the calculator then halves a batch). An out-of-memory that happens anyway (CUDA, or the CPU
    allocator) sets ``max_pairs`` to a quarter of the failed size and retries, and the limit is kept
    for later calls; where nothing can be split it becomes an ``InsufficientMemoryError`` too.
    """

    def __init__(self, max_pairs: int | None = None, memory: MemoryBudget | None = None, bytes_per_pair: int | None = None):
        self.max_pairs = max_pairs
        self.memory = memory or MemoryBudget()
        self.bytes_per_pair = bytes_per_pair

    def _pairs_that_fit(self, pairs: int) -> int | None:
        return None if self.bytes_per_pair is None else self.memory.pairs_that_fit(pairs, self.bytes_per_pair)

    def pair_limit(self, pairs: int) -> int | None:
        """The most pairs one evaluation may hold now, asked for a call of ``pairs`` pairs:
        ``max_pairs`` and what fits in memory (``None``: no limit; a small call skips the memory query)."""
        return self._limit(self._pairs_that_fit(pairs))

    def _limit(self, fit: int | None) -> int | None:
        limits = [value for value in (self.max_pairs, fit) if value is not None]
        return min(limits) if limits else None

    def evaluate(
        self,
        inputs: AtomicInputs,
        hops: int | None,
        whole: Callable[[AtomicInputs], dict[str, torch.Tensor]],
        weighted: WeightedEvaluate | None,
    ) -> dict[str, torch.Tensor]:
        """``whole(inputs)``, or :func:`evaluate_in_domains` with ``weighted`` for a single
        structure above the limit; ``hops=None`` (a model without a declared reach) never splits."""
        splittable = hops is not None and inputs.num_structures == 1
        pairs = inputs.num_pairs
        while True:
            fit = self._pairs_that_fit(pairs)
            try:
                if splittable:
                    limit = self._limit(fit)
                    if limit is not None and pairs > limit:
                        return evaluate_in_domains(weighted, inputs, hops, max(limit, 1))
                elif fit is not None and pairs > fit:
                    raise self.memory.refusal(
                        pairs,
                        self.bytes_per_pair,
                        f"a call of {inputs.num_structures} structure(s), {inputs.num_atoms:,} atoms,",
                        "use a machine with more memory, fewer atoms per call, or a backend that evaluates large "
                        "structures in spatial domains (eager, compile, cuda-graphs)",
                    )
                return whole(inputs)
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                limit = min(self.max_pairs or pairs, pairs) // 4
                if not splittable or limit < MIN_DOMAIN_PAIRS:
                    raise InsufficientMemoryError(
                        f"out of memory on {self.memory.device} evaluating {inputs.num_atoms:,} atoms with {pairs:,} pairs "
                        f"({str(error).splitlines()[0][:200]}); use a machine with more memory or fewer atoms per call"
                    ) from None
                release_cached_gpu_memory()
                logger.warning("mlff-export: out of memory at %d pairs; evaluating in domains of <= %d pairs", pairs, limit)
                self.max_pairs = limit
