"""The one contract every runtime backend obeys (eager, compile, ONNX Runtime, TensorRT)."""

from __future__ import annotations

from typing import Protocol

import torch

from mlff_export.interface import AtomicInputs


class Backend(Protocol):
    """Evaluates interface inputs (pair-list layout, on any device) on ``device``.

    ``evaluate`` returns ``{"energy": [B] eV, "forces": [N, 3] eV/Å, "virial": [B, 3, 3] eV}``
    as torch tensors; ``dtype`` is the float dtype its inputs are built in.
    """

    name: str
    device: torch.device
    dtype: torch.dtype

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]: ...
