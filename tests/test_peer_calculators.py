"""A user's MACE through our calculator against mace-torch's own ASE calculator (``MACECalculator``).

The same weights behind both (``examples/byom/mace_model.py``, seeded), float64: energy, forces and
stress must agree to rounding on a molecule and on a periodic cell smaller than twice the cutoff.
This is the parity that the benchmark's rows of the peer's own calculator stand on (issue 14, goal 5).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule

from mlff_export.model_intake import load_model
from mlff_export.runtime import load_calculator

pytestmark = pytest.mark.third_party
mace_calculators = pytest.importorskip("mace.calculators", reason="mace-torch is not installed (pip install -e .[byom-examples])")

MACE_ADAPTER = Path(__file__).resolve().parents[1] / "examples" / "byom" / "mace_model.py"


def mace_adapter():
    return load_model(f"{MACE_ADAPTER}:make_model").module


@pytest.mark.parametrize(
    "atoms",
    [molecule("C6H6"), bulk("C", "diamond", a=3.57) * (1, 1, 2)],
    ids=["benzene", "diamond-cell-smaller-than-the-cutoff"],
)
def test_our_calculator_and_maces_own_agree(atoms):
    adapter = mace_adapter()
    theirs = mace_calculators.MACECalculator(models=[copy.deepcopy(adapter.mace)], device="cpu", default_dtype="float64")
    ours = load_calculator(adapter, dtype="float64")
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


def test_peer_benchmark_rows_side_by_side(tmp_path):
    """The peer benchmark on the CPU at toy sizes: mace-torch's eager row is the reference; its
    cuEquivariance row and our eager row on the same MACE agree with it within float32 rounding,
    and ours gets a speed ratio; a backend this machine cannot run (cuda-graphs: no GPU) is a row
    with its error."""
    from mlff_export.bench.peer_calculators import main

    assert main(["--model", f"{MACE_ADAPTER}:make_model", "--out", str(tmp_path), "--device", "cpu", "--water-atoms", "24",
                 "--backends", "eager,cuda-graphs", "--peer-options", "eager,cueq", "--repeats", "3"]) == 0
    document = json.loads((tmp_path / "peer_calculators.json").read_text())
    rows = {(row["workload"], row["side"], row["option"]): row for row in document["rows"]}
    assert set(rows) == {(w, s, o) for w in ("benzene", "water-24") for s, o in
                         (("mace-torch", "eager"), ("mace-torch", "cueq"), ("mlff-export", "eager"), ("mlff-export", "cuda-graphs"))}
    for workload in ("benzene", "water-24"):
        assert "CUDA" in rows[workload, "mlff-export", "cuda-graphs"]["error"]
        for row in (rows[workload, "mace-torch", "cueq"], rows[workload, "mlff-export", "eager"]):
            float32_spacing = abs(float(np.spacing(np.float32(row["energy_ev"]))))  # ~5e-4 eV at MACE's -6000 eV totals
            assert row["energy_per_atom_error_ev"] * row["atoms"] <= 4 * float32_spacing
            assert row["max_abs_force_error_ev_per_a"] < 1e-4
        assert rows[workload, "mlff-export", "eager"]["median_s"] > 0 and document["peer_over_ours"][workload] > 0
    assert len((tmp_path / "peer_calculators.jsonl").read_text().splitlines()) == 8
