"""Shape buckets of the TensorRT backend: bucket choice, limits, and padding that changes nothing.

Padding is checked with real numbers: padded neighbor-table inputs through the eager model give
the unpadded energy, forces and virial (float64 and float32, CPU). The padding slots themselves
are exact (padding atoms get exactly zero force, the padding structure exactly zero virial);
results computed at a different shape agree to rounding only, since BLAS promises no bitwise
equality across shapes (it differed by 2.8e-17 eV/Å on an AMD EPYC).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_small_painn, structure_zoo

from mlff_export.export.engine_profiles import profile_from_ranges
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.forces import energy_forces_virial_from_pairs
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.pair_layouts import NeighborTable
from mlff_export.runtime.shape_buckets import (
    ShapeBucket,
    ShapeOutOfRangeError,
    bucket_size,
    choose_bucket,
    pad_table_feeds,
    strip_padding,
    table_sizes,
)

SMALL = profile_from_ranges("1:8:64", "1:8:64", "1:2:4", name="small")
LARGE = profile_from_ranges("32:256:1024", "8:32:64", "1:1:2", name="large")


def table_feeds(structures, cutoff: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Neighbor-table feeds of several structures in one call (table width = largest row)."""
    inputs = batch_inputs(structures, [compute_pairs(atoms, cutoff) for atoms in structures], dtype=dtype)
    return NEIGHBOR_TABLE.feeds(inputs, dtype)


