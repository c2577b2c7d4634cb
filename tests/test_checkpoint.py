"""Checkpoints load safely and refuse anything that is not ours, damaged, or inconsistent."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_small_painn

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import CheckpointError, card_sha256, load_checkpoint, read_card, save_checkpoint
from mlff_export.export.precision import weights_sha256
from mlff_export.model import PaiNN


@pytest.fixture
def saved(tmp_path):
    model = make_small_painn(seed=3)
    return model, save_checkpoint(model, tmp_path / "models" / "v1" / "small.json", extra={"note": "test"})  # folders made


def test_round_trip_keeps_weights_and_buffers(saved):
    """Save and load copy the bytes (no arithmetic in between): the loaded state dict has the same
    names, shapes and bytes, compared by the weights hash that export records."""
    model, card_path = saved
    loaded = load_checkpoint(card_path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert weights_sha256(loaded) == weights_sha256(model)
    assert read_card(card_path)["extra"] == {"note": "test"}


def test_float64_load(saved):
    assert load_checkpoint(saved[1], dtype=torch.float64).embedding.weight.dtype == torch.float64


def test_reference_checkpoint_loads():
    model = load_checkpoint(REFERENCE_CHECKPOINT)
    assert isinstance(model, PaiNN) and model.species == (1, 6, 7, 8)
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 500_000


def test_truncated_weights_are_refused(saved):
    _, card_path = saved
    weights = card_path.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        load_checkpoint(card_path)


def test_weights_file_is_not_a_card(saved):
    with pytest.raises(CheckpointError, match="not an mlff-export checkpoint card"):
        load_checkpoint(saved[1].with_suffix(".safetensors"))


def test_foreign_json_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"model": "something else"}))
    with pytest.raises(CheckpointError, match="not an mlff-export checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.json")


def resealed(card_path, edit):
    """Apply ``edit(card)`` and re-record card_sha256, as a buggy writer would: only the checks
    behind the hash can catch what it wrote."""
    card = json.loads(card_path.read_text())
    edit(card)
    card["card_sha256"] = card_sha256(card)
    card_path.write_text(json.dumps(card))
    return card_path


@pytest.mark.parametrize("num_features", [48, 16], ids=["config-wider-than-the-weights", "config-narrower"])
def test_config_that_disagrees_with_weights_is_refused(saved, num_features):
    """Same names, other shapes (the weights are 32 features wide), in either direction."""
    card_path = resealed(saved[1], lambda card: card["config"].update(num_features=num_features))
    with pytest.raises(CheckpointError, match=r"config and weights disagree: \['.*: weights \(\d+"):
        load_checkpoint(card_path)


def test_an_edited_card_is_refused_whichever_way_its_hash_moves(saved):
    """Edits of the cutoff, not resealed, until their card hashes have fallen on both sides of the
    recorded one (asserted; a few edits): each is refused, so no ordering of hashes passes for equality."""
    card_path = saved[1]
    original = card_path.read_text()
    recorded = json.loads(original)["card_sha256"]
    sides = set()
    for cutoff in [4.5 + 0.1 * step for step in range(64)]:  # never the saved 4.0
        if sides == {True, False}:
            break
        card = json.loads(original)
        card["config"]["cutoff"] = cutoff
        card_path.write_text(json.dumps(card))
        sides.add(card_sha256(card) > recorded)
        with pytest.raises(CheckpointError, match="edited after it was saved"):
            load_checkpoint(card_path)
    assert sides == {True, False}


def test_unknown_config_key_is_refused(saved):
    card_path = resealed(saved[1], lambda card: card["config"].update(num_heads=4))
    with pytest.raises(CheckpointError, match="unknown keys"):
        load_checkpoint(card_path)


def test_reference_card_is_sealed():
    card = read_card(REFERENCE_CHECKPOINT)
    assert card["card_sha256"] == card_sha256(card)
