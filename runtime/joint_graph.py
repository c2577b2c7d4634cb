"""Backends that run the exporter's joint graph in PyTorch: torch.compile and plain CUDA graphs.

What runs is not the eager model (whose ``torch.autograd.grad`` breaks compiled graphs and launches
hundreds of small kernels) but the FX graph the exporter traces
(:func:`mlff_export.export.joint_graph.trace_joint_graph`): energy, forces and virial as one graph
of aten ops on the scatter-free neighbor table, with no autograd at run time. Inputs are padded to
shape buckets (:mod:`mlff_export.runtime.shape_buckets`; padding contributes exactly zero), so only
a handful of shapes are ever compiled or captured.

* :class:`CompiledBackend`: ``torch.compile`` (Inductor) of the graph, usually compiled twice
  (static sizes for the first bucket, symbolic sizes for all others); modes ``reduce-overhead``
  and ``max-autotune`` also capture each bucket as a CUDA graph (``max-autotune`` also times
  candidate kernels for each GEMM);
* :class:`CudaGraphBackend`: the graph as traced, captured once per bucket with
  ``torch.cuda.CUDAGraph`` and replayed (no compilation: ready in a second).

CUDA graphs are captured here, not by torch.compile's cudagraph trees: the bucket's input buffers
are ours (:class:`~mlff_export.runtime.static_feeds.StaticFeeds`), so a small molecule's call
copies only its positions. A captured graph keeps its activations' memory: buckets above
:func:`captured_slots` (FP16 body: a tenth of the device's memory; float32: 2^18 table slots) run
uncaptured. A single
structure whose activations would not fit in the device's free memory (the call's
:class:`~mlff_export.memory.MemoryBudget`) runs in spatial domains (:mod:`~mlff_export.runtime.domains`)
through a second trace of the graph with per-atom energy weights.

Large float32 structures skip the table on the compiled backend (:data:`PAIR_LIST_FROM_PAIRS`): the
graph traced on the pair list itself, with per-atom energy weights, runs them whole or in domains.
A table pads every row to the longest (72 slots for water's 54 neighbors on average), and its
activations cost the same per slot as the pair list's per pair.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE, PAIR_LIST
from mlff_export.export.half_gemms import with_half_weight_products
from mlff_export.export.joint_graph import graph_deviations_from_model, table_example_inputs, trace_joint_graph
from mlff_export.export.precision import model_for_precision
from mlff_export.forces import has_pair_energy
from mlff_export.interface import OUTPUT_NAMES, AtomicInputs
from mlff_export.memory import MemoryBudget, model_bytes_per_pair
from mlff_export.runtime.aot_package import INDUCTOR_CONFIGS, AotPackage
from mlff_export.runtime.blas_choice import capture_fastest
from mlff_export.runtime.compile_cache import CompileCache, CompileCacheKey
from mlff_export.runtime.device_feeds import PAIRS_BUILT_ON_DEVICE, closest_distance, closest_pair_distance, on_device
from mlff_export.runtime.domains import DomainSplitter
from mlff_export.runtime.padded_table import PaddedTableBackend, packed_outputs, unpacked_outputs
from mlff_export.runtime.shape_buckets import table_sizes
from mlff_export.runtime.static_feeds import StaticFeeds
from mlff_export.runtime.traced_graphs import TracedGraphKey, TracedGraphStore

logger = logging.getLogger("mlff_export")

COMPILE_MODES = {"default": False, "reduce-overhead": True, "max-autotune": True}
"""Our compile modes -> whether each bucket is captured as a CUDA graph; their Inductor options:
:data:`~mlff_export.runtime.aot_package.INDUCTOR_CONFIGS`."""
QUIET_AUTOTUNING = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
"""Inductor options that keep its autotuning tables (every GEMM's candidates, written to stderr:
~500 lines for one ``validate`` on the H200) out of a calculator's output."""
HALF_ARITHMETIC = {"triton.codegen_upcast_to_fp32": False}
"""For the FP16 body: Inductor's fused Triton kernels compute float16 tensors in float16 (by
default they convert every float16 load to float32). On the H200, 10,125-atom water: 17.3 ms per
call against 19.8 ms (FP32 23.1 / 21.8 ms), forces within 2.5e-3 eV/Å of eager FP32
(``bench/results/2026-12-01-h200-trace-store``); float32 tensors (geometry, energy sum, forces,
virial) are computed as before."""
POINTWISE_TILING = {"triton.prefer_nd_tiling": True}
"""For the FP16 body: Inductor tiles a pointwise kernel over its tensors' rows and features (two
grid axes) instead of one flat index that every element divides, and takes modulo, by the feature
count. The table graph's pair kernels (atoms x slots x features: half a billion elements at 10k
atoms) are bound by that index arithmetic more than by their float16 bytes. On the H200: 10,125-atom
water, the graph's GPU time 8.5 ms instead of 11.1; the 98k box 94-97 ms per call instead of 105;
benzene's model call unchanged (207 against 211 µs); a compile takes longer (the 98k box's first call
59 s against 35 s). Not in FP32: its 98k box, compiled with symbolic sizes, took 212 ms per call
with it against 159 ms without (``bench/results/2026-12-02-h200-pointwise``)."""
INDUCTOR_AUTOTUNING_OUTPUT = "TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED"
"""Set by a user who wants Inductor's autotuning output: then none of it is kept back."""
AUTOTUNING_LOGGER = "torch._inductor.select_algorithm"
MAX_COMPILED_BUCKETS = 64
CAPTURE_MEMORY_FRACTION = 0.1
"""FP16 body: a bucket is captured as a CUDA graph while its activations (table slots x the backend's
bytes per pair) take at most this fraction of the device's memory (a captured graph keeps them as
long as the backend lives). On the H200 (141 GB) it captures 10,125-atom water, whose uncaptured
calls launched the graph's ~130 kernels from Python (8.5 ms of GPU time): 13.7 ms per call captured
(two processes, two hosts), 17.7 ms uncaptured (a third host); the 98k box (tens of GB) stays uncaptured."""
FLOAT32_CAPTURED_SLOTS = 1 << 18
"""Float32 graphs: buckets of up to this many table slots (about 4k atoms of water) are captured.
10,125-atom water captured was not shown faster on the H200 (24.2 ms per call in one process,
against 18.9-20.4 ms uncaptured in processes on other hosts).
Both: ``bench/results/2026-12-02-h200-pointwise``."""


