"""A user's model through our calculator against its own package's ASE calculator.

mace-torch's ``MACECalculator``, hippynn's ``HippynnCalculator`` and graph-pes' ``GraphPESCalculator``, built by the peer benchmark
(``bench/peer_calculators.py``) on the same weights as our adapters (``examples/byom/``, seeded),
float64: energy, forces and stress must agree to rounding on a molecule and on a periodic cell
smaller than twice the cutoff. This is the parity that the benchmark's peer rows stand on (issue 14,
goal 5).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlff_export.model_intake import load_model
from mlff_export.runtime import load_calculator

pytestmark = pytest.mark.third_party
BYOM = Path(__file__).resolve().parents[1] / "examples" / "byom"
ADAPTERS = {"mace-torch": BYOM / "mace_model.py", "hippynn": BYOM / "hippynn_hipnn.py", "graph-pes": BYOM / "graph_pes_tensornet.py"}


def adapter_of(package):
    pytest.importorskip({"mace-torch": "mace.calculators", "hippynn": "hippynn", "graph-pes": "graph_pes"}[package],
                        reason=f"{package} is not installed (pip install -e .[byom-examples])")
    return load_model(f"{ADAPTERS[package]}:make_model").module


def peer_of(adapter):
    from mlff_export.bench.peer_calculators import PEERS

    (peer,) = [peer for peer in PEERS if peer.serves(adapter)]
    return peer


@pytest.mark.parametrize("package", list(ADAPTERS))
@pytest.mark.parametrize(
    "atoms",
    [molecule("C6H6"), bulk("C", "diamond", a=3.57) * (1, 1, 2)],
    ids=["benzene", "diamond-cell-smaller-than-the-cutoff"],
)
def test_our_calculator_and_the_packages_own_agree(package, atoms):
    peer = peer_of(adapter_of(package))
    assert peer.package == package
    theirs = peer.calculator(adapter_of(package), "cpu", "eager-float64")
    ours = load_calculator(adapter_of(package), dtype="float64")
    atoms.rattle(0.05, seed=1)
    expected, got = atoms.copy(), atoms.copy()
    expected.calc, got.calc = theirs, ours
    energy = expected.get_potential_energy()
    assert abs(got.get_potential_energy() - energy) <= 1e-9 * max(1.0, abs(energy))
    forces = expected.get_forces()
    assert np.abs(forces).max() > 1e-3  # rattled: forces that a sign or unit error would change
    np.testing.assert_allclose(got.get_forces(), forces, atol=1e-9)
    if atoms.pbc.all():
        np.testing.assert_allclose(got.get_stress(), expected.get_stress(), atol=1e-10)


@pytest.mark.parametrize("package, peer_options", [("mace-torch", "eager,cueq"), ("hippynn", "eager,custom-kernels"),
                                                   ("graph-pes", "eager-float64,eager")])
def test_peer_benchmark_rows_side_by_side(tmp_path, package, peer_options):
    """The peer benchmark on the CPU at toy sizes: the peer's eager row is the reference; its
    second option and our eager row on the same model agree with it within float32 rounding, or are
    a row with the error that stopped them (hippynn's custom kernels need a GPU); ours gets a speed
    ratio; a backend this machine cannot run (cuda-graphs: no GPU) is a row with its error."""
    from mlff_export.bench.peer_calculators import main

    adapter_of(package)
    assert main(["--model", f"{ADAPTERS[package]}:make_model", "--out", str(tmp_path), "--device", "cpu", "--water-atoms", "24",
                 "--backends", "eager,cuda-graphs", "--peer-options", peer_options, "--repeats", "3"]) == 0
    document = json.loads((tmp_path / "peer_calculators.json").read_text())
    rows = {(row["workload"], row["side"], row["option"]): row for row in document["rows"]}
    reference, second = peer_options.split(",")
    assert set(rows) == {(w, s, o) for w in ("benzene", "water-24") for s, o in
                         ((package, reference), (package, second), ("mlff-export", "eager"), ("mlff-export", "cuda-graphs"))}
    for workload in ("benzene", "water-24"):
        assert "CUDA" in rows[workload, "mlff-export", "cuda-graphs"]["error"]
        for row in (rows[workload, package, second], rows[workload, "mlff-export", "eager"]):
            if "error" in row and row["option"] == "custom-kernels":
                continue  # hippynn's GPU kernels on a CPU-only machine
            float32_spacing = abs(float(np.spacing(np.float32(row["energy_ev"]))))
            assert row["energy_per_atom_error_ev"] * row["atoms"] <= 4 * max(float32_spacing, 1e-6 * abs(row["energy_ev"]))
            assert row["max_abs_force_error_ev_per_a"] < 1e-4
        assert rows[workload, "mlff-export", "eager"]["median_s"] > 0 and document["peer_over_ours"][workload] > 0
    assert len((tmp_path / "peer_calculators.jsonl").read_text().splitlines()) == 8


def test_a_model_no_peer_serves_is_a_usage_error(tmp_path, capsys):
    from mlff_export.bench.peer_calculators import main

    with pytest.raises(SystemExit):
        main(["--model", "tests/byom_models.py:make_student", "--out", str(tmp_path), "--device", "cpu"])
    assert "which no peer calculator serves (mace-torch, hippynn, graph-pes" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_a_usage_error_before_any_row(tmp_path, capsys):
    """Not a file of error rows and a traceback from the environment's description."""
    from mlff_export.bench.peer_calculators import main

    with pytest.raises(SystemExit):
        main(["--model", "tests/byom_models.py:make_student", "--out", str(tmp_path / "out"), "--device", "cuda"])
    assert "--device cuda: no CUDA GPU is visible here; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
