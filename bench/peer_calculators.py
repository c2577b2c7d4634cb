"""A peer's own ASE calculator beside ours, on the same model (issue 14, goal 5): MACE, HIP-NN-TS, TensorNet.

    python3 -m mlff_export.bench.peer_calculators --model examples/byom/mace_model.py:make_model --out DIR
        [--device cuda] [--backends eager,cuda-graphs,compile-reduce-overhead]
        [--peer-options eager-float64,eager,compile,cueq] [--water-atoms 10000] [--repeats 20]

``--model`` names a factory of an interface module that wraps a third-party model: the adapters of
``examples/byom/`` (a trained model goes through them the same way). Its package's own calculator
is the peer (:data:`PEERS`): mace-torch's ``MACECalculator`` for an adapter with a ``.mace``, at its
documented options ``eager`` (``compile_mode=None``), ``compile`` (``compile_mode="default"``),
``cueq`` (``enable_cueq=True``, needs cuEquivariance); hippynn's ``HippynnCalculator`` for one
with a ``.network`` and ``.readout``, with hippynn's plain PyTorch sums (``eager``) or its custom
GPU kernels (``custom-kernels``); graph-pes' ``GraphPESCalculator`` for a graph-pes ``.model``
(``eager``: graph-pes documents no faster inference option). Each family's ``eager-float64`` is the parity reference (float32
energy sums carry float32 rounding of ~1e-7 relative per addition) and takes no part in the speed
ratio. Ours are :func:`load_calculator` on the adapter with each ``--backends``.
Workloads: benzene and periodic water of about ``--water-atoms`` atoms, each call through the
calculator (neighbor search included) on a geometry moved by 1e-4 Å. A row: first call (compile or
capture), median call, and parity with the energy and forces of the peer's first option. Rows go to
``DIR/peer_calculators.jsonl`` as they are measured; ``DIR/peer_calculators.json`` adds, per
workload, the peer's fastest over ours, and the environment. An option the machine cannot run is a
row with its error, not a missing row.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units

from mlff_export.bench.environment import describe_environment
from mlff_export.bench.timing import first_call, time_calls
from mlff_export.bench.workloads import seed_molecule, water_box
from mlff_export.cli.options import add_device_option, resolve_device_or_exit
from mlff_export.model_intake import load_model
from mlff_export.runtime import load_calculator


MACE_OPTIONS = {
    "eager-float64": {"compile_mode": None, "default_dtype": "float64"},
    "eager": {"compile_mode": None, "default_dtype": "float32"},
    "compile": {"compile_mode": "default", "default_dtype": "float32"},
    "cueq": {"enable_cueq": True, "default_dtype": "float32"},
}
"""MACECalculator's keyword arguments per row name."""


def option_dtype(option: str) -> torch.dtype:
    return torch.float64 if option == "eager-float64" else torch.float32


def mace_calculator(adapter: torch.nn.Module, device: str, option: str):
    """mace-torch's own calculator on a copy of the adapter's MACE: copying scripts e3nn's generated
    code, which gives the TorchScript form a MACE loaded from a ``.model`` file has."""
    from mace.calculators import MACECalculator

    return MACECalculator(models=[copy.deepcopy(adapter.mace)], device=device, **MACE_OPTIONS[option])


def hippynn_calculator(adapter: torch.nn.Module, device: str, option: str):
    """hippynn's own calculator (its ASE neighbor list, its graph) on the adapter's network and
    readout; ``custom-kernels`` selects hippynn's best GPU kernels for its sums (process-wide, as
    hippynn does; the adapters' factories select plain PyTorch again)."""
    import hippynn
    from hippynn.graphs import inputs, networks, targets
    from hippynn.interfaces.ase_interface import HippynnCalculator

    hippynn.custom_kernels.set_custom_kernels(True if option == "custom-kernels" else "pytorch")
    species, positions = inputs.SpeciesNode(db_name="Z"), inputs.PositionsNode(db_name="R")
    cell = inputs.CellNode(db_name="C")
    network = networks.HipnnVec("HIPNN", (species, positions, cell), module=copy.deepcopy(adapter.network), periodic=True)
    energy = targets.HEnergyNode("HEnergy", network, module=copy.deepcopy(adapter.readout))
    return HippynnCalculator(energy, en_unit=units.eV, dist_unit=units.Angstrom).to(option_dtype(option)).to(torch.device(device))


