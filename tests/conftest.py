"""Shared fixtures: small deterministic models and structures the physics tests run on, and the
small model's ONNX export, made once per test run.

The README's test command runs the files on several processes (pytest-xdist, ``-n auto --dist
loadfile``): each worker uses one torch thread, and what every worker needs (the export) is built
by the first worker that asks, under a file lock, and read by the others.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from filelock import FileLock

from mlff_export.model import PaiNN, PaiNNConfig

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def pytest_configure(config):
    """One torch thread per pytest-xdist worker: as many workers as cores already fill the
    machine, and OpenMP threads that wait for a core another worker holds made eager calls 5-9x
    slower on the 2-core CI machine."""
    if XDIST_WORKER:
        torch.set_num_threads(1)
    # Compiled kernels of the tests go to a temporary folder, not the user's ~/.cache.
    os.environ.setdefault("MLFF_EXPORT_COMPILE_CACHE", tempfile.mkdtemp(prefix="mlff-export-test-compile-cache-"))


def skip_without_onnxruntime_cuda() -> None:
    """Skip the calling test where onnxruntime (or its CUDAExecutionProvider) is not installed."""
    onnxruntime = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu)")


def make_small_painn(seed: int = 0) -> PaiNN:
    """A randomly initialised, narrow PaiNN (fast on CPU); physics tests hold for any weights."""
    torch.manual_seed(seed)
    model = PaiNN(PaiNNConfig(num_features=32, num_interactions=2, num_radial=8, cutoff=4.0))
    model.energy_scale.fill_(0.5)
    # GFN2-xTB-like per-species energies (eV): float32 totals keep ~1e-5 eV resolution on molecules.
    model.atom_reference_energies.copy_(torch.tensor([-10.7, -48.8, -71.0, -102.6]))
    return model.eval()


@pytest.fixture(scope="session")
def small_model() -> PaiNN:
    return make_small_painn()


def compiled_versions(compiled_module) -> list:
    """Dynamo's compiled versions (cache entries) of a ``torch.compile``-d module's forward."""
    return torch._dynamo.eval_frame._debug_get_cache_entry_list(compiled_module._orig_mod.forward.__code__)


def rattled(atoms: Atoms, stdev: float = 0.05, seed: int = 1) -> Atoms:
    atoms = atoms.copy()
    atoms.rattle(stdev, seed=seed)
    return atoms


def triclinic_cell() -> Atoms:
    """Four atoms in a small, strongly skewed periodic cell (all vectors shorter than the cutoff)."""
    cell = np.array([[3.1, 0.0, 0.0], [1.4, 2.9, 0.0], [0.7, 1.1, 3.3]])
    fractions = np.array([[0.0, 0.0, 0.0], [0.5, 0.4, 0.1], [0.2, 0.7, 0.6], [0.8, 0.2, 0.5]])
    return Atoms("CNOH", scaled_positions=fractions, cell=cell, pbc=True)


@pytest.fixture
def benzene() -> Atoms:
    return rattled(molecule("C6H6"))


@pytest.fixture
def diamond() -> Atoms:
    """The 2-atom primitive diamond cell: every lattice vector (2.5 Å) is shorter than the cutoff."""
    return rattled(bulk("C", "diamond", a=3.57), seed=2)


@pytest.fixture
def triclinic() -> Atoms:
    return triclinic_cell()


def structure_zoo() -> dict[str, Atoms]:
    """Molecules and periodic cells of several kinds, keyed by a readable id."""
    slab = rattled(bulk("C", "diamond", a=3.57, cubic=True), seed=3)
    slab.pbc = [True, True, False]
    return {
        "H2": molecule("H2"),
        "H2O": rattled(molecule("H2O")),
        "CH4": rattled(molecule("CH4")),
        "benzene": rattled(molecule("C6H6")),
        "diamond-primitive": rattled(bulk("C", "diamond", a=3.57), seed=2),
        "triclinic": triclinic_cell(),
        "mixed-pbc-slab": slab,
    }


def run_folder(tmp_path_factory) -> Path:
    """The temporary folder of the whole test run (shared by all pytest-xdist workers)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if XDIST_WORKER else base


@pytest.fixture(scope="session")
def small_painn_export(tmp_path_factory) -> dict:
    """``make_small_painn()`` saved as a checkpoint and exported by ``mlff-export export`` (both
    precisions, parity checked), once per test run. Returns ``{"checkpoint": card path,
    "onnx": {precision: path}, "exit_code": int, "stdout": str}``."""
    folder = run_folder(tmp_path_factory) / "small-painn-export"
    summary = folder / "summary.json"
    with FileLock(str(folder) + ".lock"):
        if not summary.is_file():
            from mlff_export.checkpoint import save_checkpoint
            from mlff_export.cli import main

            card = save_checkpoint(make_small_painn(), folder / "small-painn.json")
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exit_code = main(["export", "--checkpoint", str(card), "--out", str(folder / "onnx")])
            onnx = {precision: str(folder / "onnx" / f"small-painn.{precision}.onnx") for precision in ("fp32", "fp16")}
            summary.write_text(json.dumps({"checkpoint": str(card), "onnx": onnx, "exit_code": exit_code, "stdout": printed.getvalue()}))
    result = json.loads(summary.read_text())
    result["checkpoint"] = Path(result["checkpoint"])
    result["onnx"] = {precision: Path(path) for precision, path in result["onnx"].items()}
    return result


def pytest_collection_modifyitems(config, items):
    """GPU tests skip, with the reason, where CUDA is absent (CI); run them with ``pytest -m gpu``."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none here); run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
