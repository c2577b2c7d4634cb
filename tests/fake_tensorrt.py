"""A stand-in for the TensorRT Python module, for testing OUR code around it on machines without it.

:class:`FakeTensorRTForTests` builds nothing and runs nothing: it records what our builder and
runtime ask of TensorRT (flags, profiles, caches, contexts, scratch memory, enqueues) and answers
the way the real library documents. Its enum values are the real ones of each version it claims
to be, so the flag words our code computes are the words TensorRT would receive:

* TensorRT 10.x (``include/NvInfer.h`` of 10.0 and 10.16): ``STRONGLY_TYPED = 1``, ``TF32 = 6``;
  10.0 has only the v1 memory API (``device_memory_size``, the ``device_memory`` setter), 10.1+
  the v2 one (``device_memory_size_v2``, ``set_device_memory(memory, size)``);
* TensorRT 11.x (``include/NvInfer.h`` of 11.1): ``STRONGLY_TYPED = 0`` (deprecated, ignored),
  ``TF32 = 6``; v2 memory API only;
* TensorRT-RTX 1.x (its ``NvInfer.h``/``NvInferRuntime.h`` as bound by trtx-sys 0.7+rtx1.5):
  ``STRONGLY_TYPED = 0``, ``TF32 = 6``, ``REQUIRE_USER_ALLOCATION = 28``; runtime configs,
  runtime cache, ``is_stream_capturable``, ``DynamicShapesKernelSpecializationStrategy``.

Everywhere: ``MemoryPoolType.WORKSPACE = 0``, ``ExecutionContextAllocationStrategy`` STATIC 0,
ON_PROFILE_CHANGE 1, USER_MANAGED 2, ``Logger.WARNING = 2``.
"""

from __future__ import annotations

import enum
from types import SimpleNamespace

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.export.tensorrt_compat import TensorRTLibrary

FAKE_PLAN = b"fake plan bytes"
FAKE_TIMING_CACHE = b"timing cache bytes"
FAKE_RUNTIME_CACHE = b"RTX runtime cache bytes"
INDEX_INPUTS = {"species", "neighbor_index", "reverse_index", "structure_index"}


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 9


class DynamicShapesKernelSpecializationStrategy(enum.IntEnum):  # TensorRT-RTX only
    LAZY = 0
    EAGER = 1
    NONE = 2


def _network_flags(major: int, rtx: bool) -> type[enum.IntEnum]:
    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 0 if (rtx or major >= 11) else 1

    return NetworkDefinitionCreationFlag


def _builder_flags(rtx: bool) -> type[enum.IntEnum]:
    members = {"DEBUG": 2, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6}
    if rtx:
        members["REQUIRE_USER_ALLOCATION"] = 28
    return enum.IntEnum("BuilderFlag", members)


