"""TensorRT backend: runs a ``NAME.plan`` engine on torch CUDA tensors, same contract as eager.

Loading is under control: the sidecar is checked first (plan sha256, TensorRT version, GPU compute
capability, interface version; :func:`~mlff_export.export.engine_sidecar.check_engine`), and a
null engine from deserialization is an error with the rebuild command, never a crash later.

Each call is converted to the neighbor table, padded to a shape bucket of the best-fitting
profile (:mod:`~mlff_export.runtime.shape_buckets`), copied into that bucket's static input
buffers and run by replaying the bucket's CUDA graph on a non-default stream. A bucket is set up
once: its own execution context (a captured graph fixes shapes, addresses and profile, so graphs
never share one), ``set_optimization_profile_async`` then ``set_input_shape`` for every input,
``set_tensor_address`` for every tensor, one warm-up ``execute_async_v3``, then the capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlff_export.export.engine_sidecar import EngineMismatchError, check_engine, rebuild_command
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.export.tensorrt_compat import TensorRTLibrary, create_logger, import_tensorrt
from mlff_export.interface import OUTPUT_NAMES, AtomicInputs
from mlff_export.runtime.shape_buckets import ShapeBucket, choose_bucket, pad_table_feeds, strip_padding, table_sizes


@dataclass
class _BucketRunner:
    """Static buffers, execution context and captured CUDA graph of one (profile, bucket)."""

    context: Any
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph: torch.cuda.CUDAGraph | None


def _torch_dtypes(library: TensorRTLibrary) -> dict[Any, torch.dtype]:
    trt = library.module
    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int64: torch.int64}


class TensorRTBackend:
    """Runs a TensorRT engine built by ``mlff-export build-engine`` on ``device`` (a CUDA device).

    ``evaluate`` returns energy [B] (eV), forces [N, 3] (eV/Å) and virial [B, 3, 3] (eV), float32.
    ``cutoff`` (Å), ``species`` and ``profiles`` come from the engine's sidecar.
    """

    name = "tensorrt"
    dtype = torch.float32

    def __init__(self, plan_path: str | Path, device: torch.device, *, use_cuda_graphs: bool = True):
        if device.type != "cuda":
            raise ValueError(f"a TensorRT engine runs on a CUDA device; got device '{device}' (use device='cuda')")
        self.library = import_tensorrt()
        self.device = device
        self.plan_path = Path(plan_path)
        self.use_cuda_graphs = use_cuda_graphs
        major, minor = torch.cuda.get_device_capability(device)
        self.sidecar = check_engine(
            self.plan_path,
            tensorrt_flavour=self.library.flavour,
            tensorrt_version=self.library.version,
            compute_capability=f"{major}.{minor}",
        )
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
            self.stream = torch.cuda.Stream(device)
        if self.engine.num_optimization_profiles != len(self.profiles):
            raise EngineMismatchError(
                f"{self.plan_path} has {self.engine.num_optimization_profiles} optimization profiles, its sidecar "
                f"lists {len(self.profiles)}. Rebuild it: {rebuild_command(self.sidecar, self.plan_path)}"
            )
        dtypes = _torch_dtypes(self.library)
        self._tensor_dtypes = {
            name: dtypes[self.engine.get_tensor_dtype(name)] for name in NEIGHBOR_TABLE.input_names + OUTPUT_NAMES
        }
        self._runners: dict[ShapeBucket, _BucketRunner] = {}

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        feeds = NEIGHBOR_TABLE.feeds(inputs.to(device=self.device))
        num_atoms, width, num_structures = table_sizes(feeds)
        bucket = choose_bucket(num_atoms, width, num_structures, self.profiles)
        padded = pad_table_feeds(feeds, bucket, padding_species=self.species[0])
        runner = self._runner(bucket)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            for name, tensor in padded.items():
                runner.inputs[name].copy_(tensor, non_blocking=True)
            if runner.graph is not None:
                runner.graph.replay()
            else:
                self._enqueue(runner)
            outputs = {name: tensor.clone() for name, tensor in runner.outputs.items()}
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return {name: value.float() for name, value in strip_padding(outputs, num_atoms, num_structures).items()}

    def _enqueue(self, runner: _BucketRunner) -> None:
        if not runner.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.plan_path} (see its log above)")

    def _runner(self, bucket: ShapeBucket) -> _BucketRunner:
        runner = self._runners.get(bucket)
        if runner is None:
            runner = self._runners[bucket] = self._set_up(bucket)
        return runner

    def _set_up(self, bucket: ShapeBucket) -> _BucketRunner:
        """Context, buffers and CUDA graph for ``bucket`` (one warm-up enqueue before the capture)."""
        atoms, neighbors, structures = bucket.shape
        sizes = {"num_atoms": atoms, "max_neighbors": neighbors, "num_structures": structures}
        output_shapes = {"energy": (structures,), "forces": (atoms, 3), "virial": (structures, 3, 3)}
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            context = self.engine.create_execution_context()
            if context is None:
                raise RuntimeError(f"TensorRT could not create an execution context for {self.plan_path} (GPU memory?)")
            context.set_optimization_profile_async(bucket.profile_index, self.stream.cuda_stream)
            inputs = {}
            for name, axes in NEIGHBOR_TABLE.input_axes.items():
                shape = tuple(sizes[axis] if isinstance(axis, str) else axis for axis in axes)
                inputs[name] = torch.zeros(shape, dtype=self._tensor_dtypes[name], device=self.device)
                if not context.set_input_shape(name, shape):
                    raise RuntimeError(f"Input tensor: {name} | shape {shape} | outside profile {bucket.profile_index}")
            outputs = {
                name: torch.zeros(shape, dtype=self._tensor_dtypes[name], device=self.device)
                for name, shape in output_shapes.items()
            }
            for name, tensor in {**inputs, **outputs}.items():
                context.set_tensor_address(name, tensor.data_ptr())
            runner = _BucketRunner(context, inputs, outputs, graph=None)
            self._enqueue(runner)  # warm-up: lazy initialisation must not happen inside the capture
            self.stream.synchronize()
            if self.use_cuda_graphs:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self._enqueue(runner)
                runner.graph = graph
        return runner
