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
* ``builder_optimization_level`` and ``IProgressMonitor`` are used where present.
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
    def always_strongly_typed(self) -> bool:
        """TensorRT 11+: every network is strongly typed, the creation flag is deprecated."""
        return self.flavour == "tensorrt" and self.major >= 11

    def describe(self) -> dict[str, str]:
        return {"flavour": self.flavour, "version": self.version, "import_name": self.import_name}


def import_tensorrt(candidates: tuple[str, ...] = MODULE_CANDIDATES) -> TensorRTLibrary:
    """The first importable module of ``candidates``; raise :class:`TensorRTUnavailableError` otherwise."""
    failures = []
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ImportError as error:  # includes a module whose shared libraries are missing
            failures.append(f"{name}: {error}")
            continue
        flavour = "tensorrt" if name == "tensorrt" else "tensorrt-rtx"
        return TensorRTLibrary(module, name, flavour, str(getattr(module, "__version__", "0")))
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
