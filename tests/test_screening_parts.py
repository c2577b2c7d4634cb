"""The parts of mlff-export predict, each alone: shards, batches, the automatic batch size,
refusals inside a batch, overlap checks, outputs, the Ray worker layout; and on a GPU, the
automatic batch size on real memory."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import make_small_painn

from mlff_export.bench.workloads import small_molecule_batch
from mlff_export.checkpoint import save_checkpoint
from mlff_export.runtime import load_calculator
from mlff_export.runtime.calculator import MLFFCalculator
from mlff_export.runtime.eager import EagerBackend
from mlff_export.screening import ModelSettings, screen
from mlff_export.screening.batching import (
    CPU_MAX_ATOMS,
    GPU_MAX_ATOMS,
    batches,
    largest_fitting_atoms,
)
from mlff_export.screening.evaluation import ShardEvaluator
from mlff_export.screening.inputs import (
    InputError,
    StructureRecord,
    find_sources,
    plan_shards,
    read_shard,
)
from mlff_export.screening.outputs import atomic_write, write_shard
from mlff_export.screening.overlaps import overlap_problems
from mlff_export.screening.ray_runner import RayRunError, _worker_layout, import_ray


@pytest.fixture
def checkpoint(tmp_path):
    return save_checkpoint(make_small_painn(), tmp_path / "small.json")


def test_shards_read_back_the_frames_they_planned(tmp_path):
    molecules = small_molecule_batch(23, seed=3)
    path = tmp_path / "molecules.xyz"
    ase.io.write(path, molecules, format="extxyz")
    shards = plan_shards(find_sources([path]), shard_size=5)
    assert [(shard.shard_id, shard.start, shard.stop) for shard in shards] == [
        ("00000", 0, 5), ("00001", 5, 10), ("00002", 10, 15), ("00003", 15, 20), ("00004", 20, 23)
    ]
    read = [record for shard in shards for record in read_shard(shard)]
    assert [record.index for record in read] == list(range(23))
    for record, atoms in zip(read, molecules):
        assert record.atoms.get_chemical_formula() == atoms.get_chemical_formula()
        np.testing.assert_allclose(record.atoms.positions, atoms.positions, atol=1e-8)


def test_a_database_is_sharded_by_row_and_keeps_its_keys(tmp_path):
    from ase.db import connect

    database = connect(tmp_path / "cells.db")
    for index in range(7):
        database.write(bulk("C", "diamond", a=3.5 + 0.01 * index), label=f"c{index}")
    shards = plan_shards(find_sources([tmp_path]), shard_size=3)
    records = [record for shard in shards for record in read_shard(shard)]
    assert [record.index for record in records] == list(range(1, 8))  # row ids
    assert [record.atoms.info["label"] for record in records] == [f"c{index}" for index in range(7)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("3\ncomment\nH 0 0 0\n", "ends inside the frame starting at byte 0"),
        ("2\n\nH 0 0 0\nH 0 0 0.7\nnot-a-count\n", "line 5 (byte 21) should hold an atom count"),
    ],
)
def test_a_broken_extxyz_file_is_refused_naming_where(tmp_path, text, message):
    path = tmp_path / "broken.xyz"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)):
        plan_shards(find_sources([path]), shard_size=10)


def test_batches_keep_order_and_respect_both_limits():
    counts = [3, 3, 3, 10, 2, 2, 2, 2]
    assert batches(counts, max_atoms=8) == [range(0, 2), range(2, 3), range(3, 4), range(4, 8)]
    assert batches(counts, max_structures=3) == [range(0, 3), range(3, 6), range(6, 8)]
    assert batches(counts, max_atoms=7, max_structures=2) == [range(0, 2), range(2, 3), range(3, 4), range(4, 6), range(6, 8)]
    assert batches(counts) == [range(0, 8)]
    assert batches([]) == []


@dataclass
class OutOfMemoryAboveForTests:
    """A fake CUDA backend for the batch-size search alone: it runs out of memory above
    ``limit`` atoms per call, like a GPU would; it never computes anything."""

    limit: int
    name: str = "fake"
    device: torch.device = torch.device("cuda")
    dtype: torch.dtype = torch.float32

    def __post_init__(self):
        self.calls: list[int] = []

    def evaluate(self, inputs):
        self.calls.append(inputs.num_atoms)
        if inputs.num_atoms > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return {}


def test_the_automatic_batch_size_halves_until_the_first_batch_fits():
    backend = OutOfMemoryAboveForTests(limit=3000)
    calc = MLFFCalculator(backend, cutoff=5.0, species=(1, 6, 7, 8))
    molecules = small_molecule_batch(4000, seed=1)
    budget = largest_fitting_atoms(calc, molecules)
    assert backend.calls[0] > GPU_MAX_ATOMS - 20  # the first try is a full batch at the cap
    assert all(later < earlier for earlier, later in zip(backend.calls, backend.calls[1:]))
    assert backend.calls[-1] <= 3000 < backend.calls[-2]
    assert backend.calls[-1] <= budget < backend.calls[-2]  # the budget its fitting batch was packed under


def test_the_automatic_batch_size_on_the_cpu_is_fixed(small_model):
    calc = MLFFCalculator(EagerBackend(small_model, torch.device("cpu"), torch.float32), cutoff=4.0, species=(1, 6, 7, 8))
    assert largest_fitting_atoms(calc, [molecule("H2O")]) == CPU_MAX_ATOMS


class CalculatorRefusingMarkedStructuresForTests:
    """The real calculator, except that a batch holding a structure marked ``info["refuse"]`` is
    refused (ValueError, as a TensorRT profile limit would be) and one marked ``info["nan"]``
    gets NaN forces: to test how the evaluator isolates them, not the model."""

    def __init__(self, calc):
        self.calc = calc
        self.batch_sizes = []

    def __getattr__(self, name):
        return getattr(self.calc, name)

    def predict(self, structures):
        self.batch_sizes.append(len(structures))
        if any(atoms.info.get("refuse") for atoms in structures):
            raise ValueError("outside every engine profile (fake)")
        results = self.calc.predict(structures)
        for atoms, result in zip(structures, results):
            if atoms.info.get("nan"):
                result["forces"] = np.full_like(result["forces"], np.nan)
        return results


def test_a_refused_structure_fails_alone_and_the_batch_goes_on(checkpoint):
    evaluator = ShardEvaluator(ModelSettings(str(checkpoint), device="cpu"))
    evaluator.calc = CalculatorRefusingMarkedStructuresForTests(evaluator.calc)
    molecules = small_molecule_batch(16, seed=5)
    molecules[5].info["refuse"] = True
    molecules[11].info["nan"] = True
    records = [StructureRecord(index, atoms.copy()) for index, atoms in enumerate(molecules)]
    evaluator.evaluate(records)
    assert records[5].error == "refused by the model: outside every engine profile (fake)"
    assert records[11].error == "the model returned non-finite energy, forces or stress"
    # halves down to the refused structure, evaluating the halves without it whole
    assert evaluator.calc.batch_sizes == [16, 8, 4, 4, 2, 1, 1, 2, 8]
    assert records[5].results is None and records[11].results is None
    others = [index for index in range(16) if index not in (5, 11)]
    reference = load_calculator(checkpoint).predict([molecules[index] for index in others])
    for index, want in zip(others, reference):
        assert records[index].error is None
        assert records[index].results["energy"] == pytest.approx(want["energy"], abs=5e-4)
        np.testing.assert_allclose(records[index].results["forces"], want["forces"], atol=2e-4)


def test_overlapping_atoms_are_found_in_molecules_large_structures_and_periodic_images():
    close = Atoms("H3", positions=[[0, 0, 0], [2, 0, 0], [0, 0, 0.3]])
    large = molecule("C60") + Atoms("H10", positions=[[0, 0, 20 + 2 * k] for k in range(10)])  # 70 atoms: a neighbor list
    large.positions[65] = large.positions[5] + [0.2, 0, 0]
    thin = Atoms("C", positions=[[0, 0, 0]], cell=[0.4, 5, 5], pbc=True)
    problems = overlap_problems([molecule("H2O"), close, large, thin, molecule("CH4"), Atoms("H")], 0.5)
    assert problems == [
        None,
        "overlapping atoms: atoms 0 and 2 are 0.300 Å apart (closer than 0.5 Å)",
        "overlapping atoms: atoms 5 and 65 are 0.200 Å apart (closer than 0.5 Å)",
        "overlapping atoms: atom 0 and its periodic image are 0.400 Å apart (closer than 0.5 Å)",
        None,
        None,
    ]
    assert overlap_problems([close, thin], 0.0) == [None, None]


def test_outputs_keep_the_inputs_reference_results(tmp_path, checkpoint):
    from mlff_export.screening.inputs import Shard

    atoms = molecule("CH4")
    atoms.info["name"] = "methane"
    atoms.calc = SinglePointCalculator(atoms, energy=-123.4, forces=np.ones((5, 3)))
    results = load_calculator(checkpoint).predict([atoms])[0]
    shard = Shard("00000", "in.xyz", "extxyz", 0, 1)
    write_shard(tmp_path, shard, [StructureRecord(0, atoms, results=results)], {"worker": "test"})
    (written,) = ase.io.read(tmp_path / "shards" / "00000.extxyz", index=":")
    assert written.info["name"] == "methane" and written.info["mlff_structure_id"] == "in.xyz:0"
    assert written.info["input_energy"] == -123.4
    np.testing.assert_array_equal(written.arrays["input_forces"], np.ones((5, 3)))
    assert written.get_potential_energy() == pytest.approx(results["energy"], abs=1e-10)


def test_an_interrupted_write_leaves_the_old_file_whole_and_nothing_aside(tmp_path):
    path = tmp_path / "shards" / "00000.csv"
    atomic_write(path, b"old, whole")
    with pytest.raises(TypeError):
        atomic_write(path, "text where bytes belong: the write fails half-way")
    assert path.read_bytes() == b"old, whole"
    assert [p.name for p in path.parent.iterdir()] == ["00000.csv"]


@pytest.mark.parametrize(
    "resources, arguments, expected",
    [
        ({"CPU": 32.0, "GPU": 2.0}, (None, None, None), (2, 1, "cuda")),
        ({"CPU": 32.0, "GPU": 2.0}, (1, None, None), (1, 1, "cuda")),
        ({"CPU": 32.0, "GPU": 2.0}, (None, 0.5, None), (4, 0.5, "cuda")),
        ({"CPU": 32.0, "GPU": 2.0}, (None, None, "cpu"), (31, 0, "cpu")),
        ({"CPU": 3.0}, (None, None, None), (2, 0, "cpu")),
    ],
)
def test_ray_workers_default_to_one_per_gpu(resources, arguments, expected):
    assert _worker_layout(resources, *arguments) == expected


@pytest.mark.parametrize(
    "resources, arguments, message",
    [
        ({"CPU": 32.0, "GPU": 2.0}, (3, None, None), "3 workers with 1 GPUs each need 3 GPUs; the cluster has 2"),
        ({"CPU": 2.0}, (2, None, None), "2 workers need 3 CPUs"),
        ({"CPU": 8.0}, (None, None, "cuda"), "the cluster has none"),
        ({"CPU": 8.0, "GPU": 1.0}, (None, 1, "cpu"), "0 with --device cpu"),
    ],
)
def test_ray_layouts_the_cluster_cannot_hold_are_refused(resources, arguments, message):
    with pytest.raises(RayRunError, match=message):
        _worker_layout(resources, *arguments)


def test_without_ray_installed_the_message_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayRunError, match=r'pip install "mlff-export\[ray\]"'):
        import_ray()


@pytest.mark.gpu
def test_on_a_gpu_results_equal_one_by_one_and_the_batch_size_is_found(tmp_path, checkpoint):
    molecules = small_molecule_batch(300, seed=11)
    ase.io.write(tmp_path / "molecules.xyz", molecules, format="extxyz")
    report = screen([tmp_path / "molecules.xyz"], tmp_path / "out", ModelSettings(str(checkpoint), device="cuda"),
                    shard_size=100, show_progress=False)
    assert (report.ok, report.failed) == (300, 0)
    reference = load_calculator(checkpoint, device="cpu")
    written = [atoms for path in sorted((tmp_path / "out" / "shards").glob("*.extxyz")) for atoms in ase.io.read(path, index=":")]
    for atoms, original in zip(written, molecules):
        want = reference.predict([original])[0]
        assert atoms.get_potential_energy() == pytest.approx(want["energy"], abs=5e-4)
        np.testing.assert_allclose(atoms.get_forces(), want["forces"], atol=2e-4)
    evaluator = ShardEvaluator(ModelSettings(str(checkpoint), device="cuda"))
    evaluator.evaluate([StructureRecord(i, atoms) for i, atoms in enumerate(molecules)])
    assert evaluator.max_atoms == GPU_MAX_ATOMS  # small molecules fit at the cap on any modern GPU
