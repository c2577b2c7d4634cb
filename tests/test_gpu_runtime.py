"""GPU backends (run on a GPU machine: ``pytest -m gpu``): every one gives eager's numbers,
batched and padded, and replays its CUDA graphs across calls without stale results."""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import numpy as np
import torch
import pytest
from conftest import skip_without_onnxruntime_cuda, structure_zoo

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ("compile", "compile-reduce-overhead", "cuda-graphs")


@pytest.fixture(scope="module")
def eager_results():
    structures = list(structure_zoo().values())
    return structures, load_calculator(REFERENCE_CHECKPOINT, device="cuda").predict(structures)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_matches_eager(backend, eager_results):
    structures, expected = eager_results
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend=backend)
    for _ in range(2):  # the second pass replays captured graphs
        batched = calc.predict(structures)
        for want, have in zip(expected, batched):
            assert have["energy"] == pytest.approx(want["energy"], abs=1e-4)
            np.testing.assert_allclose(have["forces"], want["forces"], atol=1e-4)
    for atoms, want in zip(structures, expected):  # one by one: other buckets, same numbers
        atoms = atoms.copy()
        atoms.calc = calc
        np.testing.assert_allclose(atoms.get_forces(), want["forces"], atol=1e-4)


@pytest.mark.parametrize("backend", ["cuda-graphs", "compile-reduce-overhead"])
def test_large_cell_builds_its_table_on_the_gpu_and_matches_eager(backend):
    """A 1029-atom water box has ~50k pairs: above PAIRS_BUILT_ON_DEVICE, the table is built on the GPU."""
    from mlff_export.bench.workloads import water_box

    atoms = water_box(1000)
    expected = load_calculator(REFERENCE_CHECKPOINT, device="cuda").predict([atoms])[0]
    got = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend=backend).predict([atoms])[0]
    assert got["energy"] == pytest.approx(expected["energy"], rel=1e-6)
    np.testing.assert_allclose(got["forces"], expected["forces"], atol=1e-4)
    np.testing.assert_allclose(got["stress"], expected["stress"], atol=1e-6)


@pytest.mark.parametrize("backend", ["cuda-graphs", "compile-reduce-overhead"])
def test_calculator_builds_inputs_on_the_gpu_and_tracks_md_geometry(backend):
    """Single structures take the GPU path (no CPU neighbor search: the Verlet list never builds);
    replays with moving atoms give eager's forces at every step (no stale inputs or outputs)."""
    from mlff_export.runtime.device_feeds import has_vesin_torch
    from mlff_export.bench.workloads import water_box

    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend=backend)
    eager = load_calculator(REFERENCE_CHECKPOINT, device="cuda")
    structures = [structure_zoo()["benzene"], structure_zoo()["CH4"]]
    if has_vesin_torch():
        structures += [structure_zoo()["triclinic"], water_box(100)]
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calc
        for step in range(4):
            atoms.positions[:, 0] += 0.02 * (-1) ** step
            want = eager.predict([atoms])[0]
            np.testing.assert_allclose(atoms.get_forces(), want["forces"], atol=1e-4)
            assert atoms.get_potential_energy() == pytest.approx(want["energy"], rel=1e-6, abs=2e-4)
    assert calc.neighbor_list.builds == 0, "the calculator never searched neighbors on the CPU"


@pytest.mark.parametrize("backend", ["cuda-graphs", "compile-reduce-overhead"])
def test_md_with_a_skin_reuses_the_gpu_table_and_keeps_eagers_numbers(backend):
    """With a 0.6 Å skin the GPU path searches once, then replays on the kept table with new
    positions (the same table tensors) while atoms move less than 0.3 Å, searches again past that,
    and gives eager's numbers at every step (pairs of the skin add exact zeros)."""
    from mlff_export.runtime.device_feeds import has_vesin_torch
    from mlff_export.bench.workloads import water_box

    if not has_vesin_torch():
        pytest.skip("vesin-torch is not installed (pip install vesin-torch)")
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend=backend, skin=0.6)
    eager = load_calculator(REFERENCE_CHECKPOINT, device="cuda")
    atoms = water_box(1000)
    atoms.calc = calc
    tables = []
    for step in range(6):
        atoms.positions[:, 0] += 0.08 if step < 5 else 0.0  # 0.08 Å per step: 0.32 Å at step 4, a new search
        want = eager.predict([atoms])[0]
        np.testing.assert_allclose(atoms.get_forces(), want["forces"], atol=1e-4)
        assert atoms.get_potential_energy() == pytest.approx(want["energy"], rel=1e-6)
        np.testing.assert_allclose(atoms.get_stress(), want["stress"], atol=1e-6)
        tables.append(calc.backend.device_feeds._kept.value["neighbor_index"])
    assert [table is tables[0] for table in tables] == [True] * 4 + [False] * 2 and tables[5] is tables[4]
    assert calc.neighbor_list.builds == 0, "the calculator never searched neighbors on the CPU"


