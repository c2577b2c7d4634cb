"""A screening dataset for the predict tests, and readers of a run's outputs.

500 small molecules, four periodic cells (one a mixed-periodic slab) and five structures the
model must refuse, spread over an extxyz file, a folder with another extxyz file and an ASE
database. ``expected_errors`` says which structure fails and with what words.
"""

from __future__ import annotations

import csv
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk, molecule
from ase.db import connect
from conftest import rattled, triclinic_cell

from mlff_export.bench.workloads import small_molecule_batch, water_box

UNREADABLE_FRAME = "2\nProperties=species:S:1:pos:R:3\nH 0.0 0.0 abc\nH 0.0 0.0 0.7\n"

# Tolerances for float32 results of the same structure in batches of other shapes (eV, eV/Å, eV/Å^3).
ENERGY_TOLERANCE = 5e-4
FORCE_TOLERANCE = 2e-4
STRESS_TOLERANCE = 2e-5


def periodic_cells() -> list[Atoms]:
    slab = rattled(bulk("C", "diamond", a=3.57, cubic=True), seed=3)
    slab.pbc = [True, True, False]
    return [rattled(bulk("C", "diamond", a=3.57), seed=2), triclinic_cell(), water_box(24), slab]


def write_dataset(folder: Path) -> tuple[list[Path], dict[str, Atoms], dict[str, str]]:
    """Write the dataset under ``folder``. Returns the inputs to name, the structures the model
    accepts by structure id (``source:index``), and for each structure that must fail a phrase
    its error contains."""
    molecules = small_molecule_batch(500, seed=7)
    silane = Atoms("SiH4", positions=[[0, 0, 0], [0.9, 0.9, 0.9], [-0.9, -0.9, 0.9], [0.9, -0.9, -0.9], [-0.9, 0.9, -0.9]])
    coincident = Atoms("H2O", positions=[[0, 0, 0], [0, 0, 0], [0.96, 0, 0]])
    not_finite = molecule("CH4")
    not_finite.positions[2, 1] = np.nan
    first, more = folder / "molecules.extxyz", folder / "more"
    rest, cells = more / "rest.xyz", more / "cells.db"
    more.mkdir()
    ase.io.write(first, molecules[:120] + [silane] + molecules[120:200], format="extxyz")
    with first.open("a") as file:
        file.write(UNREADABLE_FRAME)
    ase.io.write(first, [coincident] + molecules[200:300], format="extxyz", append=True)
    ase.io.write(rest, molecules[300:450] + [not_finite, Atoms()] + molecules[450:], format="extxyz")
    database = connect(cells)
    for atoms in periodic_cells():
        database.write(atoms)
    accepted = {f"{first}:{i}": atoms for i, atoms in enumerate(molecules[:120])}
    accepted |= {f"{first}:{121 + i}": atoms for i, atoms in enumerate(molecules[120:200])}
    accepted |= {f"{first}:{203 + i}": atoms for i, atoms in enumerate(molecules[200:300])}
    accepted |= {f"{rest}:{i}": atoms for i, atoms in enumerate(molecules[300:450])}
    accepted |= {f"{rest}:{152 + i}": atoms for i, atoms in enumerate(molecules[450:])}
    accepted |= {f"{cells}:{row_id}": atoms for row_id, atoms in enumerate(periodic_cells(), start=1)}
    refused = {
        f"{first}:120": "element(s) Si not supported",
        f"{first}:201": "could not read frame 201",
        f"{first}:202": "overlapping atoms: atoms 0 and 1 are 0.000 Å apart",
        f"{rest}:150": "non-finite position",
        f"{rest}:151": "no atoms",
    }
    return [first, more], accepted, refused


def read_summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def read_results(out: Path) -> dict[str, Atoms]:
    """Every evaluated structure in the run's extxyz shards, by structure id (duplicates raise)."""
    results = {}
    for path in sorted((out / "shards").glob("*.extxyz")):
        for atoms in ase.io.read(path, index=":", format="extxyz") if path.stat().st_size else []:
            structure_id = atoms.info["mlff_structure_id"]
            assert structure_id not in results, f"{structure_id} written twice"
            results[structure_id] = atoms
    return results
