"""How much memory a call may take, estimated before it runs, and the error when it cannot fit.

A model call holds activations for every pair (the reference PaiNN in eager float32: about 24 kB
per pair, so a 50k-atom water box with 2.6 M pairs needs ~62 GB). Running out is a crash on the
CPU (Linux kills the process) and an allocator traceback on a GPU, so every call larger than
:data:`CHECKED_FROM_BYTES` compares ``pairs x bytes per pair`` with what its device has free
*before* it runs: a call that does not fit is split (batches in halves, a single structure in
spatial domains where the backend can) or refused with :class:`InsufficientMemoryError` naming the
estimate and the limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

CHECKED_FROM_BYTES = 256 * 2**20  # smaller calls skip the free-memory query (it costs ~50 µs)
USABLE_FRACTION = 0.8  # of the free memory; the rest is headroom for the allocator and the caller
REFERENCE_BYTES_PER_PAIR = 24_000  # reference PaiNN, eager float32, measured (docs/reliability.md)


class InsufficientMemoryError(RuntimeError):
    """A call that would not fit in the memory of its device; the message names estimate and limit."""


ALLOCATOR_FAILURES = ("can't allocate memory", "Failed to allocate memory")  # torch's CPU allocator, ONNX Runtime's arena


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocator failure: CUDA out-of-memory, or a CPU allocator refusing
    an allocation (torch and ONNX Runtime raise a plain ``RuntimeError`` for it, named by its message)."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and any(message in str(error) for message in ALLOCATOR_FAILURES)
    )


def release_cached_gpu_memory() -> None:
    """After an out-of-memory: hand torch's cached, unused GPU blocks back before the retry (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_bytes_per_pair(model, dtype: torch.dtype) -> int:
    """Peak memory per pair of one eager energy+forces call of ``model`` in ``dtype``, bytes: the
    model's own ``bytes_per_pair(dtype)`` where it declares one, else the reference PaiNN's."""
    declared = getattr(model, "bytes_per_pair", None)
    if callable(declared):
        return int(declared(dtype))
    return REFERENCE_BYTES_PER_PAIR * torch.empty((), dtype=dtype).element_size() // 4


def _cgroup_free_bytes() -> int | None:
    """Free memory under this process's cgroup (v2) limit, where one is set (containers, batch jobs)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return None if limit == "max" else int(limit) - used
    except (OSError, ValueError):
        return None


def free_host_bytes() -> int:
    """Memory the host can give a new allocation: ``MemAvailable`` (Linux), bounded by the cgroup."""
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        free = int(match.group(1)) * 1024
    except (OSError, AttributeError):
        import os

        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cgroup = _cgroup_free_bytes()
    return free if cgroup is None else min(free, cgroup)


def free_device_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the host's for the CPU; for CUDA the driver's free memory plus
    what torch's caching allocator holds unused."""
    if device.type != "cuda":
        return free_host_bytes()
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def gigabytes(size: float) -> str:
    return f"{size / 1e9:.3g} GB"


@dataclass
class MemoryBudget:
    """The memory one call may take on ``device``: :data:`USABLE_FRACTION` of what is free there,
    at most ``limit_bytes`` (a user's cap; ``None``: no cap)."""

    device: torch.device = torch.device("cpu")
    limit_bytes: int | None = None

    def __post_init__(self):
        if self.limit_bytes is not None and not self.limit_bytes > 0:
            raise ValueError(f"memory limit | received {self.limit_bytes!r} bytes | expected > 0")

    def available(self) -> int:
        usable = int(USABLE_FRACTION * free_device_bytes(self.device))
        return usable if self.limit_bytes is None else min(usable, self.limit_bytes)

    def pairs_that_fit(self, pairs: int, bytes_per_pair: int) -> int | None:
        """How many pairs fit now, or ``None`` when ``pairs`` is too small to be worth asking."""
        if pairs * bytes_per_pair < min(CHECKED_FROM_BYTES, self.limit_bytes or CHECKED_FROM_BYTES):
            return None
        return self.available() // bytes_per_pair

    def refusal(self, pairs: int, bytes_per_pair: int, what: str, advice: str) -> InsufficientMemoryError:
        """The error for ``what`` (the call, named), ``pairs`` pairs, not fitting; ends with ``advice``."""
        limit = f"a limit of {gigabytes(self.limit_bytes)}" if self.limit_bytes else f"{USABLE_FRACTION:.0%} of the free memory"
        return InsufficientMemoryError(
            f"{what} needs about {gigabytes(pairs * bytes_per_pair)} ({pairs:,} pairs x {bytes_per_pair:,} bytes per pair); "
            f"at most {gigabytes(self.available())} may be used on {self.device} ({limit}): {advice}"
        )
