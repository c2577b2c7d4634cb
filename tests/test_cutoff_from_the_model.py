"""Every loader takes the cutoff from the model or the artifact, never from a default.

The models here have cutoffs above (6 Å) and below (3 Å) every default in the code (4, 4.5 and
5 Å), so a cutoff taken from the wrong place changes the numbers: a neighbor list at 5 Å misses
the 5-6 Å pairs of a 6 Å model. Each calculator's energy and forces are compared with the eager
model evaluated on a neighbor list built, independently, at the model's own cutoff.
"""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk, molecule
from conftest import rattled

from mlff_export.checkpoint import save_checkpoint
from mlff_export.export.parity import compare_with_tolerances
from mlff_export.model import PaiNN, PaiNNConfig
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime import load_calculator
from mlff_export.runtime.eager import EagerBackend

CUTOFFS = (3.0, 6.0)
LOADERS = ("module", "checkpoint card", "onnx")
# Diamond (8-atom cubic cell): pairs at 1.5, 2.5, 3.0, ..., 5.0, 5.4, 5.7 and 5.9 Å.
STRUCTURES = {"diamond": rattled(bulk("C", "diamond", a=3.57, cubic=True), seed=8), "biphenyl": rattled(molecule("biphenyl"))}


def painn_with_cutoff(cutoff: float) -> PaiNN:
    torch.manual_seed(3)
    model = PaiNN(PaiNNConfig(num_features=16, num_interactions=2, num_radial=8, cutoff=cutoff))
    model.energy_scale.fill_(10.0)  # forces of ~1 eV/Å: a missing pair shows far above float32 noise
    return model.eval()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """cutoff -> loader -> what ``load_calculator`` is given; ``"model"``: the module itself."""
    from mlff_export.export import to_onnx

    made = {}
    for cutoff in CUTOFFS:
        model = painn_with_cutoff(cutoff)
        folder = tmp_path_factory.mktemp(f"cutoff-{cutoff:g}")
        made[cutoff] = {
            "model": model,
            "module": painn_with_cutoff(cutoff),
            "checkpoint card": save_checkpoint(model, folder / "painn.json"),
            "onnx": to_onnx(model, folder / "painn.fp32.onnx"),
        }
    return made


@pytest.mark.parametrize("name", sorted(STRUCTURES))
@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_calculator_results_are_those_at_the_models_own_cutoff(artifacts, cutoff, loader, name):
    atoms = STRUCTURES[name].copy()
    atoms.calc = load_calculator(artifacts[cutoff][loader])
    model = artifacts[cutoff]["model"]
    inputs = batch_inputs([atoms], [compute_pairs(atoms, cutoff)])
    expected = EagerBackend(model, torch.device("cpu"), torch.float32).evaluate(inputs)
    actual = {
        "energy": torch.tensor([atoms.get_potential_energy()]),
        "forces": torch.from_numpy(atoms.get_forces()),
        "virial": expected["virial"],  # stress is the cell's business, compared elsewhere
    }
    deviations = compare_with_tolerances(actual, expected, "fp32", inputs.structure_index)
    assert all(deviation.passed for deviation in deviations.values()), (loader, deviations)


def test_the_structures_have_pairs_between_the_default_and_the_larger_cutoff():
    """Guard: without pairs in 5-6 Å a 5 Å default could not change a 6 Å model's numbers."""
    for atoms in STRUCTURES.values():
        assert compute_pairs(atoms, 6.0).pair_index.shape[1] > compute_pairs(atoms, 5.0).pair_index.shape[1]