def test_the_device_search_gives_the_lattice_shifts_behind_its_pair_shifts():
    """vesin-torch's pairs on the GPU carry their integer shifts (int64) that give the Cartesian
    shifts through the cell (``AtomicInputs.check``), in a cell smaller than the cutoff (images up
    to two cells away) and in a water box; tables built on them equal tables built without them."""
    from mlff_export.bench.workloads import water_box
    from mlff_export.runtime.device_feeds import DeviceFeeds, has_vesin_torch, table_feeds

    if not has_vesin_torch():
        pytest.skip("vesin-torch is not installed")
    device = torch.device("cuda")
    search = DeviceFeeds(cutoff=5.0, padding_species=1, device=device)
    for atoms in (structure_zoo()["triclinic"], water_box(100)):
        inputs = search.search(atoms)
        inputs.check()
        assert int(inputs.lattice_shifts.abs().max()) >= 1
        with_lattice = table_feeds(inputs, device, 1)
        without = table_feeds(replace(inputs, lattice_shifts=None), device, 1)
        assert all(torch.equal(with_lattice[name], without[name]) for name in with_lattice)


@pytest.mark.parametrize("backend", ["cuda-graphs", "compile-reduce-overhead"])
def test_a_users_model_runs_on_the_gpu_joint_graph_backends_like_its_eager(backend):
    """A model written the ordinary way (index_add over the pair list) is traced, checked and
    rewritten onto the neighbor table on the GPU itself, and gives its own eager numbers there."""
    from byom_models import make_student

    structures = [structure_zoo()[name] for name in ("benzene", "triclinic", "mixed-pbc-slab")]
    expected = load_calculator(make_student(), device="cuda").predict(structures)
    calc = load_calculator(make_student(), device="cuda", backend=backend)
    for _ in range(2):  # the second pass replays captured graphs
        for want, have in zip(expected, calc.predict(structures)):
            assert have["energy"] == pytest.approx(want["energy"], rel=1e-6, abs=1e-4)
            np.testing.assert_allclose(have["forces"], want["forces"], atol=1e-4)


@pytest.mark.parametrize("backend", ["cuda-graphs", "compile-reduce-overhead", "onnxruntime"])
def test_a_batch_of_molecules_is_built_on_the_gpu_and_matches_eager(backend, tmp_path):
    """calc.predict of small molecules builds one every-atom table on the device (no CPU neighbor
    lists) and gives eager's numbers; an overlapping molecule in it is still refused, by index."""
    from ase.build import molecule

    from mlff_export.bench.workloads import small_molecule_batch
    from mlff_export.neighbors import StructureError

    structures = small_molecule_batch(64)
    model = REFERENCE_CHECKPOINT
    if backend == "onnxruntime":
        skip_without_onnxruntime_cuda()
        from mlff_export.checkpoint import load_checkpoint
        from mlff_export.export.onnx_export import to_onnx

        model = to_onnx(load_checkpoint(REFERENCE_CHECKPOINT), tmp_path / "reference.fp32.onnx")
    calc = load_calculator(model, device="cuda", backend=backend)
    expected = load_calculator(REFERENCE_CHECKPOINT, device="cuda").predict(structures)
    for _ in range(2):  # the second call replays
        got = calc.predict(structures)
        for want, have in zip(expected, got):
            assert have["energy"] == pytest.approx(want["energy"], abs=2e-4)
            np.testing.assert_allclose(have["forces"], want["forces"], atol=1e-4)
    assert calc.backend.device_feeds._batch_table is not None, "the batch went through the device path"
    squeezed = molecule("H2O")
    squeezed.positions[1] = squeezed.positions[0] + [0.1, 0.0, 0.0]
    with pytest.raises(StructureError, match="structure 2:"):
        calc.predict([molecule("CH4"), molecule("NH3"), squeezed])