class FakeTensorRTForTests:
    """Records what our code asks of TensorRT; a stand-in for the library, not an engine builder.

    Args:
        version: ``"10.0.1"``, ``"10.16.0"``, ``"11.1.0"`` (full TensorRT) or, with ``rtx=True``, e.g. ``"1.7.1"``.
        rtx: whether this is TensorRT-RTX.
        parse_errors: errors the ONNX parser reports (none: it parses).
        refuse_profile: index of an optimization profile ``add_optimization_profile`` refuses (-1).
        capture_breaks_enqueue: ``execute_async_v3`` fails while a (fake) capture is on, like an
            engine with operations not permitted under CUDA graph capture.
        capturable: TensorRT-RTX's answer to ``is_stream_capturable``.
        scratch_bytes: per profile, the scratch memory a context needs.
    """

    float32, float16, int32, int64 = DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT64
    MemoryPoolType = MemoryPoolType
    ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    def __init__(
        self,
        version: str = "10.16.0",
        *,
        rtx: bool = False,
        parse_errors: tuple[str, ...] = (),
        refuse_profile: int | None = None,
        capture_breaks_enqueue: bool = False,
        capturable: bool = True,
        scratch_bytes: tuple[int, ...] = (3 << 20, 5 << 20),
    ):
        major, minor = (int(part) for part in version.split(".")[:2])
        self.__version__ = version
        self.rtx = rtx
        self.v2_memory_api = rtx or (major, minor) >= (10, 1)
        self.NetworkDefinitionCreationFlag = _network_flags(major, rtx)
        self.BuilderFlag = _builder_flags(rtx)
        if rtx:
            self.DynamicShapesKernelSpecializationStrategy = DynamicShapesKernelSpecializationStrategy
        self.parse_errors, self.refuse_profile = parse_errors, refuse_profile
        self.capture_breaks_enqueue, self.capturable = capture_breaks_enqueue, capturable
        self.scratch_bytes = scratch_bytes
        self.capturing = False
        self.calls = SimpleNamespace(
            network_flags=None, profiles=[], set_flags=[], cleared_flags=[], workspace=None, cache_blobs=[],
            contexts=[], enqueues=0, replays=0,
        )
        fake = self

        class Builder:
            def __init__(self, logger):
                self.config = None

            def create_network(self, flags):
                fake.calls.network_flags = flags
                inputs = [SimpleNamespace(name=name) for name in NEIGHBOR_TABLE.input_names]
                layers = [SimpleNamespace(type="LayerType.ELEMENTWISE"), SimpleNamespace(type="LayerType.GATHER")]
                return SimpleNamespace(
                    num_inputs=len(inputs), get_input=inputs.__getitem__, num_outputs=3,
                    num_layers=len(layers), get_layer=layers.__getitem__,
                )

            def create_builder_config(self):
                self.config = BuilderConfig()
                return self.config

            def create_optimization_profile(self):
                profile = {}
                fake.calls.profiles.append(profile)
                return SimpleNamespace(set_shape=lambda name, *shapes: profile.__setitem__(name, shapes))

            def build_serialized_network(self, network, config):
                return FAKE_PLAN

        class BuilderConfig:
            builder_optimization_level = 3

            def __init__(self):
                self.profile_count = 0

            def set_memory_pool_limit(self, pool, size):
                fake.calls.workspace = (int(pool), size)

            def set_flag(self, flag):
                fake.calls.set_flags.append(int(flag))

            def clear_flag(self, flag):
                fake.calls.cleared_flags.append(int(flag))

            def add_optimization_profile(self, profile):
                index = self.profile_count
                if index == fake.refuse_profile:
                    return -1
                self.profile_count += 1
                return index

            def create_timing_cache(self, blob):
                blob = bytes(blob)
                fake.calls.cache_blobs.append(blob)
                if blob not in (b"", FAKE_TIMING_CACHE):
                    return None  # bytes TensorRT cannot read
                return SimpleNamespace(serialize=lambda: FAKE_TIMING_CACHE)

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = len(fake.parse_errors)

            def parse_from_file(self, path):
                return not fake.parse_errors

            def get_error(self, index):
                return fake.parse_errors[index]

        self.Builder, self.OnnxParser = Builder, OnnxParser

    # ---- run time -------------------------------------------------------------------------------

    def engine(self) -> FakeEngine:
        """A deserialized engine with ``len(scratch_bytes)`` profiles."""
        return FakeEngine(self)


class FakeEngine:
    """``ICudaEngine``: tensor types, scratch sizes, contexts (RTX: from runtime configs)."""

    def __init__(self, fake: FakeTensorRTForTests):
        self.fake = fake
        self.num_optimization_profiles = len(fake.scratch_bytes)
        if fake.v2_memory_api:
            self.device_memory_size_v2 = max(fake.scratch_bytes)

    @property
    def device_memory_size(self):
        """10.0's size; deprecated from 10.1 (it leaves out weight-streaming scratch), gone in 11.x and RTX."""
        if self.fake.v2_memory_api:
            raise AssertionError("device_memory_size is deprecated since TensorRT 10.1: use device_memory_size_v2")
        return max(self.fake.scratch_bytes)

    def get_tensor_dtype(self, name):
        return self.fake.int64 if name in INDEX_INPUTS else self.fake.float32

    def create_execution_context(self, how=ExecutionContextAllocationStrategy.STATIC):
        config = how if isinstance(how, FakeRuntimeConfig) else None
        if config is not None and not self.fake.rtx:
            raise TypeError("runtime configs are used for TensorRT-RTX only in this project")
        strategy = config.strategy if config is not None else how
        context = FakeContext(self.fake, ExecutionContextAllocationStrategy(strategy), config)
        self.fake.calls.contexts.append(context)
        return context

    def create_runtime_config(self):
        if not self.fake.rtx:
            raise AttributeError("create_runtime_config")
        return FakeRuntimeConfig()


