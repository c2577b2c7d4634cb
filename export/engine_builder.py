"""ONNX -> serialized TensorRT engine (``NAME.plan``) with optimization profiles and a sidecar.

:func:`build_engine` parses an exported neighbor-table graph into a strongly typed network, adds
one optimization profile per :class:`~mlff_export.export.engine_profiles.ShapeProfile` (every
input's min/opt/max from N, K, B), sets the workspace limit and optimisation level, clears TF32,
reuses a timing cache kept beside the engine (full TensorRT; TensorRT-RTX compiles its kernels at
run time and keeps them in the runtime's cache instead), sets ``REQUIRE_USER_ALLOCATION`` where it
exists (TensorRT-RTX: needed to capture the engine into a CUDA graph), reports progress and elapsed
time, writes the plan atomically (temp file + rename) and then its sidecar ``NAME.plan.json``
(:mod:`~mlff_export.export.engine_sidecar`).

Precision is the ONNX graph's: an FP16 engine is built from the FP16 export (strong typing, no
FP16 builder flag), so ``precision`` must match the graph's metadata.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlff_export.checkpoint import file_sha256
from mlff_export.export.engine_profiles import ShapeProfile
from mlff_export.export.engine_sidecar import EngineSidecar, write_atomically, write_sidecar
from mlff_export.export.float32_for_tensorrt import float32_onnx_file
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.export.metadata import read_metadata
from mlff_export.export.tensorrt_compat import (
    TensorRTLibrary,
    attach_progress_monitor,
    count_layers_by_type,
    create_logger,
    create_strongly_typed_network,
    disable_tf32,
    import_tensorrt,
    plugin_layer_counts,
    require_user_allocation,
    set_optimization_level,
    set_workspace_limit,
)


class EngineBuildError(RuntimeError):
    """An engine that cannot be built from these inputs; the message says why and what to do."""


class OnnxParseError(EngineBuildError):
    """The TensorRT ONNX parser refused the graph; ``errors`` holds its messages."""

    def __init__(self, onnx_path: Path, errors: list[str]):
        self.errors = errors
        listed = " | ".join(errors[:5]) + (f" | ... ({len(errors) - 5} more)" if len(errors) > 5 else "")
        super().__init__(f"TensorRT's ONNX parser refused {onnx_path} with {len(errors)} error(s): {listed}")


@dataclass(frozen=True)
class BuilderSettings:
    """Builder options.

    Attributes:
        workspace_mb: workspace memory pool limit in MiB.
        optimization_level: builder optimisation level 0..5 (TensorRT's default is 3; higher
            searches longer for faster kernels).
        timing_cache: timing cache file; None: ``timing-<flavour>-<version>-sm<cc>.cache`` beside the
            engine. Not used by TensorRT-RTX (no build-time timing; its runtime cache is the equivalent).
    """

    workspace_mb: int = 4096
    optimization_level: int = 3
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.workspace_mb < 1:
            raise EngineBuildError(f"workspace | received {self.workspace_mb} MiB | expected at least 1")
        if not 0 <= self.optimization_level <= 5:
            raise EngineBuildError(f"optimisation level | received {self.optimization_level} | expected 0..5")


@dataclass(frozen=True)
class EngineBuildResult:
    """What a build wrote and found: plan, sidecar and timing cache (None on TensorRT-RTX) paths, the
    network's layers."""

    plan_path: Path
    sidecar_path: Path
    timing_cache_path: Path | None
    sidecar: EngineSidecar
    layer_counts: dict[str, int]


