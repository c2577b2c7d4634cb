"""ONNX Runtime backends: run an exported graph (``mlff_export.export.to_onnx``) on CPU or CUDA.

Same contract as :class:`~mlff_export.runtime.eager.EagerBackend`: ``evaluate(inputs)`` takes
interface inputs (a pair list) and returns energy [B] (eV), forces [N, 3] (eV/Å) and virial
[B, 3, 3] (eV) as torch tensors on the backend's device.

* :class:`OnnxRuntimeBackend`: one session for every size (dynamic axes), CPU EP or CUDA EP with
  IOBinding (tensors bound in place: no copies through the host).
* :class:`OnnxRuntimeBucketBackend`: neighbor-table graphs padded to shape buckets, one session
  per bucket with its dynamic axes fixed (``add_free_dimension_override_by_name``) and its buffers
  bound once; on CUDA each session captures a CUDA graph (``enable_cuda_graph``) and replays it.
  One session per bucket rather than one session with ``gpu_graph_id`` per bucket: a CUDA graph
  needs every node on the CUDA EP, and a graph with dynamic axes keeps its shape arithmetic on the
  CPU; fixing the axes folds it away.

:func:`onnxruntime_backend` picks: the bucket backend on CUDA for neighbor-table graphs, else the
plain one. onnxruntime is imported when a backend is built, so the package imports without it.
Every backend reads its file once through :func:`~mlff_export.export.metadata.read_verified_artifact`
(integrity, metadata, finite weights) and gives ONNX Runtime the checked bytes, never the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import CalculatorSetupError

from mlff_export.export.graph_layouts import LAYOUTS, NEIGHBOR_TABLE, OUTPUT_AXES
from mlff_export.export.metadata import VerifiedArtifact, read_verified_artifact
from mlff_export.interface import OUTPUT_NAMES, AtomicInputs
from mlff_export.memory import MemoryBudget
from mlff_export.runtime.device_feeds import CapturedClosestDistance
from mlff_export.runtime.domains import DomainSplitter
from mlff_export.runtime.padded_table import PaddedTableBackend
from mlff_export.runtime.shape_buckets import table_sizes
from mlff_export.runtime.static_feeds import StaticFeeds

NUMPY_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}
# Peak memory per pair of one call (reference PaiNN, fp32 graph, CPU EP: 36 kB measured; the
# neighbor table pads every row to the widest). The memory guard's estimate for any graph.
BYTES_PER_PAIR = 36_000


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise CalculatorSetupError(
            "the ONNX backend needs onnxruntime: pip install 'mlff-export[ort]' (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


def _providers(onnxruntime, device: torch.device, cuda_graph: bool = False) -> list:
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise CalculatorSetupError(
            f"device '{device}' requested but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {onnxruntime.get_available_providers()}); install onnxruntime-gpu"
        )
    # use_tf32=0: ORT allows TF32 matmuls (10-bit mantissa) by default, which float32 graphs
    # must not use (an H100 run showed force errors above the 1e-4 eV/Å bar; that run's log
    # was not kept: see docs/export.md).
    cuda_options = {"device_id": device.index or 0, "use_tf32": 0}
    if cuda_graph:
        cuda_options["enable_cuda_graph"] = "1"
    return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]


def _check_io(session, path: Path, input_names: tuple[str, ...]) -> None:
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != (list(input_names), list(OUTPUT_NAMES)):
        raise CalculatorSetupError(f"{path}: graph inputs/outputs {names} | expected {list(input_names)} -> {list(OUTPUT_NAMES)}")


def _bind(binding, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], device: torch.device) -> None:
    """Bind torch tensors' memory as the session's inputs and outputs (no copies)."""
    kind, device_id = device.type, device.index or 0
    for name, tensor in inputs.items():
        binding.bind_input(name, kind, device_id, NUMPY_DTYPES[tensor.dtype], list(tensor.shape), tensor.data_ptr())
    for name, tensor in outputs.items():
        binding.bind_output(name, kind, device_id, np.float32, list(tensor.shape), tensor.data_ptr())


def _empty_outputs(num_atoms: int, num_structures: int, device: torch.device) -> dict[str, torch.Tensor]:
    sizes = {"num_atoms": num_atoms, "num_structures": num_structures}
    return {
        name: torch.empty([sizes.get(axis, axis) for axis in OUTPUT_AXES[name]], dtype=torch.float32, device=device)
        for name in OUTPUT_NAMES
    }


class OnnxRuntimeBackend:
    """Runs an exported ``.onnx`` graph with ONNX Runtime on ``device`` (CPU EP or CUDA EP).

    Attributes:
        metadata: the artifact's checked :class:`~mlff_export.export.metadata.ArtifactMetadata`
            (cutoff, species, precision, input layout, provenance).
        dtype: float32, the dtype of the graph's float inputs (also for FP16 graphs).
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        device: torch.device = torch.device("cpu"),
        *,
        intra_op_threads: int = 0,
        artifact: VerifiedArtifact | None = None,
        memory: MemoryBudget | None = None,
    ):
        """``intra_op_threads``: ORT's intra-op threads (0: ORT's default). Graphs with scatters
        (``pair_list`` layout) always run on one thread: ORT's CPU ScatterND(add) races otherwise.
        ``artifact``: the file already read and checked by the caller (read here otherwise).
        ``memory``: what a call may take (default: the device's free memory); larger calls are
        refused before they run (:class:`~mlff_export.memory.InsufficientMemoryError`)."""
        onnxruntime = _import_onnxruntime()
        artifact = artifact if artifact is not None else read_verified_artifact(path)
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.bytes_per_pair = BYTES_PER_PAIR
        self.domains = DomainSplitter(None, memory or MemoryBudget(self.device), self.bytes_per_pair)
        self.metadata = artifact.metadata
        self.layout = LAYOUTS.get(self.metadata.input_layout)
        if self.layout is None:
            raise CalculatorSetupError(f"{path}: unknown input layout {self.metadata.input_layout!r}; known {sorted(LAYOUTS)}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1 if self.layout.has_scatter else intra_op_threads
        session = onnxruntime.InferenceSession(artifact.model_bytes, sess_options=options, providers=_providers(onnxruntime, self.device))
        _check_io(session, artifact.path, self.layout.input_names)
        self.session = session
        self.path = artifact.path

    @property
    def cutoff(self) -> float:
        return self.metadata.cutoff

    @property
    def species(self) -> tuple[int, ...]:
        return self.metadata.species

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        return self.domains.evaluate(inputs, None, self._whole, None)  # a graph cannot split: checks memory

    def _whole(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        feeds = self.layout.feeds(inputs.to(device=self.device))
        if self.device.type == "cuda":
            return self._run_bound(feeds, inputs.num_atoms, inputs.num_structures)
        outputs = self.session.run(list(OUTPUT_NAMES), {name: tensor.numpy() for name, tensor in feeds.items()})
        return {name: torch.from_numpy(value) for name, value in zip(OUTPUT_NAMES, outputs)}

    def _run_bound(self, feeds: dict[str, torch.Tensor], num_atoms: int, num_structures: int) -> dict[str, torch.Tensor]:
        """Run on CUDA with inputs and outputs bound to torch tensors' memory (IOBinding)."""
        binding = self.session.io_binding()
        outputs = _empty_outputs(num_atoms, num_structures, self.device)
        _bind(binding, feeds, outputs, self.device)
        # ORT runs on its own stream: the inputs torch wrote on its stream must be complete.
        torch.cuda.synchronize(self.device)
        self.session.run_with_iobinding(binding)
        return outputs


class _SessionBucket:
    """One bucket's session (dynamic axes fixed), its bound buffers and, on CUDA, its CUDA graph.

    ORT captures the graph itself on an early run and replays it afterwards; inputs change only
    by writing into the bound buffers. On CUDA a second, tiny CUDA graph of ours measures the
    closest pair of the same buffers (``"closest_distance"``, the GPU path's sanity check).
    """

    def __init__(self, onnxruntime, artifact: VerifiedArtifact, feeds: dict[str, torch.Tensor], device: torch.device):
        options = onnxruntime.SessionOptions()
        num_atoms, width, num_structures = table_sizes(feeds)
        for axis, size in (("num_atoms", num_atoms), ("max_neighbors", width), ("num_structures", num_structures)):
            options.add_free_dimension_override_by_name(axis, size)
        providers = _providers(onnxruntime, device, cuda_graph=device.type == "cuda")
        self.session = onnxruntime.InferenceSession(artifact.model_bytes, sess_options=options, providers=providers)
        _check_io(self.session, artifact.path, NEIGHBOR_TABLE.input_names)
        self.device = device
        self.inputs = StaticFeeds(feeds, device)
        self.outputs = _empty_outputs(num_atoms, num_structures, device)
        self.binding = self.session.io_binding()
        _bind(self.binding, self.inputs.buffers, self.outputs, device)
        self.closest = CapturedClosestDistance(self.inputs.buffers) if device.type == "cuda" else None

    def replay(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.inputs.load(feeds)
        if self.closest is None:
            self.session.run_with_iobinding(self.binding)
            return self.outputs
        closest = self.closest()
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(self.binding)
        return {**self.outputs, "closest_distance": closest}


class OnnxRuntimeBucketBackend(PaddedTableBackend):
    """A neighbor-table ``.onnx`` graph on shape buckets: one fixed-shape session per bucket,
    with a CUDA graph per session on CUDA (see the module docstring)."""

    name = "onnxruntime"

    def __init__(
        self, path: str | Path, device: torch.device, artifact: VerifiedArtifact | None = None, memory: MemoryBudget | None = None
    ):
        """``artifact``: the file already read and checked by the caller (read here otherwise);
        ``memory`` as for :class:`OnnxRuntimeBackend`."""
        self._onnxruntime = _import_onnxruntime()
        self.artifact = artifact if artifact is not None else read_verified_artifact(path)
        self.metadata = self.artifact.metadata
        if self.metadata.input_layout != NEIGHBOR_TABLE.name:
            raise CalculatorSetupError(
                f"{path}: shape buckets need a '{NEIGHBOR_TABLE.name}' graph, this one takes "
                f"'{self.metadata.input_layout}'; use OnnxRuntimeBackend"
            )
        super().__init__(torch.device(device), self.metadata.cutoff, self.metadata.species)
        self.path = self.artifact.path
        self._buckets: dict[tuple[int, int, int], _SessionBucket] = {}
        self.bytes_per_pair = BYTES_PER_PAIR
        self.domains = DomainSplitter(None, memory or MemoryBudget(self.device), self.bytes_per_pair)

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        return self.domains.evaluate(inputs, None, super().evaluate, None)  # checks memory, never splits

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = table_sizes(feeds)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _SessionBucket(self._onnxruntime, self.artifact, feeds, self.device)
        return bucket.replay(feeds)


def onnxruntime_backend(
    path: str | Path, device: torch.device, memory: MemoryBudget | None = None
) -> OnnxRuntimeBackend | OnnxRuntimeBucketBackend:
    """The ONNX Runtime backend for ``path`` on ``device``: CUDA graphs per shape bucket on CUDA
    for neighbor-table graphs, else one dynamic-shape session. The file is read and checked once."""
    artifact = read_verified_artifact(path)
    if torch.device(device).type == "cuda" and artifact.metadata.input_layout == NEIGHBOR_TABLE.name:
        return OnnxRuntimeBucketBackend(path, device, artifact, memory)
    return OnnxRuntimeBackend(path, device, artifact=artifact, memory=memory)
