"""Run ``autotune_timeline.py`` (the tenth session's, unchanged) with extra Inductor options.

    python timeline_with_options.py '{"test_configs.max_mm_configs": 4}' [--symbolic] OUT.jsonl [timeline options]

The options are merged into :func:`mlff_export.runtime.joint_graph.inductor_options`'s (every compile
of the joint graph in the process); names this torch lacks are dropped and said so. ``--symbolic``:
the backend compiles with ``dynamic=True`` (one compile with symbolic sizes) instead of its
``dynamic=None`` (the timeline's own ``--dynamic`` predates the backend's ``mode`` attribute). An
experiment, not package code.
"""
import json
import runpy
import sys
from pathlib import Path

import torch

from mlff_export.runtime import joint_graph

extra = json.loads(sys.argv[1])
known = torch._inductor.config.get_config_copy()
print(json.dumps({"inductor_options": extra, "unknown_here": sorted(set(extra) - set(known)), "torch": torch.__version__}), flush=True)
extra = {name: value for name, value in extra.items() if name in known}
base_options = joint_graph.inductor_options
joint_graph.inductor_options = lambda mode, half_body=False: base_options(mode, half_body) | extra
if sys.argv[2] == "--symbolic":
    del sys.argv[2]

    def compiled_symbolic(self, graph):
        options = joint_graph.inductor_options(self.mode, joint_graph.has_half_body(self.model, self.precision))
        return torch.compile(joint_graph.with_numel_as_method(graph), options=options, fullgraph=True, dynamic=True)

    joint_graph.CompiledBackend.compiled = compiled_symbolic
timeline = Path(__file__).parents[2] / "2026-12-01-h200-autotune-memory" / "scripts" / "autotune_timeline.py"
sys.argv = [str(timeline)] + sys.argv[2:]
runpy.run_path(str(timeline), run_name="__main__")
