"""ONNX export: parity with eager PyTorch through ONNX Runtime, dynamic sizes, graph checks, metadata.

Each model is exported once (export takes tens of seconds on a 2-core CPU) and the tests share the
files: the small PaiNN once per test run by ``mlff-export export`` (conftest.py), the others once
per module.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from conftest import make_small_painn, rattled, skip_without_onnxruntime_cuda, structure_zoo
from torch import nn

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

from mlff_export.export import ArtifactMetadataError, ExportError, read_metadata, to_onnx  # noqa: E402
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE  # noqa: E402
from mlff_export.export.precision import weights_sha256  # noqa: E402
from mlff_export.interface import INTERFACE_VERSION  # noqa: E402
from mlff_export.neighbors import batch_inputs, compute_pairs  # noqa: E402
from mlff_export.pair_layouts import NeighborTable  # noqa: E402
from mlff_export.runtime import load_calculator  # noqa: E402
from mlff_export.runtime.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeBucketBackend  # noqa: E402
from mlff_export.runtime.parity import compare_with_eager  # noqa: E402

CPU = torch.device("cpu")
THREADS = 2  # more than one: ORT's multi-threaded kernels must give the same numbers


class PerAtomEnergies(nn.Module):
    """Breaks the interface: returns an energy per atom [N], not per structure [B]."""

    cutoff = 4.0
    species = (1, 6, 7, 8)

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        return (positions * positions).sum(1)


@pytest.fixture(scope="module")
def painn():
    return make_small_painn()


@pytest.fixture(scope="module")
def painn_onnx(small_painn_export):
    """precision -> path of the exported small PaiNN (the ``painn`` fixture's weights; exported
    once per test run by ``mlff-export export``, see conftest.py)."""
    return small_painn_export["onnx"]


def inputs_for(structures, cutoff):
    return batch_inputs(structures, [compute_pairs(atoms, cutoff) for atoms in structures])


def assert_parity(backend, reference_model, structures, precision):
    """Backend vs eager float32 on ``structures`` (one call), within the precision's tolerances."""
    for name, deviation in compare_with_eager(backend, reference_model, structures, precision).items():
        assert deviation.passed, f"{precision} {name}: |difference| {deviation.difference:.3g} > {deviation.allowed:.3g}"


ZOO = structure_zoo()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_onnxruntime_matches_eager(painn, painn_onnx, precision, name):
    backend = OnnxRuntimeBackend(painn_onnx[precision], CPU, intra_op_threads=THREADS)
    assert_parity(backend, painn, [ZOO[name]], precision)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_mixed_batch_matches_eager(painn, painn_onnx, precision):
    """All molecules and cells and a 64-atom cell in one call (B=8): per-structure sums must not
    mix structures."""
    backend = OnnxRuntimeBackend(painn_onnx[precision], CPU, intra_op_threads=THREADS)
    supercell = rattled(bulk("C", "diamond", a=3.57, cubic=True) * (2, 2, 2), seed=5)
    assert_parity(backend, painn, [*ZOO.values(), supercell], precision)


def test_one_graph_runs_several_sizes(painn, painn_onnx):
    """One session, no re-export: a lone atom (N=1, B=1, no pairs), benzene, and a batch."""
    backend = OnnxRuntimeBackend(painn_onnx["fp32"], CPU, intra_op_threads=THREADS)
    batches = [[Atoms("H", positions=[[0.0, 0.0, 0.0]])], [ZOO["benzene"]], [ZOO["triclinic"], molecule("CH4")]]
    for structures in batches:
        assert_parity(backend, painn, structures, "fp32")
    assert len({sum(len(atoms) for atoms in structures) for structures in batches}) == 3


