"""Feeds built without the CPU neighbor list (the GPU path of the calculator), checked on the CPU.

Every-atom tables for small molecules must give the neighbor list's numbers, including pairs
beyond the cutoff (they must add exact zeros); vesin-torch tables must too, for small periodic
cells where one atom meets many images of another.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from conftest import rattled, structure_zoo

from mlff_export.memory import model_bytes_per_pair
from mlff_export.neighbors import StructureError, batch_inputs, compute_pairs
from mlff_export.runtime import load_calculator
from mlff_export.runtime.device_feeds import (
    DENSE_MAX_ATOMS,
    DeviceFeeds,
    dense_batch_table,
    dense_molecule_table,
    has_vesin_torch,
    table_feeds,
)
from mlff_export.runtime.joint_graph import JointGraphBackend
from mlff_export.runtime.shape_buckets import strip_padding
from mlff_export.runtime.static_feeds import StaticFeeds

CPU = torch.device("cpu")


def assert_consistent_table(table: dict[str, torch.Tensor]) -> None:
    """Every real slot's reverse slot points back to it (an involution over all slots), with the
    same mask; padding slots point to their own row and slot."""
    index, mask, reverse = table["neighbor_index"], table["neighbor_mask"], table["reverse_index"]
    rows = torch.arange(index.shape[0]).unsqueeze(1).expand_as(index)
    flat_reverse = reverse.reshape(-1)
    assert torch.equal(flat_reverse[flat_reverse], torch.arange(index.numel())), "reverse is an involution"
    assert torch.equal(index.reshape(-1)[flat_reverse], rows.reshape(-1)), "the reverse slot points back"
    assert torch.equal(mask.reshape(-1)[flat_reverse], mask.reshape(-1))
    assert ((index != rows) == (mask > 0)).all(), "real slots hold another atom, padding slots the row's own"


@pytest.mark.parametrize(("num_atoms", "bucket_atoms"), [(1, 16), (12, 16), (16, 16), (33, 64)])
def test_dense_table_is_a_consistent_neighbor_table(num_atoms, bucket_atoms):
    table = dense_molecule_table(num_atoms, bucket_atoms, CPU)
    index, mask, reverse = table["neighbor_index"], table["neighbor_mask"], table["reverse_index"]
    width = bucket_atoms - 1
    rows = torch.arange(bucket_atoms).unsqueeze(1).expand(-1, width)
    assert (index != rows).all(), "no atom is its own neighbor"
    assert (torch.sort(index, dim=1).values != torch.sort(index, dim=1).values.roll(1, dims=1)).all(), "no repeats"
    flat_reverse = reverse.reshape(-1)
    assert torch.equal(flat_reverse[flat_reverse], torch.arange(bucket_atoms * width)), "reverse is an involution"
    assert torch.equal(index.reshape(-1)[flat_reverse], rows.reshape(-1)), "the reverse slot points back"
    assert torch.equal(mask.reshape(-1)[flat_reverse], mask.reshape(-1))
    assert int(mask.sum()) == num_atoms * (num_atoms - 1)
    assert int(table["structure_index"].sum()) == bucket_atoms - num_atoms


@pytest.mark.parametrize("sizes", [(3,), (1, 2, 5), (12, 1, 3, 64, 2), (16,) * 5])
def test_dense_batch_table_holds_every_pair_of_each_molecule_once(sizes):
    table = dense_batch_table(sizes, 1, CPU)
    assert_consistent_table(table)
    index, mask, structure = table["neighbor_index"], table["neighbor_mask"] > 0, table["structure_index"]
    pairs = {(int(i), int(j)) for i, j in zip(*torch.nonzero(mask, as_tuple=True)) for j in [index[i, j]]}
    assert len(pairs) == int(mask.sum()), "no pair twice"
    starts = np.cumsum((0,) + sizes)
    expected = {(s + a, s + b) for s, n in zip(starts, sizes) for a in range(n) for b in range(n) if a != b}
    assert pairs == expected, "exactly the ordered pairs inside each molecule"
    assert structure[: sum(sizes)].tolist() == [m for m, n in enumerate(sizes) for _ in range(n)]
    assert (structure[sum(sizes) :] == len(sizes)).all(), "padding atoms form one structure after the real ones"


def test_a_batch_on_the_device_path_gives_each_molecules_own_numbers(reference_graph):
    """Molecules of different sizes (one beyond the cutoff from itself: the distant pair) in one
    table, through the joint graph: the numbers of each molecule alone through the CPU list."""
    model, backend = reference_graph
    structures = [structure_zoo()[name] for name in ("H2", "benzene")] + [_two_distant_molecules(), rattled(molecule("NH3"))]
    device_feeds = DeviceFeeds(model.cutoff, model.species[0], CPU)
    device_feeds.batch([molecule("C2H6")] * 3)  # a larger batch before: the staging buffer is reused
    feeds = device_feeds.batch(structures)
    outputs = strip_padding(backend.run(feeds), sum(len(a) for a in structures), len(structures))
    forces = np.split(outputs["forces"].double().numpy(), np.cumsum([len(a) for a in structures])[:-1])
    for index, atoms in enumerate(structures):
        want = _expected(atoms)
        assert float(outputs["energy"][index]) == pytest.approx(want["energy"], rel=1e-6, abs=2e-4), index
        np.testing.assert_allclose(forces[index], want["forces"], atol=1e-4)
        alone = _run(backend, DeviceFeeds(model.cutoff, model.species[0], CPU)(atoms), atoms)  # the single-structure table
        np.testing.assert_allclose(outputs["virial"][index].double().numpy(), alone["virial"][0], atol=1e-4)


def test_a_batch_the_device_cannot_build_is_left_to_the_caller():
    device_feeds = DeviceFeeds(4.0, 1, CPU)
    chain = Atoms("C" * (DENSE_MAX_ATOMS + 1), positions=[[1.4 * i, 0.0, 0.0] for i in range(DENSE_MAX_ATOMS + 1)])
    assert device_feeds.batch([molecule("H2O"), structure_zoo()["triclinic"]]) is None, "periodic"
    assert device_feeds.batch([molecule("H2O"), chain]) is None, "more atoms than DENSE_MAX_ATOMS"
    assert device_feeds.batch([molecule("H2O"), molecule("CH4")]) is not None


def test_a_batch_above_the_memory_estimate_is_left_to_the_calculator(reference_graph):
    """``launch_batch`` builds the table, then asks ``takes_whole`` (the backend's memory
    estimate): a batch that would not fit goes back to the calculator (``None``), which halves it.
    DeviceFeeds runs on the CPU here; the refusal happens before anything is launched."""
    from mlff_export.memory import MemoryBudget

    model, _ = reference_graph
    structures = [molecule("H2O"), molecule("CH4")]
    slots = DeviceFeeds(model.cutoff, model.species[0], CPU).batch(structures)["neighbor_index"].numel()
    backend = JointGraphBackend(model, CPU, memory=MemoryBudget(CPU, limit_bytes=(slots - 1) * model_bytes_per_pair(model, torch.float32)))
    backend.device_feeds = DeviceFeeds(model.cutoff, model.species[0], CPU)
    assert not backend.takes_whole(slots) and backend.takes_whole(slots - 1)
    assert backend.launch_batch(structures) is None


def _two_distant_molecules() -> Atoms:
    """Water and methane 7 Å apart: most of their every-atom pairs lie beyond the 5 Å cutoff."""
    water, methane = rattled(molecule("H2O")), rattled(molecule("CH4"), seed=4)
    methane.positions += [7.0, 0.0, 0.0]
    return water + methane


@pytest.fixture(scope="module")
def reference_graph():
    from mlff_export import REFERENCE_CHECKPOINT
    from mlff_export.checkpoint import load_checkpoint

    model = load_checkpoint(REFERENCE_CHECKPOINT)
    return model, JointGraphBackend(model, CPU)


def _run(backend: JointGraphBackend, feeds: dict[str, torch.Tensor], atoms: Atoms) -> dict[str, np.ndarray]:
    outputs = strip_padding(backend.run(feeds), len(atoms), 1)
    return {name: value.detach().double().numpy() for name, value in outputs.items()}


def _expected(atoms: Atoms) -> dict[str, float | np.ndarray]:
    return load_calculator().predict([atoms])[0]


@pytest.mark.parametrize("name", ["H2", "benzene", "distant pair", "C60-sized chain"])
def test_every_atom_table_gives_the_neighbor_list_numbers(reference_graph, name):
    if name == "distant pair":
        atoms = _two_distant_molecules()
    elif name == "C60-sized chain":
        atoms = Atoms("C" * DENSE_MAX_ATOMS, positions=[[1.4 * i, 0.3 * (i % 2), 0.0] for i in range(DENSE_MAX_ATOMS)])
    else:
        atoms = structure_zoo()[name]
    model, backend = reference_graph
    feeds = DeviceFeeds(model.cutoff, model.species[0], CPU)(atoms)
    assert feeds["neighbor_index"].shape[1] == feeds["positions"].shape[0] - 1, "every other atom is a neighbor"
    got, want = _run(backend, feeds, atoms), _expected(atoms)
    assert got["energy"][0] == pytest.approx(want["energy"], rel=1e-6, abs=2e-4)  # float32 totals
    np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-4)


@pytest.mark.skipif(not has_vesin_torch(), reason="vesin-torch is not installed (pip install vesin-torch)")
@pytest.mark.parametrize("name", ["diamond-primitive", "triclinic", "mixed-pbc-slab"])
def test_vesin_torch_tables_give_the_neighbor_list_numbers(reference_graph, name):
    atoms = structure_zoo()[name]
    model, backend = reference_graph
    feeds = DeviceFeeds(model.cutoff, model.species[0], CPU)(atoms)
    expected_inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])
    assert int(feeds["neighbor_mask"].sum()) == expected_inputs.num_pairs, "vesin-torch finds every image pair"
    got, want = _run(backend, feeds, atoms), _expected(atoms)
    assert got["energy"][0] == pytest.approx(want["energy"], rel=1e-6, abs=2e-4)  # float32 totals
    np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-4)


def test_static_feeds_copy_new_tensors_and_skip_the_ones_already_loaded():
    cached, positions = torch.arange(4.0), torch.zeros(3)
    static = StaticFeeds({"cached": cached, "positions": positions}, CPU)
    static.buffers["cached"].fill_(-1.0)  # a stale buffer shows whether load() copied
    new_positions = torch.ones(3)
    static.load({"cached": cached, "positions": new_positions})
    assert torch.equal(static.buffers["positions"], new_positions)
    assert (static.buffers["cached"] == -1.0).all(), "the same cached tensor is not copied again"
    static.load({"cached": torch.arange(4.0), "positions": new_positions})
    assert torch.equal(static.buffers["cached"], torch.arange(4.0)), "a new tensor object is copied"


@pytest.mark.parametrize("name", ["benzene", "triclinic", "diamond-primitive"])
def test_closest_pair_of_a_pair_list_is_where_the_cpu_check_draws_the_line(name):
    """The device check's number for a pair list: the CPU check passes at exactly that distance
    and refuses just above it (periodic images included)."""
    from mlff_export.runtime.device_feeds import closest_pair_distance
    from mlff_export.structure_sanity import check_closest_pair

    atoms = structure_zoo()[name]
    pairs = compute_pairs(atoms, 4.0)
    closest = float(closest_pair_distance(batch_inputs([atoms], [pairs], dtype=torch.float64))[0])
    check_closest_pair(atoms, pairs, closest * (1 - 1e-6))
    with pytest.raises(StructureError):
        check_closest_pair(atoms, pairs, closest * (1 + 1e-6))


@pytest.mark.parametrize("padded", [False, True])
def test_packed_outputs_unpack_to_the_real_atoms_and_structures(padded):
    """The one-vector layout both GPU launch paths copy back (a captured graph's, padded; the
    uncaptured path's, not): unpacking gives each output's real rows, as float64."""
    from mlff_export.runtime.padded_table import packed_outputs, unpacked_outputs

    generator = torch.Generator().manual_seed(0)
    atoms, structures = (7, 3) if padded else (5, 2)
    outputs = {
        "energy": torch.randn(structures, generator=generator),
        "forces": torch.randn(atoms, 3, generator=generator),
        "virial": torch.randn(structures, 3, 3, generator=generator),
        "closest_distance": torch.rand(1, generator=generator),
    }
    padding = {"padded_atoms": atoms, "padded_structures": structures} if padded else {}
    got = unpacked_outputs(packed_outputs(outputs).numpy(), 5, 2, **padding)
    for name, want in (("energy", outputs["energy"][:2]), ("forces", outputs["forces"][:5]), ("virial", outputs["virial"][:2]),
                       ("closest_distance", outputs["closest_distance"])):
        assert got[name].dtype == np.float64
        np.testing.assert_array_equal(got[name], want.double().numpy(), err_msg=name)


def _closest_by_numpy(atoms: Atoms, cutoff: float) -> float:
    """The structure's shortest pair (images included) from the CPU neighbor list, in numpy."""
    pairs = compute_pairs(atoms, cutoff)
    centers, neighbors = pairs.pair_index
    vectors = atoms.positions[neighbors] - atoms.positions[centers] + pairs.cartesian_shifts(atoms.cell.array)
    return float(np.linalg.norm(vectors, axis=1).min())


@pytest.mark.parametrize("name", ["benzene", "H2O", "triclinic", "mixed-pbc-slab"])
def test_closest_distance_of_the_table_is_its_shortest_real_pair_images_included(name):
    """The device sanity check's number on a padded table: padding rows sit at the origin and point
    to themselves (0 Å), so only real slots may count; periodic images count with their shifts."""
    from mlff_export.runtime.device_feeds import closest_distance

    if name in ("triclinic", "mixed-pbc-slab") and not has_vesin_torch():
        pytest.skip("vesin-torch is not installed (pip install vesin-torch)")
    atoms = rattled(structure_zoo()[name], seed=7)
    feeds = DeviceFeeds(5.0, 1, CPU)(atoms)
    if name == "benzene":
        assert feeds["positions"].shape[0] > len(atoms), "the table has padding rows"
    got = closest_distance(feeds)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(_closest_by_numpy(atoms, 5.0), rel=1e-5)


def test_closest_distance_without_a_real_pair_is_infinite():
    from mlff_export.runtime.device_feeds import closest_distance

    assert float(closest_distance(DeviceFeeds(5.0, 1, CPU)(Atoms("H", positions=[[0.0, 0.0, 0.0]])))[0]) == np.inf


@pytest.mark.parametrize("structure", ["no pair", "one pair", "benzene"])
def test_closest_pair_distance_of_a_pair_list_counts_every_pair(structure):
    from mlff_export.runtime.device_feeds import closest_pair_distance

    atoms = {"no pair": Atoms("H2", positions=[[0, 0, 0], [0, 0, 6.0]]), "one pair": Atoms("H", positions=[[0, 0, 0]]) + Atoms(
        "H", positions=[[0, 0, 0.74]]), "benzene": rattled(molecule("C6H6"), seed=2)}[structure]
    inputs = batch_inputs([atoms], [compute_pairs(atoms, 5.0)])
    got = closest_pair_distance(inputs)
    assert got.shape == (1,)
    want = np.inf if structure == "no pair" else _closest_by_numpy(atoms, 5.0)
    assert float(got[0]) == pytest.approx(want, rel=1e-6)


def test_small_molecules_take_the_every_atom_table_up_to_its_size_limit():
    chain = Atoms("C" * DENSE_MAX_ATOMS, positions=[[1.4 * i, 0.0, 0.0] for i in range(DENSE_MAX_ATOMS)])
    longer = chain + Atoms("C", positions=[[1.4 * DENSE_MAX_ATOMS, 0.0, 0.0]])
    assert DeviceFeeds.takes_dense(chain) and not DeviceFeeds.takes_dense(longer)
    assert not DeviceFeeds.takes_dense(structure_zoo()["mixed-pbc-slab"]), "periodic in any direction: searched"


def test_feeds_on_the_cpu_are_new_tensors_with_the_new_positions_and_zero_padding():
    """On the CPU every call gives its own positions (the staging buffer is reused: a copy leaves
    it), the current ones for a molecule seen before, padded with zero rows."""
    device_feeds = DeviceFeeds(5.0, 1, CPU)
    first_atoms = molecule("CH4")
    first = device_feeds(first_atoms)
    moved = first_atoms.copy()
    moved.positions += 0.1
    second = device_feeds(moved)
    device_feeds(molecule("NH3"))
    np.testing.assert_allclose(first["positions"][:5].numpy(), first_atoms.positions, rtol=1e-6)
    np.testing.assert_allclose(second["positions"][:5].numpy(), moved.positions, rtol=1e-6)
    assert (first["positions"][5:] == 0).all() and first["positions"].shape[0] > 5


def test_every_atom_tables_refuse_impossible_sizes_and_keep_two_zero_cells():
    for num_atoms, bucket_atoms in ((0, 16), (17, 16), (1, 1)):
        with pytest.raises(ValueError, match="num_atoms"):
            dense_molecule_table(num_atoms, bucket_atoms, CPU)
    table = dense_molecule_table(2, 2, CPU)
    assert table["neighbor_index"].tolist() == [[1], [0]]
    cells = dense_molecule_table(3, 4, CPU)["cell"]
    assert cells.shape == (2, 3, 3) and (cells == 0).all(), "the molecule's and the padding's structure, no cell"
    for sizes in ((), (0, 2)):
        with pytest.raises(ValueError, match="at least one molecule"):
            dense_batch_table(sizes, 1, CPU)
    assert dense_batch_table((33,), 1, CPU)["neighbor_index"].shape[1] == 32, "32 other atoms: no wider bucket"


def test_a_repeated_batch_reuses_its_table_and_a_new_one_gets_its_own():
    device_feeds = DeviceFeeds(5.0, 1, CPU)
    small_first = [molecule("H2O"), molecule("C2H6")]
    first = device_feeds.batch(small_first)
    assert device_feeds.batch(small_first)["neighbor_index"] is first["neighbor_index"], "same sizes: the same table"
    swapped = device_feeds.batch(small_first[::-1])
    expected = dense_batch_table((8, 3), 1, CPU)
    for name, tensor in expected.items():
        assert torch.equal(swapped[name], tensor), name


@pytest.mark.skipif(not has_vesin_torch(), reason="vesin-torch is not installed (pip install vesin-torch)")
def test_the_device_search_of_a_molecule_gives_its_pairs_and_no_cell():
    atoms = rattled(molecule("C6H6"), seed=5)
    inputs = DeviceFeeds(5.0, 1, CPU).search(atoms)
    inputs.check()
    assert inputs.cell.shape == (1, 3, 3) and (inputs.cell == 0).all()
    assert inputs.num_pairs == compute_pairs(atoms, 5.0).pair_index.shape[1]
    assert (inputs.lattice_shifts == 0).all()


@pytest.mark.skipif(not has_vesin_torch(), reason="vesin-torch is not installed (pip install vesin-torch)")
def test_a_skin_table_is_reused_with_new_positions_until_an_atom_moved_half_the_skin(reference_graph):
    """With a 0.6 Å skin the device search reaches cutoff + 0.6 Å and its table is kept: a call whose
    atoms moved up to 0.3 Å gets the same table tensors with its own positions, and the joint graph
    gives the numbers of a fresh search at the cutoff (pairs beyond it add exact zeros; the move
    brings pairs across the cutoff both ways). An atom moved further, another cell or other
    elements get no table (a new search); without a skin nothing is kept."""
    model, backend = reference_graph
    atoms = structure_zoo()["triclinic"]
    device_feeds = DeviceFeeds(model.cutoff, model.species[0], CPU, skin=0.6)
    assert device_feeds.reused(atoms) is None, "nothing kept yet"
    kept = table_feeds(device_feeds.search(atoms), CPU, model.species[0])
    device_feeds.keep(atoms, kept)
    assert device_feeds.searches == 1, "each search is counted (the benchmark's MD column reads it)"
    moved = atoms.copy()
    moved.positions += np.random.default_rng(3).uniform(-0.17, 0.17, size=moved.positions.shape)  # |move| < 0.3 Å
    within = [compute_pairs(structure, model.cutoff).pair_index.shape[1] for structure in (atoms, moved)]
    feeds = device_feeds.reused(moved)
    assert feeds is not None and all(feeds[name] is kept[name] for name in kept if name != "positions")
    np.testing.assert_array_equal(feeds["positions"][: len(moved)].numpy(), moved.positions.astype(np.float32))
    assert not feeds["positions"][len(moved) :].any(), "padding atoms at the origin, as a search's table pads them"
    got, want = _run(backend, feeds, moved), _expected(moved)
    assert got["energy"][0] == pytest.approx(want["energy"], rel=1e-6, abs=2e-4)
    np.testing.assert_allclose(got["forces"], want["forces"], atol=1e-4)
    stress = -got["virial"][0] / moved.get_volume()  # ASE's stress (Voigt order) from the virial
    np.testing.assert_allclose(stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], want["stress"], atol=1e-5)
    assert int(kept["neighbor_mask"].sum()) > max(within), "the table holds the skin's pairs too"
    assert within[0] != within[1], "the move changed which pairs are within the cutoff"

    far = atoms.copy()
    far.positions[2] += [0.31, 0.0, 0.0]
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array * 1.001, scale_atoms=False)
    swapped = atoms.copy()
    swapped.numbers[0] = 1 if swapped.numbers[0] != 1 else 8
    for changed in (far, strained, swapped):
        assert device_feeds.reused(changed) is None
    without_skin = DeviceFeeds(model.cutoff, model.species[0], CPU)
    without_skin.keep(atoms, kept)
    assert without_skin.reused(atoms) is None, "without a skin nothing is kept, even for unmoved atoms"
    with pytest.raises(ValueError, match="skin must be >= 0"):
        DeviceFeeds(model.cutoff, model.species[0], CPU, skin=-0.1)


def test_the_calculators_skin_reaches_the_backends_device_search(reference_graph):
    from mlff_export.runtime.calculator import MLFFCalculator

    model, _ = reference_graph
    backend = JointGraphBackend(model, CPU)
    backend.device_feeds = DeviceFeeds(model.cutoff, model.species[0], CPU)
    calc = MLFFCalculator(backend, model.cutoff, model.species, skin=0.4)
    assert backend.device_feeds.skin == 0.4
    atoms = structure_zoo()["triclinic"]
    backend.device_feeds.keep(atoms, {"positions": torch.zeros(len(atoms), 3)})
    calc.skin = 0.8
    assert (calc.neighbor_list.skin, backend.device_feeds.skin) == (0.8, 0.8)
    assert backend.device_feeds.reused(atoms) is None, "a table searched with the old skin is forgotten"
