"""One ASE calculator over every backend; :func:`load_calculator` builds it in one line."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculatorSetupError, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.model_intake import load_model
from mlff_export.neighbors import Pairs, StructureError, VerletNeighborList, batch_inputs, check_structure, compute_pairs
from mlff_export.runtime.backend import Backend
from mlff_export.runtime.eager import EagerBackend
from mlff_export.runtime.shape_buckets import ShapeOutOfRangeError

logger = logging.getLogger("mlff_export")

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class MLFFCalculator(Calculator):
    """ASE calculator: energy, free_energy (= energy), forces and, for 3-D periodic cells, stress.

    Energy, forces and stress come from one backend call; :meth:`predict` evaluates many
    structures in one call. The neighbor list is reused between calls while no atom moved more
    than ``skin / 2`` (see :class:`~mlff_export.neighbors.VerletNeighborList`).
    Not thread-safe (it holds per-call state, like every ASE calculator): use one per thread.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, backend: Backend, cutoff: float, species: tuple[int, ...], skin: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend
        self.species = tuple(species)
        self.neighbor_list = VerletNeighborList(cutoff, skin)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation: positions, numbers, cell or pbc (what the
        model sees). ASE's version compares every property with ``np.isclose``, which was about
        half of a small molecule's CPU time per call; exact comparison only ever recomputes more."""
        previous = self.atoms
        if previous is None or len(previous) != len(atoms):
            return list(all_changes)
        checks = {
            "positions": (previous.positions, atoms.positions),
            "numbers": (previous.numbers, atoms.numbers),
            "cell": (previous.cell.array, atoms.cell.array),
            "pbc": (previous.pbc, atoms.pbc),
        }
        return [name for name, (old, new) in checks.items() if not np.array_equal(old, new)]

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        atoms = self.atoms if atoms is None else atoms
        if "stress" in properties and not atoms.pbc.all():
            raise PropertyNotImplementedError(f"stress needs a 3-D periodic cell; this structure has pbc={atoms.pbc.tolist()}")
        check_structure(atoms, self.species)
        # Backends that build their inputs on the GPU skip the CPU neighbor list (None: they
        # cannot); ASE's bookkeeping (a copy of the atoms) runs while the GPU works.
        launch_atoms = getattr(self.backend, "launch_atoms", None)
        finish = launch_atoms(atoms) if launch_atoms is not None else None
        super().calculate(atoms, properties, system_changes)
        if finish is not None:
            (self.results,) = _structure_results([atoms], finish())
            return
        (self.results,) = self._evaluate([atoms], [self.neighbor_list.pairs(atoms)])

    def predict(self, structures: Sequence[Atoms]) -> list[dict[str, float | np.ndarray]]:
        """Energy, free_energy, forces (and stress for 3-D periodic cells) of many structures.

        All structures go through the backend in one call, split in halves only where the GPU runs
        out of memory or the batch exceeds an engine's largest profile; results equal one-by-one
        calls. Returns one dict per structure, in ASE units, like ``calc.results``.
        """
        structures = list(structures)
        if not structures:
            return []
        for index, atoms in enumerate(structures):
            try:
                check_structure(atoms, self.species)
            except StructureError as error:
                raise StructureError(f"structure {index}: {error}") from None
        pairs = [compute_pairs(atoms, self.neighbor_list.cutoff) for atoms in structures]
        return self._evaluate(structures, pairs)

    def _evaluate(self, structures: list[Atoms], pairs: list[Pairs]) -> list[dict[str, float | np.ndarray]]:
        inputs = batch_inputs(structures, pairs, dtype=self.backend.dtype)  # on the CPU: backends move it
        try:
            outputs = self.backend.evaluate(inputs)
        except (torch.cuda.OutOfMemoryError, ShapeOutOfRangeError):
            if len(structures) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            half = len(structures) // 2
            return self._evaluate(structures[:half], pairs[:half]) + self._evaluate(structures[half:], pairs[half:])
        return _structure_results(structures, outputs)


