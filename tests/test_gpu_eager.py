"""The eager backend on CUDA gives the CPU's numbers (run on a GPU machine: ``pytest -m gpu``)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from conftest import structure_zoo

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["benzene", "triclinic", "mixed-pbc-slab"])
def test_cuda_matches_cpu(name):
    atoms = structure_zoo()[name]
    results = []
    for device in ("cpu", "cuda"):
        copy = atoms.copy()
        copy.calc = load_calculator(REFERENCE_CHECKPOINT, device=device)
        results.append((copy.get_potential_energy(), copy.get_forces()))
    assert results[1][0] == pytest.approx(results[0][0], abs=1e-4)
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-4)


def test_explicit_device_index_is_honoured():
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda:0")
    atoms = molecule("CH4")
    atoms.calc = calc
    atoms.get_forces()
    assert next(calc.backend.model.parameters()).device.index == 0
