"""One thin layer over the TensorRT Python APIs we use: TensorRT 10.x, 11.x and TensorRT-RTX.

Imported lazily (:func:`import_tensorrt`), so the package and its CLI work without TensorRT; a
missing library becomes one :class:`TensorRTUnavailableError` line saying what to install.

Differences handled here (NVIDIA's docs: TensorRT 10.x/11.x Python API, 10.x -> 11.x migration
guide, TensorRT-RTX Python API):

* strong typing: 10.x and TensorRT-RTX need ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``;
  11.x networks are always strongly typed and the flag is deprecated, so it is not passed;
  precision lives in the ONNX graph (FP16 engines come from the FP16 ONNX; no FP16 builder flag);
* TF32 is cleared where ``BuilderFlag.TF32`` exists: float32 layers (geometry, the energy sum)
  must stay float32, in FP16 engines too;
* ``builder_optimization_level`` and ``IProgressMonitor`` are used where present;
* execution contexts get their scratch memory from us (``USER_MANAGED``): one buffer shared by all
  contexts of an engine; sizes and setters are ``_v2`` from TensorRT 10.1 on (10.0 has only v1);
* TensorRT-RTX: ``BuilderFlag.REQUIRE_USER_ALLOCATION`` at build time, a runtime config per
  context (eager kernel specialization, the runtime cache), ``is_stream_capturable`` before a
  capture; it has no build-time timing cache (kernels are compiled at run time).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

INSTALL_HINT = 'pip install "mlff-export[trt]"'
# Import names, in order of preference: full TensorRT, then TensorRT for RTX (its wheel
# tensorrt-rtx-cu13-bindings installs ``tensorrt_rtx_bindings``; ``tensorrt_rtx`` is the name in
# NVIDIA's docs and other packagings).
MODULE_CANDIDATES = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")


class TensorRTUnavailableError(RuntimeError):
    """No TensorRT Python module can be imported here."""


@dataclass(frozen=True)
class TensorRTLibrary:
    """The imported TensorRT module and what it is.

    Attributes:
        module: the imported Python module (``tensorrt``, ``tensorrt_rtx`` or ``tensorrt_rtx_bindings``).
        import_name: the name it was imported under.
        flavour: ``"tensorrt"`` or ``"tensorrt-rtx"``.
        version: its ``__version__`` string.
    """

    module: ModuleType
    import_name: str
    flavour: str
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def is_rtx(self) -> bool:
        return self.flavour == "tensorrt-rtx"

    @property
    def always_strongly_typed(self) -> bool:
        """TensorRT 11+: every network is strongly typed, the creation flag is deprecated."""
        return self.flavour == "tensorrt" and self.major >= 11

    def describe(self) -> dict[str, str]:
        return {"flavour": self.flavour, "version": self.version, "import_name": self.import_name}


def import_tensorrt(candidates: tuple[str, ...] = MODULE_CANDIDATES) -> TensorRTLibrary:
    """The first importable module of ``candidates``; raise :class:`TensorRTUnavailableError` otherwise
    (one line: what to install, or why an installed module does not load)."""
    broken = []
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:  # the module is there, something it imports is not
                broken.append(f"{name}: {error}")
            continue
        except (ImportError, OSError) as error:
            # ImportError: its shared libraries are missing (Linux). OSError: on Windows the wheel's __init__
            # raises FileNotFoundError for a DLL that is not on PATH, ctypes an OSError for one that does not
            # load (NVIDIA/TensorRT, python/packaging/bindings_wheel/tensorrt/__init__.py).
            broken.append(f"{name}: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}")
            continue
        flavour = "tensorrt" if name == "tensorrt" else "tensorrt-rtx"
        return TensorRTLibrary(module, name, flavour, str(getattr(module, "__version__", "0")))
    if broken:
        raise TensorRTUnavailableError(
            f"TensorRT is installed but does not load ({'; '.join(broken)}): its CUDA/TensorRT libraries must be "
            f"findable (on Windows, their folder on PATH); reinstall with {INSTALL_HINT}"
        )
    raise TensorRTUnavailableError(
        f"TensorRT is not installed (tried {', '.join(candidates)}); install it with {INSTALL_HINT} "
        "(or tensorrt-cu12 / tensorrt-cu13; TensorRT for RTX: tensorrt-rtx-cu13-bindings)"
    )


def create_logger(library: TensorRTLibrary) -> Any:
    """A TensorRT logger at WARNING severity."""
    trt = library.module
    return trt.Logger(trt.Logger.WARNING)


def create_strongly_typed_network(library: TensorRTLibrary, builder: Any) -> Any:
    """``builder.create_network`` for a strongly typed network on every supported version."""
    if library.always_strongly_typed:
        return builder.create_network(0)
    flag = library.module.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    return builder.create_network(1 << int(flag))


def disable_tf32(library: TensorRTLibrary, config: Any) -> bool:
    """Clear ``BuilderFlag.TF32`` where it exists; returns whether there was one to clear."""
    flag = getattr(library.module.BuilderFlag, "TF32", None)
    if flag is None:
        return False
    config.clear_flag(flag)
    return True


def set_workspace_limit(library: TensorRTLibrary, config: Any, megabytes: int) -> None:
    config.set_memory_pool_limit(library.module.MemoryPoolType.WORKSPACE, int(megabytes) << 20)


def set_optimization_level(config: Any, level: int) -> bool:
    """Set the builder optimisation level (0..5) where the API has it; returns whether it did."""
    if not hasattr(config, "builder_optimization_level"):
        return False
    config.builder_optimization_level = int(level)
    return True


def attach_progress_monitor(library: TensorRTLibrary, config: Any, report: Callable[[str], None]) -> Any | None:
    """Report top-level build phases with elapsed seconds through ``report``, where
    ``IProgressMonitor`` exists. Returns the monitor (keep it alive during the build) or None."""
    base = getattr(library.module, "IProgressMonitor", None)
    if base is None or not hasattr(config, "progress_monitor"):
        return None

    class PhaseReporter(base):
        """Reports the start and end of top-level phases; never cancels the build."""

        def __init__(self) -> None:
            base.__init__(self)
            self.started = time.perf_counter()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                report(f"  [{time.perf_counter() - self.started:7.1f} s] {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True

        def phase_finish(self, phase_name: str) -> None:
            return None

    monitor = PhaseReporter()
    config.progress_monitor = monitor
    return monitor


def count_layers_by_type(network: Any) -> dict[str, int]:
    """Layer type name (``"ELEMENTWISE"``, ``"PLUGIN_V3"``, ...) -> number of layers in ``network``."""
    counts: dict[str, int] = {}
    for index in range(network.num_layers):
        name = str(network.get_layer(index).type).rsplit(".", 1)[-1]
        counts[name] = counts.get(name, 0) + 1
    return counts


def plugin_layer_counts(layer_counts: dict[str, int]) -> dict[str, int]:
    """The plugin entries of :func:`count_layers_by_type` (must be empty for our graphs)."""
    return {name: count for name, count in layer_counts.items() if name.startswith("PLUGIN")}


def require_user_allocation(library: TensorRTLibrary, config: Any) -> bool:
    """Set ``BuilderFlag.REQUIRE_USER_ALLOCATION`` where it exists (TensorRT-RTX >= 1.2); returns whether it did.

    The engine then uses memory the application provides wherever it can, which CUDA stream capture
    requires (TensorRT-RTX 1.2 release notes, "kREQUIRE_USER_ALLOCATION ... required when using CUDA
    stream capture"). Full TensorRT has no such flag.
    """
    flag = getattr(library.module.BuilderFlag, "REQUIRE_USER_ALLOCATION", None)
    if flag is None:
        return False
    config.set_flag(flag)
    return True


# Compute capabilities a TensorRT-RTX engine built with the default targets runs on: 8.0, 8.6, 8.9 and
# 12.0 and later (TensorRT-RTX docs, "CPU-Only AOT and TensorRT-RTX Engines"; the 1.7 runtime's own
# refusal on sm 9.0 lists "8.0 8.6 8.9 12.0 12.1 >12.0", bench/results/2026-11-24-h100/trt-rtx.log).
# 7.5 (Turing) needs an engine built for it explicitly; ours are built with the defaults.
RTX_COMPUTE_CAPABILITIES = ((8, 0), (8, 6), (8, 9))
RTX_FROM_MAJOR = 12


def tensorrt_rtx_runs_on(major: int, minor: int) -> bool:
    """Whether a default-target TensorRT-RTX engine runs on a GPU of compute capability ``major.minor``."""
    return (major, minor) in RTX_COMPUTE_CAPABILITIES or major >= RTX_FROM_MAJOR


def scratch_memory_size(engine: Any) -> int:
    """Bytes of scratch (activation) memory one execution context of ``engine`` needs: the largest
    profile's. ``device_memory_size_v2`` from TensorRT 10.1 (and RTX; it includes weight-streaming
    scratch), 10.0's ``device_memory_size`` before (pyCore.cpp of each version)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(engine.device_memory_size if size is None else size)


