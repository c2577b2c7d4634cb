"""The ``mlff-export`` command line: a thin layer over the library, one function per subcommand.

Each subcommand adds its arguments in ``_add_<name>`` and runs in ``_run_<name>``; user mistakes
print one line (``error: ...``) and exit 1; each command ends with ``PASSED`` or ``FAILED`` where it
checks something.
"""

from __future__ import annotations

import argparse
import sys
import time

import mlff_export
from mlff_export import REFERENCE_CHECKPOINT


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="describe a checkpoint (default: the bundled reference model)")
    parser.add_argument("--checkpoint", default=str(REFERENCE_CHECKPOINT), help="checkpoint card (.json)")
    parser.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from ase.data import chemical_symbols

    from mlff_export.checkpoint import load_checkpoint, read_card
    from mlff_export.model import count_parameters

    card = read_card(args.checkpoint)
    model = load_checkpoint(args.checkpoint)
    print(f"checkpoint   {args.checkpoint}")
    print(f"architecture {card['architecture']}  parameters {count_parameters(model):,}")
    print(f"species      {' '.join(chemical_symbols[z] for z in model.species)}  cutoff {model.cutoff} Å")
    for key, value in card.get("extra", {}).items():
        print(f"{key:<12} {value}")
    return 0


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="evaluate the seed molecules with the eager calculator and time it")
    parser.add_argument("--checkpoint", default=str(REFERENCE_CHECKPOINT))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=50)
    parser.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    import numpy as np
    from ase.build import molecule

    from mlff_export.runtime import load_calculator

    calc = load_calculator(args.checkpoint, device=args.device)
    print(f"{'molecule':<10}{'atoms':>6}{'energy/eV':>14}{'max|F|/(eV/Å)':>16}{'median ms/call':>16}")
    for name in ("H2", "H2O", "CH4", "C6H6"):
        atoms = molecule(name)
        atoms.calc = calc
        timings = []
        for step in range(args.repeats):
            atoms.positions[0, 0] += 1e-4 * (-1) ** step  # a new geometry each call: no cache hits
            start = time.perf_counter()
            forces = atoms.get_forces()
            timings.append(time.perf_counter() - start)
        energy = atoms.get_potential_energy()
        print(f"{name:<10}{len(atoms):>6}{energy:>14.4f}{np.abs(forces).max():>16.4f}{1e3 * np.median(timings):>16.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlff-export", description=mlff_export.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlff-export {mlff_export.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_info, _add_demo):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, RuntimeError, OSError) as error:  # user mistakes: one line, exit 1
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
