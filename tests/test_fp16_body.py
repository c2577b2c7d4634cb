"""The FP16 body of the joint-graph backends (``load_calculator(..., precision="fp16")``).

The split is the exporter's (:mod:`mlff_export.export.precision`): a pair-energy model's weights
in float16, any other model's weight products in float16; geometry, sums, forces and virial in
float32. Its numbers must stay within the validated FP16 tolerances of eager float32, and must
come from float16 (a backend that silently ran float32 would pass the tolerances too).
"""

from __future__ import annotations

import pytest
import torch
from ase.build import molecule
from byom_models import make_student
from conftest import make_small_painn, rattled

from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime import load_calculator
from mlff_export.runtime.eager import EagerBackend
from mlff_export.runtime.joint_graph import JointGraphBackend
from mlff_export.validation.tolerances import default_tolerances

CPU = torch.device("cpu")
MODELS = {"painn (half weights)": make_small_painn, "student (half weight products)": make_student}


def float16_nodes(graph: torch.fx.GraphModule) -> int:
    """Nodes of ``graph`` whose traced value is a float16 tensor or that cast to float16."""
    return sum(
        1 for node in graph.graph.nodes
        if node.kwargs.get("dtype") == torch.float16
        or (isinstance(node.meta.get("val"), torch.Tensor) and node.meta["val"].dtype == torch.float16)
    )


@pytest.mark.parametrize("make_model", MODELS.values(), ids=MODELS.keys())
def test_fp16_body_keeps_the_fp16_tolerances_of_eager_float32(make_model):
    atoms = rattled(molecule("CH3CH2OH"))
    model = make_model()
    inputs = batch_inputs([atoms], [compute_pairs(atoms, float(model.cutoff))])
    want = EagerBackend(model, CPU, torch.float32).evaluate(inputs)
    half = JointGraphBackend(model, CPU, precision="fp16")
    have = half.evaluate(inputs)
    assert half.precision == "fp16" and float16_nodes(half.graph) > 0
    tolerances = default_tolerances("fp16").outputs
    energy_error = abs(have["energy"].item() - want["energy"].item()) / len(atoms)
    assert energy_error <= tolerances["energy_per_atom"].atol
    force_error = (have["forces"] - want["forces"]).abs().max().item()
    assert force_error <= tolerances["forces"].atol
    assert force_error > 1e-6, "the forces are float32's: the body did not run in float16"
    assert JointGraphBackend(model, CPU).precision == "fp32"


def test_calculator_passes_the_precision_to_its_joint_graph_backend(small_model):
    for backend in ("compile", "compile-reduce-overhead"):
        calc = load_calculator(small_model, backend=backend, precision="fp16", compile_cache=False)
        assert calc.backend.precision == "fp16"
        assert float16_nodes(calc.backend.graph) > 0
    assert float16_nodes(load_calculator(small_model, backend="compile", compile_cache=False).backend.graph) == 0

