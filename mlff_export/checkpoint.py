"""Checkpoints: a JSON card (architecture, config, provenance) beside safetensors weights.

No pickle anywhere: weights load through safetensors and the card is plain JSON. Loading checks,
in this order, and refuses with a :class:`CheckpointError` that says how to fix it:

* the card's format and version, and that it has every key (:data:`CARD_KEYS`);
* ``card_sha256``: the sha256 of the card's canonical JSON without that key, so config,
  architecture, weights reference and provenance are all covered (an edited cutoff or species
  is refused, not run);
* that ``weights_file`` is inside the card's folder, then the weights' sha256 (a truncated or
  swapped file fails here; the bytes are read once, so the checked bytes are the loaded ones);
* that the config builds a model, that the weights' names and shapes are exactly those the
  config builds, and that every weight is finite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from mlff_export.json_documents import read_json_document
from mlff_export.model import PaiNN, PaiNNConfig

CHECKPOINT_FORMAT = "mlff-export-checkpoint"
CHECKPOINT_FORMAT_VERSION = 2  # 2: card_sha256 over the whole card
ARCHITECTURES = {"PaiNN": (PaiNN, PaiNNConfig)}
CARD_KEYS = ("architecture", "config", "weights_file", "weights_sha256", "card_sha256")
RESAVE_HINT = "save the model again with mlff_export.checkpoint.save_checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that is not ours, is damaged or edited, or whose config and weights disagree."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_sha256(card: dict) -> str:
    """sha256 of ``card`` as canonical JSON (sorted keys, no spaces), ``card_sha256`` left out."""
    content = {key: value for key, value in card.items() if key != "card_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
    card["card_sha256"] = card_sha256(card)
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path


def read_card(card_path: str | Path) -> dict:
    """The checkpoint's JSON card, after checking that it is one of ours, complete and unedited."""
    card = read_json_document(
        card_path,
        kind="checkpoint card",
        format_name=CHECKPOINT_FORMAT,
        version_key="format_version",
        version=CHECKPOINT_FORMAT_VERSION,
        error=CheckpointError,
        hint=f"pass the .json card that save_checkpoint writes (not the weights file); for a card of an older version, {RESAVE_HINT}",
    )
    missing = [key for key in CARD_KEYS if key not in card]
    if missing:
        raise CheckpointError(f"{card_path}: checkpoint card lacks {missing}; {RESAVE_HINT}")
    if card_sha256(card) != card["card_sha256"]:
        raise CheckpointError(
            f"{card_path}: the card was edited after it was saved (its content differs from card_sha256, which "
            f"covers config, architecture and weights reference); restore the original card or {RESAVE_HINT}"
        )
    if card["architecture"] not in ARCHITECTURES:
        raise CheckpointError(f"{card_path}: unknown architecture {card['architecture']!r}; known {sorted(ARCHITECTURES)}")
    return card


def _weights_path(card_path: Path, weights_file) -> Path:
    """``weights_file`` resolved inside the card's folder (no absolute paths, no ``..`` or links out)."""
    folder = card_path.parent.resolve()
    if not isinstance(weights_file, str) or not weights_file or Path(weights_file).is_absolute():
        raise CheckpointError(f"{card_path}: weights_file {weights_file!r} must be a file name relative to the card's folder")
    weights_path = (folder / weights_file).resolve()
    if not weights_path.is_relative_to(folder):
        raise CheckpointError(
            f"{card_path}: weights_file {weights_file!r} resolves to {weights_path}, outside the card's folder {folder}; "
            "keep the weights beside their card"
        )
    if not weights_path.is_file():
        raise CheckpointError(f"{card_path}: weights file {weights_path} is missing")
    return weights_path


def load_checkpoint(card_path: str | Path, dtype: torch.dtype = torch.float32) -> PaiNN:
    """Build the model a checkpoint card describes and load its weights (eval mode)."""
    card_path = Path(card_path)
    card = read_card(card_path)
    weights_path = _weights_path(card_path, card["weights_file"])
    weights = weights_path.read_bytes()
    actual = hashlib.sha256(weights).hexdigest()
    if actual != card["weights_sha256"]:
        raise CheckpointError(
            f"{weights_path}: sha256 {actual[:12]}… differs from the card's {str(card['weights_sha256'])[:12]}… "
            "(truncated or replaced file); restore the weights that belong to this card"
        )
    model_class, config_class = ARCHITECTURES[card["architecture"]]
    try:
        model = model_class(config_class.from_dict(card["config"]))
        state = load_safetensors(weights)
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
    non_finite = sorted(name for name, tensor in state.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))
    if non_finite:
        raise CheckpointError(f"{weights_path}: weights {non_finite[:5]} hold NaN or inf; the model cannot give finite energies")
    model.load_state_dict(state)
    return model.to(dtype).eval()