def graph_pes_calculator(adapter: torch.nn.Module, device: str, option: str):
    """graph-pes' own calculator (its neighbor list, its graph) on a copy of the adapter's model;
    ``eager-float64`` builds its graphs in float64 too (graph-pes reads torch's default dtype)."""
    from graph_pes.utils.calculator import GraphPESCalculator

    class DefaultDtypeCalculator(GraphPESCalculator):
        def calculate(self, *args, **kwargs):
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                super().calculate(*args, **kwargs)
            finally:
                torch.set_default_dtype(previous)

    dtype = option_dtype(option)
    return DefaultDtypeCalculator(copy.deepcopy(adapter.model).to(dtype), device=device)


@dataclass(frozen=True)
class Peer:
    """A third-party package's own calculator: which adapters it serves, its options (the first the reference)."""

    package: str
    serves: Callable[[torch.nn.Module], bool]
    options: tuple[str, ...]
    calculator: Callable[[torch.nn.Module, str, str], object]


PEERS = (
    Peer("mace-torch", lambda adapter: hasattr(adapter, "mace"), tuple(MACE_OPTIONS), mace_calculator),
    Peer("hippynn", lambda adapter: hasattr(adapter, "network") and hasattr(adapter, "readout"),
         ("eager-float64", "eager", "custom-kernels"), hippynn_calculator),
    Peer("graph-pes", lambda adapter: type(getattr(adapter, "model", None)).__module__.startswith("graph_pes"),
         ("eager-float64", "eager"), graph_pes_calculator),
)


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
        peers = [row["median_s"] for row in timed if row["side"] != "mlff-export"]
        ours = [row["median_s"] for row in timed if row["side"] == "mlff-export"]
        if peers and ours:
            ratios[workload] = min(peers) / min(ours)
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    add_device_option(parser)
    parser.add_argument("--model", required=True, help="factory of an interface module wrapping a third-party model "
                        "(e.g. examples/byom/mace_model.py:make_model, examples/byom/hippynn_hipnn.py:make_model)")
    parser.add_argument("--backends", default="eager,cuda-graphs,compile-reduce-overhead", help="ours ('' for none)")
    parser.add_argument("--peer-options", help="the peer's options to run, the first the parity reference "
                        "(default: all of the peer's, eager in float64 first)")
    parser.add_argument("--water-atoms", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    args.device = resolve_device_or_exit(parser, args.device)

    def fresh_adapter() -> torch.nn.Module:  # every side its own model: a GPU calculator moves the one it gets
        return load_model(args.model).module

    adapter = fresh_adapter()
    peer = next((peer for peer in PEERS if peer.serves(adapter)), None)
    if peer is None:
        parser.error(f"{args.model} gives a {type(adapter).__name__}, which no peer calculator serves "
                     f"({', '.join(p.package for p in PEERS)}: see examples/byom/)")
    options = args.peer_options.split(",") if args.peer_options else list(peer.options)
    unknown = sorted(set(options) - set(peer.options))
    if unknown:
        parser.error(f"unknown {peer.package} option(s) {unknown}; known: {list(peer.options)}")
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    workloads = {"benzene": seed_molecule("C6H6"), f"water-{args.water_atoms}": water_box(args.water_atoms)}
    sides = [(peer.package, option, lambda option=option: peer.calculator(fresh_adapter(), args.device, option))
             for option in options]
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
            if reference is None and side == peer.package and forces is not None:
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