def create_user_memory_context(library: TensorRTLibrary, engine: Any, runtime_cache: Any = None) -> tuple[Any, Any]:
    """(execution context that allocates no scratch memory itself, its runtime config or None).

    ``USER_MANAGED`` (NvInferRuntime.h, ExecutionContextAllocationStrategy): the caller attaches scratch
    memory with :func:`attach_scratch_memory` before the first enqueue; the default ``STATIC`` would
    give every context the largest profile's scratch memory of its own. TensorRT-RTX contexts are made
    from a runtime config (IRuntimeConfig), which also carries the runtime cache and the kernel
    specialization strategy. RTX's own CUDA-graph strategy stays at its default (disabled): the
    backend captures each bucket itself, and a capture inside a capture is not allowed.
    """
    trt = library.module
    user_managed = trt.ExecutionContextAllocationStrategy.USER_MANAGED
    if not library.is_rtx:
        return engine.create_execution_context(user_managed), None
    config = engine.create_runtime_config()
    config.set_execution_context_allocation_strategy(user_managed)
    # EAGER: the warm-up run compiles the bucket's shape-specialized kernels (blocking) before the capture.
    # The default LAZY compiles them in the background and swaps them in later, behind a captured graph
    # (NvInferRuntime.h of TensorRT-RTX, DynamicShapesKernelSpecializationStrategy; absent before RTX 1.1).
    strategies = getattr(trt, "DynamicShapesKernelSpecializationStrategy", None)
    if strategies is not None:
        config.dynamic_shapes_kernel_specialization_strategy = strategies.EAGER
    if runtime_cache is not None and not config.set_runtime_cache(runtime_cache):
        raise RuntimeError("TensorRT-RTX refused the runtime cache for a new execution context")
    return engine.create_execution_context(config), config


