"""Traced joint graphs kept across processes (runtime/traced_graphs.py): a later process gets the
same graph without tracing, and a stored graph made for anything else — another model, weights,
hyperparameter, tracer, torch, device or precision — or one that no longer matches the model, or a
damaged or edited file, is never used."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys

import pytest
import torch

import mlff_export.runtime.joint_graph as joint_graph_module
from ase.build import molecule

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.export.joint_graph import table_example_inputs, trace_joint_graph
from mlff_export.model import PaiNN, PaiNNConfig
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime.joint_graph import traced_in_precision
from mlff_export.runtime.traced_graphs import TracedGraphKey, TracedGraphStore, rebuilt_graph, stored_form
from byom_models import make_student

CPU = torch.device("cpu")


def tiny_painn(seed: int = 0, **config) -> PaiNN:
    torch.manual_seed(seed)
    return PaiNN(PaiNNConfig(**{"num_features": 8, "num_interactions": 1, "num_radial": 4, "cutoff": 4.0, **config})).eval()


def larger_table() -> tuple[torch.Tensor, ...]:
    """Neighbor-table inputs of other sizes than the tracing example's (11 molecules)."""
    structures = [molecule(name) for name in ("C6H6", "CH3CH2OH", "H2O", "NH3", "CH4", "C2H2", "HCN", "CO2", "N2", "O2", "H2")]
    return tuple(NEIGHBOR_TABLE.feeds(batch_inputs(structures, [compute_pairs(atoms, 4.0) for atoms in structures])).values())


