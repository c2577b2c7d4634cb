"""Evaluate the seed's molecules (H2, H2O, CH4, benzene) with the eager calculator and time each
call: energy, largest force component and median milliseconds per call, a new geometry every call
(the neighbor list is rebuilt, nothing is cached)."""

from __future__ import annotations

import argparse
import time

from mlff_export.cli.options import (
    add_device_option,
    add_model_options,
    add_threads_option,
    apply_threads,
    model_spec,
    positive_int,
    resolve_device,
)

NAME = "demo"
HELP = "evaluate the seed molecules with the eager calculator and time it"
MOLECULES = ("H2", "H2O", "CH4", "C6H6")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    add_device_option(parser, default="cpu")
    parser.add_argument("--repeats", type=positive_int, default=50, metavar="N",
                        help="timed calls per molecule (default: 50); the median is printed")
    add_threads_option(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from ase.build import molecule

    from mlff_export.runtime import load_calculator

    spec, device = model_spec(args), resolve_device(args.device)
    apply_threads(args)
    calc = load_calculator(spec.load().module, device=device)
    print(f"{'molecule':<10}{'atoms':>6}{'energy eV':>14}{'max |F| eV/Å':>15}{'median ms/call':>16}")
    for name in MOLECULES:
        atoms = molecule(name)
        atoms.calc = calc
        timings = []
        for step in range(args.repeats):
            atoms.positions[0, 0] += 1e-4 * (-1) ** step  # a new geometry each call: no cache hits
            start = time.perf_counter()
            forces = atoms.get_forces()
            timings.append(time.perf_counter() - start)
        energy = atoms.get_potential_energy()
        print(f"{name:<10}{len(atoms):>6}{energy:>14.4f}{np.abs(forces).max():>15.4f}{1e3 * np.median(timings):>16.3f}")
    return 0
