"""One ASE calculator over every backend; :func:`load_calculator` builds it in one line.

No number leaves the calculator unless it can be defended. Before every model call: the structure
checks (:func:`~mlff_export.neighbors.check_structure`), a bounded neighbor search with a memory
estimate (:func:`~mlff_export.neighbors.compute_pairs`), the closest-pair check on the pairs the
call needs anyway (:mod:`~mlff_export.structure_sanity`; on the device for the GPU input path), and
the call's memory estimate (:class:`~mlff_export.runtime.domains.DomainSplitter`). After it: every
energy, force and stress must be finite (:class:`NonFiniteResultError` otherwise). Error types, one
per failure class: ``StructureError`` (impossible structure), ``InsufficientMemoryError`` (does not
fit), ``NonFiniteResultError`` (the model gave NaN/inf), ``CalculatorSetupError`` (options and
models at load), ``CheckpointError`` / ``ArtifactMetadataError`` (damaged or edited files).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import (
    CalculationFailed,
    Calculator,
    CalculatorSetupError,
    PropertyNotImplementedError,
    all_changes,
)
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.interface import OUTPUT_NAMES
from mlff_export.memory import InsufficientMemoryError, MemoryBudget, is_out_of_memory, release_cached_gpu_memory
from mlff_export.model_intake import load_model
from mlff_export.neighbors import Pairs, StructureError, VerletNeighborList, batch_inputs, check_structure, compute_pairs
from mlff_export.runtime.backend import Backend
from mlff_export.runtime.eager import EagerBackend
from mlff_export.runtime.shape_buckets import ShapeOutOfRangeError
from mlff_export.structure_sanity import DEFAULT_MIN_DISTANCE, check_closest_pair, check_density, checked_min_distance

logger = logging.getLogger("mlff_export")

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class NonFiniteResultError(CalculationFailed):
    """A backend returned NaN or inf for an energy, force or stress; nothing was returned."""


class ConcurrentUseError(RuntimeError):
    """One calculator called from two threads at once (its per-call state would mix)."""


class _OneCallerAtATime:
    """``with guard:`` around a call; a second thread entering while a call runs gets
    :class:`ConcurrentUseError` instead of waiting (a shared calculator is a bug to report)."""

    def __init__(self):
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise ConcurrentUseError(
                "this calculator is already computing in another thread; use one calculator per thread "
                "(load_calculator once per thread)"
            )

    def __exit__(self, *exception) -> None:
        self._lock.release()


class MLFFCalculator(Calculator):
    """ASE calculator: energy, free_energy (= energy), forces and, for 3-D periodic cells, stress.

    Energy, forces and stress come from one backend call; :meth:`predict` evaluates many
    structures in one call. The neighbor list is reused between calls while no atom moved more
    than ``skin / 2`` (see :class:`~mlff_export.neighbors.VerletNeighborList`), and so is the
    neighbor table of a backend that searches on the GPU (:class:`~mlff_export.runtime.device_feeds.DeviceFeeds`). Structures with two
    atoms closer than ``min_distance`` Å are refused (:mod:`mlff_export.structure_sanity`).
    Not thread-safe (it holds per-call state, like every ASE calculator): use one per thread; a
    second thread entering a call in progress gets :class:`ConcurrentUseError`.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        backend: Backend,
        cutoff: float,
        species: tuple[int, ...],
        skin: float = 0.0,
        *,
        min_distance: float = DEFAULT_MIN_DISTANCE,
        search_memory: MemoryBudget | None = None,
        **kwargs,
    ):
        """``search_memory``: host memory a neighbor search may take (default: what is free)."""
        super().__init__(**kwargs)
        self.backend = backend
        self.species = tuple(species)
        self.search_memory = search_memory or MemoryBudget()
        self.neighbor_list = VerletNeighborList(cutoff, skin, self.search_memory)
        self.skin = skin
        self.min_distance = checked_min_distance(min_distance)
        self._one_caller = _OneCallerAtATime()

    @property
    def skin(self) -> float:
        """Verlet skin in Å, of the CPU neighbor list and of the backend's GPU search alike.
        Setting it forgets what either kept (the next call searches again)."""
        return self.neighbor_list.skin

    @skin.setter
    def skin(self, skin: float) -> None:
        skin = checked_skin(skin)
        self.neighbor_list.skin = skin
        if getattr(self.backend, "device_feeds", None) is not None:  # its GPU search keeps a table for the skin too
            self.backend.device_feeds.skin = skin

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation: positions, numbers, cell or pbc (what the
        model sees). ASE's version compares every property with ``np.isclose``, which was about
        half of a small molecule's CPU time per call; comparing the bytes (exact: -0.0 differs
        from 0.0) only ever recomputes more."""
        previous = self.atoms
        if previous is None or len(previous) != len(atoms):
            return list(all_changes)
        checks = {
            "positions": (previous.arrays["positions"], atoms.arrays["positions"]),
            "numbers": (previous.arrays["numbers"], atoms.arrays["numbers"]),
            "cell": (previous.cell.array, atoms.cell.array),
            "pbc": (previous.pbc, atoms.pbc),
        }
        return [name for name, (old, new) in checks.items() if not _same_bytes(old, new)]

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        atoms = self.atoms if atoms is None else atoms
        if "stress" in properties and not atoms.pbc.all():
            raise PropertyNotImplementedError(f"stress needs a 3-D periodic cell; this structure has pbc={atoms.pbc.tolist()}")
        with self._one_caller:
            check_structure(atoms, self.species)
            check_density(atoms)
            # Backends that build their inputs on the GPU skip the CPU neighbor list (None: they
            # cannot) and measure the closest pair there; ASE's bookkeeping (a copy of the atoms)
            # runs while the GPU works.
            finish = self._launch_on_device(atoms)
            super().calculate(atoms, properties, system_changes)
            if finish is not None:
                outputs = finish()
                if outputs["closest_distance"][0] < self.min_distance:  # float32 on the device: confirm here
                    check_closest_pair(atoms, compute_pairs(atoms, self.neighbor_list.cutoff, self.search_memory), self.min_distance)
                (self.results,) = self._results([atoms], outputs, [None])
                return
            pairs = self.neighbor_list.pairs(atoms)
            check_closest_pair(atoms, pairs, self.min_distance)
            (self.results,) = self._evaluate([atoms], [pairs], [None])

    def _launch_on_device(self, atoms: Atoms) -> Callable[[], dict[str, np.ndarray]] | None:
        """The backend's GPU input path for ``atoms`` (its ``finish``), or ``None`` where it has
        none, or where the call ran out of memory (a memory estimate too low for this model): the
        CPU path then evaluates it, in domains after an out-of-memory there too."""
        launch_atoms = getattr(self.backend, "launch_atoms", None)
        if launch_atoms is None:
            return None
        try:
            return launch_atoms(atoms)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
        release_cached_gpu_memory()
        logger.warning("mlff-export: out of memory on the GPU input path (%d atoms); evaluating through the domain path", len(atoms))
        return None

    def predict(self, structures: Sequence[Atoms]) -> list[dict[str, float | np.ndarray]]:
        """Energy, free_energy, forces (and stress for 3-D periodic cells) of many structures.

        All structures go through the backend in one call, split in halves only where a device
        runs out of memory (or would: the estimate is checked first) or the batch exceeds an
        engine's largest profile; results equal one-by-one calls. Returns one dict per structure,
        in ASE units, like ``calc.results``. A structure that fails a check raises its error with
        ``structure <index>:`` in front.
        """
        structures = list(structures)
        if not structures:
            return []
        with self._one_caller:
            for index, atoms in enumerate(structures):
                with _numbered(index):
                    check_structure(atoms, self.species)
                    check_density(atoms)
            # Backends that build a batch of small molecules on the GPU skip the CPU neighbor lists.
            launch_batch = getattr(self.backend, "launch_batch", None)
            finish = launch_batch(structures) if launch_batch is not None else None
            if finish is not None:
                outputs = finish()
                if outputs["closest_distance"][0] < self.min_distance:  # float32 on the device: find which, here
                    self._pairs_checked(structures)
                return self._results(structures, outputs, list(range(len(structures))))
            return self._evaluate(structures, self._pairs_checked(structures), list(range(len(structures))))

    def _pairs_checked(self, structures: list[Atoms]) -> list[Pairs]:
        """Each structure's pairs, after its closest-pair check (:class:`StructureError` naming the
        structure's index for the first that fails)."""
        pairs = []
        for index, atoms in enumerate(structures):
            with _numbered(index):
                pairs.append(compute_pairs(atoms, self.neighbor_list.cutoff, self.search_memory))
                check_closest_pair(atoms, pairs[-1], self.min_distance)
        return pairs

    def _evaluate(self, structures: list[Atoms], pairs: list[Pairs], indices: list[int | None]) -> list[dict[str, float | np.ndarray]]:
        """Results of ``structures`` (``indices``: their positions in the caller's list, for messages)."""
        inputs = batch_inputs(structures, pairs, dtype=self.backend.dtype)  # on the CPU: backends move it
        try:
            outputs = self.backend.evaluate(inputs)
        except (RuntimeError, ShapeOutOfRangeError) as error:
            splits = isinstance(error, (ShapeOutOfRangeError, InsufficientMemoryError)) or is_out_of_memory(error)
            if not splits or len(structures) == 1:
                raise
            release_cached_gpu_memory()
            half = len(structures) // 2
            return self._evaluate(structures[:half], pairs[:half], indices[:half]) + self._evaluate(
                structures[half:], pairs[half:], indices[half:]
            )
        return self._results(structures, outputs, indices)

    def _results(
        self, structures: list[Atoms], outputs: dict[str, torch.Tensor | np.ndarray], indices: list[int | None]
    ) -> list[dict[str, float | np.ndarray]]:
        """ASE results per structure; :class:`NonFiniteResultError` for any NaN or inf among them."""
        arrays = {name: _float64(outputs[name]) for name in OUTPUT_NAMES}
        results = _structure_results(structures, arrays)
        if all_finite(arrays.values()):  # stress = -virial / volume
            return results
        for atoms, index, result in zip(structures, indices, results):
            bad = [name for name in ("energy", "forces", "stress") if name in result and not np.isfinite(result[name]).all()]
            if bad:
                label = f"structure {index} ({atoms.get_chemical_formula()})" if index is not None else atoms.get_chemical_formula()
                raise NonFiniteResultError(
                    f"backend '{self.backend.name}' returned non-finite {', '.join(bad)} for {label}; nothing is returned. "
                    "The model extrapolates far outside what it was trained on, or its weights are broken: check the "
                    "structure, and `mlff-export validate` the model"
                )
        return results


