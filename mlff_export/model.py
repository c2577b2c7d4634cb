"""The reference MLFF: a PaiNN-style equivariant message-passing network (Schütt et al., 2021).

The model maps pair vectors to per-atom energies; it never searches for neighbors and never
indexes pairs itself: every move between atoms and pairs goes through a pair layout
(:mod:`mlff_export.pair_layouts`), so the same weights run on a pair list or, scatter-free, on a
padded neighbor table. Geometry (distances, radial basis, cutoff, unit vectors) is computed in
the dtype of the pair vectors; the network body runs in the dtype of its weights, so a body in
float16 keeps float32 geometry and a float32 energy sum.

Smoothness: every pair term is multiplied by the cosine cutoff ``(cos(pi r / rc) + 1) / 2``, which
goes to zero with zero slope at ``rc``, so energy and forces are continuous there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mlff_export.pair_layouts import NeighborTable, PairList


@dataclass(frozen=True)
class PaiNNConfig:
    """Hyper-parameters of :class:`PaiNN`; stored as JSON beside the weights.

    Attributes:
        species: atomic numbers the model knows, in embedding order.
        cutoff: interaction cutoff in Å.
        num_features: width F of scalar and vector features.
        num_interactions: number of message + update blocks.
        num_radial: number of radial basis functions.
    """

    species: tuple[int, ...] = (1, 6, 7, 8)
    cutoff: float = 5.0
    num_features: int = 128
    num_interactions: int = 2
    num_radial: int = 20

    def __post_init__(self):
        """Refuse values no model can be built from (a NaN cutoff would give NaN energies later)."""
        problems = []
        cutoff = self.cutoff
        if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not math.isfinite(cutoff) or cutoff <= 0:
            problems.append(f"cutoff {cutoff!r} (expected a finite number > 0, Å)")
        species = list(self.species)
        if not species or len(set(species)) != len(species) or not all(isinstance(z, int) and 1 <= z <= 118 for z in species):
            problems.append(f"species {species!r} (expected distinct atomic numbers 1..118)")
        for name in ("num_features", "num_interactions", "num_radial"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "num_features" else 1):
                problems.append(f"{name} {value!r} (expected a positive integer)")
        if problems:
            raise ValueError(f"PaiNN config: {'; '.join(problems)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PaiNNConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"PaiNN config: unknown keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        values = dict(values)
        if "species" in values:
            values["species"] = tuple(int(z) for z in values["species"])
        return cls(**values)


def _mlp(width_in: int, width_hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, width_hidden), nn.SiLU(), nn.Linear(width_hidden, width_out))


class _Interaction(nn.Module):
    """One PaiNN message block followed by one update block."""

    def __init__(self, num_features: int, num_radial: int):
        super().__init__()
        f = num_features
        self.message_mlp = _mlp(f, f, 3 * f)
        self.radial_filter = nn.Linear(num_radial, 3 * f)
        self.vector_u = nn.Linear(f, f, bias=False)
        self.vector_v = nn.Linear(f, f, bias=False)
        self.update_mlp = _mlp(2 * f, f, 3 * f)

    def forward(self, scalars, vectors, radial, cutoff_weight, unit_vectors, layout):
        """scalars [N, F], vectors [N, 3, F], radial [E, R], cutoff_weight [E], unit_vectors [E, 3].

        The cutoff multiplies the filter *after* its bias, so every message vanishes at the cutoff.
        """
        n, f = scalars.shape
        num_pairs = radial.shape[0]
        # Message: one gather of [phi(s_j), v_j] per block, one sum onto centers.
        phi = self.message_mlp(scalars)
        neighbor_features = layout.gather_neighbors(torch.cat([phi, vectors.reshape(n, 3 * f)], dim=1))
        filtered = neighbor_features[:, : 3 * f] * (self.radial_filter(radial) * cutoff_weight.unsqueeze(1))
        ds, dv_from_vectors, dv_from_direction = torch.split(filtered, f, dim=1)
        neighbor_vectors = neighbor_features[:, 3 * f :].reshape(num_pairs, 3, f)
        dv = neighbor_vectors * dv_from_vectors.unsqueeze(1) + unit_vectors.unsqueeze(2) * dv_from_direction.unsqueeze(1)
        summed = layout.sum_to_centers(torch.cat([ds, dv.reshape(num_pairs, 3 * f)], dim=1))
        scalars = scalars + summed[:, :f]
        vectors = vectors + summed[:, f:].reshape(n, 3, f)

        # Update: Linear layers act on 2-D tensors only (3-D inputs froze shapes under tracing).
        flat_vectors = vectors.reshape(n * 3, f)
        u = self.vector_u(flat_vectors).reshape(n, 3, f)
        v = self.vector_v(flat_vectors).reshape(n, 3, f)
        # The norm runs in at least float32: in float16 the 1e-8 floor underflows to 0 and
        # sqrt'(0) gives NaN forces wherever v vanishes by symmetry (the carbon of CH4).
        v_wide = v.to(torch.promote_types(v.dtype, torch.float32))
        v_norm = torch.sqrt(torch.clamp_min((v_wide * v_wide).sum(1), 1e-8)).to(v.dtype)
        a = self.update_mlp(torch.cat([scalars, v_norm], dim=1))
        a_vv, a_sv, a_ss = torch.split(a, f, dim=1)
        vectors = vectors + a_vv.unsqueeze(1) * u
        scalars = scalars + a_sv * (u * v).sum(1) + a_ss
        return scalars, vectors


class PaiNN(nn.Module):
    """PaiNN energy model over precomputed pairs.

    ``atomic_energies(pair_vectors, species, layout)`` is the model; ``forward`` is the interface
    call (positions, species, pair_index, pair_shifts, structure_index, cell) -> energy [B] in eV.
    """

    def __init__(self, config: PaiNNConfig = PaiNNConfig()):
        super().__init__()
        self.config = config
        f = config.num_features
        lookup = torch.full((max(config.species) + 1,), -1, dtype=torch.int64)
        lookup[torch.tensor(config.species)] = torch.arange(len(config.species))
        self.register_buffer("species_lookup", lookup, persistent=False)
        self.embedding = nn.Embedding(len(config.species), f)
        self.interactions = nn.ModuleList(_Interaction(f, config.num_radial) for _ in range(config.num_interactions))
        self.readout = _mlp(f, f // 2, 1)
        # Energy = readout * scale + per-species reference (fitted on the training set), in eV.
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("atom_reference_energies", torch.zeros(len(config.species)))
        frequencies = torch.arange(1, config.num_radial + 1) * math.pi / config.cutoff
        self.register_buffer("radial_frequencies", frequencies, persistent=False)

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def species(self) -> tuple[int, ...]:
        return self.config.species

    @property
    def receptive_hops(self) -> int:
        """Pair hops an atom's energy depends on (one per interaction block)."""
        return self.config.num_interactions

    def bytes_per_pair(self, dtype: torch.dtype) -> int:
        """Peak memory per pair of one eager energy+forces call in ``dtype``, bytes: 24 values per
        feature and interaction block (23.6 measured for the reference model on water boxes, CPU
        float32: 24.2 kB per pair). What the runtime's memory guard multiplies pairs by."""
        element = torch.empty((), dtype=dtype).element_size()
        return 24 * self.config.num_features * self.config.num_interactions * element

    def atomic_energies(self, pair_vectors: torch.Tensor, species: torch.Tensor, layout: PairList | NeighborTable):
        """Per-atom energies [N] in eV (dtype of ``pair_vectors``) from pair vectors [E, 3] in Å."""
        geometry_dtype = pair_vectors.dtype
        body_dtype = self.embedding.weight.dtype
        # clamp_min, not "+ eps": the ONNX optimiser drops tiny eps and zero-length padding pairs
        # would give NaN gradients.
        distances = torch.sqrt(torch.clamp_min((pair_vectors * pair_vectors).sum(1), 1e-12))
        unit_vectors = pair_vectors / distances.unsqueeze(1)
        inside = (distances < self.config.cutoff).to(geometry_dtype)
        cutoff_weight = layout.mask_pairs(0.5 * (torch.cos(distances * (math.pi / self.config.cutoff)) + 1.0) * inside)
        frequencies = self.radial_frequencies.to(geometry_dtype)
        radial = torch.sin(distances.unsqueeze(1) * frequencies) / distances.unsqueeze(1)
        radial, cutoff_weight, unit_vectors = (t.to(body_dtype) for t in (radial, cutoff_weight, unit_vectors))

        species_index = self.species_lookup[species]
        scalars = self.embedding(species_index)
        vectors = scalars.new_zeros((scalars.shape[0], 3, scalars.shape[1]))
        for interaction in self.interactions:
            scalars, vectors = interaction(scalars, vectors, radial, cutoff_weight, unit_vectors, layout)
        readout = self.readout(scalars).squeeze(1).to(geometry_dtype)
        reference = self.atom_reference_energies.to(geometry_dtype)[species_index]
        return readout * self.energy_scale.to(geometry_dtype) + reference

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        """The interface call: energy [B] in eV."""
        layout = PairList(pair_index, pair_shifts, positions.shape[0])
        pair_vectors = layout.gather_neighbors(positions) - layout.gather_centers(positions) + layout.shifts
        atom_energies = self.atomic_energies(pair_vectors, species, layout)
        return layout.sum_to_structures(atom_energies, structure_index, cell.shape[0])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
