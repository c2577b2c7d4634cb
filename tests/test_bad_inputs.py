"""The bad-input catalogue: what a careless or hostile user can hand us, and what they get back.

Every case asserts either a specific clear error (its type and the key words of its message) or
the correct number; none may return a wrong number or hang. Cases are registered under an id with
:func:`case`; ``docs/reliability.md`` has one table row per id, and
:func:`test_catalogue_is_documented` keeps the two in sync. A case's parameters are fixtures.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import CalculatorSetupError, PropertyNotImplementedError
from conftest import make_small_painn, skip_without_onnxruntime_cuda, triclinic_cell
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402
from test_engine_sidecar import HERE, engine  # noqa: E402, F401  (the engine fixture, shared)

from mlff_export.bench.workloads import water_box  # noqa: E402
from mlff_export.checkpoint import CheckpointError, card_sha256, load_checkpoint, save_checkpoint  # noqa: E402
from mlff_export.cli import main  # noqa: E402
from mlff_export.export import ArtifactMetadataError, ExportError, read_metadata, to_onnx  # noqa: E402
from mlff_export.export.engine_builder import BuilderSettings, build_engine  # noqa: E402
from mlff_export.export.engine_profiles import select_profiles  # noqa: E402
from mlff_export.export.engine_sidecar import EngineMismatchError, check_engine, sidecar_path  # noqa: E402
from mlff_export.export.metadata import (  # noqa: E402
    INTEGRITY_KEY,
    graph_sha256,
    non_finite_initializers,
    read_verified_artifact,
    sealed_model_bytes,
)
from mlff_export.export.onnx_export import _write_atomically  # noqa: E402
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE  # noqa: E402
from mlff_export.interface import InterfaceError  # noqa: E402
from mlff_export.memory import InsufficientMemoryError  # noqa: E402
from mlff_export.model_intake import ModelIntakeError, load_model  # noqa: E402
from mlff_export.neighbors import StructureError, batch_inputs, compute_pairs  # noqa: E402
from mlff_export.runtime import load_calculator  # noqa: E402
from mlff_export.runtime.calculator import ConcurrentUseError, NonFiniteResultError  # noqa: E402
from mlff_export.runtime import domains  # noqa: E402
from mlff_export.runtime.domains import DomainSplitter  # noqa: E402
from mlff_export.runtime.device_feeds import DeviceFeeds, closest_distance, has_vesin_torch  # noqa: E402
from mlff_export.runtime.eager import EagerBackend  # noqa: E402
from mlff_export.runtime.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeBucketBackend  # noqa: E402
from mlff_export.runtime.parity import OnnxParityCheck  # noqa: E402
from mlff_export.validation.tolerances import default_tolerances  # noqa: E402
from mlff_export.validation.validate import validate_artifact  # noqa: E402

CASES: dict[str, Callable] = {}
INTEGRITY_RECORD_BYTES = 2 + 2 + len("artifact_sha256") + 2 + 64  # field 14 entry: tags, lengths, key, hex digest


def case(case_id: str):
    """Register the decorated function as catalogue case ``case_id``."""

    def register(function: Callable) -> Callable:
        assert case_id not in CASES, f"duplicate case id {case_id}"
        CASES[case_id] = function
        return function

    return register


@contextmanager
def refused(error_type: type[BaseException], *words: str):
    """The block must raise ``error_type`` whose message holds every one of ``words``."""
    with pytest.raises(error_type) as caught:
        yield
    message = str(caught.value)
    missing = [word for word in words if word not in message]
    assert not missing, f"{type(caught.value).__name__}: {message!r} lacks {missing}"


def one_line_cli_error(capsys, argv: list[str], *words: str) -> None:
    """``mlff-export ARGV`` exits 1 with one ``error:`` line holding ``words``, no traceback."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    missing = [word for word in words if word not in err]
    assert not missing, f"{err!r} lacks {missing}"


# ----------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make_small_painn(seed=4)


@pytest.fixture
def calc(model):
    return load_calculator(model)


@pytest.fixture
def card(tmp_path) -> Path:
    """A checkpoint card and its weights in tmp_path/models."""
    return save_checkpoint(make_small_painn(seed=3), tmp_path / "models" / "small.json")


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    return to_onnx(model, tmp_path_factory.mktemp("exported") / "small.fp32.onnx")


RANDOM_BYTES = np.random.default_rng(0).bytes(4096)


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def edit_card(card_path: Path, edit: Callable[[dict], None], *, reseal: bool = False) -> Path:
    """Apply ``edit`` to the card's JSON; ``reseal`` re-records card_sha256 as a buggy writer would."""
    values = json.loads(card_path.read_text())
    edit(values)
    if reseal:
        values["card_sha256"] = card_sha256(values)
    card_path.write_text(json.dumps(values))
    return card_path


def edited_onnx(source: Path, destination: Path, edit: Callable, *, reseal: bool = False) -> Path:
    """``edit(model_proto)`` on a copy; saved as a tool would (``reseal``: as an exporter bug would)."""
    model_proto = onnx.load(str(source))
    edit(model_proto)
    if reseal:
        props = {p.key: p.value for p in model_proto.metadata_props if p.key != INTEGRITY_KEY}
        props["model_sha256"] = graph_sha256(model_proto)
        del model_proto.metadata_props[:]
        onnx.helper.set_model_props(model_proto, props)
        destination.write_bytes(sealed_model_bytes(model_proto))
    else:
        onnx.save(model_proto, str(destination))
    return destination


def set_prop(key: str, value: str) -> Callable:
    def edit(model_proto) -> None:
        for prop in model_proto.metadata_props:
            if prop.key == key:
                prop.value = value
                return
        model_proto.metadata_props.add(key=key, value=value)

    return edit


def largest_initializer(model_proto):
    return max(model_proto.graph.initializer, key=lambda tensor: int(np.prod(tensor.dims)))


def scale_largest_weight(model_proto, factor: float = 1.01) -> None:
    initializer = largest_initializer(model_proto)
    weight = numpy_helper.to_array(initializer)
    initializer.CopyFrom(numpy_helper.from_array((weight * factor).astype(weight.dtype), initializer.name))


def wrap_output(name: str, op: str, constant: float) -> Callable:
    """Edit: graph output ``name`` becomes ``op(name_before, constant)`` (e.g. Mul by -1 or NaN)."""

    def edit(model_proto) -> None:
        graph = model_proto.graph
        for node in graph.node:
            node.output[:] = [f"{name}_before" if output == name else output for output in node.output]
        graph.initializer.append(numpy_helper.from_array(np.array(constant, dtype=np.float32), f"{name}_constant"))
        graph.node.append(onnx.helper.make_node(op, [f"{name}_before", f"{name}_constant"], [name]))

    return edit


def add_sqrt_of_minus_one(name: str) -> Callable:
    """Edit: graph output ``name`` becomes ``name_before + sqrt(-1)``: NaN from finite weights."""

    def edit(model_proto) -> None:
        graph = model_proto.graph
        for node in graph.node:
            node.output[:] = [f"{name}_before" if output == name else output for output in node.output]
        graph.initializer.append(numpy_helper.from_array(np.array(-1.0, dtype=np.float32), "minus_one"))
        graph.node.append(onnx.helper.make_node("Sqrt", ["minus_one"], ["not_a_number"]))
        graph.node.append(onnx.helper.make_node("Add", [f"{name}_before", "not_a_number"], [name]))

    return edit


def move_to_external_data(location: str) -> Callable:
    """Edit: the largest initializer's data moves to ``location`` (relative to the model's folder)."""

    def edit(model_proto) -> None:
        tensor = largest_initializer(model_proto)
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", "0"), ("length", "4")):
            tensor.external_data.add(key=key, value=value)

    return edit


