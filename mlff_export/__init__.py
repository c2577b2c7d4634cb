"""mlff-export: take a machine-learned force field from PyTorch to ONNX Runtime and TensorRT.

Core (this package): the interface (:mod:`.interface`), pair layouts (:mod:`.pair_layouts`), the
reference PaiNN model (:mod:`.model`), forces and virial (:mod:`.forces`), checkpoints
(:mod:`.checkpoint`) and neighbor lists (:mod:`.neighbors`). Subpackages: :mod:`.export`
(ONNX) and :mod:`.runtime` (backends behind one ASE calculator).
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("mlff-export")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

REFERENCE_CHECKPOINT = Path(__file__).parent / "reference" / "painn-hcno.json"
"""The bundled reference model (PaiNN, H/C/N/O, trained on GFN2-xTB): the default model everywhere."""
