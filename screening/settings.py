"""How a worker loads and batches the model: settings that travel to every worker (no torch here,
so Ray's reading and writing tasks import none)."""

from __future__ import annotations

from dataclasses import dataclass

MIN_DISTANCE = 0.5
"""Å. Two atoms closer than this are reported as overlapping: no bond is shorter than H2's 0.74 Å,
and a model trained on real structures has seen nothing like it."""


@dataclass(frozen=True)
class ModelSettings:
    """How a worker loads and batches the model (picklable: it travels to Ray workers).

    ``model`` is anything :func:`~mlff_export.runtime.load_calculator` takes by name (checkpoint
    card ``.json``, ``.onnx``, ``.plan``); ``device`` None lets the runner choose (CUDA where
    there is one); ``batch_size`` is structures per call, None for the automatic atom budget
    (:mod:`~mlff_export.screening.batching`); ``min_distance`` in Å (0: no overlap check).
    """

    model: str
    backend: str | None = None
    device: str | None = None
    batch_size: int | None = None
    min_distance: float = MIN_DISTANCE