def captured_slots(bytes_per_pair: int, device_bytes: int, half_body: bool) -> int:
    """The most table slots (atoms x width) of a bucket captured as a CUDA graph, for a backend
    needing ``bytes_per_pair`` per slot on a device of ``device_bytes``."""
    if not half_body:
        return FLOAT32_CAPTURED_SLOTS
    return int(CAPTURE_MEMORY_FRACTION * device_bytes) // max(bytes_per_pair, 1)


PAIR_LIST_FROM_PAIRS = FLOAT32_CAPTURED_SLOTS + 1
"""Float32 structures with at least this many pairs (their table would not be captured) run on the pair
list where the backend has that path (compiled, CUDA, a model with ``atomic_energies``, no half body).
On the H200, FP32 periodic water through the calculator, one process
(``bench/results/2026-12-02-h200-pair-list``): 10,125 atoms 16.5 ms against the table's 20.0 ms,
98,304 atoms 128 ms at 53.3 GiB against 155 ms at 70.1 GiB. The FP16 body stays on the table: its
pair list took 12.0 ms against 13.6 at 10k but 106 ms at 98k, where its table took 90 ms on another host."""


def pair_list_for_graph(inputs: AtomicInputs, cutoff: float) -> AtomicInputs:
    """``inputs`` with only its pairs closer than ``cutoff`` Å (a search with a Verlet skin reaches
    further; those pairs contribute nothing but time), ordered by center, then neighbor (the sums
    onto atoms then add runs of neighbouring rows); the same structure."""
    centers, neighbors = inputs.pair_index
    kept = torch.nonzero(inputs.pair_lengths() < cutoff).squeeze(1)
    order = kept[torch.argsort(centers[kept] * inputs.num_atoms + neighbors[kept])]
    lattice_shifts = None if inputs.lattice_shifts is None else inputs.lattice_shifts[order]
    return replace(inputs, pair_index=inputs.pair_index[:, order], pair_shifts=inputs.pair_shifts[order], lattice_shifts=lattice_shifts)


