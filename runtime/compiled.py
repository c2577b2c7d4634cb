"""torch.compile backend: the exporter's joint forward+backward graph, compiled per shape bucket.

What is compiled is not the eager model (whose ``torch.autograd.grad`` would break the graph) but
the FX graph the exporter traces (:func:`mlff_export.export.joint_graph.trace_joint_graph`):
energy, forces and virial as one graph of aten ops on the scatter-free neighbor table, with no
autograd at run time. Inputs are padded to power-of-two shape buckets
(:mod:`mlff_export.runtime.shape_buckets`; padding contributes exactly zero), so a handful of
shapes are compiled, and with ``mode="reduce-overhead"`` each bucket's call is replayed as one
CUDA graph.
"""

from __future__ import annotations

import torch
from torch import nn

from mlff_export.export.engine_profiles import profile_from_ranges
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.export.joint_graph import trace_joint_graph
from mlff_export.export.precision import model_for_precision
from mlff_export.interface import OUTPUT_NAMES, AtomicInputs
from mlff_export.runtime.shape_buckets import choose_bucket, pad_table_feeds, strip_padding, table_sizes

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

# Buckets only bound the number of compiled shapes here: no engine limits, so one wide profile.
UNBOUNDED = profile_from_ranges("1:64:16777216", "1:32:65536", "1:1:1048576", name="compile")


class CompiledBackend:
    """Runs a pair-energy model's joint graph through ``torch.compile(mode=mode)``, float32.

    ``evaluate`` returns energy [B] (eV), forces [N, 3] (eV/Å), virial [B, 3, 3] (eV) on ``device``.
    The first call of each new shape bucket compiles (seconds to a minute); later calls replay.
    """

    dtype = torch.float32

    def __init__(self, model: nn.Module, device: torch.device, mode: str = "default"):
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
        self.name = f"compile-{mode}"
        self.device = device
        self.mode = mode
        self.species = tuple(model.species)
        graph, _ = trace_joint_graph(model_for_precision(model, "fp32").to(device), NEIGHBOR_TABLE, device)
        self._compiled = torch.compile(graph, mode=mode, fullgraph=True)

    def prepare(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        """The padded neighbor-table feeds of ``inputs`` on the device (built on the CPU, then moved)."""
        feeds = NEIGHBOR_TABLE.feeds(inputs.to("cpu", torch.float32))
        padded = pad_table_feeds(feeds, choose_bucket(*table_sizes(feeds), [UNBOUNDED]), self.species[0])
        return {name: tensor.to(self.device, non_blocking=True) for name, tensor in padded.items()}

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The compiled graph on prepared feeds; outputs include the padding."""
        if self.mode in ("reduce-overhead", "max-autotune"):
            torch.compiler.cudagraph_mark_step_begin()
        return dict(zip(OUTPUT_NAMES, self._compiled(*feeds.values())))

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        outputs = strip_padding(self.run(self.prepare(inputs)), inputs.num_atoms, inputs.num_structures)
        # A CUDA-graph replay reuses its output memory: copy before the next call overwrites it.
        return {name: value.clone() for name, value in outputs.items()}
