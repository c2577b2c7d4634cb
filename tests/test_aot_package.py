"""The joint graph compiled ahead of time (runtime/aot_package.py, ``mlff-export compile --aot``):
one package serves every bucket, a new calculator runs it without compiling, and a package made for
anything else — other weights — or a damaged or unsafe one is never loaded."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import write
from torch._dynamo.utils import counters

from mlff_export.cli import main
from mlff_export.runtime import load_calculator

pytestmark = pytest.mark.slow

TINY_MODEL_FACTORY = """
import torch
from mlff_export.model import PaiNN, PaiNNConfig

def make(shift=0.0):
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
    with torch.no_grad():
        next(model.parameters()).add_(shift)
    return model
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A package of the tiny PaiNN built by ``mlff-export compile --aot`` on the CPU: (factory, cache folder, output)."""
    folder = tmp_path_factory.mktemp("aot")
    (folder / "tiny.py").write_text(TINY_MODEL_FACTORY)
    write(folder / "water.xyz", [molecule("H2O")])
    cache = folder / "cache"
    argv = ["compile", "--model", f"{folder / 'tiny.py'}:make", "--backend", "compile", "--device", "cpu", "--aot",
            "--structures", str(folder / "water.xyz"), "--cache", str(cache)]
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        assert main(argv) == 0
    return f"{folder / 'tiny.py'}:make", cache, output.getvalue()


def tiny_model(factory, shift=0.0):
    from mlff_export.model_intake import load_model

    return load_model(factory, model_kwargs={"shift": shift}).module


def test_the_cli_builds_loads_and_checks_the_package(built):
    _, cache, output = built
    assert "compiling the joint graph ahead of time" in output
    assert "a new calculator loaded it" in output
    assert "H2O: forces within" in output
    (package,) = cache.glob("*/joint-graph.pt2")
    assert (package.parent / "joint-graph.json").is_file()


@pytest.mark.parametrize("atoms", [molecule("C6H6"), bulk("C", "diamond", a=3.57) * (1, 1, 2)], ids=["benzene", "diamond-cell"])
def test_a_new_calculator_runs_the_package_for_buckets_it_was_not_built_on(built, atoms):
    factory, cache, _ = built
    packaged = load_calculator(tiny_model(factory), "cpu", backend="compile", compile_cache=cache)
    assert packaged.backend.ahead_of_time
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=4)
    eager = load_calculator(tiny_model(factory), "cpu", backend="eager")
    compiled_graphs = counters["stats"]["unique_graphs"]
    forces = [calc.get_forces(atoms.copy()) for calc in (packaged, eager)]
    assert counters["stats"]["unique_graphs"] == compiled_graphs  # the package ran: torch.compile compiled nothing
    assert np.abs(forces[1]).max() > 1e-3
    np.testing.assert_allclose(forces[0], forces[1], atol=1e-4)
    energies = [calc.get_potential_energy(atoms.copy()) for calc in (packaged, eager)]
    assert energies[0] == pytest.approx(energies[1], abs=1e-4)


def test_other_weights_do_not_find_the_package(built):
    factory, cache, _ = built
    assert not load_calculator(tiny_model(factory, shift=1e-3), "cpu", backend="compile", compile_cache=cache).backend.ahead_of_time


def test_a_damaged_package_is_not_loaded(built, tmp_path, caplog):
    factory, cache, _ = built
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (package,) = copy.glob("*/joint-graph.pt2")
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    package.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        backend = load_calculator(tiny_model(factory), "cpu", backend="compile", compile_cache=copy).backend
    assert not backend.ahead_of_time
    assert "does not match the SHA-256 in its manifest" in caplog.text


def test_a_package_others_can_write_is_not_loaded(built, tmp_path, caplog):
    factory, cache, _ = built
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    (package,) = copy.glob("*/joint-graph.pt2")
    os.chmod(package, 0o664)
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        backend = load_calculator(tiny_model(factory), "cpu", backend="compile", compile_cache=copy).backend
    assert not backend.ahead_of_time
    assert "writable by others" in caplog.text


def test_remove_deletes_the_package_and_its_manifest(built, tmp_path):
    from mlff_export.runtime.aot_package import AotPackage

    factory, cache, _ = built
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    backend = load_calculator(tiny_model(factory), "cpu", backend="compile", compile_cache=copy).backend
    assert backend.ahead_of_time
    package = AotPackage(copy, backend.compile_cache.key)
    package.remove()
    assert not package.package_path.exists() and not package.manifest_path.exists()
    assert package.load() is None


def test_load_problem_says_why_a_package_does_not_load_in_a_new_process(built, tmp_path):
    """The probe a package must pass before it is kept: a good package loads; bytes that are no
    package fail with the loader's last line; a loader that crashes (as every CUDA package did on
    the H200 image of 2026-12-01; a child killing itself with SIGSEGV stands in) names the signal."""
    from mlff_export.runtime.aot_package import load_problem

    _, cache, _ = built
    (package,) = cache.glob("*/joint-graph.pt2")
    assert load_problem(package) is None
    (tmp_path / "junk.pt2").write_bytes(b"not a package")
    assert load_problem(tmp_path / "junk.pt2").startswith("loading it failed: ")
    crashing_loader = "import os, signal, sys; os.kill(os.getpid(), signal.SIGSEGV)"
    assert load_problem(package, probe=crashing_loader) == "the process loading it died of signal 11 (SIGSEGV)"


def test_a_package_that_does_not_load_in_a_new_process_is_not_kept(built, tmp_path, monkeypatch):
    """AotPackage.build keeps nothing (no package, no manifest) when the new-process probe fails.
    Fakes, named as such: the packager writes bytes instead of compiling (the compile is the
    library's, tested above) and the probe reports the crash seen on the H200."""
    import torch

    from mlff_export.runtime import aot_package

    factory, _, _ = built
    backend = load_calculator(tiny_model(factory), "cpu", backend="compile", compile_cache=tmp_path).backend

    def fake_packager_for_tests(program, package_path, inductor_configs):
        with open(package_path, "wb") as handle:
            handle.write(b"package bytes")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_packager_for_tests)
    monkeypatch.setattr(aot_package, "load_problem", lambda path: "the process loading it died of signal 11 (SIGSEGV)")
    with pytest.raises(aot_package.AotPackageError, match="does not load in a new process .*signal 11.*not kept"):
        backend.aot_package.build(backend.graph, backend.example_inputs)
    assert not backend.aot_package.package_path.exists() and not backend.aot_package.manifest_path.exists()
    assert list(backend.aot_package.folder.iterdir()) == [], "the built bytes were left behind"
    assert backend.aot_package.load() is None
