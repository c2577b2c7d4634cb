"""Experiment (not part of the package): ``large_systems`` with the FP16 body also on the pair list.

    python3 fp16_on_pair_list.py LARGE_SYSTEMS_ARGS...

The compiled backend ships the pair list for float32 structures above ``PAIR_LIST_FROM_PAIRS``
pairs only; this patches every ``CompiledBackend`` on CUDA to take it from there in FP16 too
(its sums onto atoms in float32: ``pair_layouts._summed``), then runs the benchmark as it is.
"""

import sys

from mlff_export.bench import large_systems
from mlff_export.runtime import joint_graph

shipped_init = joint_graph.CompiledBackend.__init__


def fp16_too(self, *args, **kwargs):
    shipped_init(self, *args, **kwargs)
    if self.device.type == "cuda":
        self.pair_list_from = joint_graph.PAIR_LIST_FROM_PAIRS


joint_graph.CompiledBackend.__init__ = fp16_too
sys.exit(large_systems.main(sys.argv[1:]))
