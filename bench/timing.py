"""Wall-clock timing with warm-up and device synchronisation; medians and quartiles."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Timing:
    """Per-call wall times in seconds (after warm-up, each call synchronised)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def interquartile(self) -> tuple[float, float]:
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float(q1), float(q3)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(
    call: Callable[[int], object],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 10.0,
) -> Timing:
    """Time ``call(step)`` ``repeats`` times after ``warmup`` calls, stopping early after
    ``max_seconds`` (at least 3 samples). ``step`` counts all calls, warm-up included."""
    synchronize = synchronizer(device)
    for step in range(warmup):
        call(step)
    synchronize()
    samples: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for step in range(warmup, warmup + repeats):
        start = time.perf_counter()
        call(step)
        synchronize()
        samples.append(time.perf_counter() - start)
        if len(samples) >= 3 and time.perf_counter() > budget_end:
            break
    return Timing(samples)
