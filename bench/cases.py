"""The rows of the benchmark: each backend (and each of the seed's experiments) as a calculator.

Runtime backends come from :func:`mlff_export.runtime.load_calculator`. Two rows exist only to
re-measure the seed's experiments and are defined here: FP16 autocast around the eager model,
and TorchScript (``torch.jit.trace`` of the joint graph, one trace per shape bucket: the eager
model's ``autograd.grad`` cannot be scripted).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from mlff_export.bench.availability import backend_precisions
from mlff_export.interface import AtomicInputs
from mlff_export.model_spec import ModelSpec
from mlff_export.runtime.calculator import MLFFCalculator, load_calculator
from mlff_export.runtime.eager import EagerBackend
from mlff_export.runtime.joint_graph import JointGraphBackend


class AutocastEagerBackend(EagerBackend):
    """The seed's "FP16 autocast": the eager model under ``torch.autocast(float16)``."""

    name = "eager-fp16-autocast"

    def evaluate(self, inputs: AtomicInputs) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.float16):
            return super().evaluate(inputs)


class TorchScriptBackend(JointGraphBackend):
    """The seed's "TorchScript JIT": the joint graph traced by ``torch.jit.trace`` per bucket."""

    name = "torchscript"

    def __init__(self, model, device):
        super().__init__(model, device)
        self._traced: dict[tuple, torch.jit.ScriptModule] = {}

    def run(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        key = tuple(tuple(tensor.shape) for tensor in feeds.values())
        if key not in self._traced:
            self._traced[key] = torch.jit.trace(self.graph, tuple(feeds.values()), check_trace=False)
        return dict(zip(("energy", "forces", "virial"), self._traced[key](*feeds.values())))


@dataclass
class Case:
    """One benchmark row: a backend at a precision, built on demand."""

    backend: str
    precision: str
    build: Callable[[], MLFFCalculator]

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


def _calculator_with(backend, model) -> MLFFCalculator:
    return MLFFCalculator(backend, cutoff=model.cutoff, species=model.species)


def plan_cases(
    model: ModelSpec,
    onnx_files: dict[str, Path],
    device: torch.device,
    backends: list[str],
    precisions: list[str],
) -> list[Case]:
    """The rows for ``backends`` (each able to run here: see :mod:`.availability`), each at the
    precisions :func:`~.availability.backend_precisions` gives it."""
    cases: list[Case] = []
    for backend in backends:
        for precision in backend_precisions(backend, device.type, precisions):
            if backend == "tensorrt":
                build = _engine_case(onnx_files[precision], precision, device)
            elif backend == "onnxruntime":
                build = partial(load_calculator, onnx_files[precision], device)
            else:
                build = _module_case(backend, model, device, precision)
            cases.append(Case(backend, precision, build))
    return cases


def _module_case(backend: str, spec: ModelSpec, device: torch.device, precision: str) -> Callable[[], MLFFCalculator]:
    def build() -> MLFFCalculator:  # a fresh module per row: backends may move or convert it
        model = spec.load().module
        if backend == "eager-fp16-autocast":
            return _calculator_with(AutocastEagerBackend(model, device, torch.float32), model)
        if backend == "torchscript":
            return _calculator_with(TorchScriptBackend(model, device), model)
        return load_calculator(model, device, backend=backend, precision=None if backend == "eager" else precision)

    return build


def _engine_case(onnx_path: Path, precision: str, device: torch.device) -> Callable[[], MLFFCalculator]:
    """Build a TensorRT engine with every named profile beside the ONNX file, then load it."""

    def build() -> MLFFCalculator:
        from mlff_export.export.engine_builder import build_engine
        from mlff_export.export.engine_profiles import load_profiles

        plan = onnx_path.with_suffix(".plan")
        build_engine(onnx_path, plan, list(load_profiles().values()), precision)
        return load_calculator(plan, device)

    return build