def eager_outputs(model, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    table = NeighborTable(feeds["neighbor_index"], feeds["neighbor_shifts"], feeds["neighbor_mask"], feeds["reverse_index"])
    energy, forces, virial = energy_forces_virial_from_pairs(
        model, feeds["positions"], feeds["species"], table, feeds["structure_index"], feeds["cell"].shape[0]
    )
    return {"energy": energy.detach(), "forces": forces.detach(), "virial": virial.detach()}


@pytest.mark.parametrize(("size", "expected"), [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (40, 32)])
def test_bucket_size_is_a_power_of_two_clamped_to_the_range(size, expected):
    assert bucket_size(size, profile_from_ranges("1:1:32", "1:1:1", "1:1:1").atoms) == min(expected, 32)


@pytest.mark.parametrize(("size", "expected"), [(64, 64), (65, 80), (100, 112), (129, 160), (1029, 1280), (98304, 98304)])
def test_large_buckets_waste_at_most_a_quarter(size, expected):
    assert bucket_size(size, profile_from_ranges("1:1:1000000", "1:1:1", "1:1:1").atoms) == expected
    assert expected <= 1.25 * size


@pytest.mark.parametrize(("width", "expected"), [(64, 64), (65, 72), (72, 72), (73, 80), (100, 104), (129, 144)])
def test_table_widths_above_64_waste_at_most_an_eighth(width, expected):
    """The table width's buckets are twice as fine as the atoms' (every row pays its padding): a
    widest row of 65 pairs (98k-atom water within 5 Å) takes 72 slots, where 65 atoms take 80."""
    bucket = choose_bucket(65, width, 1, [profile_from_ranges("1:1:1000", "1:1:1000", "1:1:4")])
    assert bucket.neighbors == expected and bucket.atoms == 80
    assert expected <= 1.125 * width


def test_bucket_size_respects_the_profile_minimum():
    assert bucket_size(3, profile_from_ranges("16:32:64", "1:1:1", "1:1:1").atoms) == 16


def test_padded_atoms_get_a_structure_of_their_own():
    assert choose_bucket(5, 7, 1, [SMALL]) == ShapeBucket(profile_index=0, atoms=8, neighbors=8, structures=2)


def test_exact_atom_count_when_no_structure_is_left_for_padding():
    bucket = choose_bucket(100, 20, 2, [LARGE])
    assert (bucket.atoms, bucket.structures) == (100, 2)


def test_the_profile_with_fewest_pair_slots_wins():
    assert choose_bucket(5, 7, 1, [LARGE, SMALL]).profile_index == 1
    assert choose_bucket(300, 20, 1, [SMALL, LARGE]).profile_index == 1


def fixed(atoms: str, neighbors: str) -> object:
    """A profile of one bucket size per axis (MIN = OPT = MAX), up to two structures."""
    return profile_from_ranges(f"{atoms}:{atoms}:{atoms}", f"{neighbors}:{neighbors}:{neighbors}", "1:1:2")


def test_the_winner_has_the_fewest_pair_slots_not_the_smallest_sum_or_ratio_of_sides():
    # (4 x 4 = 16 slots) against (2 x 16 = 32): fewer slots, but a larger difference and ratio of sides
    assert choose_bucket(2, 4, 1, [fixed(4, 4), fixed(2, 16)]).profile_index == 0
    assert choose_bucket(2, 4, 1, [fixed(2, 16), fixed(4, 4)]).profile_index == 1
    # (2 x 64 = 128 slots) against (16 x 16 = 256): fewer slots, but a larger sum of sides
    assert choose_bucket(2, 4, 1, [fixed(2, 64), fixed(16, 16)]).profile_index == 0


def test_calls_exactly_at_a_profiles_limits_fit():
    assert choose_bucket(64, 64, 1, [SMALL]) == ShapeBucket(profile_index=0, atoms=64, neighbors=64, structures=1)
    # padding atoms needs one more structure: 3 + 1 is the profile's maximum of 4, so it still pads
    assert choose_bucket(5, 7, 3, [SMALL]) == ShapeBucket(profile_index=0, atoms=8, neighbors=8, structures=4)
    # 4 structures leave none for padding: exact atoms, no padding structure
    assert choose_bucket(5, 7, 4, [SMALL]) == ShapeBucket(profile_index=0, atoms=5, neighbors=8, structures=4)


def test_a_call_larger_than_every_profile_names_the_limits():
    with pytest.raises(ShapeOutOfRangeError, match=r"2000 atoms.*'large': atoms 32\.\.1024, neighbors per atom <= 64"):
        choose_bucket(2000, 10, 1, [SMALL, LARGE])
    with pytest.raises(ShapeOutOfRangeError, match="100 neighbors per atom"):
        choose_bucket(10, 100, 1, [SMALL, LARGE])


def test_padding_keeps_real_rows_and_renumbers_reverse_slots():
    feeds = table_feeds([structure_zoo()["H2O"]], cutoff=4.0, dtype=torch.float64)
    n, k, b = table_sizes(feeds)
    padded = pad_table_feeds(feeds, ShapeBucket(0, n + 3, k + 2, b + 2), padding_species=1)
    assert table_sizes(padded) == (n + 3, k + 2, b + 2)
    assert list(padded) == list(feeds)
    width = k + 2
    flat_index = padded["neighbor_index"].reshape(-1)
    flat_reverse = padded["reverse_index"].reshape(-1)
    # reverse of the reverse is the slot itself, and the reverse slot points back at the center
    slots = torch.arange(flat_reverse.numel())
    assert torch.equal(flat_reverse[flat_reverse], slots)
    real = padded["neighbor_mask"].reshape(-1) > 0
    assert torch.equal(flat_index[flat_reverse[real]], slots[real] // width)
    assert padded["neighbor_mask"][n:].sum() == 0 and padded["neighbor_mask"][:, k:].sum() == 0
    assert padded["structure_index"][n:].tolist() == [b] * 3
    assert padded["cell"][b:].abs().sum() == 0


# Rounding allowed between a padded and an unpadded call: summation order and BLAS blocking change
# with the shape. Far below any physical effect, far above rounding of the values compared.
SHAPE_CHANGE_TOLERANCE = {torch.float64: {"atol": 1e-12, "rtol": 1e-12}, torch.float32: {"atol": 2e-5, "rtol": 1e-5}}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_padded_inputs_give_the_unpadded_eager_results(dtype):
    model = make_small_painn().to(dtype)
    zoo = structure_zoo()
    structures = [zoo["benzene"], zoo["diamond-primitive"], zoo["triclinic"]]
    feeds = table_feeds(structures, cutoff=model.cutoff, dtype=dtype)
    n, k, b = table_sizes(feeds)
    bucket = choose_bucket(n, k, b, [SMALL])
    assert bucket.shape != (n, k, b)  # every size grows
    reference = eager_outputs(model, feeds)
    padded_outputs = eager_outputs(model, pad_table_feeds(feeds, bucket, padding_species=model.species[0]))
    # The padding itself is exact: padding atoms have no pairs, so no force and no virial.
    assert torch.count_nonzero(padded_outputs["forces"][n:]) == 0
    assert torch.count_nonzero(padded_outputs["virial"][b:]) == 0
    padded = strip_padding(padded_outputs, n, b)
    for name in ("energy", "forces", "virial"):
        torch.testing.assert_close(padded[name], reference[name], **SHAPE_CHANGE_TOLERANCE[dtype], msg=lambda m: f"{name}: {m}")
    assert (reference["forces"].abs().max() > 1e-3) and (reference["virial"].abs().max() > 1e-3)  # not vacuous


def test_padding_refuses_a_bucket_without_a_spare_structure():
    feeds = table_feeds([structure_zoo()["CH4"]], cutoff=4.0, dtype=torch.float32)
    n, k, b = table_sizes(feeds)
    with pytest.raises(ValueError, match="no spare structure"):
        pad_table_feeds(feeds, ShapeBucket(0, n + 1, k, b), padding_species=1)


def test_padding_to_the_feeds_own_size_changes_nothing():
    """A bucket exactly the feeds' (N, K, B) is legal (no padding atoms, so no spare structure is
    needed) and gives the feeds back value for value, reverse slots included."""
    feeds = table_feeds([structure_zoo()["CH4"], structure_zoo()["H2O"]], cutoff=4.0, dtype=torch.float32)
    padded = pad_table_feeds(feeds, ShapeBucket(0, *table_sizes(feeds)), padding_species=1)
    assert padded.keys() == feeds.keys()
    for name in feeds:
        assert torch.equal(padded[name], feeds[name]), name


@pytest.mark.parametrize("smaller", ["atoms", "neighbors", "structures"])
def test_padding_refuses_a_bucket_smaller_in_any_one_size(smaller):
    """One size one below the feeds', the other two ample: refused whichever it is."""
    feeds = table_feeds([structure_zoo()["CH4"], structure_zoo()["H2O"]], cutoff=4.0, dtype=torch.float32)
    n, k, b = table_sizes(feeds)
    sizes = {"atoms": n + 8, "neighbors": k + 8, "structures": b + 2} | {smaller: {"atoms": n, "neighbors": k, "structures": b}[smaller] - 1}
    with pytest.raises(ValueError, match="smaller than the feeds"):
        pad_table_feeds(feeds, ShapeBucket(0, sizes["atoms"], sizes["neighbors"], sizes["structures"]), padding_species=1)


def test_a_call_at_the_atom_minimum_with_no_structure_to_spare_runs_unpadded():
    """Profile atoms 3..64, one structure: 3 atoms would pad to 4 but no structure is left for the
    padding atom, and 3 is within the profile, so the bucket is exactly 3 atoms."""
    profile = profile_from_ranges("3:8:64", "1:8:64", "1:1:1")
    assert choose_bucket(3, 4, 1, [profile]) == ShapeBucket(profile_index=0, atoms=3, neighbors=4, structures=1)


def test_a_call_below_the_atom_minimum_with_no_structure_to_spare_is_refused():
    """Profile atoms 3..64, one structure: 2 atoms would need a padding atom and its structure; with
    none to spare the call fits nowhere (a 2-atom bucket is below the profile)."""
    profile = profile_from_ranges("3:8:64", "1:8:64", "1:1:1")
    with pytest.raises(ShapeOutOfRangeError, match="atoms 3..64"):
        choose_bucket(2, 4, 1, [profile])


def test_the_bucket_of_an_empty_size_is_one():
    """Size 0 (an empty table row count) gets the smallest bucket, 1, not 2."""
    assert bucket_size(0, profile_from_ranges("1:1:32", "1:1:1", "1:1:1").atoms) == 1


@pytest.mark.parametrize(("size", "expected"), [(33, 64), (48, 64), (63, 64)])
def test_buckets_stay_powers_of_two_up_to_64(size, expected):
    """The fine grid (steps of a quarter doubling) starts above 64: 33..64 atoms share the 64 bucket."""
    assert bucket_size(size, profile_from_ranges("1:1:1000", "1:1:1", "1:1:1").atoms) == expected


def test_a_table_one_neighbor_wide_gets_a_one_wide_bucket():
    """Width 1 (and an empty table's width 0) take the narrowest bucket the profile allows, 1."""
    assert choose_bucket(5, 1, 1, [SMALL]).neighbors == 1
    assert choose_bucket(5, 0, 1, [SMALL]).neighbors == 1


def test_a_table_built_at_the_buckets_shape_equals_the_padded_table():
    """``table_feeds``' route: the table built with the bucket's rows and width
    (``NEIGHBOR_TABLE.feeds(rows=, width=)``), then only the per-atom feeds padded, gives the padded
    table slot for slot, reverse slots renumbered for the width included; ``pad_table_feeds``
    keeps such a table's tensors as they are."""
    structures = [structure_zoo()["CH4"], structure_zoo()["diamond-primitive"], structure_zoo()["triclinic"]]
    inputs = batch_inputs(structures, [compute_pairs(atoms, 4.0) for atoms in structures], dtype=torch.float32)
    feeds = NEIGHBOR_TABLE.feeds(inputs)
    n, k, b = table_sizes(feeds)
    bucket = ShapeBucket(0, n + 5, k + 3, b + 1)
    expected = pad_table_feeds(feeds, bucket, padding_species=1)
    built = NEIGHBOR_TABLE.feeds(inputs, rows=bucket.atoms, width=bucket.neighbors)
    assert table_sizes(built) == (n + 5, k + 3, b) and built["positions"].shape == (n, 3)
    padded = pad_table_feeds(built, bucket, padding_species=1)
    for name in expected:
        assert torch.equal(padded[name], expected[name]), name
    assert padded["neighbor_index"] is built["neighbor_index"] and padded["reverse_index"] is built["reverse_index"]