def water_rod(length: int) -> Atoms:
    """Water on a 3 x 3 x (3 * length) grid of molecules 3.1 Å apart, not periodic: slab domains
    across the rod keep their halos small (a periodic box needs ~90k atoms for that)."""
    rod = water_box(81).repeat((1, 1, length))
    rod.pbc = False
    return rod


def benzene() -> Atoms:
    atoms = molecule("C6H6")
    atoms.rattle(0.05, seed=1)
    return atoms


def energy(calculator, atoms: Atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy()


class OverflowingModel(nn.Module):
    """An interface model with finite weights whose energy overflows float32 (exp of distances)."""

    cutoff = 4.0
    species = (1, 6, 7, 8)

    def __init__(self):
        super().__init__()
        self.rate = nn.Parameter(torch.tensor(100.0))

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        vectors = positions[pair_index[1]] - positions[pair_index[0]] + pair_shifts
        pair_energy = torch.exp(self.rate * vectors.norm(dim=1))
        return torch.zeros(cell.shape[0], dtype=positions.dtype).index_add(0, structure_index[pair_index[0]], pair_energy)


class BlockingModel(nn.Module):
    """Wraps an interface model; its call waits for ``release`` (a call kept in progress)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.cutoff, self.species = inner.cutoff, inner.species
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, *inputs):
        self.entered.set()
        assert self.release.wait(timeout=30)
        return self.inner(*inputs)


# ----------------------------------------------------------------------------------------------
# checkpoints


@case("card-edited-cutoff")
def _(card):
    edit_card(card, lambda values: values["config"].update(cutoff=3.0))
    with refused(CheckpointError, "edited after it was saved", "card_sha256"):
        load_checkpoint(card)


@case("card-edited-species")
def _(card):
    edit_card(card, lambda values: values["config"].update(species=[1, 6, 7, 26]))
    with refused(CheckpointError, "edited after it was saved"):
        load_checkpoint(card)


@case("card-edited-weights-file")
def _(card):
    (card.parent / "other.safetensors").write_bytes(card.with_suffix(".safetensors").read_bytes())
    edit_card(card, lambda values: values.update(weights_file="other.safetensors"))
    with refused(CheckpointError, "edited after it was saved"):
        load_checkpoint(card)


@case("card-nan-cutoff")
def _(card):
    edit_card(card, lambda values: values["config"].update(cutoff=math.nan), reseal=True)
    with refused(CheckpointError, "cannot build the model", "cutoff nan"):
        load_checkpoint(card)


@case("card-lacks-config")
def _(card):
    edit_card(card, lambda values: values.pop("config"), reseal=True)
    with refused(CheckpointError, "lacks ['config']"):
        load_checkpoint(card)


@case("card-lacks-weights-sha256")
def _(card):
    edit_card(card, lambda values: values.pop("weights_sha256"), reseal=True)
    with refused(CheckpointError, "lacks ['weights_sha256']"):
        load_checkpoint(card)


@case("card-lacks-card-sha256")
def _(card):
    edit_card(card, lambda values: values.pop("card_sha256"))
    with refused(CheckpointError, "lacks ['card_sha256']", "save_checkpoint"):
        load_checkpoint(card)


@case("card-weights-absolute-path")
def _(card, tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(card.with_suffix(".safetensors").read_bytes())
    edit_card(card, lambda values: values.update(weights_file=str(outside)), reseal=True)
    with refused(CheckpointError, "relative to the card's folder"):
        load_checkpoint(card)


@case("card-weights-parent-path")
def _(card, tmp_path):
    (tmp_path / "outside.safetensors").write_bytes(card.with_suffix(".safetensors").read_bytes())
    edit_card(card, lambda values: values.update(weights_file="../outside.safetensors"), reseal=True)
    with refused(CheckpointError, "outside the card's folder"):
        load_checkpoint(card)


@case("card-weights-symlink-out")
def _(card, tmp_path):
    (tmp_path / "outside.safetensors").write_bytes(card.with_suffix(".safetensors").read_bytes())
    (card.parent / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    edit_card(card, lambda values: values.update(weights_file="link.safetensors"), reseal=True)
    with refused(CheckpointError, "outside the card's folder"):
        load_checkpoint(card)


@case("card-weights-file-not-a-name")
def _(card):
    edit_card(card, lambda values: values.update(weights_file=42), reseal=True)
    with refused(CheckpointError, "must be a file name"):
        load_checkpoint(card)


@case("card-weights-missing")
def _(card):
    card.with_suffix(".safetensors").unlink()
    with refused(CheckpointError, "is missing"):
        load_checkpoint(card)


@case("card-weights-truncated")
def _(card):
    weights = card.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    with refused(CheckpointError, "truncated or replaced"):
        load_checkpoint(card)


@case("card-weights-swapped")
def _(card, tmp_path):
    other = save_checkpoint(make_small_painn(seed=9), tmp_path / "other" / "small.json")
    card.with_suffix(".safetensors").write_bytes(other.with_suffix(".safetensors").read_bytes())
    with refused(CheckpointError, "truncated or replaced"):
        load_checkpoint(card)


@case("card-weights-nan")
def _(tmp_path):
    broken = make_small_painn(seed=3)
    with torch.no_grad():
        broken.readout[0].weight[0, 0] = math.nan
    card = save_checkpoint(broken, tmp_path / "broken.json")
    with refused(CheckpointError, "readout.0.weight", "NaN or inf"):
        load_checkpoint(card)


@case("card-not-json")
def _(tmp_path):
    with refused(CheckpointError, "not valid JSON"):
        load_checkpoint(written(tmp_path / "random.json", RANDOM_BYTES))


@case("card-empty-file")
def _(tmp_path):
    with refused(CheckpointError, "not valid JSON"):
        load_checkpoint(written(tmp_path / "empty.json", b""))


@case("card-is-a-folder")
def _(card):
    with refused(CheckpointError, "is a folder"):
        load_checkpoint(card.parent)


@case("card-format-version-1")
def _(card):
    edit_card(card, lambda values: values.update(format_version=1), reseal=True)
    with refused(CheckpointError, "version 1", "reads version 2", "save_checkpoint"):
        load_checkpoint(card)


@case("card-unknown-architecture")
def _(card):
    edit_card(card, lambda values: values.update(architecture="SchNet"), reseal=True)
    with refused(CheckpointError, "unknown architecture 'SchNet'"):
        load_checkpoint(card)


@case("card-config-disagrees-with-weights")
def _(card):
    edit_card(card, lambda values: values["config"].update(num_features=48), reseal=True)
    with refused(CheckpointError, "config and weights disagree"):
        load_checkpoint(card)


@case("cli-info-never-prints-nan")
def _(card, capsys):
    edit_card(card, lambda values: values["config"].update(cutoff=math.nan), reseal=True)
    one_line_cli_error(capsys, ["info", "--checkpoint", str(card)], "cutoff nan")
    assert "nan Å" not in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# ONNX artifacts


@case("onnx-weight-scaled")
def _(exported, tmp_path):
    path = edited_onnx(exported, tmp_path / "scaled.onnx", scale_largest_weight)
    with refused(ArtifactMetadataError, "modified after export", "mlff-export export"):
        load_calculator(path)


@case("onnx-forces-negated")
def _(exported, tmp_path):
    path = edited_onnx(exported, tmp_path / "negated.onnx", wrap_output("forces", "Mul", -1.0))
    with refused(ArtifactMetadataError, "modified after export"):
        load_calculator(path)


@case("onnx-cutoff-edited")
def _(exported, tmp_path):
    path = edited_onnx(exported, tmp_path / "cutoff.onnx", set_prop("cutoff", "3.0"))
    with refused(ArtifactMetadataError, "modified after export"):
        load_calculator(path)


@case("onnx-species-edited")
def _(exported, tmp_path):
    path = edited_onnx(exported, tmp_path / "species.onnx", set_prop("species", "[1, 6, 7, 8, 26]"))
    with refused(ArtifactMetadataError, "modified after export"):
        load_calculator(path)


@case("onnx-metadata-key-added")
def _(exported, tmp_path):
    """A key the exporter did not write (the hash covers every key, including future ones)."""
    path = edited_onnx(exported, tmp_path / "added.onnx", set_prop("source", "somewhere else"))
    with refused(ArtifactMetadataError, "modified after export"):
        read_metadata(path)


@case("onnx-metadata-key-duplicated")
def _(exported, tmp_path):
    path = tmp_path / "duplicated.onnx"
    extra = onnx.ModelProto(metadata_props=[onnx.StringStringEntryProto(key="cutoff", value="3.0")])
    path.write_bytes(exported.read_bytes() + extra.SerializeToString())
    with refused(ArtifactMetadataError, "['cutoff'] appear more than once"):
        load_calculator(path)


@case("onnx-seal-removed")
def _(exported, tmp_path):
    def strip_seal(model_proto) -> None:
        kept = [p for p in model_proto.metadata_props if p.key != INTEGRITY_KEY]
        del model_proto.metadata_props[:]
        model_proto.metadata_props.extend(kept)

    path = edited_onnx(exported, tmp_path / "unsealed.onnx", strip_seal)
    with refused(ArtifactMetadataError, f"lacks ['{INTEGRITY_KEY}']", "mlff-export export"):
        load_calculator(path)


@case("onnx-truncated-half")
def _(exported, tmp_path):
    with refused(ArtifactMetadataError, "not a readable ONNX file", "truncated"):
        load_calculator(written(tmp_path / "half.onnx", exported.read_bytes()[: exported.stat().st_size // 2]))


@case("onnx-truncated-end")
def _(exported, tmp_path):
    with refused(ArtifactMetadataError, "not a readable ONNX file"):
        load_calculator(written(tmp_path / "short.onnx", exported.read_bytes()[:-5]))


@case("onnx-random-bytes")
def _(tmp_path):
    with refused(ArtifactMetadataError, "not a readable ONNX file"):
        load_calculator(written(tmp_path / "random.onnx", RANDOM_BYTES))


@case("onnx-empty-file")
def _(tmp_path):
    with refused(ArtifactMetadataError, "is empty (0 bytes)"):
        load_calculator(written(tmp_path / "empty.onnx", b""))


@case("onnx-is-a-folder")
def _(tmp_path):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    with refused(ArtifactMetadataError, "is a folder"):
        load_calculator(folder)


@case("onnx-missing")
def _(tmp_path):
    with refused(ArtifactMetadataError, "does not exist"):
        load_calculator(tmp_path / "nothing.onnx")


@case("onnx-external-data-escaping")
def _(exported, tmp_path):
    (tmp_path / "model").mkdir()
    path = edited_onnx(exported, tmp_path / "model" / "escaping.onnx", move_to_external_data("../../secrets.bin"))
    with refused(ArtifactMetadataError, "outside the artifact's folder", "'../../secrets.bin'"):
        load_calculator(path)


@case("onnx-external-data-beside")
def _(exported, tmp_path):
    path = edited_onnx(exported, tmp_path / "beside.onnx", move_to_external_data("weights.bin"))
    (tmp_path / "weights.bin").write_bytes(b"\0" * 4)
    with refused(ArtifactMetadataError, "in another file"):
        load_calculator(path)


@case("onnx-nan-weight-sealed")
def _(exported, tmp_path):
    """NaN in a weight of a sealed file (only an exporter bug could write one: to_onnx refuses
    non-finite weights, see export-nan-weights): the first call refuses the NaN energies."""
    path = edited_onnx(exported, tmp_path / "nan.onnx", lambda proto: scale_largest_weight(proto, math.nan), reseal=True)
    with refused(NonFiniteResultError, "backend 'onnxruntime'", "non-finite energy"):
        energy(load_calculator(path), benzene())


@case("onnx-foreign-model")
def _(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with refused(ArtifactMetadataError, "metadata lacks", "not written by mlff-export"):
        load_calculator(path)


@case("onnx-other-interface-version")
def _(exported, tmp_path):
    path = edited_onnx(exported, tmp_path / "old.onnx", set_prop("interface_version", "0"))
    with refused(ArtifactMetadataError, "interface version '0'", "mlff-export export"):
        load_calculator(path)


@case("onnx-resaved-unchanged")
def _(exported, tmp_path, model):
    """onnx.load + onnx.save of an untouched artifact keeps its seal (same bytes): it loads and
    gives the model's numbers."""
    path = edited_onnx(exported, tmp_path / "resaved.onnx", lambda proto: None)
    assert path.read_bytes() == exported.read_bytes()
    assert read_verified_artifact(path).artifact_sha256 == hashlib.sha256(path.read_bytes()[:-INTEGRITY_RECORD_BYTES]).hexdigest()
    assert energy(load_calculator(path), benzene()) == pytest.approx(energy(load_calculator(model), benzene()), abs=1e-4)


@case("build-engine-tampered-onnx")
def _(exported, tmp_path):
    """build-engine checks the graph before TensorRT is even imported."""
    path = edited_onnx(exported, tmp_path / "scaled.onnx", scale_largest_weight)
    with refused(ArtifactMetadataError, "modified after export"):
        build_engine(path, tmp_path / "x.plan", select_profiles(["small-molecules"]), "fp32", BuilderSettings())


@case("validate-tampered-artifact")
def _(exported, tmp_path, capsys):
    path = edited_onnx(exported, tmp_path / "scaled.onnx", scale_largest_weight)
    one_line_cli_error(capsys, ["validate", str(path), "--nve-steps", "0"], "modified after export")


# ----------------------------------------------------------------------------------------------
# export


# to_onnx's last step, run on an exported graph's bytes (tracing again would take a minute here;
# test_export.py runs the whole export with its parity check).


@case("export-check-crashes")
def _(exported, tmp_path):
    """A check that crashes (parity's ONNX Runtime, say) leaves no file, no partial, no folder."""

    def crashing_check(path: Path) -> None:
        assert read_verified_artifact(path).metadata.cutoff == 4.0  # it sees the whole, sealed file
        raise RuntimeError("parity step crashed")

    with refused(RuntimeError, "parity step crashed"):
        _write_atomically(exported.read_bytes(), tmp_path / "out" / "deep" / "model.onnx", crashing_check)
    assert list(tmp_path.iterdir()) == []


@case("export-parity-fails")
def _(exported, tmp_path):
    other = make_small_painn(seed=11)
    with refused(ExportError, "differs from eager PyTorch", "forces", "nothing was written"):
        _write_atomically(exported.read_bytes(), tmp_path / "model.onnx", OnnxParityCheck(other, [benzene()], "fp32"))
    assert list(tmp_path.iterdir()) == []


@case("export-nan-weights")
def _(tmp_path):
    broken = make_small_painn()
    with torch.no_grad():
        broken.embedding.weight[0, 0] = math.nan
    with refused(ExportError, "not finite"):
        to_onnx(broken, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


@case("export-refuses-non-finite-initializers")
def _(exported):
    """What to_onnx checks before sealing (a NaN that the example inputs would not reveal)."""
    model_proto = onnx.load(str(exported))
    assert non_finite_initializers(model_proto) == []
    scale_largest_weight(model_proto, math.inf)
    assert non_finite_initializers(model_proto) == [largest_initializer(model_proto).name]


@case("export-to-a-folder")
def _(model, tmp_path):
    with refused(ExportError, "is a folder"):
        to_onnx(model, tmp_path)


# ----------------------------------------------------------------------------------------------
# engine sidecars (the sidecar's own tests are in test_engine_sidecar.py)


@case("engine-plan-modified")
def _(engine):  # noqa: F811
    engine.write_bytes(engine.read_bytes() + b"!")
    with refused(EngineMismatchError, "sha256", "Rebuild"):
        check_engine(engine, **HERE)


@case("engine-sidecar-missing")
def _(engine):  # noqa: F811
    sidecar_path(engine).unlink()
    with refused(EngineMismatchError, "does not exist"):
        check_engine(engine, **HERE)


@case("engine-sidecar-random-bytes")
def _(engine):  # noqa: F811
    written(sidecar_path(engine), RANDOM_BYTES)
    with refused(EngineMismatchError, "not valid JSON"):
        check_engine(engine, **HERE)


@case("engine-sidecar-is-a-folder")
def _(engine):  # noqa: F811
    sidecar_path(engine).unlink()
    sidecar_path(engine).mkdir()
    with refused(EngineMismatchError, "is a folder"):
        check_engine(engine, **HERE)


# ----------------------------------------------------------------------------------------------
# users' models (--model, --weights, --model-kwargs; docs/bring-your-own-model.md)


@case("model-factory-unimportable")
def _():
    with refused(ModelIntakeError, "cannot import module 'no_such_package.models'", "PYTHONPATH"):
        load_model("no_such_package.models:make")


@case("model-factory-returns-no-module")
def _():
    with refused(ModelIntakeError, "make_not_a_module() returned str", "expected a torch.nn.Module"):
        load_model("byom_models:make_not_a_module")


@case("model-kwargs-the-factory-refuses")
def _():
    with refused(ModelIntakeError, "make_student(**{'colour': 1}) failed", "TypeError"):
        load_model("byom_models:make_student", model_kwargs={"colour": 1})


@case("model-weights-of-another-shape")
def _(tmp_path):
    from byom_models import make_student

    state = make_student().state_dict()
    state["readout.2.weight"] = torch.zeros(2, 24)
    torch.save(state, tmp_path / "other.pt")
    with refused(ModelIntakeError, "'readout.2.weight' has shape (2, 24) in the file, (1, 24) in the model"):
        load_model("byom_models:make_student", weights=tmp_path / "other.pt")


@case("model-weights-with-a-pickled-object")
def _(tmp_path):
    torch.save({"embedding.weight": Atoms("H")}, tmp_path / "pickled.pt")
    with refused(ModelIntakeError, "not a readable state dict"):
        load_model("byom_models:make_student", weights=tmp_path / "pickled.pt")


@case("model-weights-not-a-state-dict")
def _(tmp_path):
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with refused(ModelIntakeError, "expected a mapping of parameter names to tensors"):
        load_model("byom_models:make_student", weights=tmp_path / "list.pt")


@case("model-program-with-other-inputs")
def _(tmp_path):
    class TwoInputs(nn.Module):
        def forward(self, positions, species):
            return positions.sum().unsqueeze(0)

    program = torch.export.export(TwoInputs(), (torch.ones(3, 3), torch.ones(3, dtype=torch.int64)))
    torch.export.save(program, str(tmp_path / "two.pt2"), extra_files={"mlff-interface.json": '{"cutoff": 5.0, "species": [1]}'})
    with refused(ModelIntakeError, "takes 2 inputs", "positions, species, pair_index, pair_shifts, structure_index, cell"):
        load_model(tmp_path / "two.pt2")


@case("model-pairs-beyond-the-cutoff-count")
def _(tmp_path):
    from byom_models import LeaksBeyondTheCutoff

    with refused(ExportError, "pairs beyond its cutoff", "multiply every pair term by a cutoff function"):
        to_onnx(LeaksBeyondTheCutoff(), tmp_path / "out" / "leaks.onnx")
    assert not (tmp_path / "out").exists()


@case("model-searches-its-own-neighbors")
def _(tmp_path):
    from byom_models import SearchesNeighbors

    with refused(ExportError, "does it search for neighbors itself"):
        to_onnx(SearchesNeighbors(), tmp_path / "out" / "searches.onnx")
    assert not (tmp_path / "out").exists()


@case("model-fp16-without-weight-products")
def _(tmp_path):
    from byom_models import PairRepulsionOnly

    with refused(ExportError, "fp16: PairRepulsionOnly", "no matrix product with its weights", "precision 'fp32'"):
        to_onnx(PairRepulsionOnly(), tmp_path / "out" / "repulsion.onnx", precision="fp16")
    assert not (tmp_path / "out").exists()
    with refused(ExportError, "no matrix product with its weights"):
        load_calculator(PairRepulsionOnly(), backend="compile", precision="fp16", compile_cache=False)


@case("cli-weights-with-a-checkpoint-card")
def _(tmp_path, capsys):
    weights = written(tmp_path / "w.safetensors", b"not read")
    one_line_cli_error(capsys, ["export", "--weights", str(weights), "--out", str(tmp_path / "out")], "--weights go with a factory")
    assert not (tmp_path / "out").exists()


@case("cli-model-of-an-unknown-kind")
def _(tmp_path, capsys):
    model = written(tmp_path / "model.pt", b"a pickle")
    one_line_cli_error(capsys, ["export", "--model", str(model)], "expected a checkpoint card (.json) or a torch.export program (.pt2)")


@case("cli-model-kwargs-not-json")
def _(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--model", "byom_models:make_student", "--model-kwargs", "{channels: 8}"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "expected a JSON object" in err, err


# ----------------------------------------------------------------------------------------------
# structures


@case("atoms-at-the-same-position")
def _(calc):
    atoms = Atoms("CCH", positions=[[0, 0, 0], [0, 0, 0], [1.1, 0, 0]])
    with refused(StructureError, "atom 0 (C) and atom 1 (C) are 0 Å apart", "min_distance"):
        energy(calc, atoms)


@case("atoms-1e-6-apart")
def _(calc):
    atoms = benzene()
    atoms.positions[3] = atoms.positions[0] + [1e-6, 0, 0]
    with refused(StructureError, "1e-06 Å apart"):
        energy(calc, atoms)


@case("atoms-below-the-threshold")
def _(calc):
    with refused(StructureError, "0.3 Å apart", "minimum of 0.5 Å"):
        energy(calc, Atoms("HH", positions=[[0, 0, 0], [0.3, 0, 0]]))


@case("atoms-close-but-legal")
def _(model):
    """0.6 Å (above the 0.5 Å default) is evaluated, and float32 agrees with float64."""
    atoms = Atoms("HH", positions=[[0, 0, 0], [0.6, 0, 0]])
    assert energy(load_calculator(model), atoms) == pytest.approx(energy(load_calculator(model, dtype="float64"), atoms), abs=1e-4)
    model.float()  # dtype float64 converted the shared module


@case("min-distance-is-configurable")
def _(model):
    atoms = Atoms("HH", positions=[[0, 0, 0], [0.3, 0, 0]])
    relaxed = energy(load_calculator(model, min_distance=0.2), atoms)
    assert math.isfinite(relaxed) and relaxed == energy(load_calculator(model, min_distance=0), atoms)


@case("atom-overlaps-its-own-image")
def _(calc):
    atoms = Atoms("C", positions=[[0, 0, 0]], cell=[0.3, 5, 5], pbc=True)
    with refused(StructureError, "atom 0 (C) and its own periodic image", "0.3 Å apart"):
        energy(calc, atoms)


@case("near-singular-cell")
def _(calc):
    """Volume 1 Å^3 (passes the singular-volume and density checks), yet a lattice translation of
    2e-6 Å: refused before the search."""
    atoms = Atoms("C", positions=[[0, 0, 0]], cell=[[1000, 0, 0], [0, 1000, 0], [500, 500, 1e-6]], pbc=True)
    with refused(StructureError, "(near-)singular", "2e-06 Å from its own periodic image"):
        energy(calc, atoms)


@case("thin-cell-refused-fast")
def _(calc):
    """Heights of 0.003-0.005 Å at a normal density: a search of the cell as given visits ~10^10
    images (0.005 Å in a 5 Å cell took 52 s); the reduced cell shows the overlap at once."""
    atoms = Atoms("C", positions=[[0, 0, 0]], cell=[[20, 0, 0], [0, 20, 0], [10, 10, 0.003]], pbc=True)
    start = time.perf_counter()
    with refused(StructureError, "its own periodic image", "0.006 Å apart"):
        energy(calc, atoms)
    assert time.perf_counter() - start < 10, "a hang guard, not a benchmark"


@case("skewed-cell-same-numbers")
def _(model):
    """A diamond supercell written with a strongly skewed basis (thin heights, same lattice) is
    searched on its reduced cell: same energy as the plain cell, and fast."""
    plain = bulk("C", "diamond", a=3.57, cubic=True)
    plain.rattle(0.05, seed=3)
    skewed = plain.copy()
    skewed.set_cell(np.array([[1, 0, 0], [0, 1, 0], [5, 3, 1]]) @ plain.cell.array, scale_atoms=False)
    calc = load_calculator(model, dtype="float64")
    start = time.perf_counter()
    assert energy(calc, skewed) == pytest.approx(energy(calc, plain), abs=1e-9)
    assert time.perf_counter() - start < 10, "a hang guard, not a benchmark"
    model.float()


@case("collapsed-cell-refused")
def _(calc):
    atoms = Atoms("C", positions=[[0, 0, 0]], cell=np.eye(3) * 0.6, pbc=True)
    with refused(StructureError, "atoms/Å^3", "denser than any matter"):
        energy(calc, atoms)


@case("small-cell-same-on-every-backend")
def _(model, exported):
    """One atom in a 1.5 Å cell (many self-images, nothing collapsed): eager float32, float64 and
    ONNX Runtime agree."""
    atoms = Atoms("C", positions=[[0, 0, 0]], cell=np.eye(3) * 1.5, pbc=True)
    reference = energy(load_calculator(model, dtype="float64"), atoms)
    model.float()
    assert energy(load_calculator(model), atoms) == pytest.approx(reference, abs=1e-3)
    assert energy(load_calculator(exported), atoms) == pytest.approx(reference, abs=1e-3)


@case("search-too-large-refused-first")
def _(model):
    """20,000 atoms piled into a 6 Å cube: the neighbor search would hold ~2e8 pairs (~33 GB);
    refused from the estimate before a single pair is stored."""
    atoms = Atoms("H" * 20_000, positions=np.random.default_rng(0).uniform(0, 6, (20_000, 3)))
    with refused(InsufficientMemoryError, "neighbor search of 20000 atoms", "33.5 GB", "a limit of 1 GB", "piled up"):
        energy(load_calculator(model, memory_limit_gb=1), atoms)


@case("non-finite-position")
def _(calc):
    atoms = benzene()
    atoms.positions[2, 1] = math.nan
    with refused(StructureError, "atom 2 has a non-finite position"):
        energy(calc, atoms)


@case("unknown-element-on-onnx")
def _(exported):
    """The ONNX backend's species come from sealed metadata: an unknown element is a clear
    StructureError, never ONNX Runtime's GatherND error."""
    with refused(StructureError, "Fe", "not supported"):
        energy(load_calculator(exported), Atoms("FeH", positions=[[0, 0, 0], [1.6, 0, 0]]))


@case("empty-structure")
def _(calc):
    with refused(StructureError, "no atoms"):
        energy(calc, Atoms())


@case("zero-cell-vector")
def _(calc):
    atoms = Atoms("C", positions=[[0, 0, 0]], cell=[[3, 0, 0], [0, 0, 0], [0, 0, 3]], pbc=True)
    with refused(StructureError, "singular"):
        energy(calc, atoms)


@case("non-finite-cell")
def _(calc):
    atoms = Atoms("C", positions=[[0, 0, 0]], cell=[[3, 0, 0], [0, math.inf, 0], [0, 0, 3]], pbc=True)
    with refused(StructureError, "non-finite"):
        energy(calc, atoms)


@case("predict-names-the-bad-structure")
def _(calc):
    overlapping = Atoms("HH", positions=[[0, 0, 0], [0, 0, 0]])
    with refused(StructureError, "structure 2:", "0 Å apart"):
        calc.predict([benzene(), molecule("H2O"), overlapping])


@case("validate-fails-on-overlapping-atoms")
def _(exported, model, tmp_path):
    from ase.io import write

    structures = tmp_path / "overlapping.extxyz"
    write(structures, [molecule("H2O"), Atoms("CC", positions=[[0, 0, 0], [0, 0, 0]])])
    with refused(StructureError, str(structures), "structure 1:C2", "0 Å apart"):
        validate_artifact(exported, reference=model, structures=structures, nve_steps=0, compare_runtimes=False)


@case("device-check-measures-the-closest-pair")
def _(model):
    """The GPU input path's check (torch ops on the padded table, here on the CPU): every-atom
    table of a molecule, with and without an overlap, gives the host's closest distance."""
    atoms = benzene()
    feeds = DeviceFeeds(model.cutoff, model.species[0], torch.device("cpu"))
    host = min(np.linalg.norm(atoms.positions[i] - atoms.positions[j]) for i in range(12) for j in range(i))
    assert closest_distance(feeds(atoms)).item() == pytest.approx(host, abs=1e-5)
    atoms.positions[7] = atoms.positions[2] + [1e-6, 0, 0]
    assert closest_distance(feeds(atoms)).item() < 1e-5


@case("device-check-sees-an-atoms-own-image")
def _(model):
    """The same check on a searched table (vesin-torch, periodic): an atom's own image counts."""
    if not has_vesin_torch():
        pytest.skip("vesin-torch is not installed (pip install vesin-torch)")
    atoms = Atoms("CO", positions=[[0, 0, 0], [0.2, 1.4, 2.5]], cell=[0.3, 5, 5], pbc=True)
    feeds = DeviceFeeds(model.cutoff, model.species[0], torch.device("cpu"))(atoms)
    assert closest_distance(feeds).item() == pytest.approx(0.3, abs=1e-6)


@case("lattice-shifts-disagree-with-pair-shifts")
def _(model):
    """Interface inputs whose integer shifts are one lattice step off on one pair (the Cartesian
    shifts as vesin gave them): the eager path's input check names the pair and the fix; the
    neighbor table, which matches reverse pairs on the integer shifts, finds a pair without its
    reverse. An error either way, never a number."""
    atoms = bulk("C", "diamond", a=3.57)  # every lattice vector shorter than the cutoff: many images
    inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])
    lattice = inputs.lattice_shifts.clone()
    lattice[0, 0] += 1
    wrong = dataclasses.replace(inputs, lattice_shifts=lattice)
    with refused(InterfaceError, "lattice_shifts | pair 0", "leave lattice_shifts out"):
        EagerBackend(model, torch.device("cpu"), torch.float32).evaluate(wrong)
    with refused(InterfaceError, "has no reverse pair", "full neighbor list"):
        NEIGHBOR_TABLE.feeds(wrong)


@case("stress-without-a-cell")
def _(calc):
    atoms = benzene()
    atoms.calc = calc
    with refused(PropertyNotImplementedError, "3-D periodic"):
        atoms.get_stress()


# ----------------------------------------------------------------------------------------------
# non-finite weights and results


@case("module-with-nan-weights")
def _():
    broken = make_small_painn()
    with torch.no_grad():
        broken.interactions[0].vector_u.weight[1, 2] = math.inf
    with refused(CalculatorSetupError, "interactions.0.vector_u.weight", "NaN or inf"):
        load_calculator(broken)


@case("non-finite-energy-eager")
def _():
    with refused(NonFiniteResultError, "backend 'eager'", "non-finite energy", "C6H6"):
        energy(load_calculator(OverflowingModel()), benzene())


@case("non-finite-output-onnx")
def _(exported, tmp_path):
    """An exporter bug that yields NaN (sealed, so it loads): the calculator refuses the numbers."""
    path = edited_onnx(exported, tmp_path / "nan-energy.onnx", add_sqrt_of_minus_one("energy"), reseal=True)
    with refused(NonFiniteResultError, "backend 'onnxruntime'", "non-finite energy", "structure 0 (H2O)"):
        load_calculator(path).predict([molecule("H2O"), benzene()])


# ----------------------------------------------------------------------------------------------
# resources


@case("batch-that-does-not-fit-is-halved")
def _(model, monkeypatch):
    structures = [benzene() for _ in range(4)]
    for seed, atoms in enumerate(structures):
        atoms.rattle(0.02, seed=seed)
    single_pairs = max(compute_pairs(atoms, model.cutoff).pair_index.shape[1] for atoms in structures)
    limit = 2.5 * single_pairs * model.bytes_per_pair(torch.float32) / 1e9  # two at a time fit, not four
    calc = load_calculator(model, memory_limit_gb=limit)
    evaluated = []
    whole = calc.backend._whole
    monkeypatch.setattr(calc.backend, "_whole", lambda inputs: evaluated.append(inputs.num_structures) or whole(inputs))
    for atoms, result in zip(structures, calc.predict(structures)):
        assert result["energy"] == pytest.approx(energy(load_calculator(model), atoms), abs=1e-4)
    assert max(evaluated) <= 2, f"calls of {evaluated} structures: the batch was not split"


@case("structure-that-does-not-fit-runs-in-domains")
def _(model, monkeypatch):
    """CPU memory too small for the whole call: the eager backend evaluates it in domains, decided
    from the estimate before anything is allocated, with the whole-structure numbers."""
    atoms = water_rod(8)
    pairs = compute_pairs(atoms, model.cutoff).pair_index.shape[1]
    whole = load_calculator(model).predict([atoms])[0]
    split_calc = load_calculator(model, memory_limit_gb=0.7 * pairs * model.bytes_per_pair(torch.float32) / 1e9)
    domain_calls = []
    evaluate_weighted = split_calc.backend.evaluate_weighted
    monkeypatch.setattr(split_calc.backend, "evaluate_weighted", lambda *args: domain_calls.append(1) or evaluate_weighted(*args))
    split = split_calc.predict([atoms])[0]
    assert len(domain_calls) >= 2 and split_calc.backend.domains.max_pairs is None  # no out-of-memory happened
    assert split["energy"] == pytest.approx(whole["energy"], rel=1e-5)  # float32 totals, summed in another order
    np.testing.assert_allclose(split["forces"], whole["forces"], atol=1e-5)


@case("onnx-call-that-does-not-fit-is-refused")
def _(exported):
    """ONNX Runtime cannot split a call: a 10k-atom box over the limit is refused up front with
    the estimate and the limit."""
    atoms = water_box(10_000)
    with refused(InsufficientMemoryError, "needs about", "GB", "pairs x 36,000 bytes per pair", "a limit of 2 GB"):
        energy(load_calculator(exported, memory_limit_gb=2), atoms)


@case("cpu-allocator-failure-is-named")
def _(model):
    """torch's CPU allocator refusing a call (a plain RuntimeError) becomes one clear error with the
    call's size where it cannot be split further."""
    atoms = benzene()
    inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])

    def whole_that_runs_out(_inputs):
        torch.empty(1 << 60, dtype=torch.uint8)  # 1 EiB: a real allocator failure on any machine

    with refused(InsufficientMemoryError, "out of memory on cpu", f"12 atoms with {inputs.num_pairs} pairs", "can't allocate"):
        DomainSplitter().evaluate(inputs, 2, whole_that_runs_out, EagerBackend(model, torch.device("cpu"), torch.float32).evaluate_weighted)


