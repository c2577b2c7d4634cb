"""large_systems with the compiled backend's pair-tensor recomputation on or off (one setting per process).

    python large_toggle.py on|off LARGE_SYSTEMS_ARGS...
"""
import sys

from mlff_export.runtime.joint_graph import CompiledBackend

CompiledBackend.recomputes_pair_tensors = sys.argv[1] == "on"
from mlff_export.bench.large_systems import main  # noqa: E402

sys.exit(main(sys.argv[2:]))
