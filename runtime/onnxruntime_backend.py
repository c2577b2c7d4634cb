"""ONNX Runtime backend: runs an exported graph (``mlff_export.export.to_onnx``) on CPU or CUDA.

Same contract as :class:`~mlff_export.runtime.eager.EagerBackend`: ``evaluate(inputs)`` takes
interface inputs (a pair list) and returns energy [B] (eV), forces [N, 3] (eV/Å) and virial
[B, 3, 3] (eV) as torch tensors on the backend's device. The pair list is turned into the graph's
input layout here (a padded neighbor table for scatter-free graphs). On CUDA the tensors are bound
in place with IOBinding: no copies through the host.

onnxruntime is imported when a backend is built, so the package imports without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import CalculatorSetupError

from mlff_export.export.graph_layouts import LAYOUTS, OUTPUT_AXES
from mlff_export.export.metadata import parse_metadata
from mlff_export.interface import OUTPUT_NAMES, AtomicInputs

NUMPY_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise CalculatorSetupError(
            "the ONNX backend needs onnxruntime: pip install 'mlff-export[ort]' (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


class OnnxRuntimeBackend:
    """Runs an exported ``.onnx`` graph with ONNX Runtime on ``device`` (CPU EP or CUDA EP).

    Attributes:
        metadata: the artifact's checked :class:`~mlff_export.export.metadata.ArtifactMetadata`
            (cutoff, species, precision, input layout, provenance).
        dtype: float32, the dtype of the graph's float inputs (also for FP16 graphs).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: torch.device = torch.device("cpu"), *, intra_op_threads: int = 0):
        """``intra_op_threads``: ORT's intra-op threads (0: ORT's default). Graphs with scatters
        (``pair_list`` layout) always run on one thread: ORT's CPU ScatterND(add) races otherwise."""
        onnxruntime = _import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise CalculatorSetupError(f"ONNX model {path} does not exist")
        self.device = torch.device(device)
        self.dtype = torch.float32
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise CalculatorSetupError(
                    f"device '{self.device}' requested but this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {onnxruntime.get_available_providers()}); install onnxruntime-gpu"
                )
            # use_tf32=0: ORT allows TF32 matmuls (10-bit mantissa) by default, which float32
            # graphs must not use (an H100 run showed force errors above the 1e-4 eV/Å bar; that
            # run's log was not kept: see docs/export.md).
            cuda_options = {"device_id": self.device.index or 0, "use_tf32": 0}
            providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        self.metadata = parse_metadata(session.get_modelmeta().custom_metadata_map, path)
        self.layout = LAYOUTS.get(self.metadata.input_layout)
        if self.layout is None:
            raise CalculatorSetupError(f"{path}: unknown input layout {self.metadata.input_layout!r}; known {sorted(LAYOUTS)}")
        if self.layout.has_scatter and intra_op_threads != 1:
            options.intra_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers)
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names != (list(self.layout.input_names), list(OUTPUT_NAMES)):
            raise CalculatorSetupError(
                f"{path}: graph inputs/outputs {names} | expected {list(self.layout.input_names)} -> {list(OUTPUT_NAMES)}"
            )
        self.session = session
        self.path = path

    @property
    def cutoff(self) -> float:
        return self.metadata.cutoff

    @property
    def species(self) -> tuple[int, ...]:
        return self.metadata.species

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        feeds = self.layout.feeds(inputs.to(device=self.device))
        if self.device.type == "cuda":
            return self._run_bound(feeds, inputs.num_atoms, inputs.num_structures)
        outputs = self.session.run(list(OUTPUT_NAMES), {name: tensor.numpy() for name, tensor in feeds.items()})
        return {name: torch.from_numpy(value) for name, value in zip(OUTPUT_NAMES, outputs)}

    def _run_bound(self, feeds: dict[str, torch.Tensor], num_atoms: int, num_structures: int) -> dict[str, torch.Tensor]:
        """Run on CUDA with inputs and outputs bound to torch tensors' memory (IOBinding)."""
        sizes = {"num_atoms": num_atoms, "num_structures": num_structures}
        device_id = self.device.index or 0
        binding = self.session.io_binding()
        for name, tensor in feeds.items():
            binding.bind_input(name, "cuda", device_id, NUMPY_DTYPES[tensor.dtype], list(tensor.shape), tensor.data_ptr())
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = [sizes.get(axis, axis) for axis in OUTPUT_AXES[name]]
            outputs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
            binding.bind_output(name, "cuda", device_id, np.float32, shape, outputs[name].data_ptr())
        # ORT runs on its own stream: the inputs torch wrote on its stream must be complete.
        torch.cuda.synchronize(self.device)
        self.session.run_with_iobinding(binding)
        return outputs
