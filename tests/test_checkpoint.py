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
    return model, save_checkpoint(model, tmp_path / "small.json", extra={"note": "test"})


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


def test_config_that_disagrees_with_weights_is_refused(saved):
    card_path = resealed(saved[1], lambda card: card["config"].update(num_features=48))
    with pytest.raises(CheckpointError, match="config and weights disagree"):
        load_checkpoint(card_path)


def test_unknown_config_key_is_refused(saved):
    card_path = resealed(saved[1], lambda card: card["config"].update(num_heads=4))
    with pytest.raises(CheckpointError, match="unknown keys"):
        load_checkpoint(card_path)


def test_reference_card_is_sealed():
    card = read_card(REFERENCE_CHECKPOINT)
    assert card["card_sha256"] == card_sha256(card)
