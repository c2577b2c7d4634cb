"""What a new process pays before its first answer: the runtime and the joint-graph backends import
no ONNX tooling (onnxscript alone takes 1.3-1.4 s to import on the 2-core CPU:
bench/results/2026-12-01-cpu-aot/import-time.txt)."""

import subprocess
import sys

ONNX_TOOLING = ("onnx", "onnxscript", "onnx_ir", "onnxruntime")


def test_the_runtime_and_a_compile_backend_import_no_onnx_tooling():
    script = f"""
import sys
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.runtime import load_calculator
load_calculator(REFERENCE_CHECKPOINT, "cpu", backend="compile")  # traces the joint graph
print(sorted(name for name in sys.modules if name.split(".")[0] in {ONNX_TOOLING!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
