"""Run a module's main with extra Inductor options in every compile of the joint graph (one set per process).

    python with_inductor_options.py '{"realize_reads_threshold": 1000}' [--unroll] large_systems ARGS...

The options are merged into :func:`mlff_export.runtime.joint_graph.inductor_options`'s; names this
torch lacks are dropped and said so. ``--unroll``: the graph goes through
``unroll_small_matmuls`` first. An experiment, not package code.
"""
import importlib
import json
import sys
from pathlib import Path

import torch

from mlff_export.runtime import joint_graph

extra = json.loads(sys.argv[1])
known = torch._inductor.config.get_config_copy()
print(json.dumps({"inductor_options": extra, "unknown_here": sorted(set(extra) - set(known))}), flush=True)
extra = {name: value for name, value in extra.items() if name in known}
base_options = joint_graph.inductor_options
joint_graph.inductor_options = lambda mode, half_body=False: base_options(mode, half_body) | extra
arguments = sys.argv[2:]
if arguments[0] == "--unroll":
    sys.path.insert(0, str(Path(__file__).parent))
    from unroll_small_matmuls import unroll_small_matmuls

    compiled = joint_graph.CompiledBackend.compiled
    joint_graph.CompiledBackend.compiled = lambda self, graph: compiled(self, unroll_small_matmuls(graph))
    arguments = arguments[1:]
sys.exit(importlib.import_module(f"mlff_export.bench.{arguments[0]}").main(arguments[1:]))
