"""Fixed input buffers of a captured graph (a CUDA graph reads the same addresses every replay)."""

from __future__ import annotations

import torch


class StaticFeeds:
    """One device buffer per graph input, filled in place before each replay.

    :meth:`load` skips a device tensor that is the very object it loaded last time: cached feed
    tensors (:class:`~mlff_export.runtime.device_feeds.DeviceFeeds` never modifies them) are copied
    once, so a small-molecule call moves only its positions. A host tensor is copied every time
    (the positions' reused staging buffer: the CPU rewrites it between calls), straight into the
    device buffer.
    """

    def __init__(self, feeds: dict[str, torch.Tensor], device: torch.device):
        self.buffers = {name: tensor.to(device, copy=True) for name, tensor in feeds.items()}
        self._loaded = {name: tensor for name, tensor in feeds.items() if tensor.device == device}

    def load(self, feeds: dict[str, torch.Tensor]) -> None:
        for name, tensor in feeds.items():
            if self._loaded.get(name) is not tensor:
                self.buffers[name].copy_(tensor, non_blocking=True)
                if tensor.device == self.buffers[name].device:
                    self._loaded[name] = tensor