def test_padding_slots_give_finite_forces(painn, painn_onnx):
    """Padding slots are zero-length pairs; a table padded far beyond its longest row changes nothing."""
    inputs = inputs_for([ZOO["CH4"], ZOO["diamond-primitive"]], painn.cutoff)
    session = onnxruntime.InferenceSession(str(painn_onnx["fp32"]), providers=["CPUExecutionProvider"])
    compact = NEIGHBOR_TABLE.feeds(inputs)
    outputs = {}
    for extra_slots in (0, 7):
        feeds = dict(compact)
        table = NeighborTable.from_pair_list(
            inputs.pair_index, inputs.pair_shifts, inputs.num_atoms, compact["neighbor_index"].shape[1] + extra_slots
        )
        feeds.update(vars(table))
        outputs[extra_slots] = session.run(None, {name: tensor.numpy() for name, tensor in feeds.items()})
    for compact_output, padded_output in zip(outputs[0], outputs[7]):
        assert np.isfinite(padded_output).all()
        np.testing.assert_allclose(padded_output, compact_output, atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_neighbor_table_graph_has_no_scatter(painn_onnx, precision):
    op_counts = Counter(node.op_type for node in onnx.load(str(painn_onnx[precision])).graph.node)
    assert not {"ScatterND", "ScatterElements", "Scatter"} & set(op_counts), op_counts


def test_all_input_axes_are_symbolic(painn_onnx):
    graph = onnx.load(str(painn_onnx["fp32"])).graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        expected = NEIGHBOR_TABLE.input_axes[value.name]
        assert tuple(d.dim_param or d.dim_value for d in dims) == expected


def value_types(model_proto) -> dict[str, int]:
    """ONNX element type of every value of a graph, after strict shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model_proto, check_type=True, strict_mode=True).graph
    types = {value.name: value.type.tensor_type.elem_type for value in [*inferred.value_info, *inferred.input, *inferred.output]}
    types.update({tensor.name: tensor.data_type for tensor in inferred.initializer})
    return types


def test_fp16_graph_is_typed_body_half_geometry_float(painn_onnx):
    """Strongly typed FP16: the network's matrix products run in float16; the radial basis, the
    cosine cutoff and all outputs stay float32."""
    model_proto = onnx.load(str(painn_onnx["fp16"]))
    onnx.checker.check_model(model_proto, full_check=True)
    types = value_types(model_proto)
    float16, float32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    nodes = model_proto.graph.node
    products = [node for node in nodes if node.op_type in ("MatMul", "Gemm")]
    assert products and all(types[node.output[0]] == float16 for node in products)
    geometry = [node for node in nodes if node.op_type in ("Sin", "Cos")]
    assert geometry and all(types[node.output[0]] == float32 for node in geometry)
    assert all(types[value.name] == float32 for value in model_proto.graph.output)


def test_fp16_forces_are_finite_where_features_vanish_by_symmetry(painn, painn_onnx):
    """In the symmetric CH4 the carbon's vector features vanish: a float16 norm floor would give NaN."""
    backend = OnnxRuntimeBackend(painn_onnx["fp16"], CPU, intra_op_threads=THREADS)
    assert_parity(backend, painn, [molecule("CH4")], "fp16")


def test_metadata_round_trips(painn, painn_onnx):
    for precision, path in painn_onnx.items():
        metadata = read_metadata(path)
        assert metadata.interface_version == INTERFACE_VERSION
        assert metadata.cutoff == painn.cutoff and metadata.species == painn.species
        assert metadata.precision == precision and metadata.input_layout == "neighbor_table"
        assert metadata.weights_sha256 == weights_sha256(painn)
        assert metadata.force_method.startswith("conservative")
        assert metadata.torch_version == torch.__version__ and metadata.opset >= 18


def rewrite_metadata(source, destination, **changes):
    model_proto = onnx.load(str(source))
    props = {prop.key: prop.value for prop in model_proto.metadata_props}
    props.update({key: value for key, value in changes.items() if value is not None})
    for key in [key for key, value in changes.items() if value is None]:
        del props[key]
    del model_proto.metadata_props[:]
    onnx.helper.set_model_props(model_proto, props)
    onnx.save(model_proto, str(destination))
    return destination


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"interface_version": "0"}, "interface version '0'"),
        ({"cutoff": None}, r"lacks \['cutoff'\]"),
    ],
)
def test_reader_refuses_foreign_metadata_and_says_how_to_fix(painn_onnx, tmp_path, changes, message):
    path = rewrite_metadata(painn_onnx["fp32"], tmp_path / "changed.onnx", **changes)
    for read in (read_metadata, load_calculator):
        with pytest.raises(ArtifactMetadataError, match=message) as error:
            read(path)
        assert "mlff-export export" in str(error.value)


def test_reader_refuses_a_modified_graph(painn_onnx, tmp_path):
    model_proto = onnx.load(str(painn_onnx["fp32"]))
    model_proto.graph.node[-1].name = "renamed"
    onnx.save(model_proto, str(tmp_path / "modified.onnx"))
    with pytest.raises(ArtifactMetadataError, match="modified after export"):
        read_metadata(tmp_path / "modified.onnx")


