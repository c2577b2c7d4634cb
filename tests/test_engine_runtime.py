"""The TensorRT runtime's logic around TensorRT, on CPU: one scratch buffer for every bucket, CUDA
graph capture and its fallback, output shapes read from the context, TensorRT-RTX's runtime config
and runtime cache.

``FakeTensorRTForTests`` (tests/fake_tensorrt.py) stands in for the missing library and
``fake_cuda_graph_capture`` for ``torch.cuda.graph``: they record what we ask and answer as the
documentation says; nothing is computed. The real engine is the GPU test in test_engine_build.py.
"""

from __future__ import annotations

import logging

import pytest
import torch
from fake_tensorrt import FAKE_RUNTIME_CACHE, FakeContext, fake_cuda_graph_capture, fake_library

from mlff_export.export.engine_sidecar import EngineMismatchError
from mlff_export.export.tensorrt_compat import tensorrt_rtx_runs_on
from mlff_export.runtime.shape_buckets import ShapeBucket
from mlff_export.runtime.tensorrt_backend import BucketContexts, RuntimeCacheFile

USER_MANAGED = 2  # ExecutionContextAllocationStrategy::kUSER_MANAGED (NvInferRuntime.h)
EAGER = 1  # DynamicShapesKernelSpecializationStrategy::kEAGER (TensorRT-RTX NvInferRuntime.h)
BUCKETS = [ShapeBucket(0, 8, 8, 2), ShapeBucket(0, 16, 8, 2), ShapeBucket(0, 32, 16, 4), ShapeBucket(1, 64, 16, 2),
           ShapeBucket(1, 80, 32, 2), ShapeBucket(1, 128, 32, 8)]
VERSIONS = [("10.0.1", False), ("10.16.0", False), ("11.1.0", False), ("1.7.1", True)]


def contexts(library, *, graphs: bool = True, runtime_cache=None) -> BucketContexts:
    engine = library.module.engine()
    capture = fake_cuda_graph_capture(library.module) if graphs else None
    return BucketContexts(library, engine, torch.device("cpu"), stream_handle=7, padding_species=6, capture=capture,
                          runtime_cache=runtime_cache, name="e.plan")


@pytest.mark.parametrize(("version", "rtx"), VERSIONS)
def test_many_buckets_share_one_scratch_buffer(version, rtx):
    library = fake_library(version, rtx=rtx, scratch_bytes=(3 << 20, 5 << 20))
    buckets = contexts(library)
    for bucket in BUCKETS:
        buckets.run(buckets.runner(bucket))
    made = library.module.calls.contexts
    assert len(made) == len(BUCKETS)
    assert all(context.strategy == USER_MANAGED for context in made)  # TensorRT allocates no scratch of its own
    size = 5 << 20 if library.module.v2_memory_api else None  # 10.0: the v1 setter takes no size
    assert {context.scratch for context in made} == {(buckets.scratch_address, size)}  # ONE buffer, for all
    assert buckets.scratch_address % 256 == 0 and buckets.scratch_bytes == 5 << 20  # the largest profile's
    report = buckets.memory_report()
    assert report["scratch_buffers"] == 1 and report["scratch_bytes"] == 5 << 20 and len(report["buckets"]) == 6
    for bucket, runner in buckets.runners.items():  # per bucket: static buffers, 32 N K + 40 N + 76 B bytes
        atoms, neighbors, structures = bucket.shape
        assert runner.io_bytes == 32 * atoms * neighbors + 40 * atoms + 76 * structures
        assert runner.context.profile == bucket.profile_index


def test_each_bucket_is_set_up_once_and_its_graph_replayed():
    library = fake_library()
    buckets = contexts(library)
    for _ in range(3):
        buckets.run(buckets.runner(BUCKETS[0]))
    calls = library.module.calls
    assert len(calls.contexts) == 1 and calls.enqueues == 2 and calls.replays == 3  # warm-up + capture, then replays
    context = calls.contexts[0]
    runner = buckets.runners[BUCKETS[0]]
    assert context.shapes["neighbor_shifts"] == (8, 8, 3) and context.shapes["cell"] == (2, 3, 3)
    assert context.addresses["forces"] == runner.outputs["forces"].data_ptr()
    assert runner.outputs["virial"].shape == (2, 3, 3) and runner.fallback_reason is None


def test_the_warm_up_runs_on_a_valid_all_padding_call():
    """Zeros would be species 0 (not a model species: an out-of-range gather in the species lookup)."""
    inputs = contexts(fake_library()).runner(ShapeBucket(0, 16, 8, 2)).inputs
    assert inputs["species"].eq(6).all() and inputs["neighbor_mask"].eq(0).all()
    reverse = inputs["reverse_index"].reshape(-1)
    assert torch.equal(reverse, torch.arange(16 * 8))  # every slot its own reverse
    assert torch.equal(inputs["neighbor_index"], torch.arange(16).unsqueeze(1).expand(16, 8))  # own atom
    assert inputs["structure_index"].eq(0).all()


