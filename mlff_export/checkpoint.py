"""Checkpoints: a JSON card (architecture, config, provenance) beside safetensors weights.

No pickle anywhere: weights load through safetensors and the card is plain JSON. Loading checks
the card's format, the weights' sha256 (a truncated or swapped file fails here), and that the
weights' names and shapes are exactly those the config builds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mlff_export.json_documents import read_json_document
from mlff_export.model import PaiNN, PaiNNConfig

CHECKPOINT_FORMAT = "mlff-export-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
ARCHITECTURES = {"PaiNN": (PaiNN, PaiNNConfig)}


class CheckpointError(ValueError):
    """A checkpoint that is not ours, is damaged, or whose config and weights disagree."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(model: PaiNN, card_path: str | Path, extra: dict | None = None) -> Path:
    """Write ``card_path`` (JSON) and ``<stem>.safetensors`` beside it; returns the card path.

    ``extra`` (JSON-serialisable, e.g. training provenance) is stored under ``"extra"``.
    """
    card_path = Path(card_path)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    weights_path = card_path.with_suffix(".safetensors")
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(weights_path))
    card = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "architecture": type(model).__name__,
        "config": model.config.to_dict(),
        "weights_file": weights_path.name,
        "weights_sha256": file_sha256(weights_path),
        "extra": extra or {},
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path


def read_card(card_path: str | Path) -> dict:
    """The checkpoint's JSON card, after checking that it is one of ours."""
    card = read_json_document(
        card_path,
        kind="checkpoint card",
        format_name=CHECKPOINT_FORMAT,
        version_key="format_version",
        version=CHECKPOINT_FORMAT_VERSION,
        error=CheckpointError,
        hint="pass the .json card that save_checkpoint writes (not the weights file)",
    )
    if card.get("architecture") not in ARCHITECTURES:
        raise CheckpointError(f"{card_path}: unknown architecture {card.get('architecture')!r}; known {sorted(ARCHITECTURES)}")
    return card


def load_checkpoint(card_path: str | Path, dtype: torch.dtype = torch.float32) -> PaiNN:
    """Build the model a checkpoint card describes and load its weights (eval mode)."""
    card_path = Path(card_path)
    card = read_card(card_path)
    weights_path = card_path.parent / card["weights_file"]
    if not weights_path.is_file():
        raise CheckpointError(f"{card_path}: weights file {weights_path} is missing")
    actual = file_sha256(weights_path)
    if actual != card["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path}: sha256 {actual[:12]}… differs from the card's {card['weights_sha256'][:12]}… "
            "(truncated or replaced file); restore the weights that belong to this card"
        )
    model_class, config_class = ARCHITECTURES[card["architecture"]]
    try:
        model = model_class(config_class.from_dict(card["config"]))
        state = load_file(str(weights_path))
    except (TypeError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"{card_path}: cannot build the model: {error}") from None
    expected = model.state_dict()
    problems = sorted(set(expected) ^ set(state))
    problems += [
        f"{name}: weights {tuple(state[name].shape)} vs config {tuple(expected[name].shape)}"
        for name in set(expected) & set(state)
        if state[name].shape != expected[name].shape
    ]
    if problems:
        raise CheckpointError(f"{card_path}: config and weights disagree: {problems[:5]}")
    model.load_state_dict(state)
    return model.to(dtype).eval()