@case("gpu-input-path-out-of-memory-falls-back")
def _(model):
    """An out-of-memory on the GPU input path (a memory estimate too low for a user's model) is not
    the user's error: the calculator evaluates the structure through the backend's CPU input path
    (which splits into domains after an out-of-memory of its own) and gives the same numbers. The
    GPU path is a stand-in raising torch's out-of-memory error (no GPU here); any other error from
    it still surfaces."""
    atoms = triclinic_cell()
    expected = load_calculator(model).predict([atoms])[0]["forces"]
    calc = load_calculator(model)

    def out_of_memory(_atoms):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    calc.backend.launch_atoms = out_of_memory
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), expected, atol=1e-6)

    def broken(_atoms):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    calc.backend.launch_atoms = broken
    calc.reset()
    with refused(RuntimeError, "illegal memory access"):
        atoms.get_forces()


@case("cpu-allocator-failure-falls-back-to-domains")
def _(model, monkeypatch):
    """An allocator failure on the CPU (not only CUDA's) lowers the pair limit to a quarter and
    retries in domains, with the whole-structure numbers. (The smallest domain worth splitting
    into is scaled down with the structure: 10,000 pairs would need a 40,000-pair call.)"""
    monkeypatch.setattr(domains, "MIN_DOMAIN_PAIRS", 1_000)
    atoms = water_rod(12)
    inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])
    backend = EagerBackend(model, torch.device("cpu"), torch.float32)
    reference = backend.evaluate(inputs)

    def whole_that_runs_out(_inputs):
        torch.empty(1 << 60, dtype=torch.uint8)  # 1 EiB: a real allocator failure on any machine

    splitter = DomainSplitter()
    split = splitter.evaluate(inputs, model.receptive_hops, whole_that_runs_out, backend.evaluate_weighted)
    assert splitter.max_pairs == inputs.num_pairs // 4
    # float32 totals of -40,000 eV summed in another order differ by a few ulps (3.9e-3 eV each)
    assert split["energy"].item() == pytest.approx(reference["energy"].item(), rel=1e-5)
    np.testing.assert_allclose(split["forces"].numpy(), reference["forces"].numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# options


@pytest.fixture(scope="module")
def options_model():
    return make_small_painn(seed=6)


@case("option-skin-negative")
def _(options_model):
    with refused(CalculatorSetupError, "skin", "-1.0", ">= 0"):
        load_calculator(options_model, skin=-1.0)


@case("option-skin-nan")
def _(options_model):
    with refused(CalculatorSetupError, "skin", "nan"):
        load_calculator(options_model, skin=math.nan)


@case("option-skin-set-nan")
def _(options_model):
    calc = load_calculator(options_model, skin=0.5)
    with refused(CalculatorSetupError, "skin", "nan"):
        calc.skin = math.nan
    assert calc.skin == 0.5 and calc.neighbor_list.skin == 0.5, "a refused skin leaves the old one"


@case("option-min-distance-negative")
def _(options_model):
    with refused(CalculatorSetupError, "min_distance", "-0.1"):
        load_calculator(options_model, min_distance=-0.1)


@case("option-min-distance-not-finite")
def _(options_model):
    for value in (math.nan, math.inf):
        with refused(CalculatorSetupError, "min_distance", repr(value), "finite"):
            load_calculator(options_model, min_distance=value)


@case("option-compile-cache-without-compiling")
def _(options_model, tmp_path):
    with refused(CalculatorSetupError, "compile_cache", "compiles nothing"):
        load_calculator(options_model, compile_cache=tmp_path)


@case("option-compile-cache-a-file")
def _(options_model, tmp_path):
    (tmp_path / "file").write_text("")
    with refused(CalculatorSetupError, "compile_cache", "is a file"):
        load_calculator(options_model, backend="compile", compile_cache=tmp_path / "file")


@case("option-precision-fp16-on-eager")
def _(options_model):
    with refused(CalculatorSetupError, "precision='fp16'", "joint-graph backends", "'eager' runs the model as written"):
        load_calculator(options_model, precision="fp16")


@case("option-precision-unknown")
def _(options_model):
    with refused(CalculatorSetupError, "precision must be one of", "'half'"):
        load_calculator(options_model, backend="compile", precision="half")


@case("option-precision-of-an-artifact")
def _(tmp_path):
    with refused(CalculatorSetupError, "keeps the precision it was exported with", "--precision fp16"):
        load_calculator(tmp_path / "model.fp32.onnx", precision="fp16")


@case("option-compile-cache-damaged-aot-package")
def _(options_model, tmp_path, caplog):
    import logging

    from mlff_export.runtime.aot_package import AotPackage

    key = load_calculator(options_model, backend="compile", compile_cache=tmp_path).backend.compile_cache.key
    package = AotPackage(tmp_path, key)
    package.folder.mkdir(parents=True, mode=0o700)
    package.package_path.write_bytes(b"not a package")
    package.manifest_path.write_text(json.dumps({"format": "mlff-export-aot-package/1", "key": dataclasses.asdict(package.key),
                                                 "payload_sha256": hashlib.sha256(b"a package").hexdigest()}))
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        backend = load_calculator(options_model, backend="compile", compile_cache=tmp_path).backend
    assert not backend.ahead_of_time  # compiles as usual instead
    assert "compiled package" in caplog.text and "does not match the SHA-256" in caplog.text


def _stored_traced_graph(options_model, tmp_path):
    """The traced-graph store of ``options_model`` in ``tmp_path`` (fp32 on the CPU), as load_calculator keys it."""
    from mlff_export.runtime.traced_graphs import TracedGraphKey, TracedGraphStore

    return TracedGraphStore(tmp_path, TracedGraphKey.of(options_model, torch.device("cpu"), "fp32"))


def _traced_again_with(options_model, tmp_path, caplog, *words):
    """Load a compile backend over ``tmp_path``: a warning with ``words``, and the graph it runs is the model's own."""
    import logging

    from mlff_export.export.joint_graph import table_example_inputs, trace_joint_graph

    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        backend = load_calculator(options_model, backend="compile", compile_cache=tmp_path).backend
    assert all(word in caplog.text for word in words), caplog.text
    args = table_example_inputs(options_model.species, "cpu")
    with torch.no_grad():
        for got, want in zip(backend.graph(*args), trace_joint_graph(options_model)[0](*args)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@case("option-compile-cache-traced-graph-of-another-model")
def _(options_model, tmp_path, caplog):
    """What a changed helper function in another file (not in the key) would leave: a stored graph
    that no longer is the model's."""
    from mlff_export.export.joint_graph import trace_joint_graph

    _stored_traced_graph(options_model, tmp_path).save(trace_joint_graph(make_small_painn(seed=7))[0])
    _traced_again_with(options_model, tmp_path, caplog, "differs from the model", "tracing it again")


@case("option-compile-cache-edited-traced-graph")
def _(options_model, tmp_path, caplog):
    from mlff_export.export.joint_graph import trace_joint_graph

    store = _stored_traced_graph(options_model, tmp_path)
    store.save(trace_joint_graph(options_model)[0])
    store.graph_path.write_bytes(store.graph_path.read_bytes().replace(b"aten.sub", b"aten.add", 1))
    _traced_again_with(options_model, tmp_path, caplog, "traced graph", "does not match the SHA-256")


@case("option-compile-cache-traced-graph-cannot-be-checked")
def _(tmp_path, caplog):
    """A model whose eager code refuses to run outside a tracer: its stored graph cannot be checked
    against it, so it is traced again (the trace runs), with a warning naming the error."""
    from mlff_export.model import PaiNN, PaiNNConfig

    class RunsOnlyWhenTraced(PaiNN):
        def atomic_energies(self, *args, **kwargs):
            if not torch.compiler.is_compiling():
                raise RuntimeError("this model runs under torch.compile only")
            return super().atomic_energies(*args, **kwargs)

    torch.manual_seed(0)
    model = RunsOnlyWhenTraced(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
    load_calculator(model, backend="compile", compile_cache=tmp_path)  # traces and stores
    _traced_again_with(model, tmp_path, caplog, "could not be checked against the model", "runs under torch.compile only")


@case("option-compile-cache-traced-graph-naming-a-foreign-function")
def _(options_model, tmp_path):
    """A stored graph whose file (and its SHA-256 in the manifest) was rewritten to import a
    function from outside mlff-export: refused with a clear error, nothing imported or run."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mlff_export.export.joint_graph import trace_joint_graph
    from mlff_export.runtime.compile_cache import keep_with_manifest
    from mlff_export.runtime.traced_graphs import FORMAT

    store = _stored_traced_graph(options_model, tmp_path)
    store.save(trace_joint_graph(options_model)[0])
    with safe_open(store.graph_path, framework="pt") as stored:
        metadata, tensors = stored.metadata(), {name: stored.get_tensor(name) for name in stored.keys()}
    forged = store.folder / ".forged.tmp"
    save_file(tensors, forged, metadata={**metadata, "functions": json.dumps({"torch": "os:system"})})
    keep_with_manifest(forged, store.graph_path, store.manifest_path, FORMAT, store.key)
    with refused(ValueError, "mlff-export's own functions only", "os:system"):
        load_calculator(options_model, backend="compile", compile_cache=tmp_path)


@case("model-scripted-when-copied")
def _():
    class ScriptedWhenCopied(nn.Module):  # what e3nn 0.4 modules do: their copy is TorchScript
        def forward(self, x):
            return x

        def __deepcopy__(self, memo):
            return torch.jit.script(nn.Identity())

    from mlff_export.export.errors import ExportError
    from mlff_export.export.precision import model_for_precision

    model = nn.Sequential(ScriptedWhenCopied(), nn.Linear(2, 2)).double()
    with refused(ExportError, "copying it turned", "TorchScript", "float32 on the CPU", "fresh model"):
        model_for_precision(model, "fp32")


@case("option-compile-cache-not-a-path")
def _(options_model):
    with refused(CalculatorSetupError, "compile_cache", "expected True, False or a folder"):
        load_calculator(options_model, backend="compile", compile_cache=3)


@case("option-min-distance-not-a-number")
def _(options_model):
    """A string or a bool (True would read as 1 Å) is refused, not converted."""
    for value in ("0.5", True):
        with refused(CalculatorSetupError, "min_distance", repr(value)):
            load_calculator(options_model, min_distance=value)


@case("option-memory-limit-zero")
def _(options_model):
    with refused(CalculatorSetupError, "memory_limit_gb", "> 0"):
        load_calculator(options_model, memory_limit_gb=0)


@case("option-device-unknown")
def _(options_model):
    with refused(CalculatorSetupError, "device must be 'cpu' or 'cuda[:N]'", "tpu"):
        load_calculator(options_model, device="tpu")


@case("option-dtype-unknown")
def _(options_model):
    with refused(CalculatorSetupError, "dtype must be one of", "float16"):
        load_calculator(options_model, dtype="float16")


@case("option-backend-unknown")
def _(options_model):
    with refused(CalculatorSetupError, "backend must be one of", "tensorflow"):
        load_calculator(options_model, backend="tensorflow")


@case("option-onnx-with-eager-backend")
def _(exported):
    with refused(CalculatorSetupError, "runs on backend 'onnxruntime'"):
        load_calculator(exported, backend="eager")


@case("option-export-opset-too-old")
def _(options_model, tmp_path):
    with refused(ExportError, "opset", "13"):
        to_onnx(options_model, tmp_path / "m.onnx", opset=13)


@case("option-export-precision-unknown")
def _(options_model, tmp_path):
    with refused(ExportError, "precision must be one of", "int8"):
        to_onnx(options_model, tmp_path / "m.onnx", precision="int8")


@case("option-tolerance-negative")
def _():
    with refused(ValueError, "forces.atol must be >= 0"):
        default_tolerances("fp32").overridden({"forces.atol": -1.0})


@case("cli-nve-steps-negative")
def _(exported, capsys):
    one_line_cli_error(capsys, ["validate", str(exported), "--nve-steps", "-5"], "nve_steps", "-5")


@case("cli-export-precision-unknown")
def _(tmp_path, capsys):
    one_line_cli_error(capsys, ["export", "--out", str(tmp_path), "--precision", "fp8"], "fp8")
    assert list(tmp_path.iterdir()) == []


@case("cli-folder-as-checkpoint")
def _(tmp_path, capsys):
    one_line_cli_error(capsys, ["info", "--checkpoint", str(tmp_path)], "is a folder")


# ----------------------------------------------------------------------------------------------
# concurrency


@case("one-calculator-two-threads-refused")
def _(model):
    """A second thread entering a calculator mid-call is refused; the call in progress is unharmed."""
    blocking = BlockingModel(model)
    calc = load_calculator(blocking)
    results = {}
    worker = threading.Thread(target=lambda: results.update(first=calc.predict([benzene()])[0]["energy"]))
    worker.start()
    assert blocking.entered.wait(timeout=30)
    try:
        with refused(ConcurrentUseError, "another thread", "one calculator per thread"):
            calc.predict([molecule("H2O")])
    finally:
        blocking.release.set()
        worker.join()
    assert results["first"] == pytest.approx(energy(load_calculator(model), benzene()), abs=1e-4)


@case("one-calculator-per-thread-same-numbers")
def _(model):
    structures = [benzene(), molecule("H2O"), bulk("C", "diamond", a=3.57)]
    expected = [result["energy"] for result in load_calculator(model).predict(structures)]
    found: dict[int, list[float]] = {}

    def work(index: int) -> None:
        calc = load_calculator(model)
        found[index] = [energy(calc, atoms) for atoms in structures for _ in range(3)][::3]

    threads = [threading.Thread(target=work, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for values in found.values():
        np.testing.assert_allclose(values, expected, atol=1e-4)


@case("artifact-replaced-while-loading")
def _(exported, tmp_path):
    """Another process re-exports (atomic rename) while we load: every load runs exactly the
    graph whose metadata it checked, never a mix of two files."""
    first = tmp_path / "first.onnx"
    first.write_bytes(exported.read_bytes())
    second = edited_onnx(exported, tmp_path / "second.onnx", scale_largest_weight, reseal=True)
    target = tmp_path / "model.onnx"
    target.write_bytes(first.read_bytes())
    versions = [first.read_bytes(), second.read_bytes()]
    stop = threading.Event()

    def keep_replacing() -> None:
        flip = 0
        while not stop.is_set():
            staging = tmp_path / f".staging{flip}"
            staging.write_bytes(versions[flip])
            os.replace(staging, target)
            flip = 1 - flip

    writer = threading.Thread(target=keep_replacing)
    writer.start()
    try:
        for _ in range(10):
            backend = OnnxRuntimeBackend(target)
            session_graph = backend.session.get_modelmeta().custom_metadata_map["model_sha256"]
            assert session_graph == backend.metadata.model_sha256
    finally:
        stop.set()
        writer.join()


@case("artifact-changed-after-load")
def _(exported, model, tmp_path):
    """Sessions made after load (one per shape bucket) come from the checked bytes, not the path:
    garbage written over the file later changes nothing."""
    path = tmp_path / "model.onnx"
    path.write_bytes(exported.read_bytes())
    backend = OnnxRuntimeBucketBackend(path, torch.device("cpu"))
    path.write_bytes(b"garbage")
    atoms = water_box(200)
    inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])
    got = backend.evaluate(inputs)
    want = EagerBackend(model, torch.device("cpu"), torch.float32).evaluate(inputs)
    np.testing.assert_allclose(got["forces"].numpy(), want["forces"].numpy(), atol=1e-4)


@case("concurrent-exports-to-one-path")
def _(exported, tmp_path):
    """Two exports writing one path at once: the file is one of them, whole and sealed; no
    temporary file is left."""
    versions = [exported.read_bytes(), edited_onnx(exported, tmp_path / "other.onnx", scale_largest_weight, reseal=True).read_bytes()]
    target = tmp_path / "out" / "model.onnx"
    threads = [threading.Thread(target=_write_atomically, args=(data, target, None)) for data in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in versions and read_verified_artifact(target).metadata.cutoff == 4.0
    assert [p.name for p in target.parent.iterdir()] == ["model.onnx"]


# ----------------------------------------------------------------------------------------------
# the GPU input path (device checks read back with the outputs); skipped without CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda-graphs", "compile-reduce-overhead", "onnxruntime"])
def test_gpu_input_path_refuses_overlapping_atoms(backend, model, exported):
    if backend == "onnxruntime":
        skip_without_onnxruntime_cuda()
    calc = load_calculator(exported if backend == "onnxruntime" else model, "cuda", backend=None if backend == "onnxruntime" else backend)
    good = benzene()
    assert energy(calc, good) == pytest.approx(energy(load_calculator(model), good), abs=1e-3)
    for _ in range(3):  # captured graphs: the check must see new positions on every replay
        overlapping = benzene()
        overlapping.positions[5] = overlapping.positions[1]
        with refused(StructureError, "atom 1 (C)", "atom 5 (C)", "0 Å apart"):
            energy(calc, overlapping)
        assert math.isfinite(energy(calc, good))


# ----------------------------------------------------------------------------------------------
# the catalogue


@pytest.fixture
def case_fixtures(request) -> dict:
    """The fixtures the case asks for by its parameters, set up before the case runs (so that a
    shared export counts as setup in ``--durations``, not as the first case's time)."""
    function = CASES[request.node.callspec.params["case_id"]]
    return {name: request.getfixturevalue(name) for name in inspect.signature(function).parameters}


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input(case_id, case_fixtures):
    CASES[case_id](**case_fixtures)


DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


def test_catalogue_is_documented():
    """Every case id has a row in docs/reliability.md's table, and every row a case."""
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), re.MULTILINE)
    assert len(documented) == len(set(documented)), "a case is documented twice"
    assert sorted(documented) == sorted(CASES), (
        f"undocumented: {sorted(set(CASES) - set(documented))}; documented without a test: {sorted(set(documented) - set(CASES))}"
    )
    assert len(CASES) >= 60
