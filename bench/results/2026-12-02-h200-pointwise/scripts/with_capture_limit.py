"""Run ``large_systems`` with extra Inductor options and another CUDA-graph capture limit (one setting per process).

    python with_capture_limit.py SLOTS '{"triton.prefer_nd_tiling": true}' ARGS...

``SLOTS``: :data:`mlff_export.runtime.joint_graph.CAPTURE_MAX_PAIR_SLOTS` for this process (buckets of
at most that many table slots are captured as CUDA graphs; 262144 as shipped). The options are merged
into :func:`mlff_export.runtime.joint_graph.inductor_options`'s. An experiment, not package code.
"""
import json
import sys

import torch

from mlff_export.bench import large_systems
from mlff_export.runtime import joint_graph

slots, extra = int(sys.argv[1]), json.loads(sys.argv[2])
unknown = sorted(set(extra) - set(torch._inductor.config.get_config_copy()))
print(json.dumps({"capture_max_pair_slots": slots, "inductor_options": extra, "unknown_here": unknown}), flush=True)
joint_graph.CAPTURE_MAX_PAIR_SLOTS = slots
base_options = joint_graph.inductor_options
joint_graph.inductor_options = lambda mode, half_body=False: base_options(mode, half_body) | {
    name: value for name, value in extra.items() if name not in unknown}
sys.exit(large_systems.main(sys.argv[3:]))