def outputs(graph: torch.fx.GraphModule, args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [output.detach().clone() for output in graph(*args)]


@pytest.mark.parametrize(
    ("make_model", "precision"),
    [(tiny_painn, "fp32"), (tiny_painn, "fp16"), (make_student, "fp32"), (make_student, "fp16")],
    ids=["painn-fp32", "painn-half-body", "users-scatter-model-fp32", "users-scatter-model-half-products"],
)
def test_a_later_process_gets_the_same_graph_without_tracing(tmp_path, monkeypatch, make_model, precision):
    """The first call traces and stores; a second (a new process as far as the store can tell:
    nothing is shared but the folder) must not trace, and its graph gives the first one's numbers
    on the example and on other sizes. The reference PaiNN (traced on the table, FP16 half body)
    and a user's scatter model (rewritten to the table, FP16 weight products) alike."""
    model = make_model()
    _, first, first_examples = traced_in_precision(model, precision, CPU, tmp_path)
    assert list(tmp_path.glob("*/joint-graph.safetensors")), "nothing was stored"

    def no_trace(*args, **kwargs):
        raise AssertionError("traced again although the stored graph matches")

    monkeypatch.setattr(joint_graph_module, "trace_joint_graph", no_trace)
    _, second, second_examples = traced_in_precision(make_model(), precision, CPU, tmp_path)
    assert second is not first and second.code == first.code
    for args in (first_examples, larger_table()):
        for got, want in zip(outputs(second, args), outputs(first, args)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for got, want in zip(second_examples, first_examples):
        assert torch.equal(got, want)


def test_the_stored_graph_gives_the_traced_graphs_numbers():
    """What is stored (code and tensors) rebuilds a graph equal to the trace on other sizes too."""
    graph, _ = trace_joint_graph(tiny_painn())
    code, functions, tensors, parameters = stored_form(graph)
    rebuilt = rebuilt_graph(code, functions, tensors, parameters)
    assert parameters and set(parameters) <= set(tensors)
    args = larger_table()
    for got, want in zip(outputs(rebuilt, args), outputs(graph, args)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_the_key_changes_with_everything_a_graph_depends_on(monkeypatch):
    key = TracedGraphKey.of(tiny_painn(), CPU, "fp32")
    changed = {
        "weights": TracedGraphKey.of(tiny_painn(seed=1), CPU, "fp32"),
        "architecture": TracedGraphKey.of(tiny_painn(num_interactions=2), CPU, "fp32"),
        "cutoff (a hyperparameter, not a weight)": TracedGraphKey.of(tiny_painn(cutoff=5.0), CPU, "fp32"),
        "the model's class": TracedGraphKey.of(make_student(), CPU, "fp32"),
        "precision": TracedGraphKey.of(tiny_painn(), CPU, "fp16"),
        "device": TracedGraphKey.of(tiny_painn(), torch.device("meta"), "fp32"),
        "torch": dataclasses.replace(key, torch="2.11.0"),
    }
    assert TracedGraphKey.of(tiny_painn(), CPU, "fp32") == key  # same model, same key
    for what, other in changed.items():
        assert other.digest != key.digest, what
    import mlff_export.runtime.traced_graphs as traced_graphs

    monkeypatch.setattr(traced_graphs, "source_sha256", lambda files: f"other source {len(files)}")
    assert TracedGraphKey.of(tiny_painn(), CPU, "fp32").digest != key.digest, "mlff-export's or the model's source"


def test_a_stored_graph_that_no_longer_matches_the_model_is_traced_again(tmp_path, caplog):
    """A helper in another file changed (not in the key): simulated by storing another model's
    graph under this model's key. The check on the example catches it, the model is traced again
    and its own graph replaces the stale one."""
    model, other = tiny_painn(), tiny_painn(seed=1)
    store = TracedGraphStore(tmp_path, TracedGraphKey.of(model, CPU, "fp32"))
    store.save(trace_joint_graph(other)[0])
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        _, graph, args = traced_in_precision(model, "fp32", CPU, tmp_path)
    assert "differs from the model" in caplog.text
    for got, want in zip(outputs(graph, args), outputs(trace_joint_graph(model)[0], args)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        traced_in_precision(model, "fp32", CPU, tmp_path)
    assert "differs" not in caplog.text, "the retraced graph was not stored in place of the stale one"


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda store: store.graph_path.write_bytes(store.graph_path.read_bytes().replace(b"aten.mul", b"aten.add", 1)),
         "does not match the SHA-256"),
        (lambda store: store.manifest_path.write_text(json.dumps({**json.loads(store.manifest_path.read_text()), "key": {}})),
         "made for another"),
        (lambda store: store.graph_path.chmod(0o666), "writable by others"),
    ],
    ids=["edited-code", "manifest-of-another-key", "file-writable-by-others"],
)
def test_an_edited_or_unsafe_stored_graph_is_not_used(tmp_path, caplog, spoil, reason):
    model = tiny_painn()
    store = TracedGraphStore(tmp_path, TracedGraphKey.of(model, CPU, "fp32"))
    store.save(trace_joint_graph(model)[0])
    spoil(store)
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        assert store.load() is None
    assert reason in caplog.text


def custom_offset(tensor: torch.Tensor) -> torch.Tensor:
    return tensor + 1.0


def test_a_graph_whose_code_needs_more_than_torch_is_not_stored(tmp_path, caplog):
    """A graph calling a Python function of its own (not an aten op) would not rebuild from its code alone."""
    graph, _ = trace_joint_graph(tiny_painn())
    output = next(node for node in graph.graph.nodes if node.op == "output")
    with graph.graph.inserting_before(output):
        first = output.args[0][0]
        shifted = graph.graph.call_function(custom_offset, (first,))
    output.args = ((shifted, *output.args[0][1:]),)
    graph.recompile()
    store = TracedGraphStore(tmp_path, TracedGraphKey.of(tiny_painn(), CPU, "fp32"))
    with caplog.at_level(logging.INFO, logger="mlff_export"):
        assert store.save(graph) is graph
    assert "custom_offset" in caplog.text and not store.folder.exists()


def test_the_store_reads_no_pickle(tmp_path):
    """The stored graph is safetensors (tensors and text): a new process rebuilds it with the
    unpickler forbidden."""
    model = tiny_painn()
    store = TracedGraphStore(tmp_path, TracedGraphKey.of(model, CPU, "fp32"))
    store.save(trace_joint_graph(model)[0])
    child = (
        "import pickle, sys, torch\n"
        "from mlff_export.runtime.traced_graphs import TracedGraphKey, TracedGraphStore\n"
        "from mlff_export.model import PaiNN, PaiNNConfig\n"
        "CPU = torch.device('cpu')\n"
        "torch.manual_seed(0)\n"
        "model = PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()\n"
        "def refuse(*args, **kwargs): raise AssertionError('unpickled')\n"
        "pickle.loads = pickle.load = torch.load = refuse\n"
        "graph = TracedGraphStore(sys.argv[1], TracedGraphKey.of(model, CPU, 'fp32')).load()\n"
        "assert graph is not None\n"
        "print(float(graph(*__import__('mlff_export.export.joint_graph', fromlist=['x']).table_example_inputs(model.species, 'cpu'))[0].sum()))\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with torch.no_grad():
        expected = float(trace_joint_graph(model)[0](*table_example_inputs(model.species, CPU))[0].sum())
    assert float(done.stdout.strip()) == pytest.approx(expected, abs=1e-4)


MODEL_SOURCE = '''
import torch
from mlff_export.model import PaiNN, PaiNNConfig


class UsersPaiNN(PaiNN):
    """A user's subclass in a file of its own."""


def make():
    torch.manual_seed(0)
    return UsersPaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
'''


def test_the_key_changes_with_the_source_file_of_the_models_class_and_not_with_train_mode(tmp_path):
    """Editing the file that defines the model's class (a comment is enough) changes the key; the
    training flag (the trace is always made in eval mode) does not."""
    from mlff_export.model_intake import load_model

    path = tmp_path / "users_model.py"
    path.write_text(MODEL_SOURCE)
    model = load_model(f"{path}:make").module
    key = TracedGraphKey.of(model, CPU, "fp32")
    assert TracedGraphKey.of(model.train(), CPU, "fp32") == key
    path.write_text(MODEL_SOURCE + "\n# edited\n")
    assert TracedGraphKey.of(load_model(f"{path}:make").module.eval(), CPU, "fp32").digest != key.digest


def test_the_rebuilt_graph_keeps_frozen_parameters_and_nested_attributes():
    graph, _ = trace_joint_graph(tiny_painn())
    code, functions, tensors, parameters = stored_form(graph)
    rebuilt = rebuilt_graph(code, functions, tensors, parameters)
    assert set(dict(rebuilt.named_parameters())) == parameters
    assert not any(parameter.requires_grad for parameter in rebuilt.parameters())
    nested = rebuilt_graph("def forward(self, x):\n    return torch.ops.aten.add.Tensor(x, self.block.scale)\n", {},
                           {"block.scale": torch.tensor([2.0])}, set())
    assert torch.equal(nested(torch.tensor([1.0])), torch.tensor([3.0]))


def test_a_stored_graph_may_import_only_mlff_exports_own_functions():
    code = "def forward(self, x):\n    return join(x)\n"
    with pytest.raises(ValueError, match="mlff-export's own functions only"):
        rebuilt_graph(code, {"join": "os.path:join"}, {}, set())
    with pytest.raises(ValueError, match="mlff-export's own functions only"):  # refused before any import is tried
        rebuilt_graph(code, {"join": "no_such_module_anywhere:join"}, {}, set())
    with pytest.raises(ValueError, match="mlff-export's own functions only"):  # ours, but not a function of that name
        rebuilt_graph(code, {"join": "mlff_export.export.table_rewrite:no_such_function"}, {}, set())


def test_stored_files_are_private_and_their_folder_is_made(tmp_path):
    model = tiny_painn()
    store = TracedGraphStore(tmp_path / "not" / "yet", TracedGraphKey.of(model, CPU, "fp32"))
    store.save(trace_joint_graph(model)[0])
    assert oct(store.folder.stat().st_mode & 0o777) == oct(0o700)
    assert {oct(path.stat().st_mode & 0o777) for path in store.folder.iterdir()} == {oct(0o600)}


def test_the_key_takes_every_plain_hyperparameter_and_nothing_that_differs_between_processes():
    """A plain attribute (here one named after ``training`` in the alphabet) is in the key; an
    attribute whose repr names a memory address (a function, an object) is not, or no later
    process would ever find the graph."""
    model, other = tiny_painn(), tiny_painn()
    model.units, other.units = "eV", "kcal/mol"
    assert TracedGraphKey.of(model, CPU, "fp32") != TracedGraphKey.of(other, CPU, "fp32")
    model.units, other.units = "eV", "eV"
    model.helper, other.helper = object(), object()
    assert TracedGraphKey.of(model, CPU, "fp32") == TracedGraphKey.of(other, CPU, "fp32")


def test_a_model_whose_class_file_is_gone_still_gets_a_key(tmp_path):
    """A class whose source file no longer exists (removed after import) is keyed by what is left."""
    from mlff_export.model_intake import load_model

    path = tmp_path / "gone_model.py"
    path.write_text(MODEL_SOURCE)
    model = load_model(f"{path}:make").module
    path.unlink()
    assert TracedGraphKey.of(model, CPU, "fp32").digest


def test_the_domain_paths_weighted_graph_is_kept_too(tmp_path, monkeypatch):
    """The graph with per-atom energy weights (large structures in domains) has a key of its own,
    and a later process gets it without tracing; with weights of one it gives the unweighted graph's numbers."""
    from mlff_export.runtime.joint_graph import stored_or_traced

    model = tiny_painn()
    first, args = stored_or_traced(model, "fp32", CPU, tmp_path, weighted=True)
    assert TracedGraphKey.of(model, CPU, "fp32", weighted=True).digest != TracedGraphKey.of(model, CPU, "fp32").digest
    monkeypatch.setattr(joint_graph_module, "trace_joint_graph", lambda *a, **k: pytest.fail("traced again"))
    second, second_args = stored_or_traced(model, "fp32", CPU, tmp_path, weighted=True)
    assert len(second_args) == len(args) == len(table_example_inputs(model.species, CPU)) + 1
    for got, want in zip(outputs(second, args), outputs(first, args)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    unweighted = trace_joint_graph(model)[0]
    for got, want in zip(outputs(second, args), outputs(unweighted, args[:-1])):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_later_backend_evaluates_a_domain_without_tracing(tmp_path, monkeypatch):
    """The backend's domain path (evaluate_weighted) takes the stored weighted graph."""
    from mlff_export.runtime.joint_graph import JointGraphBackend

    model, atoms = tiny_painn(), molecule("C6H6")
    inputs = batch_inputs([atoms], [compute_pairs(atoms, 4.0)])
    weights = torch.linspace(0.0, 1.0, len(atoms))
    first = JointGraphBackend(model, CPU, cache_folder=tmp_path).evaluate_weighted(inputs, weights)
    monkeypatch.setattr(joint_graph_module, "trace_joint_graph", lambda *a, **k: pytest.fail("traced again"))
    second = JointGraphBackend(model, CPU, cache_folder=tmp_path).evaluate_weighted(inputs, weights)
    for got, want in zip(second, first):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