@pytest.mark.parametrize("backend", ["cuda-graphs", "compile-reduce-overhead"])
def test_a_structure_above_the_pair_limit_is_searched_and_split_on_the_gpu(backend, caplog):
    """Above the backend's pair limit, a structure's pair list comes from vesin-torch on the GPU
    and it is evaluated in domains there (the Verlet list on the CPU never builds): eager's numbers.
    The compiled backend runs them on the pair list (float32, above 2^18 pairs), cuda-graphs on tables."""
    from mlff_export.bench.workloads import water_box
    from mlff_export.runtime.device_feeds import has_vesin_torch

    if not has_vesin_torch():
        pytest.skip("vesin-torch is not installed")
    atoms = water_box(10_000)  # a 46 Å box, ~530k pairs; the 2-hop halo is 10 Å
    expected = load_calculator(REFERENCE_CHECKPOINT, device="cuda").predict([atoms])[0]
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend=backend)
    calc.backend.domains.max_pairs = calc.backend.pair_list_domains.max_pairs = 400_000  # slab domains
    atoms.calc = calc
    caplog.set_level(logging.INFO, logger="mlff_export")
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"], atol=1e-4)
    assert atoms.get_potential_energy() == pytest.approx(expected["energy"], rel=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), expected["stress"], atol=1e-6)
    split = re.search(r"atoms in (\d+) domains", caplog.text)
    assert split is not None and int(split.group(1)) >= 2, "the domain path ran"
    on_pair_list = backend.startswith("compile")
    assert (calc.backend._pair_list_call is not None) == on_pair_list
    assert (calc.backend._weighted_call is not None) != on_pair_list
    assert calc.neighbor_list.builds == 0, "no CPU neighbor list was built"


def test_each_captured_bucket_keeps_the_blas_library_whose_replay_was_fastest():
    """Benzene on cuda-graphs: its bucket was captured under cuBLAS and cuBLASLt, the faster replay
    kept, the user's preferred library left as it was, and the kept graph gives eager's forces."""
    from ase.build import molecule

    preference = torch.backends.cuda.preferred_blas_library()
    atoms = molecule("C6H6")
    atoms.rattle(0.05, seed=3)
    expected = load_calculator(REFERENCE_CHECKPOINT, device="cuda").predict([atoms])[0]
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend="cuda-graphs")
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"], atol=1e-4)
    (library, seconds), = calc.backend.blas_choices().values()
    assert set(seconds) == {"cublas", "cublaslt"} and all(value > 0 for value in seconds.values())
    assert seconds[library] == min(seconds.values())
    assert torch.backends.cuda.preferred_blas_library() == preference


@pytest.mark.parametrize("backend", ["cuda-graphs", "compile-reduce-overhead"])
def test_fp16_body_on_the_gpu_keeps_the_fp16_tolerances(backend, eager_results):
    """``precision="fp16"``, batched and one by one (captured buckets), within the FP16 tolerances
    of eager float32 on every structure of the zoo, and not float32's numbers."""
    from mlff_export.validation.tolerances import default_tolerances

    tolerances = default_tolerances("fp16").outputs
    structures, expected = eager_results
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend=backend, precision="fp16")
    assert calc.backend.precision == "fp16"
    largest_force_error = 0.0
    for atoms, want, batched in zip(structures, expected, calc.predict(structures)):
        atoms = atoms.copy()
        atoms.calc = calc
        for forces, energy in ((batched["forces"], batched["energy"]), (atoms.get_forces(), atoms.get_potential_energy())):
            assert abs(energy - want["energy"]) / len(atoms) <= tolerances["energy_per_atom"].atol
            np.testing.assert_allclose(forces, want["forces"], atol=tolerances["forces"].atol, rtol=tolerances["forces"].rtol)
            largest_force_error = max(largest_force_error, float(np.abs(forces - want["forces"]).max()))
    assert largest_force_error > 1e-5, "float32's numbers: the body did not run in float16"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_compiled_graph_stays_within_its_memory_estimate(precision):
    """The compiled joint graph's estimate per pair (what sizes its domains: 3/4 of eager's; on the
    pair list, float32, 0.47) is not below what a 10k-atom water box (550k pairs, one call) really
    takes at its peak."""
    from mlff_export.bench.workloads import water_box
    from mlff_export.neighbors import compute_pairs

    # "compile": no CUDA graph (the FP16 body's 10k bucket is captured under reduce-overhead, and a
    # replay allocates nothing to measure); float32 takes the pair list there too.
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend="compile", precision=precision)
    atoms = water_box(10000)
    pairs = compute_pairs(atoms, calc.neighbor_list.cutoff).pair_index.shape[1]
    assert calc.backend.takes_whole(pairs), "the box must run as one call to measure its peak"
    atoms.calc = calc
    atoms.get_forces()  # compiles
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    atoms.positions[0, 0] += 1e-3
    atoms.get_forces()
    peak = torch.cuda.max_memory_allocated() - before
    assert calc.backend.runs_on_pair_list(pairs) == (precision == "fp32")
    splitter = calc.backend.pair_list_domains if precision == "fp32" else calc.backend.domains
    estimate = splitter.bytes_per_pair * pairs
    assert peak <= estimate, f"{peak / pairs:.0f} bytes per pair, estimated {splitter.bytes_per_pair}"
    assert peak > estimate / 4, "the call ran uncaptured, allocating its activations (else nothing was measured)"