def _float64(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.cpu().double().numpy()


def _structure_results(
    structures: list[Atoms], outputs: dict[str, torch.Tensor | np.ndarray]
) -> list[dict[str, float | np.ndarray]]:
    """Backend outputs (energy [B], forces [N, 3], virial [B, 3, 3]) as ASE results per structure."""
    energies, forces, virials = (_float64(outputs[name]) for name in ("energy", "forces", "virial"))
    atom_offsets = np.cumsum([0] + [len(atoms) for atoms in structures])
    results = []
    for index, atoms in enumerate(structures):
        energy = float(energies[index])
        result = {"energy": energy, "free_energy": energy, "forces": forces[atom_offsets[index] : atom_offsets[index + 1]]}
        if atoms.pbc.all():
            stress = -virials[index] / atoms.get_volume()
            result["stress"] = full_3x3_to_voigt_6_stress(0.5 * (stress + stress.T))
        results.append(result)
    return results


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except RuntimeError:
        raise CalculatorSetupError(f"device must be 'cpu' or 'cuda[:N]'; got '{device}'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CalculatorSetupError(f"device '{device}' requested but CUDA is not available here; use device='cpu'")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise CalculatorSetupError(
                f"device '{device}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise CalculatorSetupError(f"device must be 'cpu' or 'cuda[:N]'; got '{device}'")
    return device


def _resolve_model(model: str | Path | nn.Module) -> nn.Module:
    if isinstance(model, nn.Module):
        module = model
    else:
        module = load_model(model).module
    missing = [name for name in ("cutoff", "species") if not hasattr(module, name)]
    if missing:
        raise CalculatorSetupError(
            f"model {type(module).__name__} lacks {missing}: an interface model declares `cutoff` (Å) and "
            "`species` (atomic numbers it supports); see docs/interface.md"
        )
    return module


ARTIFACT_BACKENDS = {".onnx": "onnxruntime", ".plan": "tensorrt"}
COMPILE_BACKENDS = {"compile": "default", "compile-reduce-overhead": "reduce-overhead", "compile-max-autotune": "max-autotune"}
MODULE_BACKENDS = ("eager", *COMPILE_BACKENDS, "cuda-graphs")
BACKENDS = (*MODULE_BACKENDS, *ARTIFACT_BACKENDS.values())


def _artifact_backend(path: Path, device: torch.device):
    """The backend that runs an exported artifact (imported lazily: onnxruntime, tensorrt)."""
    if path.suffix == ".plan":
        from mlff_export.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, device)
    from mlff_export.runtime.onnxruntime_backend import onnxruntime_backend

    return onnxruntime_backend(path, device)


def _module_backend(module: nn.Module, name: str, device: torch.device, dtype: torch.dtype):
    if name == "eager":
        return EagerBackend(module, device, dtype)
    if dtype != torch.float32:
        raise CalculatorSetupError(f"backend '{name}' runs float32; use backend='eager' for float64")
    if name == "cuda-graphs" and device.type != "cuda":
        raise CalculatorSetupError(f"backend 'cuda-graphs' needs a CUDA device; got '{device}'")
    from mlff_export.runtime.joint_graph import CompiledBackend, CudaGraphBackend

    if name == "cuda-graphs":
        return CudaGraphBackend(module, device)
    return CompiledBackend(module, device, mode=COMPILE_BACKENDS[name])


def load_calculator(
    model: str | Path | nn.Module = REFERENCE_CHECKPOINT,
    device: str | torch.device = "cpu",
    *,
    backend: str | None = None,
    dtype: str = "float32",
    skin: float = 0.0,
) -> MLFFCalculator:
    """An ASE calculator for ``model``, in one line.

    Args:
        model: checkpoint ``.json`` (default: the bundled reference model), an interface
            ``nn.Module``, a model specification ``"package.module:factory"`` /
            ``"file.py:factory"`` / ``"model.pt2"`` (:func:`mlff_export.model_intake.load_model`),
            an exported ``.onnx`` file (ONNX Runtime) or a ``.plan`` engine (TensorRT);
            artifacts carry cutoff and species in their metadata.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        backend: one of :data:`BACKENDS`; default: from the artifact (``.onnx`` -> onnxruntime,
            ``.plan`` -> tensorrt), else ``"eager"``. ``"compile"``, ``"compile-reduce-overhead"``
            and ``"compile-max-autotune"`` run the exporter's joint graph through torch.compile
            (the last two replay one CUDA graph per shape bucket; max-autotune also searches
            matmul kernels, minutes per bucket); ``"cuda-graphs"`` replays that graph, uncompiled,
            as one CUDA graph per bucket. On CUDA, every backend but eager builds a single
            structure's inputs on the GPU (small molecules: all pairs, no search; otherwise
            vesin-torch where installed), so only positions cross to the device.
        dtype: ``"float32"`` (default) or ``"float64"`` (reference precision; eager only).
        skin: Verlet skin in Å; with ``skin > 0`` the neighbor list is reused across MD steps.

    The chosen backend is logged (logger ``mlff_export``) and kept as ``calc.backend.name``.
    """
    if dtype not in DTYPES:
        raise CalculatorSetupError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if backend is not None and backend not in BACKENDS:
        raise CalculatorSetupError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    resolved_device = _resolve_device(device)
    suffix = Path(model).suffix if isinstance(model, (str, Path)) else None
    if suffix in ARTIFACT_BACKENDS:
        if backend not in (None, ARTIFACT_BACKENDS[suffix]):
            raise CalculatorSetupError(f"a {suffix} file runs on backend '{ARTIFACT_BACKENDS[suffix]}', not {backend!r}")
        if dtype != "float32":
            raise CalculatorSetupError(f"a {suffix} artifact takes float32 inputs; got dtype={dtype!r}")
        engine = _artifact_backend(Path(model), resolved_device)
        cutoff, species = engine.cutoff, engine.species
    else:
        name = backend or "eager"
        if name not in MODULE_BACKENDS:
            raise CalculatorSetupError(
                f"backend '{name}' runs an exported artifact: export first (mlff-export export, then "
                "load the .onnx) or build an engine (mlff-export build-engine, then load the .plan)"
            )
        module = _resolve_model(model)
        engine = _module_backend(module, name, resolved_device, DTYPES[dtype])
        cutoff, species = float(module.cutoff), tuple(module.species)
    logger.info("mlff-export: backend '%s' on %s", engine.name, resolved_device)
    return MLFFCalculator(engine, cutoff=cutoff, species=species, skin=skin)