@contextmanager
def _numbered(index: int) -> Iterator[None]:
    """A :class:`StructureError` raised inside names the structure: ``structure <index>: ...``."""
    try:
        yield
    except StructureError as error:
        raise StructureError(f"structure {index}: {error}") from None


def _same_bytes(old: np.ndarray, new: np.ndarray) -> bool:
    """Whether two arrays hold the same values bit for bit (same dtype and shape)."""
    return old.dtype == new.dtype and old.shape == new.shape and old.tobytes() == new.tobytes()


def all_finite(arrays: Iterable[np.ndarray]) -> bool:
    """Whether no array holds a NaN or inf. One pass per array: a sum is finite only if every term
    is (a sum that overflows makes the caller look closer at finite numbers, nothing worse)."""
    return math.isfinite(sum(float(np.add.reduce(array, axis=None)) for array in arrays))


def _float64(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.cpu().double().numpy()


def _structure_results(
    structures: list[Atoms], outputs: dict[str, torch.Tensor | np.ndarray]
) -> list[dict[str, float | np.ndarray]]:
    """Backend outputs (energy [B], forces [N, 3], virial [B, 3, 3]) as ASE results per structure."""
    energies, forces, virials = (_float64(outputs[name]) for name in ("energy", "forces", "virial"))
    results = []
    end = 0
    for index, atoms in enumerate(structures):
        start, end = end, end + len(atoms)
        energy = float(energies[index])
        result = {"energy": energy, "free_energy": energy, "forces": forces[start:end]}
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
    """The interface module for ``model``, after checking what it declares and that its weights are finite."""
    if isinstance(model, nn.Module):
        module = model
    else:
        module = load_model(model).module
    name = type(module).__name__
    missing = [attribute for attribute in ("cutoff", "species") if not hasattr(module, attribute)]
    if missing:
        raise CalculatorSetupError(
            f"model {name} lacks {missing}: an interface model declares `cutoff` (Å) and "
            "`species` (atomic numbers it supports); see docs/interface.md"
        )
    try:
        cutoff = float(module.cutoff)
    except (TypeError, ValueError):
        cutoff = math.nan
    if not (math.isfinite(cutoff) and cutoff > 0) or not tuple(module.species):
        raise CalculatorSetupError(
            f"model {name} declares cutoff {module.cutoff!r} and species {module.species!r}; expected a finite cutoff > 0 "
            "in Å and at least one atomic number (docs/interface.md)"
        )
    non_finite = [
        key
        for key, tensor in module.state_dict().items()
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if non_finite:
        raise CalculatorSetupError(f"model {name}: weights {non_finite[:5]} hold NaN or inf; it cannot give finite energies")
    return module


def checked_skin(skin: float) -> float:
    """``skin`` as a float: a finite Verlet skin >= 0 in Å, else :class:`CalculatorSetupError`."""
    if isinstance(skin, bool) or not isinstance(skin, (int, float)) or not math.isfinite(skin) or skin < 0:
        raise CalculatorSetupError(f"skin | received {skin!r} | expected a finite Verlet skin >= 0 in Å")
    return float(skin)


def _checked_options(skin: float, min_distance: float, memory_limit_gb: float | None) -> None:
    """Refuse out-of-range calculator options before anything is loaded."""
    checked_skin(skin)
    try:
        checked_min_distance(min_distance)
    except ValueError as error:
        raise CalculatorSetupError(str(error)) from None
    if memory_limit_gb is not None and (
        isinstance(memory_limit_gb, bool) or not isinstance(memory_limit_gb, (int, float)) or not memory_limit_gb > 0
    ):
        raise CalculatorSetupError(f"memory_limit_gb | received {memory_limit_gb!r} | expected a number of GB > 0 (or None)")


ARTIFACT_BACKENDS = {".onnx": "onnxruntime", ".plan": "tensorrt"}
COMPILE_BACKENDS = {"compile": "default", "compile-reduce-overhead": "reduce-overhead", "compile-max-autotune": "max-autotune"}
MODULE_BACKENDS = ("eager", *COMPILE_BACKENDS, "cuda-graphs")
BACKENDS = (*MODULE_BACKENDS, *ARTIFACT_BACKENDS.values())


def _artifact_backend(path: Path, device: torch.device, memory: MemoryBudget):
    """The backend that runs an exported artifact (imported lazily: onnxruntime, tensorrt)."""
    if path.suffix == ".plan":
        from mlff_export.runtime.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, device)
    from mlff_export.runtime.onnxruntime_backend import onnxruntime_backend

    return onnxruntime_backend(path, device, memory)


def _module_backend(
    module: nn.Module, name: str, device: torch.device, dtype: torch.dtype, memory: MemoryBudget, compile_cache: Path | None,
    precision: str,
):
    if name == "eager":
        return EagerBackend(module, device, dtype, memory=memory)
    if dtype != torch.float32:
        raise CalculatorSetupError(f"backend '{name}' runs float32; use backend='eager' for float64")
    if name == "cuda-graphs" and device.type != "cuda":
        raise CalculatorSetupError(f"backend 'cuda-graphs' needs a CUDA device; got '{device}'")
    from mlff_export.runtime.joint_graph import CompiledBackend, CudaGraphBackend

    if name == "cuda-graphs":
        return CudaGraphBackend(module, device, memory=memory, precision=precision, cache_folder=compile_cache)
    return CompiledBackend(module, device, mode=COMPILE_BACKENDS[name], memory=memory, cache_folder=compile_cache, precision=precision)


def _checked_precision(precision: str | None, backend: str | None, artifact_suffix: str | None) -> str:
    """The body precision of a module backend (``"fp32"`` unless asked); refuses the impossible."""
    if precision is None:
        return "fp32"
    from mlff_export.export.precision import PRECISIONS

    if precision not in PRECISIONS:
        raise CalculatorSetupError(f"precision must be one of {list(PRECISIONS)} (or None), got {precision!r}")
    if artifact_suffix is not None:
        raise CalculatorSetupError(
            f"a {artifact_suffix} artifact keeps the precision it was exported with; drop precision={precision!r} "
            "(mlff-export export --precision fp16 writes an FP16 graph)"
        )
    if precision == "fp16" and backend in (None, "eager"):
        raise CalculatorSetupError(
            "precision='fp16' (the exporter's half body) runs on the joint-graph backends "
            f"{[name for name in MODULE_BACKENDS if name != 'eager']}; backend 'eager' runs the model as written"
        )
    return precision


def _compile_cache_folder(compile_cache: str | Path | bool, backend: str | None) -> Path | None:
    """The folder compiled kernels are kept in (``None``: not kept) for ``load_calculator``'s option."""
    if compile_cache is True:
        from mlff_export.runtime.compile_cache import default_cache_folder

        return default_cache_folder()
    if compile_cache is False or compile_cache is None:
        return None
    if not isinstance(compile_cache, (str, Path)) or not str(compile_cache):
        raise CalculatorSetupError(f"compile_cache | received {compile_cache!r} | expected True, False or a folder path")
    if backend not in (*COMPILE_BACKENDS, "cuda-graphs"):
        raise CalculatorSetupError(
            f"compile_cache={str(compile_cache)!r} keeps the traced graphs and compiled kernels of the backends "
            f"{[*COMPILE_BACKENDS, 'cuda-graphs']}; backend {backend or 'eager'!r} traces and compiles nothing"
        )
    folder = Path(compile_cache).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CalculatorSetupError(f"compile_cache {folder} is a file; expected a folder (created if missing)")
    return folder


def load_calculator(
    model: str | Path | nn.Module = REFERENCE_CHECKPOINT,
    device: str | torch.device = "cpu",
    *,
    backend: str | None = None,
    dtype: str = "float32",
    precision: str | None = None,
    skin: float = 0.0,
    min_distance: float = DEFAULT_MIN_DISTANCE,
    memory_limit_gb: float | None = None,
    compile_cache: str | Path | bool = True,
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
            (the last two replay one CUDA graph per shape bucket; max-autotune also times matmul
            kernels for the first call's bucket, about a minute); ``"cuda-graphs"`` replays that graph, uncompiled,
            as one CUDA graph per bucket. On CUDA, every backend but eager builds a single
            structure's inputs on the GPU (small molecules: all pairs, no search; otherwise
            vesin-torch where installed), so only positions cross to the device.
        dtype: ``"float32"`` (default) or ``"float64"`` (reference precision; eager only).
        precision: ``"fp32"`` (default) or ``"fp16"``: the network body in float16, geometry, energy
            sum, forces and virial in float32, as in an FP16 export (:mod:`mlff_export.export.precision`);
            compile and cuda-graphs backends only (an artifact keeps its export's precision).
        skin: Verlet skin in Å; with ``skin > 0`` the neighbor list is reused across MD steps (on
            a GPU, the neighbor table the backend searched there: only the positions move). Its
            pairs reach ``cutoff + skin``: worth it where the search weighs (H200, 10k-atom water,
            0.5 Å: FP16 13 -> 10 ms per call), not at 98k atoms (90 -> 103 ms, more memory).
            Float32 structures of more than 2^18 pairs on a compiled backend run on the pair list,
            which keeps nothing: searched at every call (a skin only widens the search; the pairs
            beyond the cutoff are dropped before the graph; :data:`~mlff_export.runtime.joint_graph.PAIR_LIST_FROM_PAIRS`).
        min_distance: structures with two atoms (or an atom and its image) closer than this, Å,
            are refused (:mod:`mlff_export.structure_sanity`; default 0.5 Å, 0: no check).
        memory_limit_gb: at most this much memory per call, GB (default: 80 % of what the device
            has free); larger calls are split or refused before they run (:mod:`mlff_export.memory`).
        compile_cache: the compile backends keep their compiled kernels in this folder, one file
            set per model, torch/Triton version, device model and mode, and load them in the next
            process (:mod:`mlff_export.runtime.compile_cache`); they and cuda-graphs also keep the
            model's traced joint graph there (:mod:`mlff_export.runtime.traced_graphs`: no trace in the
            next process); ``True`` (default): the folder ``$MLFF_EXPORT_COMPILE_CACHE`` or
            ``~/.cache/mlff-export/compiled``; ``False``: not kept.

    The chosen backend is logged (logger ``mlff_export``) and kept as ``calc.backend.name``.
    Out-of-range options raise ``CalculatorSetupError`` before anything is loaded.
    """
    _checked_options(skin, min_distance, memory_limit_gb)
    cache_folder = _compile_cache_folder(compile_cache, backend)
    if dtype not in DTYPES:
        raise CalculatorSetupError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if backend is not None and backend not in BACKENDS:
        raise CalculatorSetupError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    resolved_device = _resolve_device(device)
    limit_bytes = None if memory_limit_gb is None else int(memory_limit_gb * 1e9)
    memory = MemoryBudget(resolved_device, limit_bytes)
    suffix = Path(model).suffix if isinstance(model, (str, Path)) else None
    body_precision = _checked_precision(precision, backend, suffix if suffix in ARTIFACT_BACKENDS else None)
    if suffix in ARTIFACT_BACKENDS:
        if backend not in (None, ARTIFACT_BACKENDS[suffix]):
            raise CalculatorSetupError(f"a {suffix} file runs on backend '{ARTIFACT_BACKENDS[suffix]}', not {backend!r}")
        if dtype != "float32":
            raise CalculatorSetupError(f"a {suffix} artifact takes float32 inputs; got dtype={dtype!r}")
        engine = _artifact_backend(Path(model), resolved_device, memory)
        cutoff, species = engine.cutoff, engine.species
    else:
        name = backend or "eager"
        if name not in MODULE_BACKENDS:
            raise CalculatorSetupError(
                f"backend '{name}' runs an exported artifact: export first (mlff-export export, then "
                "load the .onnx) or build an engine (mlff-export build-engine, then load the .plan)"
            )
        module = _resolve_model(model)
        engine = _module_backend(module, name, resolved_device, DTYPES[dtype], memory, cache_folder, body_precision)
        cutoff, species = float(module.cutoff), tuple(module.species)
    logger.info("mlff-export: backend '%s' on %s", engine.name, resolved_device)
    return MLFFCalculator(
        engine, cutoff=cutoff, species=species, skin=skin, min_distance=min_distance, search_memory=MemoryBudget(limit_bytes=limit_bytes)
    )
