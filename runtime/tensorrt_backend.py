"""TensorRT backend: runs a ``NAME.plan`` engine on torch CUDA tensors, same contract as eager.

Loading is under control: the sidecar is checked first (its integrity hash, the plan's sha256,
TensorRT version, GPU compute capability, interface version;
:func:`~mlff_export.export.engine_sidecar.check_engine`), a TensorRT-RTX engine on a GPU that RTX
does not run on is refused by name, and a null engine from deserialization is an error with the
rebuild command, never a crash later.

Each call is converted to the neighbor table, padded to a shape bucket of the best-fitting
profile (:mod:`~mlff_export.runtime.shape_buckets`), copied into that bucket's static input
buffers and run by replaying the bucket's CUDA graph on the backend's own stream.

Memory (:class:`BucketContexts`): every bucket has its own execution context (a captured graph
fixes shapes, addresses and profile, so graphs never share one), but all contexts share ONE
scratch buffer of the engine's largest-profile size (``USER_MANAGED`` allocation): they take turns
on one stream. What each bucket adds is its static input/output buffers, about
``32·N·K + 40·N + 76·B`` bytes for N atoms, K neighbor slots and B structures (engines/README.md),
and its CUDA graph.

A bucket is set up once: context, profile, input shapes, output shapes read back from the
context, tensor addresses, one warm-up enqueue (lazy initialisation and TensorRT-RTX's kernel
compilation happen outside the capture), then the capture. When the capture fails (operations that
cannot be captured; TensorRT-RTX says the context is not capturable), the bucket runs by plain
enqueue and the reason is logged, as trtexec does (samples/common/sampleInference.cpp).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlff_export.export.engine_sidecar import (
    EngineMismatchError,
    check_engine,
    rebuild_command,
    runtime_cache_path,
    write_atomically,
)
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE, OUTPUT_AXES
from mlff_export.export.tensorrt_compat import (
    TensorRTLibrary,
    attach_scratch_memory,
    create_logger,
    create_user_memory_context,
    import_tensorrt,
    scratch_memory_size,
    stream_capture_refusal,
    tensorrt_rtx_runs_on,
)
from mlff_export.interface import OUTPUT_NAMES, AtomicInputs
from mlff_export.runtime.shape_buckets import ShapeBucket, choose_bucket, pad_table_feeds, strip_padding, table_sizes

log = logging.getLogger(__name__)

SCRATCH_ALIGNMENT = 256  # bytes; IExecutionContext.set_device_memory: "256-byte aligned device memory" (pyCoreDoc.h)

# Turns an enqueue into a replayable graph (an object with ``replay()``); raises RuntimeError when the capture fails.
Capture = Callable[[Callable[[], None]], Any]


def cuda_graph_capture(stream: torch.cuda.Stream) -> Capture:
    """Capture on ``stream`` into a torch CUDA graph, in thread-local capture mode as trtexec does
    (samples/common/sampleDevice.h): CUDA calls of other threads do not break the capture."""

    def capture(enqueue: Callable[[], None]) -> torch.cuda.CUDAGraph:
        stream.synchronize()  # the warm-up has finished
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            enqueue()
        return graph

    return capture


@dataclass
class RuntimeCacheFile:
    """TensorRT-RTX's runtime cache (the kernels it compiles at run time), kept in ``path`` beside the
    engine; it is RTX's equivalent of full TensorRT's build-time timing cache.

    Attributes:
        path: the cache file (``NAME.plan.runtime-cache``).
        cache: the ``IRuntimeCache``, attached to every context's runtime config (one cache for all).
        owner: the runtime config that created it, kept alive with it.
    """

    path: Path
    cache: Any
    owner: Any

    @classmethod
    def open(cls, library: TensorRTLibrary, engine: Any, path: Path) -> RuntimeCacheFile | None:
        """The cache stored at ``path`` (a new one if absent or unreadable); None for full TensorRT."""
        if not library.is_rtx:
            return None
        owner = engine.create_runtime_config()
        cache = owner.create_runtime_cache()
        blob = path.read_bytes() if path.is_file() else b""
        if blob and not cache.deserialize(blob):
            log.warning("runtime cache %s is not readable by %s %s; starting a new one (the file is rewritten once "
                        "a new shape has been compiled)", path, library.flavour, library.version)
            cache.reset()
        return cls(path, cache, owner)

    def save(self) -> None:
        write_atomically(self.path, memoryview(self.cache.serialize()))


@dataclass
class BucketRunner:
    """Execution context, static buffers and (when captured) CUDA graph of one (profile, bucket).

    ``runtime_config`` (TensorRT-RTX) lives as long as its context; ``fallback_reason`` says why
    the bucket runs without a graph (None when it has one, or when graphs are off).
    """

    context: Any
    runtime_config: Any
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph: Any | None = None
    fallback_reason: str | None = None

    @property
    def io_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.inputs.values(), *self.outputs.values()))


def fill_as_padding(inputs: dict[str, torch.Tensor], padding_species: int) -> None:
    """Static inputs as a call made of padding only (shape_buckets' padding: own atom as neighbor, own
    slot as reverse, mask 0, a species the model knows), so the warm-up and the capture read valid
    indices: zeros would send species 0 through the species lookup, an out-of-range gather."""
    atoms, width = inputs["neighbor_index"].shape
    slots = torch.arange(atoms * width, device=inputs["reverse_index"].device).reshape(atoms, width)
    inputs["species"].fill_(padding_species)
    inputs["neighbor_index"].copy_(slots // width)
    inputs["reverse_index"].copy_(slots)


def _torch_dtypes(library: TensorRTLibrary) -> dict[Any, torch.dtype]:
    trt = library.module
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64}


class BucketContexts:
    """The execution contexts of one engine, one per shape bucket, all sharing one scratch buffer.

    Knows TensorRT, not CUDA streams: work goes to ``stream_handle`` (a ``cudaStream_t`` as int),
    buffers are torch tensors on ``device``, and ``capture`` (None: no graphs) makes the graphs;
    ``padding_species`` (a species the model knows) fills the inputs of the warm-up run.
    All contexts must run on that one stream, one after another: that is what makes sharing the
    scratch buffer safe.
    """

    def __init__(
        self,
        library: TensorRTLibrary,
        engine: Any,
        device: torch.device,
        stream_handle: int,
        *,
        padding_species: int,
        capture: Capture | None,
        runtime_cache: RuntimeCacheFile | None = None,
        name: str = "engine",
    ):
        self.library, self.engine, self.device, self.stream_handle = library, engine, device, stream_handle
        self.padding_species, self.capture, self.runtime_cache, self.name = padding_species, capture, runtime_cache, name
        dtypes = _torch_dtypes(library)
        self.dtypes = {tensor: dtypes[engine.get_tensor_dtype(tensor)] for tensor in NEIGHBOR_TABLE.input_names + OUTPUT_NAMES}
        self.scratch_bytes = scratch_memory_size(engine)
        # Over-allocate by the alignment and start at the first aligned byte: no assumption about the allocator.
        self._scratch = torch.empty(self.scratch_bytes + SCRATCH_ALIGNMENT, dtype=torch.uint8, device=device)
        self.scratch_address = -(-self._scratch.data_ptr() // SCRATCH_ALIGNMENT) * SCRATCH_ALIGNMENT
        self.runners: dict[ShapeBucket, BucketRunner] = {}

    def runner(self, bucket: ShapeBucket) -> BucketRunner:
        """The bucket's runner, set up on first use."""
        runner = self.runners.get(bucket)
        if runner is None:
            runner = self.runners[bucket] = self._set_up(bucket)
            if self.runtime_cache is not None:
                self.runtime_cache.save()  # the warm-up compiled this bucket's kernels
        return runner

    def run(self, runner: BucketRunner) -> None:
        """Enqueue one run on the stream (graph replay, or plain enqueue without a graph)."""
        if runner.graph is not None:
            runner.graph.replay()
        else:
            self._enqueue(runner)

    def memory_report(self) -> dict[str, Any]:
        """Device memory held: the one shared scratch buffer and each bucket's static buffers (bytes)."""
        return {
            "scratch_bytes": self.scratch_bytes,
            "scratch_buffers": 1,
            "buckets": {
                f"profile {bucket.profile_index} N={bucket.atoms} K={bucket.neighbors} B={bucket.structures}": {
                    "io_bytes": runner.io_bytes, "cuda_graph": runner.graph is not None,
                }
                for bucket, runner in self.runners.items()
            },
        }

    def _enqueue(self, runner: BucketRunner) -> None:
        if not runner.context.execute_async_v3(self.stream_handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.name} (see its log above)")

    def _set_up(self, bucket: ShapeBucket) -> BucketRunner:
        atoms, neighbors, structures = bucket.shape
        sizes = {"num_atoms": atoms, "max_neighbors": neighbors, "num_structures": structures}
        cache = None if self.runtime_cache is None else self.runtime_cache.cache
        context, runtime_config = create_user_memory_context(self.library, self.engine, cache)
        if context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.name} (GPU memory?)")
        attach_scratch_memory(context, self.scratch_address, self.scratch_bytes)
        if not context.set_optimization_profile_async(bucket.profile_index, self.stream_handle):
            raise RuntimeError(f"TensorRT refused optimization profile {bucket.profile_index} of {self.name}")
        inputs = {}
        for name, axes in NEIGHBOR_TABLE.input_axes.items():
            shape = tuple(sizes[axis] if isinstance(axis, str) else axis for axis in axes)
            if not context.set_input_shape(name, shape):
                raise RuntimeError(f"Input tensor: {name} | shape {shape} | outside profile {bucket.profile_index}")
            inputs[name] = torch.zeros(shape, dtype=self.dtypes[name], device=self.device)
        outputs = {}
        for name, axes in OUTPUT_AXES.items():
            shape = tuple(context.get_tensor_shape(name))  # inferred by TensorRT from the input shapes
            expected = tuple(sizes[axis] if isinstance(axis, str) else axis for axis in axes)
            if shape != expected:
                raise EngineMismatchError(
                    f"Output tensor: {name} of {self.name} | shape {shape} for inputs of N={atoms}, K={neighbors}, "
                    f"B={structures} | expected {expected} (the neighbor-table contract); rebuild the engine from "
                    "a graph exported by this mlff-export (mlff-export build-engine)"
                )
            outputs[name] = torch.zeros(shape, dtype=self.dtypes[name], device=self.device)
        for name, tensor in {**inputs, **outputs}.items():
            if not context.set_tensor_address(name, tensor.data_ptr()):
                raise RuntimeError(f"TensorRT refused the address of tensor {name} of {self.name}")
        fill_as_padding(inputs, self.padding_species)
        runner = BucketRunner(context, runtime_config, inputs, outputs)
        self._enqueue(runner)  # warm-up: lazy initialisation must not happen inside the capture; a failure here is an error
        if self.capture is not None:
            runner.graph, runner.fallback_reason = self._capture(runner)
            if runner.graph is None:
                log.warning("%s, bucket N=%d K=%d B=%d: no CUDA graph, plain enqueue on every call (%s)",
                            self.name, atoms, neighbors, structures, runner.fallback_reason)
        return runner

    def _capture(self, runner: BucketRunner) -> tuple[Any | None, str | None]:
        """(graph, None), or (None, why not): an enqueue that fails under capture falls back to plain
        enqueue, as trtexec does (samples/common/sampleInference.cpp, "The built TensorRT engine contains
        operations that are not permitted under CUDA graph capture mode")."""
        refusal = stream_capture_refusal(runner.context, self.stream_handle)
        if refusal is not None:
            return None, refusal
        try:
            return self.capture(lambda: self._enqueue(runner)), None
        except RuntimeError as error:  # our enqueue's False, or CUDA's capture error (torch raises RuntimeError)
            return None, f"capture failed: {(str(error).splitlines() or [''])[0]}"


