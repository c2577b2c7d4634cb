"""A peer's own ASE calculator beside ours, on the same model (issue 14, goal 5): MACE.

    python3 -m mlff_export.bench.peer_calculators --model examples/byom/mace_model.py:make_model --out DIR
        [--device cuda] [--backends eager,cuda-graphs,compile-reduce-overhead]
        [--peer-options eager-float64,eager,compile,cueq] [--water-atoms 10000] [--repeats 20]

``--model`` names a factory of an interface module that wraps a MACE as ``.mace`` (the adapter of
``examples/byom/mace_model.py``; a trained MACE goes through it the same way). The peer's rows are
mace-torch's own ``MACECalculator`` on that MACE, at its documented options: ``eager``
(``compile_mode=None``), ``compile`` (``compile_mode="default"``), ``cueq`` (``enable_cueq=True``,
needs cuEquivariance); ours are :func:`load_calculator` on the adapter with each ``--backends``.
Workloads: benzene and periodic water of about ``--water-atoms`` atoms, each call through the
calculator (neighbor search included) on a geometry moved by 1e-4 Å. A row: first call (compile or
capture), median call, and parity with the energy and forces of the peer's first option (eager in
float64 by default). Rows go to
``DIR/peer_calculators.jsonl`` as they are measured; ``DIR/peer_calculators.json`` adds, per
workload, our fastest over the peer's fastest, and the environment. An option the machine cannot
run is a row with its error, not a missing row.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from mlff_export.bench.environment import describe_environment
from mlff_export.bench.timing import first_call, time_calls
from mlff_export.bench.workloads import seed_molecule, water_box
from mlff_export.model_intake import load_model
from mlff_export.runtime import load_calculator

PEER_OPTIONS = {
    "eager-float64": {"compile_mode": None, "default_dtype": "float64"},
    "eager": {"compile_mode": None, "default_dtype": "float32"},
    "compile": {"compile_mode": "default", "default_dtype": "float32"},
    "cueq": {"enable_cueq": True, "default_dtype": "float32"},
}
"""mace-torch's documented MACECalculator options, by row name. ``eager-float64`` is the parity
reference (the float32 rows' energy sums carry float32 rounding of ~1e-7 relative per addition);
it takes no part in the speed ratio."""


def peer_calculator(mace: torch.nn.Module, device: str, option: str):
    """mace-torch's own calculator on a copy of ``mace``: copying scripts e3nn's generated code, which gives the
    TorchScript form a MACE loaded from a ``.model`` file has."""
    from mace.calculators import MACECalculator

    return MACECalculator(models=[copy.deepcopy(mace)], device=device, **PEER_OPTIONS[option])


def measure(calculator, atoms: Atoms, device: torch.device, repeats: int, reference: dict | None) -> dict:
    """First call, median call (each on a geometry moved by 1e-4 Å) and parity with ``reference``."""
    atoms, forces, energy, first = first_call(calculator, atoms)

    def call(step: int) -> None:
        atoms.positions[0, 0] += 1e-4 * (-1) ** step
        atoms.get_forces()

    timing = time_calls(call, device, warmup=2, repeats=repeats)
    row = {"atoms": len(atoms), "first_call_s": first, "median_s": timing.median, "noisy": timing.noisy,
           "energy_ev": energy, "forces": forces}
    if reference is not None:
        row["max_abs_force_error_ev_per_a"] = float(np.abs(forces - reference["forces"]).max())
        row["energy_per_atom_error_ev"] = abs(energy - reference["energy_ev"]) / len(atoms)
    return row


def fastest_ratios(rows: list[dict]) -> dict[str, float]:
    """Per workload: the peer's fastest float32 median over ours (> 1: ours is faster)."""
    ratios = {}
    for workload in dict.fromkeys(row["workload"] for row in rows):
        timed = [row for row in rows if row["workload"] == workload and "median_s" in row and not row["option"].endswith("float64")]
        peers = [row["median_s"] for row in timed if row["side"] == "mace-torch"]
        ours = [row["median_s"] for row in timed if row["side"] == "mlff-export"]
        if peers and ours:
            ratios[workload] = min(peers) / min(ours)
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", required=True, help="factory of an interface module wrapping a MACE as .mace "
                        "(e.g. examples/byom/mace_model.py:make_model)")
    parser.add_argument("--backends", default="eager,cuda-graphs,compile-reduce-overhead", help="ours ('' for none)")
    parser.add_argument("--peer-options", default="eager-float64,eager,compile,cueq",
                        help=f"of {list(PEER_OPTIONS)}; the first is the parity reference")
    parser.add_argument("--water-atoms", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.peer_options.split(",")) - set(PEER_OPTIONS))
    if unknown:
        parser.error(f"unknown peer option(s) {unknown}; known: {list(PEER_OPTIONS)}")

    def fresh_adapter() -> torch.nn.Module:  # every side its own model: a GPU calculator moves the one it gets
        return load_model(args.model).module

    adapter = fresh_adapter()
    if not hasattr(adapter, "mace"):
        parser.error(f"{args.model} gives a {type(adapter).__name__} without a .mace (see examples/byom/mace_model.py)")
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    workloads = {"benzene": seed_molecule("C6H6"), f"water-{args.water_atoms}": water_box(args.water_atoms)}
    sides = [("mace-torch", option, lambda option=option: peer_calculator(fresh_adapter().mace, args.device, option))
             for option in args.peer_options.split(",")]
    sides += [("mlff-export", backend, lambda backend=backend: load_calculator(fresh_adapter(), args.device, backend=backend))
              for backend in args.backends.split(",") if backend]
    rows = []
    for workload, atoms in workloads.items():
        reference = None
        for side, option, make in sides:
            row = {"workload": workload, "side": side, "option": option}
            try:
                row |= measure(make(), atoms, device, args.repeats, reference)
            except Exception as error:  # noqa: BLE001 - reported as the row, the others still run
                row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            forces = row.pop("forces", None)
            if reference is None and side == "mace-torch" and forces is not None:
                reference = {"energy_ev": row["energy_ev"], "forces": forces}
            rows.append(row)
            with open(args.out / "peer_calculators.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    document = {"model": args.model, "rows": rows, "peer_over_ours": fastest_ratios(rows), "environment": describe_environment(device)}
    (args.out / "peer_calculators.json").write_text(json.dumps(document, indent=1))
    print(json.dumps(document["peer_over_ours"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