def test_a_failed_capture_falls_back_to_plain_enqueue_with_the_reason_logged(caplog):
    library = fake_library(capture_breaks_enqueue=True)
    buckets = contexts(library)
    with caplog.at_level(logging.WARNING, logger="mlff_export.runtime.tensorrt_backend"):
        runner = buckets.runner(BUCKETS[1])
    assert runner.graph is None and runner.fallback_reason.startswith("capture failed: TensorRT execute_async_v3 failed")
    assert "bucket N=16 K=8 B=2: no CUDA graph, plain enqueue on every call (capture failed" in caplog.text
    enqueues = library.module.calls.enqueues
    buckets.run(runner)
    buckets.run(runner)
    assert library.module.calls.enqueues == enqueues + 2 and library.module.calls.replays == 0


def test_tensorrt_rtx_is_not_captured_when_it_says_the_context_is_not_capturable(caplog):
    library = fake_library("1.7.1", rtx=True, capturable=False)
    buckets = contexts(library)
    with caplog.at_level(logging.WARNING, logger="mlff_export.runtime.tensorrt_backend"):
        runner = buckets.runner(BUCKETS[0])
    assert runner.graph is None and library.module.calls.enqueues == 1  # the warm-up only: no capture attempted
    assert "not stream-capturable (engine built without REQUIRE_USER_ALLOCATION" in caplog.text


def test_without_graphs_every_run_is_a_plain_enqueue(caplog):
    library = fake_library()
    buckets = contexts(library, graphs=False)
    with caplog.at_level(logging.WARNING):
        buckets.run(buckets.runner(BUCKETS[0]))
    assert library.module.calls.enqueues == 2 and library.module.calls.replays == 0 and not caplog.text


def test_output_shapes_come_from_the_context_and_must_follow_the_contract(monkeypatch):
    monkeypatch.setattr(FakeContext, "get_tensor_shape", lambda self, name: (self.shapes["positions"][0], 1))
    with pytest.raises(EngineMismatchError, match=r"Output tensor: energy of e.plan \| shape \(8, 1\) .* expected \(2,\)"):
        contexts(fake_library()).runner(BUCKETS[0])


def test_tensorrt_rtx_contexts_compile_eagerly_and_share_the_runtime_cache(tmp_path):
    library = fake_library("1.7.1", rtx=True)
    engine = library.module.engine()
    cache_file = tmp_path / "e.plan.runtime-cache"
    cache = RuntimeCacheFile.open(library, engine, cache_file)
    buckets = BucketContexts(library, engine, torch.device("cpu"), 7, padding_species=6, capture=None, runtime_cache=cache)
    for bucket in BUCKETS[:3]:
        buckets.runner(bucket)
    configs = [context.runtime_config for context in library.module.calls.contexts]
    assert all(config.strategy == USER_MANAGED for config in configs)
    assert all(config.dynamic_shapes_kernel_specialization_strategy == EAGER for config in configs)
    assert {id(config.runtime_cache) for config in configs} == {id(cache.cache)}
    assert cache_file.read_bytes() == FAKE_RUNTIME_CACHE  # written once kernels were compiled
    assert RuntimeCacheFile.open(library, library.module.engine(), cache_file).cache.loaded


def test_an_unreadable_runtime_cache_is_replaced_with_a_warning(tmp_path, caplog):
    library = fake_library("1.7.1", rtx=True)
    cache_file = tmp_path / "e.plan.runtime-cache"
    cache_file.write_bytes(b"from another TensorRT-RTX")
    with caplog.at_level(logging.WARNING, logger="mlff_export.runtime.tensorrt_backend"):
        cache = RuntimeCacheFile.open(library, library.module.engine(), cache_file)
    assert not cache.cache.loaded and "not readable by tensorrt-rtx 1.7.1; starting a new one" in caplog.text
    cache.save()
    assert cache_file.read_bytes() == FAKE_RUNTIME_CACHE


def test_full_tensorrt_has_no_runtime_cache(tmp_path):
    library = fake_library("10.16.0")
    assert RuntimeCacheFile.open(library, library.module.engine(), tmp_path / "e.plan.runtime-cache") is None


@pytest.mark.parametrize(
    ("capability", "runs"),
    [((7, 5), False), ((8, 0), True), ((8, 6), True), ((8, 7), False), ((8, 9), True), ((9, 0), False),
     ((10, 0), False), ((11, 0), False), ((12, 0), True), ((12, 1), True)],
)
def test_tensorrt_rtx_compute_capabilities(capability, runs):
    assert tensorrt_rtx_runs_on(*capability) is runs
