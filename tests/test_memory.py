"""Memory estimates before a call (mlff_export/memory.py): what counts as out of memory, bytes per
pair, the budget a call may take and the refusal that names estimate and limit."""

from __future__ import annotations

import pytest
import torch

from mlff_export import memory
from mlff_export.memory import (
    CHECKED_FROM_BYTES,
    REFERENCE_BYTES_PER_PAIR,
    USABLE_FRACTION,
    InsufficientMemoryError,
    MemoryBudget,
    is_out_of_memory,
    model_bytes_per_pair,
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 80000000000 bytes"), True),
        (RuntimeError("onnxruntime: Failed to allocate memory for requested buffer of size 4096"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
        (ValueError("can't allocate memory"), False),  # only the allocators' RuntimeError
    ],
    ids=["cuda", "torch-cpu", "onnxruntime-arena", "another-runtime-error", "not-a-runtime-error"],
)
def test_allocator_failures_are_told_from_other_errors(error, expected):
    assert is_out_of_memory(error) is expected


def test_bytes_per_pair_is_the_models_own_else_the_references_scaled_by_element_size():
    class Declares(torch.nn.Module):
        def bytes_per_pair(self, dtype):
            return 1000 if dtype == torch.float32 else 3000

    assert model_bytes_per_pair(Declares(), torch.float32) == 1000
    assert model_bytes_per_pair(Declares(), torch.float64) == 3000
    plain = torch.nn.Linear(2, 2)
    assert model_bytes_per_pair(plain, torch.float32) == REFERENCE_BYTES_PER_PAIR
    assert model_bytes_per_pair(plain, torch.float64) == 2 * REFERENCE_BYTES_PER_PAIR
    assert model_bytes_per_pair(plain, torch.float16) == REFERENCE_BYTES_PER_PAIR // 2


@pytest.mark.parametrize("limit", [0, -1, float("nan")])
def test_a_limit_that_is_not_positive_is_refused(limit):
    with pytest.raises(ValueError, match=r"memory limit \| received .* \| expected > 0"):
        MemoryBudget(limit_bytes=limit)


def test_the_budget_is_a_fraction_of_the_free_memory_at_most_the_limit(monkeypatch):
    monkeypatch.setattr(memory, "free_device_bytes", lambda device: 10_000_000_000)
    assert MemoryBudget().available() == int(USABLE_FRACTION * 10_000_000_000)
    assert MemoryBudget(limit_bytes=3_000_000_000).available() == 3_000_000_000
    assert MemoryBudget(limit_bytes=9_000_000_000).available() == int(USABLE_FRACTION * 10_000_000_000)


def test_only_calls_worth_asking_about_query_the_free_memory(monkeypatch):
    """Below CHECKED_FROM_BYTES (or below a smaller limit) no query: ``None``; above, how many fit."""
    monkeypatch.setattr(memory, "free_device_bytes", lambda device: 10_000_000_000)
    budget = MemoryBudget()
    per_pair = 1024  # divides CHECKED_FROM_BYTES: the boundary is exact
    first_checked = CHECKED_FROM_BYTES // per_pair
    assert budget.pairs_that_fit(first_checked - 1, per_pair) is None
    assert budget.pairs_that_fit(first_checked, per_pair) == int(USABLE_FRACTION * 10_000_000_000) // per_pair
    small_limit = MemoryBudget(limit_bytes=1_024_000)
    assert small_limit.pairs_that_fit(999, per_pair) is None
    assert small_limit.pairs_that_fit(1000, per_pair) == 1000  # checked from the limit, not from 256 MiB


def test_a_refusal_names_the_estimate_the_limit_and_the_advice(monkeypatch):
    monkeypatch.setattr(memory, "free_device_bytes", lambda device: 10_000_000_000)
    capped = MemoryBudget(limit_bytes=2_000_000_000).refusal(5_000_000, 24_000, "this batch", "split it")
    assert isinstance(capped, InsufficientMemoryError)
    assert str(capped) == (
        "this batch needs about 120 GB (5,000,000 pairs x 24,000 bytes per pair); "
        "at most 2 GB may be used on cpu (a limit of 2 GB): split it"
    )
    uncapped = MemoryBudget().refusal(5_000_000, 24_000, "this batch", "split it")
    assert "at most 8 GB may be used on cpu (80% of the free memory): split it" in str(uncapped)


def test_the_hosts_free_memory_is_bounded_by_its_cgroup(monkeypatch):
    unbounded = memory.free_host_bytes() if memory._cgroup_free_bytes() is None else None
    monkeypatch.setattr(memory, "_cgroup_free_bytes", lambda: 12345)
    assert memory.free_host_bytes() == 12345
    monkeypatch.setattr(memory, "_cgroup_free_bytes", lambda: None)
    assert memory.free_host_bytes() > 12345
    if unbounded is not None:
        assert memory.free_host_bytes() == pytest.approx(unbounded, rel=0.2)
    assert memory.free_device_bytes(torch.device("cpu")) > 12345


def test_a_gpus_free_memory_counts_what_torchs_allocator_holds_unused(monkeypatch):
    """Driver's free bytes + reserved - allocated; the CUDA calls are fakes (named so: CI has no GPU)."""
    fake_cuda = {"mem_get_info": lambda device: (1_000, 80_000), "memory_reserved": lambda device: 300,
                 "memory_allocated": lambda device: 100}
    for name, fake in fake_cuda.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    monkeypatch.setattr(memory, "free_host_bytes", lambda: 10**12)
    assert memory.free_device_bytes(torch.device("cuda")) == 1_200
    assert memory.free_device_bytes(torch.device("cpu")) == 10**12


def _system_files(monkeypatch, tmp_path, **contents):
    """``/proc/meminfo`` and ``/sys/fs/cgroup/*`` read from ``tmp_path`` (files named by the keywords'
    names with ``_`` for ``.``; a file not given does not exist)."""
    for name, text in contents.items():
        (tmp_path / name.replace("_", ".")).write_text(text)
    monkeypatch.setattr(memory, "Path", lambda path: tmp_path / path.rsplit("/", 1)[-1])


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"memory_max": "1000000\n", "memory_current": "250000\n"}, 750_000),
        ({"memory_max": "max\n", "memory_current": "250000\n"}, None),
        ({"memory_max": "1000000\n"}, None),  # no memory.current: not cgroup v2
        ({"memory_max": "a lot\n", "memory_current": "250000\n"}, None),
    ],
    ids=["limited", "unlimited", "no-cgroup-v2", "unreadable"],
)
def test_the_cgroup_limit_is_read_where_one_is_set(monkeypatch, tmp_path, files, expected):
    _system_files(monkeypatch, tmp_path, **files)
    assert memory._cgroup_free_bytes() == expected


def test_the_hosts_free_memory_is_memavailable_else_the_free_pages(monkeypatch, tmp_path):
    import os

    _system_files(monkeypatch, tmp_path, meminfo="MemTotal:  8000 kB\nMemAvailable:    1000 kB\n")
    assert memory.free_host_bytes() == 1_024_000
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    (tmp_path / "meminfo").write_text("MemTotal:  8000 kB\n")  # a kernel without MemAvailable
    assert memory.free_host_bytes() == pytest.approx(free_pages, rel=0.2)
    (tmp_path / "meminfo").unlink()  # no /proc at all
    assert memory.free_host_bytes() == pytest.approx(free_pages, rel=0.2)