def attach_scratch_memory(context: Any, address: int, size: int) -> None:
    """Give ``context`` the shared scratch buffer at ``address`` (256-byte aligned, ``size`` bytes, at
    least :func:`scratch_memory_size`). ``set_device_memory(memory, size)`` from TensorRT 10.1 (and
    RTX), the ``device_memory`` property in 10.0 (pyCore.cpp). Contexts may share one buffer as long
    as they never run at the same time (NvInferRuntime.h, setDeviceMemoryV2): ours take turns on one stream."""
    if hasattr(context, "set_device_memory"):
        context.set_device_memory(address, size)
    else:
        context.device_memory = address


def stream_capture_refusal(context: Any, stream_handle: int) -> str | None:
    """Why ``context`` cannot be captured into a CUDA graph on this stream, or None.

    TensorRT-RTX answers ``is_stream_capturable`` (1.2 release notes: capture needs an engine built with
    REQUIRE_USER_ALLOCATION and is impossible with data-dependent shapes). Full TensorRT has no such
    query; there the capture attempt itself tells (as in trtexec).
    """
    query = getattr(context, "is_stream_capturable", None)
    if query is None or query(stream_handle):
        return None
    return ("TensorRT-RTX reports this context is not stream-capturable (engine built without "
            "REQUIRE_USER_ALLOCATION, or data-dependent shapes)")

