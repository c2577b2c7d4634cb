"""A user's MACE through our calculator against mace-torch's own ASE calculator (``MACECalculator``).

The same weights behind both (``examples/byom/mace_model.py``, seeded), float64: energy, forces and
stress must agree to rounding on a molecule and on a periodic cell smaller than twice the cutoff.
This is the parity that the benchmark's rows of the peer's own calculator stand on (issue 14, goal 5).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule

from mlff_export.runtime import load_calculator

pytestmark = pytest.mark.third_party
mace_calculators = pytest.importorskip("mace.calculators", reason="mace-torch is not installed (pip install -e .[byom-examples])")

MACE_ADAPTER = Path(__file__).resolve().parents[1] / "examples" / "byom" / "mace_model.py"


def mace_adapter():
    spec = importlib.util.spec_from_file_location("mace_model_example", MACE_ADAPTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_model()


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
