"""Benchmark structures: the seed's molecules, a larger one, batches, periodic water, MD.

All built deterministically from a seed with ASE; elements H, C, N, O (the reference model's).
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.collections import g2
from scipy.spatial.transform import Rotation

SEED_MOLECULES = ("H2", "H2O", "CH4", "C6H6")
LARGER_MOLECULE = "C60"
WATER_SPACING = 3.104  # Å: one molecule per cube of this edge is liquid water's 1.0 g/cm^3


def seed_molecule(name: str) -> Atoms:
    """One of the seed's molecules (or the larger one, C60), in ASE's reference geometry."""
    return molecule(name)


def small_molecule_batch(size: int, seed: int = 0) -> list[Atoms]:
    """``size`` molecules drawn from ASE's g2 set (H/C/N/O only, 2-14 atoms), lightly rattled."""
    names = sorted(name for name in g2.names if set(g2[name].get_chemical_symbols()) <= {"H", "C", "N", "O"})
    rng = np.random.default_rng(seed)
    batch = []
    for index, name in enumerate(rng.choice(names, size)):
        atoms = molecule(str(name))
        atoms.rattle(0.02, seed=seed + index)
        batch.append(atoms)
    return batch


def water_box(target_atoms: int, seed: int = 0) -> Atoms:
    """Periodic liquid-density water with about ``target_atoms`` atoms (a cubic grid of randomly
    oriented molecules, 3.1 Å apart)."""
    per_side = max(1, round((target_atoms / 3) ** (1 / 3)))
    template = molecule("H2O")
    template.positions -= template.get_center_of_mass()
    rotations = Rotation.random(per_side**3, random_state=seed).as_matrix()
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3) * WATER_SPACING
    positions = np.concatenate([template.positions @ r.T + site for r, site in zip(rotations, grid)])
    return Atoms(
        template.get_chemical_symbols() * len(grid),
        positions=positions,
        cell=np.eye(3) * per_side * WATER_SPACING,
        pbc=True,
    )


def water_cluster(molecules: int) -> Atoms:
    """The first ``molecules`` water molecules of a liquid-density box, without periodicity."""
    cluster = water_box(3 * 1000)[: 3 * molecules]
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    return cluster


def many_molecules() -> list[Atoms]:
    """About 100 structures of varying size, as a user screening different molecules sends them:
    the 85 g2 molecules of H, C, N, O (2-14 atoms), water clusters of 24-150 atoms, C60 and
    periodic water boxes of 81-375 atoms (many shape buckets: what cold start must compile)."""
    names = sorted(name for name in g2.names if set(g2[name].get_chemical_symbols()) <= {"H", "C", "N", "O"})
    structures = [molecule(name) for name in names]
    structures += [water_cluster(count) for count in (8, 12, 16, 20, 30, 50)]
    structures += [molecule(LARGER_MOLECULE)] + [water_box(atoms) for atoms in (81, 192, 375)]
    return structures