class SkippedGemmCandidates(logging.Filter):
    """Drops Inductor's error records for a Triton GEMM candidate whose tiles need more shared
    memory than the GPU has ("No valid triton configs ... out of resource"): Inductor skips that
    candidate and autotunes the others, so nothing failed, yet each one logs an error, most with a
    traceback (~90 lines in one ``validate`` on the H200). Other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("No valid triton configs" in message and "out of resource" in message)


class _CapturedBucket:
    """One bucket's CUDA graph with its static input and output buffers. The graph also measures
    the structure's closest pair with ``closest_call`` (``"closest_distance"``: the GPU path's
    sanity check, no extra launch) and ends by copying every output into one pinned host buffer
    (:meth:`launch`: no copy, slicing or concatenation launched per call). It is captured once per
    BLAS library and the fastest kept (:mod:`~mlff_export.runtime.blas_choice`; ``blas`` says
    which and every library's replay time)."""

    def __init__(self, graph_call: Callable, feeds: dict[str, torch.Tensor], device: torch.device, closest_call: Callable = closest_distance):
        self.inputs = StaticFeeds(feeds, device)
        arguments = tuple(self.inputs.buffers.values())
        num_atoms, _, num_structures = table_sizes(self.inputs.buffers)
        self.padded_sizes = (num_structures, num_atoms)
        self.host_outputs = torch.empty(num_structures * 10 + num_atoms * 3 + 1, pin_memory=True)
        self._host_values = self.host_outputs.numpy()
        self._done = torch.cuda.Event()

        def body() -> dict[str, torch.Tensor]:
            outputs = dict(zip(OUTPUT_NAMES, graph_call(*arguments)))
            outputs["closest_distance"] = closest_call(self.inputs.buffers)
            self.host_outputs.copy_(packed_outputs(outputs), non_blocking=True)
            return outputs

        def warm_up() -> None:  # outside the capture: compilation, allocator, the library's lazy init
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                body()
            torch.cuda.current_stream().wait_stream(stream)

        def capture() -> tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                outputs = body()
            return graph, outputs

        self.blas = capture_fastest(warm_up, capture)
        self.graph, self.outputs = self.blas.graph, self.blas.outputs

    def replay(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs on the device (padded; overwritten by the next replay)."""
        self.inputs.load(feeds)
        self.graph.replay()
        return self.outputs

    def launch(self, feeds: dict[str, torch.Tensor], num_atoms: int, num_structures: int) -> Callable[[], dict[str, np.ndarray]]:
        """Replay on ``feeds`` and return ``finish`` (:meth:`PaddedTableBackend.launch_atoms`'s):
        it waits, then gives the real atoms' and structures' outputs as float64 arrays."""
        self.replay(feeds)
        self._done.record()
        padded_structures, padded_atoms = self.padded_sizes

        def finish() -> dict[str, np.ndarray]:
            self._done.synchronize()
            return unpacked_outputs(self._host_values, num_atoms, num_structures, padded_atoms, padded_structures)

        return finish


def inductor_options(mode: str, half_body: bool = False) -> dict[str, object]:
    """The Inductor options of our compile ``mode`` (:data:`~mlff_export.runtime.aot_package.INDUCTOR_CONFIGS`),
    with :data:`QUIET_AUTOTUNING` where the mode autotunes, unless the user set
    ``TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED``, and :data:`HALF_ARITHMETIC` and
    :data:`POINTWISE_TILING` for a ``half_body`` graph; options this torch lacks are left out."""
    options = dict(INDUCTOR_CONFIGS[mode])
    if options.get("max_autotune_gemm") and INDUCTOR_AUTOTUNING_OUTPUT not in os.environ:
        options |= {name: value for name, value in QUIET_AUTOTUNING.items() if hasattr(torch._inductor.config, name)}
    if half_body and hasattr(torch._inductor.config.triton, "codegen_upcast_to_fp32"):
        options |= HALF_ARITHMETIC
    if half_body and hasattr(torch._inductor.config.triton, "prefer_nd_tiling"):
        options |= POINTWISE_TILING
    return options


def quiet_skipped_candidates() -> None:
    """Filter :class:`SkippedGemmCandidates` out of Inductor's autotuning log, once per process,
    unless the user asked for Inductor's autotuning output (:data:`INDUCTOR_AUTOTUNING_OUTPUT`)."""
    autotuning_log = logging.getLogger(AUTOTUNING_LOGGER)
    if INDUCTOR_AUTOTUNING_OUTPUT in os.environ:
        return
    if not any(isinstance(existing, SkippedGemmCandidates) for existing in autotuning_log.filters):
        autotuning_log.addFilter(SkippedGemmCandidates())


def has_half_body(model: nn.Module, precision: str) -> bool:
    """Whether ``model`` in ``precision`` runs with float16 parameters and activations (a
    pair-energy model in FP16); any other FP16 model keeps float32 activations (half weight products only)."""
    return precision == "fp16" and has_pair_energy(model)


def traced_in_precision(
    model: nn.Module, precision: str, device: torch.device, cache_folder: str | Path | None = None
) -> tuple[nn.Module, torch.fx.GraphModule, tuple]:
    """``model`` on ``device`` in ``precision`` and its joint graph on the neighbor table, with the
    FP16 split of the exporter (:func:`mlff_export.export.onnx_export.export_graph`): a pair-energy
    model's copy with float16 parameters, any other model's graph with its weight products in
    float16 (:mod:`~mlff_export.export.half_gemms`). Returns the model, the graph and its example inputs.

    With ``cache_folder``, the graph a former process stored there for this model (:mod:`~mlff_export.runtime.traced_graphs`)
    is used if it still matches the model on the tracing example; otherwise the model is traced and
    the graph stored."""
    half_body = has_half_body(model, precision)
    model = model_for_precision(model, "fp16" if half_body else "fp32").to(device)
    return (model, *stored_or_traced(model, precision, device, cache_folder))


def stored_or_traced(
    model: nn.Module, precision: str, device: torch.device, cache_folder: str | Path | None, weighted: bool = False
) -> tuple[torch.fx.GraphModule, tuple]:
    """The joint graph of ``model`` (already in ``precision`` on ``device``; ``weighted``: the domain
    path's, with per-atom energy weights) and its example inputs: the graph a former process stored in
    ``cache_folder`` if it still stands for the model (:func:`stored_graph_problem`), else a new
    trace (stored there; FP16 weight products for a model without a half body)."""
    store = None if cache_folder is None else TracedGraphStore(cache_folder, TracedGraphKey.of(model, device, precision, weighted))
    graph = None if store is None else store.load()
    if graph is not None:
        problem = stored_graph_problem(graph, model, device, precision, weighted)
        if problem is None:
            return graph, table_example_inputs(model.species, device, weighted)
        logger.warning("mlff-export: the traced graph stored in %s %s; tracing it again", store.folder, problem)
    graph, example_inputs = trace_joint_graph(model, NEIGHBOR_TABLE, device, weighted=weighted)
    if precision == "fp16" and not has_pair_energy(model):
        graph = with_half_weight_products(graph, type(model).__name__)
    return graph if store is None else store.save(graph), example_inputs


def stored_graph_problem(
    graph: torch.fx.GraphModule, model: nn.Module, device: torch.device, precision: str, weighted: bool = False
) -> str | None:
    """Why a stored traced ``graph`` may not stand for ``model`` (``None``: it may): it differs
    from the model on the tracing example, or the model could not be evaluated eagerly there to
    check it (a model that runs only when traced: the trace, which did run, is then the safe path)."""
    try:
        deviations = graph_deviations_from_model(graph, model, device, precision, weighted)
    except Exception as error:  # noqa: BLE001 (whatever the user's eager code raises)
        return f"could not be checked against the model ({type(error).__name__}: {error})"
    failed = {name: deviation for name, deviation in deviations.items() if not deviation.passed}
    if failed:
        return "differs from the model (" + ", ".join(f"{name} by {d.difference:.2e}" for name, d in failed.items()) + ")"
    return None


class JointGraphBackend(PaddedTableBackend):
    """Runs a pair-energy model's joint graph on padded neighbor-table feeds (float32 inputs and outputs).

    ``call`` is what runs a bucket (the traced graph, or its compiled form); with ``capture`` (CUDA
    only) each bucket up to :func:`captured_slots` is captured once and replayed.
    ``precision``: ``"fp32"``, or ``"fp16"`` for the exporter's half body
    (:mod:`mlff_export.export.precision`: geometry, energy sum, forces and virial stay float32;
    parity within the FP16 tolerances of :mod:`mlff_export.validation.tolerances`).
    ``cache_folder``: where the traced graph is kept across processes (:func:`traced_in_precision`).
    """

    name = "joint-graph"
    memory_fraction = 1.0
    """This backend's peak memory per pair as a fraction of the model's eager estimate
    (:func:`~mlff_export.memory.model_bytes_per_pair`): what sizes its domains."""
    pair_list_memory_fraction = 1.0
    """The same for its pair-list path (per real pair)."""

    def __init__(
        self, model: nn.Module, device: torch.device, capture: bool = False, memory: MemoryBudget | None = None,
        precision: str = "fp32", cache_folder: str | Path | None = None,
    ):
        super().__init__(device, model.cutoff, model.species)
        self.precision = precision
        self.model, self.graph, self.example_inputs = traced_in_precision(model, precision, device, cache_folder)
        self.cache_folder = cache_folder
        self.call: Callable = self.graph
        self.capture = capture and device.type == "cuda"
        self._buckets: dict[tuple, _CapturedBucket] = {}
        self.closest_call: Callable = closest_distance  # the device sanity check captured with each bucket
        # The half body keeps its activations in float16: half the memory per pair, fewer domains.
        activations = torch.float16 if has_half_body(model, precision) else torch.float32
        self.bytes_per_pair = int(self.memory_fraction * model_bytes_per_pair(model, activations))
        self.domains = DomainSplitter(None, memory or MemoryBudget(device), self.bytes_per_pair)
        device_bytes = torch.cuda.get_device_properties(device).total_memory if self.capture else 0
        self._captured_slots = captured_slots(self.bytes_per_pair, device_bytes, activations == torch.float16)
        self._weighted_call: Callable | None = None
        self.pair_list_from: int | None = None
        """Structures with at least this many pairs run on the pair list (``None``: none do); set
        only for a model with ``atomic_energies`` and without a half body (:meth:`runs_on_pair_list`)."""
        self.pair_list_domains = DomainSplitter(
            None, self.domains.memory, int(self.pair_list_memory_fraction * model_bytes_per_pair(model, activations))
        )
        self._pair_list_call: Callable | None = None

    def compiled(self, graph: torch.fx.GraphModule) -> Callable:
        """How this backend runs a traced graph (as traced here; compiled in subclasses)."""
        return graph

    def compiled_for_any_size(self, graph: torch.fx.GraphModule) -> Callable:
        """How this backend runs a graph whose sizes change at every call (the pair list's)."""
        return graph

    def takes_whole(self, pairs: int) -> bool:
        limit = self.domains.pair_limit(pairs)
        return limit is None or pairs <= limit

    def runs_on_pair_list(self, pairs: int) -> bool:
        """From :attr:`pair_list_from` pairs on."""
        return self.pair_list_from is not None and pairs >= self.pair_list_from

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        """As :meth:`PaddedTableBackend.evaluate`; one structure that does not fit (``domains``'
        memory estimate) runs in spatial domains (uncaptured), with the graph traced once more with
        atom weights; a call that :meth:`runs_on_pair_list` runs that graph's pair-list twin, whole or in domains."""
        hops = getattr(self.model, "receptive_hops", None)
        if inputs.num_pairs >= PAIRS_BUILT_ON_DEVICE:  # large: split and build tables on the device
            inputs = inputs.to(self.device)
        if self.runs_on_pair_list(inputs.num_pairs):
            return self.pair_list_domains.evaluate(pair_list_for_graph(inputs, self.cutoff), hops, self.evaluate_pair_list, self.evaluate_pair_list_weighted)
        return self.domains.evaluate(inputs, hops, super().evaluate, self.evaluate_weighted)

    def evaluate_pair_list(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        """Energy [B], forces [N, 3], virial [B, 3, 3] of ``inputs`` through the pair-list graph."""
        weights = inputs.positions.new_ones(inputs.num_atoms)
        return dict(zip(OUTPUT_NAMES, self.evaluate_pair_list_weighted(inputs, weights)))

    def evaluate_pair_list_weighted(self, inputs: AtomicInputs, weights: torch.Tensor):
        """As :meth:`evaluate_weighted`, on the pair list (the graph traced on first use)."""
        if self._pair_list_call is None:
            graph, _ = trace_joint_graph(self.model, PAIR_LIST, self.device, weighted=True)
            self._pair_list_call = self.compiled_for_any_size(graph)
        feeds = PAIR_LIST.feeds(inputs.to(self.device))
        return self._pair_list_call(*feeds.values(), weights.to(self.device, torch.float32))

    def launch_large(self, inputs: AtomicInputs):
        """A structure too large for one call, searched on the device: evaluated in domains there
        (no CPU neighbor list for 100k or 1M atoms), its closest pair measured on its pair list."""
        outputs = self.evaluate(inputs)
        return self._copied_back(outputs, closest_pair_distance(inputs))

    def evaluate_weighted(self, inputs: AtomicInputs, weights: torch.Tensor):
        """Energy [1], forces [N, 3], virial [1, 3, 3] of ``sum_i w_i E_i`` for one structure (the
        graph with atom weights traced on first use, or kept from a former process: :func:`stored_or_traced`)."""
        if self._weighted_call is None:
            weighted_graph, _ = stored_or_traced(self.model, self.precision, self.device, self.cache_folder, weighted=True)
            self._weighted_call = self.compiled(weighted_graph)
        feeds = self.prepare(inputs)
        padded_weights = feeds["positions"].new_zeros(feeds["positions"].shape[0])
        padded_weights[: inputs.num_atoms] = weights.to(self.device, torch.float32)
        energy, forces, virial = self._weighted_call(*feeds.values(), padded_weights)
        self.bucket_ran(("weighted", *(tuple(tensor.shape) for tensor in feeds.values())))
        return energy[:1], forces[: inputs.num_atoms], virial[:1]

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bucket = self._captured_bucket(feeds)
        if bucket is not None:
            return bucket.replay(feeds)
        outputs = dict(zip(OUTPUT_NAMES, self.call(*on_device(feeds, self.device).values())))
        self.bucket_ran(tuple(tuple(tensor.shape) for tensor in feeds.values()))
        return outputs

    def launch_captured(self, feeds: dict[str, torch.Tensor], num_atoms: int, num_structures: int):
        bucket = self._captured_bucket(feeds)
        return None if bucket is None else bucket.launch(feeds, num_atoms, num_structures)

    def _captured_bucket(self, feeds: dict[str, torch.Tensor]) -> _CapturedBucket | None:
        """The CUDA graph of the feeds' bucket (captured on first use), or ``None`` where buckets
        are not captured (no capture asked, or above :func:`captured_slots`)."""
        num_atoms, width, _ = table_sizes(feeds)
        if not self.capture or num_atoms * width > self._captured_slots:
            return None
        key = tuple(tuple(tensor.shape) for tensor in feeds.values())
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _CapturedBucket(self.call, feeds, self.device, self.closest_call)
            self.bucket_ran(key)
        return bucket

    def bucket_ran(self, bucket: tuple) -> None:
        """Called after a bucket (a tuple of input shapes) ran; compiled backends keep its kernels."""

    def blas_choices(self) -> dict[tuple, tuple[str, dict[str, float]]]:
        """Per captured bucket: the BLAS library kept and each library's replay seconds."""
        return {key: (bucket.blas.library, bucket.blas.seconds) for key, bucket in self._buckets.items()}


class CompiledBackend(JointGraphBackend):
    """``torch.compile`` of the joint graph (mode: a key of :data:`COMPILE_MODES`).

    With ``cache_folder`` holding an AOTInductor package of this graph (:mod:`~mlff_export.runtime.aot_package`,
    ``mlff-export compile --aot``) it runs that package and compiles nothing. Otherwise it
    compiles once for the first bucket, with static kernels (the fastest: an MD run or a
    single-structure workload lives in one bucket), then once more each time a size that stayed
    fixed so far changes (Dynamo's automatic dynamic shapes, ``dynamic=None``, make symbolic only
    the sizes that changed): usually twice, as a new bucket of a varied workload changes atoms N,
    table width K and structures B at once; at most four times (N, K, B one at a time, as the
    domains of one large structure can). ``max-autotune`` compiles twice at most: autotuned static
    kernels for the first bucket, default kernels with symbolic sizes for all others
    (:class:`FirstShapesTuned`). Each bucket is still captured as its own CUDA graph. A compile
    takes seconds to a minute; the compile cache keeps them for the next process.
    """

    # Inductor's fused kernels keep fewer intermediates than eager: the reference PaiNN's compiled
    # graph peaked at 0.64 of its eager estimate per pair (H200, 98k-atom water, 5.3 M pairs, whole:
    # FP32 15.6 kB of 24.6, FP16 body 7.8 kB of 12.3); 3/4 keeps a margin. An out-of-memory still
    # splits further (DomainSplitter.evaluate).
    memory_fraction = 0.75
    # The float32 pair-list graph peaked at 0.44 of the reference PaiNN's eager estimate per pair
    # (H200, 98k-atom water: 53.3 GiB whole, 5.34 M pairs; 33.0 GiB in two domains of 3.27 M pairs,
    # the whole box's inputs and outputs included); 0.47 keeps a 7 % margin.
    pair_list_memory_fraction = 0.47

    def __init__(
        self, model: nn.Module, device: torch.device, mode: str = "default", memory: MemoryBudget | None = None,
        cache_folder: str | Path | None = None, precision: str = "fp32",
    ):
        """``cache_folder``: where compiled kernels and the traced graph are kept across processes
        (:mod:`~mlff_export.runtime.compile_cache`, :mod:`~mlff_export.runtime.traced_graphs`;
        ``None``: nowhere but Inductor's own cache)."""
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
        super().__init__(model, device, capture=COMPILE_MODES[mode], memory=memory, precision=precision, cache_folder=cache_folder)
        self.name = "compile" if mode == "default" else f"compile-{mode}"
        self.mode = mode
        self.compile_cache: CompileCache | None = None
        self.aot_package: AotPackage | None = None
        package = None
        if cache_folder is not None:
            key = CompileCacheKey.of(self.graph, device, mode)
            self.compile_cache = CompileCache(cache_folder, key)
            self.compile_cache.load()  # before anything compiles
            self.aot_package = AotPackage(cache_folder, key)
            package = self.aot_package.load()
        self._ran_buckets: set[tuple] = set()
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, MAX_COMPILED_BUCKETS)
        self.ahead_of_time = package is not None
        """Whether the graph runs from the AOTInductor package (``mlff-export compile --aot``), not ``torch.compile``."""
        self.call = package if self.ahead_of_time else self.compiled(self.graph)
        if mode == "max-autotune" and not self.ahead_of_time:
            quiet_skipped_candidates()
            logger.info("mlff-export: compile-max-autotune autotunes the GEMMs for the shape bucket of its first call "
                        "(a minute or more; kept in the compile cache); other buckets get default kernels")
        # Fused into one or two kernels (seven tiny ones uncompiled) inside each bucket's CUDA graph.
        self.closest_call = torch.compile(closest_distance, fullgraph=True)
        # Inductor's CPU code generation fails on the pair-list graph (torch 2.13: an assertion in
        # its vectorised index code), so only CUDA devices take it.
        if device.type == "cuda" and has_pair_energy(model) and not has_half_body(model, precision):
            self.pair_list_from = PAIR_LIST_FROM_PAIRS

    def compiled_for_any_size(self, graph: torch.fx.GraphModule) -> Callable:
        """Compiled once with symbolic sizes and default options (no kernel is tuned for one size)."""
        return torch.compile(with_numel_as_method(graph), options=inductor_options("default"), fullgraph=True, dynamic=True)

    def bucket_ran(self, bucket: tuple) -> None:
        if self.compile_cache is not None and bucket not in self._ran_buckets:
            self._ran_buckets.add(bucket)
            self.compile_cache.add(bucket)

    def compiled(self, graph: torch.fx.GraphModule) -> Callable:
        half_body = has_half_body(self.model, self.precision)
        graph = with_numel_as_method(graph)
        options = inductor_options(self.mode, half_body)
        if self.mode != "max-autotune":
            return torch.compile(graph, options=options, fullgraph=True, dynamic=None)
        tuned = torch.compile(graph, options=options, fullgraph=True, dynamic=False)
        other = torch.fx.GraphModule(graph, copy.deepcopy(graph.graph))  # its own code object: its own Dynamo cache
        general = torch.compile(other, options=inductor_options("default", half_body), fullgraph=True, dynamic=True)
        return FirstShapesTuned(tuned, general)


class FirstShapesTuned:
    """compile-max-autotune's graph: GEMM-autotuned kernels with static sizes for the shapes of its
    first call (the bucket an MD run or a single-structure workload lives in), default kernels with
    symbolic sizes for every other shape (one more compile, no autotuning).

    Why, on the H200 (``bench/results/2026-12-01-h200-autotune-candidates``): autotuning is worth its
    time only with static sizes; a graph autotuned with symbolic sizes ran benzene no faster than
    reduce-overhead's default kernels, and autotuning every new bucket's static graph takes minutes each.
    """

    def __init__(self, tuned: Callable, general: Callable):
        self.tuned = tuned
        self.general = general
        self.tuned_shapes: tuple | None = None
        """The input shapes the tuned graph serves (those of the first call)."""

    def __call__(self, *arguments: torch.Tensor):
        shapes = tuple(argument.shape for argument in arguments)
        if self.tuned_shapes is None:
            self.tuned_shapes = shapes
        return (self.tuned if shapes == self.tuned_shapes else self.general)(*arguments)


def _numel(tensor: torch.Tensor) -> int:
    return tensor.numel()


def with_numel_as_method(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` with its ``aten.sym_numel`` calls (a model's ``x.numel()``, traced with symbolic
    sizes; MACE has them) made ``x.numel()`` calls again: Dynamo refuses a torch op returning an int
    in a full graph, but takes the method. Same numbers; ``graph`` is changed in place."""
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.sym_numel.default:
            node.target = _numel
    graph.recompile()
    return graph


class CudaGraphBackend(JointGraphBackend):
    """The traced joint graph captured as one CUDA graph per shape bucket (CUDA devices only)."""

    name = "cuda-graphs"

    def __init__(
        self, model: nn.Module, device: torch.device, memory: MemoryBudget | None = None, precision: str = "fp32",
        cache_folder: str | Path | None = None,
    ):
        """``cache_folder``: where the traced graph is kept across processes (:mod:`~mlff_export.runtime.traced_graphs`)."""
        if device.type != "cuda":
            raise ValueError(f"backend 'cuda-graphs' needs a CUDA device, got '{device}'")
        super().__init__(model, device, capture=True, memory=memory, precision=precision, cache_folder=cache_folder)
