"""Backends that run the exporter's joint graph in PyTorch: torch.compile and plain CUDA graphs.

What runs is not the eager model (whose ``torch.autograd.grad`` breaks compiled graphs and launches
hundreds of small kernels) but the FX graph the exporter traces
(:func:`mlff_export.export.joint_graph.trace_joint_graph`): energy, forces and virial as one graph
of aten ops on the scatter-free neighbor table, with no autograd at run time. Inputs are padded to
shape buckets (:mod:`mlff_export.runtime.shape_buckets`; padding contributes exactly zero), so only
a handful of shapes are ever compiled or captured.

* :class:`CompiledBackend`: ``torch.compile`` (Inductor) of the graph, one static compile per
  bucket; modes ``reduce-overhead`` and ``max-autotune`` also capture each bucket as a CUDA graph;
* :class:`CudaGraphBackend`: the graph as traced, captured once per bucket with
  ``torch.cuda.CUDAGraph`` and replayed (no compilation: ready in a second).

CUDA graphs are captured here, not by torch.compile's cudagraph trees: the bucket's input buffers
are ours (:class:`~mlff_export.runtime.static_feeds.StaticFeeds`), so a small molecule's call
copies only its positions. Buckets above :data:`CAPTURE_MAX_PAIR_SLOTS` run uncaptured: launch
overhead is negligible there and a captured graph would keep its activations' memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.export.joint_graph import trace_joint_graph
from mlff_export.export.precision import model_for_precision
from mlff_export.interface import OUTPUT_NAMES
from mlff_export.runtime.padded_table import PaddedTableBackend
from mlff_export.runtime.shape_buckets import table_sizes
from mlff_export.runtime.static_feeds import StaticFeeds

# Our mode name -> (Inductor mode, whether we capture a CUDA graph per bucket).
COMPILE_MODES = {
    "default": ("default", False),
    "reduce-overhead": ("default", True),
    "max-autotune": ("max-autotune-no-cudagraphs", True),
}
MAX_COMPILED_BUCKETS = 64
CAPTURE_MAX_PAIR_SLOTS = 1 << 18  # atoms x table width of the largest bucket captured as a CUDA graph


class _CapturedBucket:
    """One bucket's CUDA graph with its static input and output buffers."""

    def __init__(self, graph_call: Callable, feeds: dict[str, torch.Tensor]):
        self.inputs = StaticFeeds(feeds)
        arguments = tuple(self.inputs.buffers.values())
        stream = torch.cuda.Stream(feeds["positions"].device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            graph_call(*arguments)  # warm-up outside the capture (compilation, allocator, lazy init)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = dict(zip(OUTPUT_NAMES, graph_call(*arguments)))

    def replay(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.inputs.load(feeds)
        self.graph.replay()
        return self.outputs


class JointGraphBackend(PaddedTableBackend):
    """Runs a pair-energy model's joint graph, float32, on padded neighbor-table feeds.

    ``call`` is what runs a bucket (the traced graph, or its compiled form); with ``capture`` (CUDA
    only) each bucket up to :data:`CAPTURE_MAX_PAIR_SLOTS` is captured once and replayed.
    """

    name = "joint-graph"

    def __init__(self, model: nn.Module, device: torch.device, capture: bool = False):
        super().__init__(device, model.cutoff, model.species)
        self.graph, _ = trace_joint_graph(model_for_precision(model, "fp32").to(device), NEIGHBOR_TABLE, device)
        self.call: Callable = self.graph
        self.capture = capture and device.type == "cuda"
        self._buckets: dict[tuple, _CapturedBucket] = {}

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        num_atoms, width, _ = table_sizes(feeds)
        if not self.capture or num_atoms * width > CAPTURE_MAX_PAIR_SLOTS:
            return dict(zip(OUTPUT_NAMES, self.call(*feeds.values())))
        key = tuple(tuple(tensor.shape) for tensor in feeds.values())
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _CapturedBucket(self.call, feeds)
        return bucket.replay(feeds)


class CompiledBackend(JointGraphBackend):
    """``torch.compile`` of the joint graph (mode: a key of :data:`COMPILE_MODES`).

    Each bucket is compiled for its static shape (``dynamic=False``): static kernels are the
    fastest, and a CUDA graph per bucket needs fixed shapes anyway; buckets keep the count small.
    The first call of a new bucket compiles (seconds; minutes with ``max-autotune``).
    """

    def __init__(self, model: nn.Module, device: torch.device, mode: str = "default"):
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
        inductor_mode, capture = COMPILE_MODES[mode]
        super().__init__(model, device, capture=capture)
        self.name = "compile" if mode == "default" else f"compile-{mode}"
        self.mode = mode
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, MAX_COMPILED_BUCKETS)
        self.call = torch.compile(self.graph, mode=inductor_mode, fullgraph=True, dynamic=False)


class CudaGraphBackend(JointGraphBackend):
    """The traced joint graph captured as one CUDA graph per shape bucket (CUDA devices only)."""

    name = "cuda-graphs"

    def __init__(self, model: nn.Module, device: torch.device):
        if device.type != "cuda":
            raise ValueError(f"backend 'cuda-graphs' needs a CUDA device, got '{device}'")
        super().__init__(model, device, capture=True)
