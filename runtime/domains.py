"""Memory-bounded evaluation of one large structure: spatial domains with a message-passing halo.

A message-passing model with ``L`` interaction blocks gives atom ``i`` an energy that depends only on
atoms at most ``L`` pair-hops away. So the energy of a *core* set of atoms is exact on the sub-graph
of its ``L``-hop neighborhood (all pairs between those atoms, periodic shifts kept), and

* total energy = sum over domains of their core energies,
* forces and virial = sums over domains of the gradients of those core energies (linear in E),

which :func:`evaluate_in_domains` computes domain by domain, never holding more than ``max_pairs``
pairs' activations at once. Cores are equal-count slabs along the longest lattice vector; the halo
comes from the pair graph itself, so periodic images and cells of any shape need no special case.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from mlff_export.interface import AtomicInputs
from mlff_export.memory import InsufficientMemoryError, MemoryBudget, is_out_of_memory

logger = logging.getLogger("mlff_export")

MIN_DOMAIN_PAIRS = 10_000  # below this, a device that still runs out of memory is not the structure's fault


@dataclass
class Domain:
    """One domain: its atoms (indices into the whole structure), its sub-structure inputs and which
    of its atoms are core (1.0) or halo (0.0)."""

    atom_ids: torch.Tensor
    inputs: AtomicInputs
    core_weights: torch.Tensor


def _slab_order(inputs: AtomicInputs) -> torch.Tensor:
    """Atoms sorted by their fractional coordinate along the longest lattice vector (by the
    Cartesian axis of largest extent for a non-periodic structure)."""
    cell = inputs.cell[0].double()
    positions = inputs.positions.double()
    lengths = cell.norm(dim=1)
    if bool((lengths > 0).all()):
        axis = int(lengths.argmax())
        coordinate = torch.linalg.solve(cell.T, positions.T)[axis] % 1.0
    else:
        coordinate = positions[:, int((positions.max(0).values - positions.min(0).values).argmax())]
    return torch.argsort(coordinate)


def _domain_masks(
    inputs: AtomicInputs, order: torch.Tensor, hops: int, num_domains: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(core, core + halo) atom masks of each of ``num_domains`` slabs of the atoms in ``order``."""
    centers, neighbors = inputs.pair_index
    for core_atoms in torch.tensor_split(order, num_domains):
        core = torch.zeros(inputs.num_atoms, dtype=torch.bool, device=order.device)
        core[core_atoms] = True
        extended = core.clone()
        for _ in range(hops):  # a full list: i is one hop from the set if some pair (i, j) has j in it
            extended[centers[extended[neighbors]]] = True
        yield core, extended


def _largest_domain(inputs: AtomicInputs, order: torch.Tensor, hops: int, num_domains: int, max_pairs: int) -> int:
    """Pairs of the largest domain, stopping at the first above ``max_pairs``."""
    centers, neighbors = inputs.pair_index
    largest = 0
    for _, extended in _domain_masks(inputs, order, hops, num_domains):
        largest = max(largest, int((extended[centers] & extended[neighbors]).sum()))
        if largest > max_pairs:
            break
    return largest


def _domains(inputs: AtomicInputs, order: torch.Tensor, hops: int, num_domains: int) -> Iterator[Domain]:
    """``num_domains`` slab cores of the atoms in ``order``, each with its ``hops``-hop halo,
    built one at a time."""
    centers, neighbors = inputs.pair_index
    for core, extended in _domain_masks(inputs, order, hops, num_domains):
        kept_pairs = extended[centers] & extended[neighbors]
        atom_ids = torch.nonzero(extended).squeeze(1)
        new_index = torch.cumsum(extended, 0) - 1
        yield Domain(
            atom_ids=atom_ids,
            inputs=AtomicInputs(
                positions=inputs.positions[atom_ids],
                species=inputs.species[atom_ids],
                pair_index=new_index[inputs.pair_index[:, kept_pairs]],
                pair_shifts=inputs.pair_shifts[kept_pairs],
                structure_index=torch.zeros(atom_ids.numel(), dtype=torch.int64, device=atom_ids.device),
                cell=inputs.cell,
            ),
            core_weights=core[atom_ids].to(inputs.positions.dtype),
        )


WeightedEvaluate = Callable[[AtomicInputs, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def evaluate_in_domains(
    evaluate: WeightedEvaluate, inputs: AtomicInputs, hops: int, max_pairs: int
) -> dict[str, torch.Tensor]:
    """Energy [1], forces [N, 3], virial [1, 3, 3] of one structure, domain by domain.

    ``evaluate(sub_inputs, core_weights)`` returns energy, forces and virial of the weighted
    energy ``sum_i w_i E_i`` of a sub-structure. The number of domains starts at
    ``ceil(E / max_pairs)`` and doubles until every domain (core + halo) has at most ``max_pairs``
    pairs. Raises ``ValueError`` when thinner slabs stop helping (the halo alone is too large).
    """
    if inputs.num_structures != 1:
        raise ValueError(f"domains split one structure; got {inputs.num_structures}")
    order = _slab_order(inputs)
    num_domains = max(1, math.ceil(inputs.num_pairs / max_pairs))
    previous = None
    while (largest := _largest_domain(inputs, order, hops, num_domains, max_pairs)) > max_pairs:
        if num_domains >= inputs.num_atoms or (previous is not None and largest > 0.99 * previous):
            raise ValueError(
                f"a domain's {hops}-hop halo alone holds about {largest} pairs, more than max_pairs={max_pairs}: "
                "give the evaluation more memory (a larger max_pairs) or use a smaller cutoff"
            )
        previous, num_domains = largest, min(2 * num_domains, inputs.num_atoms)
    energy = inputs.positions.new_zeros(1)
    forces = torch.zeros_like(inputs.positions)
    virial = inputs.positions.new_zeros((1, 3, 3))
    for part in _domains(inputs, order, hops, num_domains):
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
                    limit = min(value for value in (self.max_pairs, fit, pairs) if value is not None)
                    if pairs > limit:
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
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                logger.warning("mlff-export: out of memory at %d pairs; evaluating in domains of <= %d pairs", pairs, limit)
                self.max_pairs = limit