def current_gpu() -> tuple[str, str]:
    """(name, compute capability ``"major.minor"``) of the current CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise EngineBuildError("no CUDA GPU here: TensorRT builds an engine on (and for) the GPU it will run on")
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}"


def default_timing_cache(plan_path: Path, library: TensorRTLibrary, compute_capability: str) -> Path:
    """Timing caches carry device properties: one per TensorRT version and compute capability."""
    return plan_path.parent / f"timing-{library.flavour}-{library.version}-sm{compute_capability.replace('.', '')}.cache"


def parse_onnx(library: TensorRTLibrary, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """(network, parser) for ``onnx_path`` (its float32 copy: TensorRT has no float64, see
    :mod:`~mlff_export.export.float32_for_tensorrt`); keep the parser alive until the build ends
    (it owns the weights)."""
    network = create_strongly_typed_network(library, builder)
    parser = library.module.OnnxParser(network, logger)
    with float32_onnx_file(onnx_path) as float32_path:
        if not parser.parse_from_file(str(float32_path)):
            raise OnnxParseError(onnx_path, [str(parser.get_error(index)) for index in range(parser.num_errors)])
    return network, parser


def _add_profiles(builder: Any, config: Any, network: Any, profiles: list[ShapeProfile]) -> None:
    network_inputs = {network.get_input(index).name for index in range(network.num_inputs)}
    if network_inputs != set(NEIGHBOR_TABLE.input_names):
        raise EngineBuildError(
            f"network inputs {sorted(network_inputs)} | expected the neighbor-table inputs {list(NEIGHBOR_TABLE.input_names)}"
        )
    for profile in profiles:
        optimization_profile = builder.create_optimization_profile()
        for name, (minimum, optimum, maximum) in profile.input_shapes().items():
            optimization_profile.set_shape(name, minimum, optimum, maximum)
        # -1: TensorRT found the profile invalid (IBuilderConfig.add_optimization_profile); it says why in its log.
        if config.add_optimization_profile(optimization_profile) < 0:
            raise EngineBuildError(
                f"TensorRT refused optimization profile {profile.name!r} (atoms {profile.atoms}, neighbors "
                f"{profile.neighbors}, structures {profile.structures}); its log above says why"
            )


def _load_timing_cache(config: Any, path: Path, report: Callable[[str], None]) -> None:
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is None:  # bytes it cannot read give no cache (None), which set_timing_cache refuses with a TypeError
        raise EngineBuildError(
            f"timing cache {path} is damaged (TensorRT cannot read it): delete it (the build writes a new one) "
            "or name another file with --timing-cache"
        )
    if not config.set_timing_cache(cache, False):
        report(f"  timing cache {path} does not match this GPU/TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif blob:
        report(f"  reusing timing cache {path} ({len(blob) / 1024:.0f} KiB)")


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    profiles: list[ShapeProfile],
    precision: str,
    settings: BuilderSettings = BuilderSettings(),
    report: Callable[[str], None] = print,
    library: TensorRTLibrary | None = None,
) -> EngineBuildResult:
    """Build ``plan_path`` (and ``plan_path.json``) from the exported ``onnx_path``.

    Args:
        onnx_path: a neighbor-table graph written by :func:`mlff_export.export.to_onnx`.
        plan_path: the engine to write; its folder is created.
        profiles: one optimization profile each, in this order (the runtime picks per call).
        precision: ``"fp32"`` or ``"fp16"``; must be the graph's own precision.
        settings: workspace, optimisation level, timing cache.
        report: receives progress lines (``print`` by default).
        library: the TensorRT module to use (default: :func:`import_tensorrt`).
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    metadata = read_metadata(onnx_path)
    if metadata.input_layout != NEIGHBOR_TABLE.name:
        raise EngineBuildError(
            f"{onnx_path} takes the {metadata.input_layout!r} inputs (a graph with scatters TensorRT needs plugins "
            f"for); TensorRT engines are built from the scatter-free {NEIGHBOR_TABLE.name!r} export of a model "
            "with atomic_energies(pair_vectors, species, layout)"
        )
    if metadata.precision != precision:
        raise EngineBuildError(
            f"--precision {precision} | {onnx_path} is a {metadata.precision} graph | precision comes from the "
            f"graph (strongly typed): export with to_onnx(model, path, precision={precision!r}) and build from that"
        )
    if not profiles:
        raise EngineBuildError("no shape profile given: name one (--profile) or give --atoms/--pairs/--structures")
    library = library or import_tensorrt()
    gpu_name, compute_capability = current_gpu()
    # TensorRT-RTX times no tactics at build time (it compiles kernels at run time; its runtime cache is the
    # equivalent): its timing cache stayed empty (0 KiB) in bench/results/2026-11-24-h100/trt-rtx.log.
    timing_cache_path = None if library.is_rtx else (
        settings.timing_cache or default_timing_cache(plan_path, library, compute_capability))
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    report(f"building {plan_path} from {onnx_path} ({precision}) with {library.flavour} {library.version} "
           f"on {gpu_name} (sm {compute_capability})")

    started = time.perf_counter()
    trt = library.module
    logger = create_logger(library)
    builder = trt.Builder(logger)
    network, parser = parse_onnx(library, builder, logger, onnx_path)
    layer_counts = count_layers_by_type(network)
    report(f"  parsed: {sum(layer_counts.values())} layers, {network.num_inputs} inputs, "
           f"{network.num_outputs} outputs [{time.perf_counter() - started:.1f} s]")
    plugins = plugin_layer_counts(layer_counts)
    if plugins:
        report(f"  warning: plugin layers {plugins}: the engine will need their plugin libraries at run time")

    config = builder.create_builder_config()
    set_workspace_limit(library, config, settings.workspace_mb)
    has_level = set_optimization_level(config, settings.optimization_level)
    tf32_cleared = disable_tf32(library, config)
    user_allocation = require_user_allocation(library, config)
    _add_profiles(builder, config, network, profiles)
    if timing_cache_path is None:
        report(f"  no timing cache: {library.flavour} compiles its kernels at run time (runtime cache beside the engine)")
    else:
        _load_timing_cache(config, timing_cache_path, report)
    monitor = attach_progress_monitor(library, config, report)
    report(f"  {len(profiles)} profile(s): " + ", ".join(
        f"{p.name} (atoms {p.atoms}, neighbors {p.neighbors}, structures {p.structures})" for p in profiles))
    if monitor is None:
        report("  building (this TensorRT has no progress monitor; this can take minutes) ...")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build an engine from {onnx_path}; its log above says why")
    write_atomically(plan_path, memoryview(serialized))
    if timing_cache_path is not None:
        write_atomically(timing_cache_path, memoryview(config.get_timing_cache().serialize()))
    build_seconds = time.perf_counter() - started
    del parser, monitor

    sidecar = EngineSidecar(
        plan_sha256=file_sha256(plan_path),
        tensorrt_flavour=library.flavour,
        tensorrt_version=library.version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=precision,
        profiles=[profile.to_dict() for profile in profiles],
        onnx_path=str(onnx_path),
        onnx_sha256=metadata.model_sha256,
        weights_sha256=metadata.weights_sha256,
        interface_version=metadata.interface_version,
        cutoff=metadata.cutoff,
        species=list(metadata.species),
        build_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        build_seconds=round(build_seconds, 2),
        builder={
            "workspace_mb": settings.workspace_mb,
            "optimization_level": settings.optimization_level if has_level else None,
            "tf32_cleared": tf32_cleared,
            "require_user_allocation": user_allocation,
            "timing_cache": None if timing_cache_path is None else str(timing_cache_path),
            "import_name": library.import_name,
        },
    )
    sidecar_file = write_sidecar(plan_path, sidecar)
    cache_note = f"; timing cache {timing_cache_path.name}" if timing_cache_path is not None else ""
    report(f"built {plan_path}: {plan_path.stat().st_size / 2**20:.1f} MiB, {len(profiles)} profile(s), "
           f"{sum(layer_counts.values())} layers, {build_seconds:.1f} s; sidecar {sidecar_file.name}{cache_note}")
    return EngineBuildResult(plan_path, sidecar_file, timing_cache_path, sidecar, layer_counts)