class TensorRTBackend:
    """Runs a TensorRT engine built by ``mlff-export build-engine`` on ``device`` (a CUDA device).

    ``evaluate`` returns energy [B] (eV), forces [N, 3] (eV/Å) and virial [B, 3, 3] (eV), float32.
    ``cutoff`` (Å), ``species`` and ``profiles`` come from the engine's sidecar. One backend serves
    one thread at a time (its buckets share static buffers and one stream).
    """

    name = "tensorrt"
    dtype = torch.float32

    def __init__(self, plan_path: str | Path, device: torch.device, *, use_cuda_graphs: bool = True):
        if device.type != "cuda":
            raise ValueError(f"a TensorRT engine runs on a CUDA device; got device '{device}' (use device='cuda')")
        self.library = import_tensorrt()
        self.device = device
        self.plan_path = Path(plan_path)
        major, minor = torch.cuda.get_device_capability(device)
        self.sidecar = check_engine(
            self.plan_path,
            tensorrt_flavour=self.library.flavour,
            tensorrt_version=self.library.version,
            compute_capability=f"{major}.{minor}",
        )
        if self.library.is_rtx and not tensorrt_rtx_runs_on(major, minor):
            raise EngineMismatchError(
                f"TensorRT-RTX runs engines on GPUs of compute capability 8.0, 8.6, 8.9 and 12.x; "
                f"{torch.cuda.get_device_name(device)} has {major}.{minor}: install full TensorRT "
                f'(pip install "mlff-export[trt]") and build the engine with it (mlff-export build-engine)'
            )
        self.metadata = self.sidecar  # the engine's metadata: precision, cutoff, species, provenance (validate reads it)
        self.cutoff = float(self.sidecar.cutoff)
        self.species = tuple(self.sidecar.species)
        self.profiles = self.sidecar.shape_profiles()
        with torch.cuda.device(device):
            self._logger = create_logger(self.library)
            self._runtime = self.library.module.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if self.engine is None:
                raise EngineMismatchError(
                    f"TensorRT could not deserialize {self.plan_path} (see its log above). "
                    f"Rebuild it: {rebuild_command(self.sidecar, self.plan_path)}"
                )
            if self.engine.num_optimization_profiles != len(self.profiles):
                raise EngineMismatchError(
                    f"{self.plan_path} has {self.engine.num_optimization_profiles} optimization profiles, its "
                    f"sidecar lists {len(self.profiles)}. Rebuild it: {rebuild_command(self.sidecar, self.plan_path)}"
                )
            self.stream = torch.cuda.Stream(device)
            with torch.cuda.stream(self.stream):
                self.buckets = BucketContexts(
                    self.library, self.engine, device, self.stream.cuda_stream, padding_species=self.species[0],
                    capture=cuda_graph_capture(self.stream) if use_cuda_graphs else None,
                    runtime_cache=RuntimeCacheFile.open(self.library, self.engine, runtime_cache_path(self.plan_path)),
                    name=str(self.plan_path),
                )

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        feeds = NEIGHBOR_TABLE.feeds(inputs.to(device=self.device))
        num_atoms, width, num_structures = table_sizes(feeds)
        bucket = choose_bucket(num_atoms, width, num_structures, self.profiles)
        padded = pad_table_feeds(feeds, bucket, padding_species=self.species[0])
        caller = torch.cuda.current_stream(self.device)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            runner = self.buckets.runner(bucket)  # buffers of a new bucket are made on the engine's stream
            # The engine's stream waits for the caller's: the padded feeds are written there, and the previous
            # call's results are copied out there (below) before this run overwrites the static outputs.
            self.stream.wait_stream(caller)
            for name, tensor in padded.items():
                runner.inputs[name].copy_(tensor, non_blocking=True)
            self.buckets.run(runner)
        # The caller's stream waits for the engine, then copies the results out itself. Tensors allocated on
        # one stream and used on another need record_stream, or the caching allocator may hand their memory to
        # new work on the allocating stream while the other still reads it (PyTorch docs, "CUDA semantics");
        # allocating the copies on the caller's stream avoids that. The padded feeds (caller's stream, read by
        # the copies above on the engine's stream) can be reused only by later caller-stream work, which this
        # wait orders after those reads.
        caller.wait_stream(self.stream)
        results = strip_padding(runner.outputs, num_atoms, num_structures)
        return {name: value.to(torch.float32, copy=True) for name, value in results.items()}

    def memory_report(self) -> dict[str, Any]:
        """See :meth:`BucketContexts.memory_report`."""
        return self.buckets.memory_report()
