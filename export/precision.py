"""Export precisions: which parts of a model run in FP16, and the parity each must keep.

FP16 is "body only": pair geometry (vectors, distances, cutoff, radial basis), the energy sum and
the force and virial accumulation stay float32; the network body (embeddings, linear layers,
messages) runs in float16. The model does the casting: a pair-energy model such as
:class:`~mlff_export.model.PaiNN` computes geometry in the pair vectors' dtype and its body in its
weights' dtype, so exporting a copy whose *parameters* are half (buffers such as the energy scale
and per-species reference energies stay float32) gives that split, with explicit Cast nodes at the
boundaries and a strongly typed graph.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator

import torch
from torch import nn

from mlff_export.export.errors import ExportError
from mlff_export.export.ordinary_code import scripted_submodules

PRECISIONS = ("fp32", "fp16")


def _is_cpu_float32(model: nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors)


def model_for_precision(model: nn.Module, precision: str) -> nn.Module:
    """A float32 (``"fp32"``) or half-body (``"fp16"``) eval-mode CPU version of ``model``.

    The input model is left untouched: it is copied, except for ``"fp32"`` when it already is a
    CPU float32 module, which is returned as it is (trace it inside :func:`frozen`). Some modules
    do not survive a copy: e3nn 0.4 turns its generated Python code into TorchScript when copied.
    For ``"fp16"`` only parameters become float16; buffers keep float32 (an energy reference of
    -2000 eV in float16 would be off by up to 1 eV).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" and _is_cpu_float32(model):
        return model
    copied = copy.deepcopy(model).to("cpu").float().eval()
    _refuse_scripted_copy(model, copied)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
        if precision == "fp16":
            parameter.data = parameter.data.half()
    return copied


def _refuse_scripted_copy(model: nn.Module, copied: nn.Module) -> None:
    """Raise :class:`ExportError` if copying ``model`` turned Python submodules into TorchScript."""
    scripted = scripted_submodules(copied)
    if len(scripted) > len(scripted_submodules(model)):
        raise ExportError(
            f"model {type(model).__name__}: copying it turned submodule(s) {scripted[:3]} into TorchScript (e3nn 0.4 "
            "does so on every copy), whose code no Python tracer can enter. Pass the model as built, float32 on the "
            "CPU, which is used without a copy (a GPU calculator moves it to the GPU: build a fresh model for each "
            "calculator); FP16 export of such a model is not supported"
        )


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with no gradients kept for its parameters; both restored on exit."""
    training = {module: module.training for module in model.modules()}
    requires_grad = {parameter: parameter.requires_grad for parameter in model.parameters()}
    try:
        for module in training:  # the attribute, not .eval(): exported programs refuse train()/eval()
            module.training = False
        for parameter in requires_grad:
            parameter.requires_grad_(False)
        yield model
    finally:
        for module, mode in training.items():
            module.training = mode
        for parameter, flag in requires_grad.items():
            parameter.requires_grad_(flag)


def weights_sha256(model: nn.Module) -> str:
    """sha256 over the float32 state dict (names, shapes and bytes, sorted by name); entries that
    are not tensors (a module's ``extra_state``) by their ``repr``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            digest.update(f"{name}:{tensor!r};".encode())
            continue
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()
