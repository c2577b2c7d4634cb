"""Generate the H/C/N/O training set of the reference PaiNN, labelled by GFN2-xTB (tblite).

Writes one extxyz file (default ``training/data/hcno-xtb.extxyz``). Units are ASE's: positions
and cells in Å, energy in eV, forces in eV/Å, stress in eV/Å^3 (ASE sign convention, periodic
structures only). Every structure carries ``info["subset"]`` (what it is) and ``info["split"]``
("train", "val" or "test", fixed by ``--seed``).

Subsets:

* ``molecule``: every g2 molecule made only of H, C, N, O, at equilibrium and rattled;
* ``molecule_md``: Langevin MD snapshots of a few molecules (H2, H2O, CH4, C6H6, ...);
* ``water``: liquid water boxes (~1 g/cm^3), relaxation and MD frames plus strained copies;
* ``carbon``: diamond cells of 2 and 8 atoms (smaller than the 5 Å cutoff), strained and rattled.

Usage: ``python training/generate_data.py`` (about 10 minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import CalculatorError
from ase.calculators.singlepoint import SinglePointCalculator
from ase.collections import g2
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import FIRE
from scipy.spatial.transform import Rotation
from tblite.ase import TBLite

ELEMENTS = {"H", "C", "N", "O"}
MD_MOLECULES = ("H2", "H2O", "CH4", "C6H6", "CH3OH", "CH3CONH2", "C5H5N", "HCOOH")
WATER_MOLAR_MASS = 18.015  # g/mol
DIAMOND_LATTICE = 3.567  # Å


class Teacher:
    """GFN2-xTB through tblite; counts the structures on which it failed."""

    def __init__(self):
        self.calls = 0
        self.failures = 0

    @staticmethod
    def calculator() -> TBLite:
        return TBLite(method="GFN2-xTB", verbosity=0)

    def label(self, atoms: Atoms) -> Atoms | None:
        """A copy of ``atoms`` holding xTB energy, forces (and stress if periodic); None on failure."""
        atoms = atoms.copy()
        atoms.calc = self.calculator()
        try:
            return labelled_copy(atoms)
        except CalculatorError:
            self.failures += 1
            return None
        finally:
            self.calls += 1

    def label_all(self, structures: list[Atoms]) -> list[Atoms]:
        labelled = (self.label(atoms) for atoms in structures)
        return [atoms for atoms in labelled if atoms is not None]


def labelled_copy(atoms: Atoms) -> Atoms:
    """Freeze the results of ``atoms.calc`` (eV, eV/Å, eV/Å^3) into a single-point copy."""
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress()
    frozen = atoms.copy()
    frozen.calc = SinglePointCalculator(frozen, **results)
    return frozen


def tagged(structures: list[Atoms], subset: str, source: str) -> list[Atoms]:
    for atoms in structures:
        atoms.info.update(subset=subset, source=source)
    return structures


def hcno_g2_names() -> list[str]:
    """Names of the g2 molecules made only of H, C, N and O (single atoms included)."""
    return [name for name in g2.names if set(g2[name].get_chemical_symbols()) <= ELEMENTS]


def rattled_copies(atoms: Atoms, count: int, rng: np.random.Generator, sigmas=(0.03, 0.15)) -> list[Atoms]:
    """``count`` copies with gaussian displacements of a random width in ``sigmas`` (Å)."""
    copies = []
    for _ in range(count):
        copy = atoms.copy()
        copy.positions += rng.normal(scale=rng.uniform(*sigmas), size=copy.positions.shape)
        copies.append(copy)
    return copies


def md_frames(
    atoms: Atoms, teacher: Teacher, temperature: float, steps: int, interval: int, rng: np.random.Generator
) -> list[Atoms]:
    """Labelled frames of xTB Langevin MD (0.5 fs steps, ``temperature`` in K), one every ``interval`` steps.

    A failed SCF ends the trajectory early (counted as one failure).
    """
    atoms = atoms.copy()
    atoms.calc = teacher.calculator()
    thermalize_momenta(atoms, temperature, rng=rng)
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng)
    frames = []
    dynamics.attach(lambda: frames.append(labelled_copy(atoms)), interval=interval)
    try:
        dynamics.run(steps)
    except CalculatorError:
        teacher.failures += 1
    teacher.calls += steps
    return frames[1:]  # frame 0 is the starting geometry, labelled elsewhere


def relaxation_frames(atoms: Atoms, teacher: Teacher, steps: int) -> tuple[list[Atoms], Atoms]:
    """Labelled frames of ``steps`` FIRE steps and the last geometry (relaxes far-from-equilibrium packings)."""
    atoms = atoms.copy()
    atoms.calc = teacher.calculator()
    optimizer = FIRE(atoms, logfile=None)
    frames = []
    optimizer.attach(lambda: frames.append(labelled_copy(atoms)))
    try:
        optimizer.run(fmax=0.05, steps=steps)
    except CalculatorError:
        teacher.failures += 1
    teacher.calls += len(frames)
    return frames, atoms


def random_strain(rng: np.random.Generator, smallest: float = 0.02, largest: float = 0.04) -> np.ndarray:
    """Deformation gradient ``I + eps``: isotropic or symmetric shear, ``|eps|`` in [smallest, largest]."""
    size = rng.uniform(smallest, largest) * rng.choice([-1.0, 1.0])
    if rng.random() < 0.5:
        return np.eye(3) * (1.0 + size)
    i, j = rng.choice(3, size=2, replace=False)
    strain = np.eye(3)
    strain[i, j] = strain[j, i] = size
    return strain


def strained_copy(atoms: Atoms, deformation: np.ndarray) -> Atoms:
    copy = atoms.copy()
    copy.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
    return copy


def water_box(num_molecules: int, rng: np.random.Generator, density: float = 1.0, min_distance: float = 2.0) -> Atoms:
    """Cubic periodic box of randomly placed and rotated waters at ``density`` g/cm^3;
    atoms of different molecules stay ``min_distance`` Å apart (minimum image)."""
    volume = num_molecules * WATER_MOLAR_MASS / (units.mol * density * 1e-24)  # Å^3
    length = volume ** (1.0 / 3.0)
    box = Atoms(cell=[length] * 3, pbc=True)
    water = molecule("H2O")
    while len(box) < 3 * num_molecules:
        placed = water.copy()
        placed.positions = Rotation.random(random_state=int(rng.integers(2**31))).apply(placed.positions)
        placed.positions += rng.uniform(0.0, length, size=3)
        trial = box + placed
        if len(box) == 0 or _far_enough(trial, len(box), min_distance):
            box = trial
    return box


def _far_enough(trial: Atoms, num_old: int, min_distance: float) -> bool:
    distances = trial.get_all_distances(mic=True)[num_old:, :num_old]
    return bool(distances.min() > min_distance)


def molecule_structures(teacher: Teacher, rng: np.random.Generator, copies: int) -> list[Atoms]:
    """Each H/C/N/O g2 molecule at equilibrium plus ``copies`` rattled versions (single atoms: once)."""
    structures = []
    for name in hcno_g2_names():
        atoms = molecule(name)
        geometries = [atoms] + (rattled_copies(atoms, copies, rng) if len(atoms) > 1 else [])
        structures += tagged(teacher.label_all(geometries), "molecule", name)
    return structures


def molecule_md_structures(teacher: Teacher, rng: np.random.Generator, steps: int, interval: int) -> list[Atoms]:
    """Langevin snapshots of :data:`MD_MOLECULES` at 400-600 K."""
    structures = []
    for name in MD_MOLECULES:
        temperature = rng.uniform(400.0, 600.0)
        structures += tagged(md_frames(molecule(name), teacher, temperature, steps, interval, rng), "molecule_md", name)
    return structures


def water_structures(
    teacher: Teacher, rng: np.random.Generator, box_sizes: list[int], relax_steps: int, md_steps: int, strained: int
) -> list[Atoms]:
    """Per water box (one per entry of ``box_sizes``, molecules per box): FIRE frames from the random
    packing, 400 K MD frames (every 2 steps), and ``strained`` strained copies of MD frames."""
    structures = []
    for num_molecules in box_sizes:
        source = f"water{num_molecules}"
        relaxation, relaxed = relaxation_frames(water_box(num_molecules, rng), teacher, relax_steps)
        dynamics = md_frames(relaxed, teacher, 400.0, md_steps, 2, rng)
        picks = rng.choice(len(dynamics), size=min(strained, len(dynamics)), replace=False)
        deformed = teacher.label_all([strained_copy(dynamics[k], random_strain(rng)) for k in picks])
        structures += tagged(relaxation + dynamics + deformed, "water", source)
        print(f"  {source}: {len(relaxation)} relaxation, {len(dynamics)} MD, {len(deformed)} strained", flush=True)
    return structures


def carbon_structures(teacher: Teacher, rng: np.random.Generator, copies: int) -> list[Atoms]:
    """``copies`` strained and rattled (sigma 0.02-0.08 Å) copies of the 2-atom and 8-atom diamond cells."""
    structures = []
    for source, cell in (("diamond2", bulk("C", "diamond", a=DIAMOND_LATTICE)),
                         ("diamond8", bulk("C", "diamond", a=DIAMOND_LATTICE, cubic=True))):
        deformed = [strained_copy(cell, random_strain(rng, 0.0, 0.04)) for _ in range(copies)]
        geometries = [rattled_copies(atoms, 1, rng, sigmas=(0.02, 0.08))[0] for atoms in deformed]
        structures += tagged(teacher.label_all(geometries), "carbon", source)
    return structures


def assign_splits(structures: list[Atoms], rng: np.random.Generator, fractions=(0.8, 0.1, 0.1)) -> None:
    """Set ``info["split"]`` to a random, fixed train/val/test partition of the given fractions."""
    order = rng.permutation(len(structures))
    num_train = int(round(fractions[0] * len(structures)))
    num_val = int(round(fractions[1] * len(structures)))
    for rank, index in enumerate(order):
        split = "train" if rank < num_train else "val" if rank < num_train + num_val else "test"
        structures[index].info["split"] = split


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "data" / "hcno-xtb.extxyz")
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--rattled-copies", type=int, default=24, help="rattled copies per g2 molecule")
    parser.add_argument("--molecule-md-steps", type=int, default=600, help="MD steps per molecule (0.5 fs)")
    parser.add_argument("--molecule-md-interval", type=int, default=5, help="keep one MD frame every this many steps")
    parser.add_argument("--water-boxes", type=int, nargs="+", default=[8, 8, 16], help="molecules per water box")
    parser.add_argument("--water-relax-steps", type=int, default=6)
    parser.add_argument("--water-md-steps", type=int, default=20)
    parser.add_argument("--water-strained", type=int, default=6, help="strained copies per water box")
    parser.add_argument("--carbon-copies", type=int, default=50, help="copies per diamond cell")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    teacher = Teacher()
    start = time.perf_counter()
    steps = [
        ("molecule", lambda: molecule_structures(teacher, rng, args.rattled_copies)),
        ("molecule_md", lambda: molecule_md_structures(teacher, rng, args.molecule_md_steps, args.molecule_md_interval)),
        ("carbon", lambda: carbon_structures(teacher, rng, args.carbon_copies)),
        ("water", lambda: water_structures(
            teacher, rng, args.water_boxes, args.water_relax_steps, args.water_md_steps, args.water_strained)),
    ]
    structures = []
    for subset, generate in steps:
        made = generate()
        structures += made
        print(f"{subset}: {len(made)} structures ({time.perf_counter() - start:.0f} s, "
              f"{teacher.failures} xTB failures so far)", flush=True)
    assign_splits(structures, rng)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write(args.output, structures, format="extxyz")
    print(f"wrote {len(structures)} structures to {args.output}; xTB failed on {teacher.failures} "
          f"of {teacher.calls} calculations (dropped); {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
