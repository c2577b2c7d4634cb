"""Backends that run the exporter's joint graph in PyTorch: torch.compile and plain CUDA graphs.

What runs is not the eager model (whose ``torch.autograd.grad`` breaks compiled graphs and launches
hundreds of small kernels) but the FX graph the exporter traces
(:func:`mlff_export.export.joint_graph.trace_joint_graph`): energy, forces and virial as one graph
of aten ops on the scatter-free neighbor table, with no autograd at run time. Inputs are padded to
power-of-two shape buckets (:mod:`mlff_export.runtime.shape_buckets`; padding contributes exactly
zero), so only a handful of shapes are ever compiled or captured.

* :class:`CompiledBackend`: ``torch.compile`` of the graph (``mode="reduce-overhead"`` replays each
  bucket as a CUDA graph);
* :class:`CudaGraphBackend`: the graph as traced, captured once per bucket with
  ``torch.cuda.CUDAGraph`` and replayed (no compilation: ready in a second).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlff_export.export.engine_profiles import profile_from_ranges
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.export.joint_graph import trace_joint_graph
from mlff_export.export.precision import model_for_precision
from mlff_export.interface import OUTPUT_NAMES, AtomicInputs
from mlff_export.runtime.shape_buckets import choose_bucket, pad_table_feeds, strip_padding, table_sizes

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that replay CUDA graphs
MAX_COMPILED_BUCKETS = 64
PAIRS_BUILT_ON_DEVICE = 20_000  # from this many pairs on, build the neighbor table on the GPU

# Buckets only bound the number of compiled or captured shapes here: one wide profile. Its
# minimums put every small molecule (<= 16 atoms, <= 16 neighbors) into one bucket.
UNBOUNDED = profile_from_ranges("16:64:16777216", "16:32:65536", "2:2:1048576", name="joint-graph")


class JointGraphBackend:
    """Runs a pair-energy model's joint graph, float32, on padded neighbor-table feeds.

    ``evaluate`` = ``prepare`` (table + padding on the CPU, one copy to the device) then ``run``
    (the graph) then padding stripped. Outputs: energy [B] eV, forces [N, 3] eV/Å, virial
    [B, 3, 3] eV on ``device``. Subclasses say how a bucket's graph is made runnable.
    """

    name = "joint-graph"
    dtype = torch.float32

    def __init__(self, model: nn.Module, device: torch.device):
        self.device = device
        self.species = tuple(model.species)
        self.graph, _ = trace_joint_graph(model_for_precision(model, "fp32").to(device), NEIGHBOR_TABLE, device)

    def prepare(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        """Padded neighbor-table feeds of ``inputs`` on the device.

        Small calls build the table on the CPU and copy it (a few small ops beat kernel launches);
        from :data:`PAIRS_BUILT_ON_DEVICE` pairs on, the pair list goes to the device first and the
        sorting and padding run there.
        """
        where = self.device if inputs.num_pairs >= PAIRS_BUILT_ON_DEVICE else torch.device("cpu")
        feeds = NEIGHBOR_TABLE.feeds(inputs.to(where, torch.float32))
        padded = pad_table_feeds(feeds, choose_bucket(*table_sizes(feeds), [UNBOUNDED]), self.species[0])
        return {name: tensor.to(self.device, non_blocking=True) for name, tensor in padded.items()}

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The graph on prepared feeds; outputs include the padding and may be reused by the next run."""
        raise NotImplementedError

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        outputs = strip_padding(self.run(self.prepare(inputs)), inputs.num_atoms, inputs.num_structures)
        # Graph replays reuse their output memory: copy before the next call overwrites it.
        return {name: value.clone() for name, value in outputs.items()}


class CompiledBackend(JointGraphBackend):
    """``torch.compile(mode=mode)`` of the joint graph; the first call of a new bucket compiles.

    Each bucket is compiled for its static shape (``dynamic=False``): static kernels are the
    fastest, and a CUDA graph per bucket needs fixed shapes anyway; buckets keep the count small.
    """

    def __init__(self, model: nn.Module, device: torch.device, mode: str = "default"):
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
        super().__init__(model, device)
        self.name = f"compile-{mode}"
        self.mode = mode
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, MAX_COMPILED_BUCKETS)
        self._compiled = torch.compile(self.graph, mode=mode, fullgraph=True, dynamic=False)

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.mode in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()
        return dict(zip(OUTPUT_NAMES, self._compiled(*feeds.values())))


class _CapturedBucket:
    """One bucket's CUDA graph with its static input and output buffers."""

    def __init__(self, graph_call: Callable, feeds: dict[str, torch.Tensor]):
        self.inputs = {name: tensor.clone() for name, tensor in feeds.items()}
        stream = torch.cuda.Stream(feeds["positions"].device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            graph_call(*self.inputs.values())  # warm-up outside the capture (allocator, lazy init)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = dict(zip(OUTPUT_NAMES, graph_call(*self.inputs.values())))


class CudaGraphBackend(JointGraphBackend):
    """The traced joint graph captured as one CUDA graph per shape bucket (CUDA devices only)."""

    name = "cuda-graphs"

    def __init__(self, model: nn.Module, device: torch.device):
        if device.type != "cuda":
            raise ValueError(f"backend 'cuda-graphs' needs a CUDA device, got '{device}'")
        super().__init__(model, device)
        self._buckets: dict[tuple, _CapturedBucket] = {}

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = tuple(tuple(tensor.shape) for tensor in feeds.values())
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _CapturedBucket(self.graph, feeds)
        else:
            for name, tensor in feeds.items():
                bucket.inputs[name].copy_(tensor, non_blocking=True)
        bucket.graph.replay()
        return bucket.outputs
