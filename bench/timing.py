"""Wall-clock timing with warm-up and device synchronisation; medians, quartiles and a noise guard.

The guard: after the requested samples, a row keeps sampling (up to 5x as many, within its time
budget) while its interquartile range is wider than ``max_relative_spread`` of the median; a row
whose spread never settles is marked ``noisy`` and the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mlff_export.bench.machine_load import LoadMeter, MachineLoad

MAX_RELATIVE_SPREAD = 0.10
"""A row is stable when (q3 - q1) / median is at most this."""
EXTRA_SAMPLES_FACTOR = 5
"""An unsettled row takes up to this many times its requested samples."""


@dataclass
class Timing:
    """Per-call wall times in seconds (after warm-up, each call synchronised).

    ``noisy``: the interquartile range stayed wider than the guard's limit after every extra sample.
    ``load``: how busy the machine was while the samples were taken.
    """

    samples: list[float]
    noisy: bool = False
    load: MachineLoad | None = None

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def interquartile(self) -> tuple[float, float]:
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float(q1), float(q3)

    @property
    def relative_spread(self) -> float:
        """(q3 - q1) / median."""
        q1, q3 = self.interquartile
        return (q3 - q1) / self.median


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
    max_relative_spread: float = MAX_RELATIVE_SPREAD,
) -> Timing:
    """Time ``call(step)`` at least ``repeats`` times after ``warmup`` calls; ``step`` counts all
    calls, warm-up included.

    Sampling stops after ``repeats`` samples if the spread is within ``max_relative_spread``,
    otherwise goes on to ``EXTRA_SAMPLES_FACTOR * repeats`` samples until it is; it always stops
    once ``max_seconds`` have passed (with at least 3 samples). The result is ``noisy`` when the
    spread of the samples kept is wider than the limit.
    """
    synchronize = synchronizer(device)
    for step in range(warmup):
        call(step)
    synchronize()
    meter = LoadMeter()
    samples: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    step = warmup
    while True:
        start = time.perf_counter()
        call(step)
        synchronize()
        samples.append(time.perf_counter() - start)
        step += 1
        if len(samples) < min(3, repeats):
            continue
        stable = Timing(samples).relative_spread <= max_relative_spread
        if (stable and len(samples) >= repeats) or len(samples) >= EXTRA_SAMPLES_FACTOR * repeats or time.perf_counter() > budget_end:
            return Timing(samples, noisy=not stable, load=meter.stop())


def first_call(calculator, atoms):
    """A copy of ``atoms`` with ``calculator`` attached, after its first call through ASE:
    ``(atoms, forces eV/Å, energy eV, seconds of that call)`` (compilation or capture included)."""
    atoms = atoms.copy()
    atoms.calc = calculator
    start = time.perf_counter()
    forces = atoms.get_forces()
    seconds = time.perf_counter() - start
    return atoms, forces, float(atoms.get_potential_energy()), seconds