def test_load_calculator_runs_onnx_files(painn, painn_onnx):
    atoms = ZOO["triclinic"].copy()
    atoms.calc = load_calculator(painn_onnx["fp32"], device="cpu")
    assert atoms.calc.backend.name == "onnxruntime"
    reference = ZOO["triclinic"].copy()
    reference.calc = load_calculator(painn)
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-4)
    np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), atol=1e-5)


@pytest.mark.parametrize(
    "make_model, options, message",
    [
        (lambda: nn.Linear(3, 1), {}, "cutoff"),
        (PerAtomEnergies, {}, r"output energy .* expected float \(4,\)"),
        (make_small_painn, {"opset": 13}, "opset"),
        (make_small_painn, {"precision": "int8"}, "precision must be one of"),
        ("not a module", {}, "expected a torch.nn.Module"),
    ],
    ids=["no-interface", "energy-per-atom", "old-opset", "unknown-precision", "not-a-module"],
)
def test_bad_input_is_refused_before_writing(tmp_path, make_model, options, message):
    model = make_model() if callable(make_model) else make_model
    with pytest.raises(ExportError, match=message):
        to_onnx(model, tmp_path / "out" / "model.onnx", **options)
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_execution_provider_matches_eager(painn, painn_onnx, precision):
    skip_without_onnxruntime_cuda()
    backend = OnnxRuntimeBackend(painn_onnx[precision], torch.device("cuda"))
    assert_parity(backend, painn, list(ZOO.values()), precision)


def test_bucket_sessions_match_eager_and_are_reused(painn, painn_onnx):
    """Fixed-shape sessions per bucket (what CUDA graphs need), run here on the CPU EP: padded
    batches and single structures give eager's numbers; a second structure of the same bucket
    reuses the session and its bound buffers without stale results."""
    backend = OnnxRuntimeBucketBackend(painn_onnx["fp32"], CPU)
    assert_parity(backend, painn, list(ZOO.values()), "fp32")
    first, second = ZOO["benzene"], rattled(molecule("C6H6"), seed=9)
    assert_parity(backend, painn, [first], "fp32")
    sessions = len(backend._buckets)
    assert_parity(backend, painn, [second], "fp32")
    assert len(backend._buckets) == sessions, "same bucket, same session"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_sessions_match_eager_across_replays(painn, painn_onnx, precision):
    """load_calculator on CUDA picks the CUDA-graph bucket backend; replays with new geometry
    (calculator path, inputs built on the GPU) track eager."""
    skip_without_onnxruntime_cuda()
    calc = load_calculator(painn_onnx[precision], device="cuda")
    assert isinstance(calc.backend, OnnxRuntimeBucketBackend)
    eager = load_calculator(painn)
    tolerance = 1e-4 if precision == "fp32" else 5e-2
    atoms = ZOO["benzene"].copy()
    for step in range(5):  # ORT runs twice uncaptured, then captures, then replays
        atoms.positions[0, 0] += 0.01 * (-1) ** step
        got, want = calc.predict([atoms])[0], eager.predict([atoms])[0]
        atoms.calc = calc
        np.testing.assert_allclose(atoms.get_forces(), want["forces"], atol=tolerance)
        np.testing.assert_allclose(got["forces"], want["forces"], atol=tolerance)
    assert_parity(calc.backend, painn, list(ZOO.values()), precision)


def test_cli_exports_a_checkpoint_and_checks_parity(small_painn_export):
    """``mlff-export export`` of a checkpoint card (run once per test run, in conftest.py)."""
    out = small_painn_export["stdout"]
    assert small_painn_export["exit_code"] == 0, out
    assert all(path.is_file() for path in small_painn_export["onnx"].values())
    assert out.count("nodes") == 2 and "initializers" in out and out.rstrip().endswith("PASSED")


def test_cli_refuses_an_unknown_precision_in_one_line(tmp_path, capsys):
    from mlff_export.cli import main

    assert main(["export", "--out", str(tmp_path), "--precision", "fp8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "fp8" in err and not list(tmp_path.iterdir())


def test_cli_refuses_a_checkpoint_whose_config_and_weights_disagree(tmp_path, capsys):
    import json

    from mlff_export.checkpoint import save_checkpoint
    from mlff_export.cli import main

    from mlff_export.checkpoint import card_sha256

    card = save_checkpoint(make_small_painn(), tmp_path / "small.json")
    values = json.loads(card.read_text())
    values["config"]["num_features"] = 16
    values["card_sha256"] = card_sha256(values)  # a writer's bug: sealed, yet config and weights disagree
    card.write_text(json.dumps(values))
    assert main(["export", "--checkpoint", str(card), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "disagree" in err and not (tmp_path / "out").exists()