class FakeRuntimeConfig:
    """TensorRT-RTX ``IRuntimeConfig``."""

    def __init__(self):
        self.strategy = ExecutionContextAllocationStrategy.STATIC
        self.dynamic_shapes_kernel_specialization_strategy = DynamicShapesKernelSpecializationStrategy.LAZY
        self.runtime_cache = None

    def set_execution_context_allocation_strategy(self, strategy):
        self.strategy = strategy

    def create_runtime_cache(self):
        return FakeRuntimeCache()

    def set_runtime_cache(self, cache):
        self.runtime_cache = cache
        return True


class FakeRuntimeCache:
    """TensorRT-RTX ``IRuntimeCache``: reads back only what it wrote."""

    def __init__(self):
        self.loaded = False

    def serialize(self):
        return FAKE_RUNTIME_CACHE

    def deserialize(self, blob):
        self.loaded = bytes(blob) == FAKE_RUNTIME_CACHE
        return self.loaded

    def reset(self):
        self.loaded = False
        return True


class FakeContext:
    """``IExecutionContext``: records profile, shapes, addresses and scratch memory; counts enqueues."""

    def __init__(self, fake: FakeTensorRTForTests, strategy, runtime_config):
        self.fake, self.strategy, self.runtime_config = fake, strategy, runtime_config
        self.scratch = None
        self.profile = None
        self.shapes, self.addresses = {}, {}
        if fake.v2_memory_api:
            self.set_device_memory = self._set_device_memory
        if fake.rtx:
            self.is_stream_capturable = lambda stream: fake.capturable

    def _set_device_memory(self, memory, size):
        self.scratch = (memory, size)

    @property
    def device_memory(self):
        raise AttributeError("write-only")

    @device_memory.setter
    def device_memory(self, memory):  # TensorRT 10.0
        if self.fake.v2_memory_api:
            raise AssertionError("the v1 setter is for TensorRT 10.0 only")
        self.scratch = (memory, None)

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return 0 <= index < len(self.fake.scratch_bytes)

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        atoms, structures = self.shapes["positions"][0], self.shapes["cell"][0]
        return {"energy": (structures,), "forces": (atoms, 3), "virial": (structures, 3, 3)}[name]

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream):
        if self.scratch is None and self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED:
            return False  # USER_MANAGED without memory: TensorRT refuses to run
        if self.fake.capturing and self.fake.capture_breaks_enqueue:
            return False
        self.fake.calls.enqueues += 1
        return True


def fake_cuda_graph_capture(fake: FakeTensorRTForTests):
    """Stands in for ``torch.cuda.graph`` (no CUDA here): runs the enqueue with the fake in capture
    mode; a failing enqueue raises out of it as it would out of a real capture."""

    def capture(enqueue):
        fake.capturing = True
        try:
            enqueue()
        finally:
            fake.capturing = False

        def replay():
            fake.calls.replays += 1

        return SimpleNamespace(replay=replay)

    return capture


def fake_library(version: str = "10.16.0", **kwargs) -> TensorRTLibrary:
    """The fake as our code sees it (``rtx=True``: imported as ``tensorrt_rtx``)."""
    rtx = kwargs.get("rtx", False)
    module = FakeTensorRTForTests(version, **kwargs)
    return TensorRTLibrary(module, "tensorrt_rtx" if rtx else "tensorrt", "tensorrt-rtx" if rtx else "tensorrt", version)
