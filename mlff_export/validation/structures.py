"""The structures a validation runs on: a built-in set, or any file ASE reads.

The built-in set covers what deployed models meet and what exporters get wrong: molecules from 2
to 22 atoms, periodic cells (a 2-atom cell much smaller than any cutoff, a small strongly skewed
triclinic cell, a 24-atom box of water, a slab with mixed periodicity), all in one mixed batch
when evaluated through :meth:`~mlff_export.runtime.MLFFCalculator.predict`. Every structure is
rattled with a fixed seed so that forces are non-zero and reproducible. Elements: H, C, N, O.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, molecule

from mlff_export.neighbors import StructureError, check_structure, compute_pairs
from mlff_export.structure_sanity import check_closest_pair, check_density

RATTLE_STDEV = 0.05
"""Standard deviation of the Gaussian displacement applied to built-in structures, Å."""

MOLECULES = {"H2": "H2", "H2O": "H2O", "CH4": "CH4", "benzene": "C6H6", "biphenyl": "biphenyl"}
"""Built-in molecule id -> ASE ``molecule`` name (g2 and ASE's extra set)."""


def _rattled(atoms: Atoms, seed: int) -> Atoms:
    atoms = atoms.copy()
    atoms.rattle(RATTLE_STDEV, seed=seed)
    return atoms


def triclinic_cell() -> Atoms:
    """Four atoms (C, N, O, H) in a skewed cell whose lattice vectors (3.1-3.6 Å) are all
    shorter than a typical cutoff: many periodic images of each atom are neighbors."""
    cell = np.array([[3.1, 0.0, 0.0], [1.4, 2.9, 0.0], [0.7, 1.1, 3.3]])
    fractions = np.array([[0.0, 0.0, 0.0], [0.5, 0.4, 0.1], [0.2, 0.7, 0.6], [0.8, 0.2, 0.5]])
    return Atoms("CNOH", scaled_positions=fractions, cell=cell, pbc=True)


def water_box(molecules_per_side: int = 2, spacing: float = 3.1, seed: int = 0) -> Atoms:
    """``molecules_per_side**3`` randomly oriented water molecules on a cubic grid of ``spacing``
    Å (3.1 Å: about liquid density), periodic."""
    rng = np.random.default_rng(seed)
    box = Atoms(cell=np.eye(3) * molecules_per_side * spacing, pbc=True)
    for index in np.ndindex(molecules_per_side, molecules_per_side, molecules_per_side):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.translate(spacing * (np.array(index) + 0.5))
        box += water
    return box


def builtin_structures() -> dict[str, Atoms]:
    """The built-in validation set: id -> structure (molecules first, then periodic cells)."""
    structures = {name: _rattled(molecule(ase_name), seed) for seed, (name, ase_name) in enumerate(MOLECULES.items())}
    slab = bulk("C", "diamond", a=3.57, cubic=True)
    slab.pbc = [True, True, False]
    structures.update(
        {
            "diamond-primitive": _rattled(bulk("C", "diamond", a=3.57), seed=10),
            "triclinic-CNOH": _rattled(triclinic_cell(), seed=11),
            "water-box": _rattled(water_box(), seed=12),
            "diamond-slab": _rattled(slab, seed=13),
        }
    )
    return structures


def read_structures(path: str | Path) -> dict[str, Atoms]:
    """Every structure in ``path`` (any format ``ase.io.read(path, index=":")`` reads), keyed
    ``"<index>:<formula>"``. Raises :class:`StructureError` for an unreadable or empty file."""
    from ase.io import read

    path = Path(path)
    if path.is_dir():
        raise StructureError(f"{path} is a folder; expected a structure file (any format ase.io.read reads)")
    if not path.is_file():
        raise StructureError(f"structure file {path} does not exist")
    try:
        images = read(path, index=":")
    except Exception as error:  # ASE raises many types for unreadable files; report it as one line
        raise StructureError(f"structure file {path} could not be read by ase.io.read: {error}") from None
    if not images:
        raise StructureError(f"structure file {path} holds no structures")
    return {f"{index}:{atoms.get_chemical_formula()}": atoms for index, atoms in enumerate(images)}


def check_structures(
    structures: dict[str, Atoms], species: tuple[int, ...], source: str, *, cutoff: float | None = None, min_distance: float = 0.0
) -> None:
    """Raise one-line :class:`StructureError` naming the first structure the model cannot
    evaluate (e.g. an element outside ``species``, with the supported ones; with ``cutoff``, two
    atoms closer than ``min_distance`` Å or a collapsed cell: :mod:`mlff_export.structure_sanity`)."""
    for name, atoms in structures.items():
        try:
            check_structure(atoms, species)
            if cutoff is not None:
                check_density(atoms)
                check_closest_pair(atoms, compute_pairs(atoms, cutoff), min_distance)
        except StructureError as error:
            raise StructureError(f"{source}, structure {name}: {error}") from None


def supported_structures(structures: dict[str, Atoms], species: tuple[int, ...]) -> dict[str, Atoms]:
    """The subset whose elements are all in ``species`` (the built-in set for a model trained on
    fewer elements)."""
    return {name: atoms for name, atoms in structures.items() if set(atoms.numbers.tolist()) <= set(species)}
