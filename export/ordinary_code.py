"""Tracing a user's model as it is written: TorchScript helpers, compile-only branches, clear errors.

Users' MLFFs are written for eager PyTorch and TorchScript, not for tracers. While the exporter
traces one (``make_fx``, symbolic sizes), :func:`tracing_ordinary_code`:

* runs ``@torch.jit.script`` functions as the Python they were written in. A scripted helper
  taking ``dim_size: int`` would otherwise turn the symbolic atom count into a constant (the
  TorchScript interpreter only takes concrete ints). Every loaded module's global that is a
  scripted function is swapped for its Python original (``torch.jit.script`` keeps it as
  ``_torchdynamo_inline``) for the duration of the trace;
* runs ``torch.compile``-d functions as their Python (compiled kernels take no symbolic sizes);
* makes ``torch.compiler.is_compiling()`` true, so input checks that models skip under
  ``torch.compile`` / ``torch.export`` (they read tensor data) are skipped here too;
* traces parameters of ``nn.Parameter`` subclasses that only add attributes (such as per-element
  parameters) as plain parameters over the same storage (the tracer cannot take subclasses);
* refuses TorchScript *modules* inside the model up front, naming them (their code cannot be
  traced symbolically), instead of failing deep inside the tracer.

:func:`explain_trace_failure` and :func:`check_sizes_stayed_symbolic` turn the tracer's failures
(a Python read of tensor data; a size that was turned into a constant) into an
:class:`~mlff_export.export.errors.ExportError` that names the *user's* file and line, the
pattern, and the fix.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import sysconfig
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from mlff_export.export.errors import ExportError


def _library_folders() -> tuple[Path, ...]:
    """Folders whose code is not the user's: torch and this package's subpackages (which live in
    separate source folders: see pyproject's package-dir)."""
    folders = [Path(torch.__file__).parent]
    for name in ("mlff_export", "mlff_export.export", "mlff_export.runtime"):
        spec = importlib.util.find_spec(name)
        folders += [Path(location) for location in (spec.submodule_search_locations or [])] if spec else []
    return tuple(folder.resolve() for folder in folders)


def _is_library_frame(filename: str) -> bool:
    """Frames of torch, of this package and of Python's standard library are not the user's code."""
    if filename.startswith("<") or "torchinductor_" in filename:  # generated code, not the user's
        return True
    path = Path(filename).resolve()
    paths = sysconfig.get_paths()
    installed = [Path(paths[key]).resolve() for key in ("purelib", "platlib")]
    in_stdlib = path.is_relative_to(Path(paths["stdlib"]).resolve()) and not any(path.is_relative_to(p) for p in installed)
    return in_stdlib or any(path.is_relative_to(folder) for folder in _library_folders())


def _user_frame(frames: list[traceback.FrameSummary]) -> traceback.FrameSummary | None:
    """The innermost frame of the user's code (the model or a package it uses) in ``frames``."""
    for frame in reversed(frames):
        if not _is_library_frame(frame.filename):
            return frame
    return None


def _where(frame: traceback.FrameSummary | None) -> str:
    if frame is None:
        return "in the model (no source line found)"
    code = f": `{frame.line.strip()}`" if frame.line else ""
    return f"at {frame.filename}:{frame.lineno} ({frame.name}){code}"


def scripted_submodules(model: nn.Module) -> list[str]:
    """Names of the TorchScript modules in ``model`` (the model itself by its class name)."""
    return [name or type(model).__name__ for name, module in model.named_modules() if isinstance(module, torch.jit.ScriptModule)]


def _scripted_globals() -> list[tuple[object, str, object, object]]:
    """(module, name, scripted function, Python original) for every scripted function global of
    a loaded non-torch module."""
    swaps = []
    for module_name, module in list(sys.modules.items()):
        if module is None or module_name == "torch" or module_name.startswith("torch."):
            continue
        try:
            names = list(vars(module).items())
        except TypeError:
            continue
        for name, value in names:
            original = getattr(value, "_torchdynamo_inline", None) if isinstance(value, torch.jit.ScriptFunction) else None
            if original is not None:
                swaps.append((module, name, value, original))
    return swaps


def _subclassed_parameters(model: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """(owner, name, parameter) of parameters whose class subclasses ``nn.Parameter`` without
    changing how torch computes with it (no ``__torch_function__`` / ``__torch_dispatch__`` of its own)."""
    found = []
    for owner in model.modules():
        for name, parameter in owner._parameters.items():
            kind = type(parameter)
            if parameter is None or kind is nn.Parameter or not isinstance(parameter, nn.Parameter):
                continue
            plain = kind.__torch_function__ is nn.Parameter.__torch_function__
            if plain and getattr(kind, "__torch_dispatch__", None) is getattr(nn.Parameter, "__torch_dispatch__", None):
                found.append((owner, name, parameter))
    return found


@contextlib.contextmanager
def tracing_ordinary_code(model: nn.Module) -> Iterator[None]:
    """Context for tracing ``model``: scripted and compiled helpers run as Python, ``is_compiling()`` is true.

    Raises :class:`ExportError` at once if the model contains TorchScript modules.
    """
    scripted = scripted_submodules(model)
    if scripted:
        raise ExportError(
            f"model {type(model).__name__}: submodule(s) {scripted[:5]} are TorchScript modules, whose code no Python "
            "tracer can enter: pass the Python nn.Module instead of its torch.jit.script version (e3nn: call "
            "e3nn.set_optimization_defaults(jit_script_fx=False) before building or loading the model)"
        )
    swaps = _scripted_globals()
    subclassed = _subclassed_parameters(model)
    compiling = torch.compiler._is_compiling_flag
    try:
        for module, name, _, original in swaps:
            setattr(module, name, original)
        for owner, name, parameter in subclassed:
            owner._parameters[name] = nn.Parameter(parameter.data, requires_grad=parameter.requires_grad)
        torch.compiler._is_compiling_flag = True
        with torch._dynamo.config.patch(disable=True):
            yield
    finally:
        torch.compiler._is_compiling_flag = compiling
        for owner, name, parameter in subclassed:
            owner._parameters[name] = parameter
        for module, name, scripted_function, _ in swaps:
            setattr(module, name, scripted_function)


DATA_DEPENDENT_FIX = (
    "a traced graph cannot read tensor values into Python numbers; take sizes from shapes instead "
    "(number of structures: cell.shape[0]; atoms: positions.shape[0]; pairs: pair_index.shape[1]), or pass "
    "dim_size from a shape to scatter helpers"
)


def explain_trace_failure(error: BaseException, model: nn.Module) -> ExportError:
    """An :class:`ExportError` naming the user's source line where tracing ``model`` failed."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    frame = _user_frame(traceback.extract_tb(error.__traceback__))
    name = type(model).__name__
    if isinstance(error, GuardOnDataDependentSymNode) or "data-dependent" in str(error):
        return ExportError(f"model {name} reads tensor data into Python {_where(frame)}: {DATA_DEPENDENT_FIX}")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return ExportError(f"model {name} could not be traced {_where(frame)}: {type(error).__name__}: {first_line}")


def check_sizes_stayed_symbolic(traced: torch.fx.GraphModule, input_axes: dict[str, tuple], model: nn.Module) -> None:
    """Raise :class:`ExportError` if tracing turned a dynamic input size into a constant.

    ``input_axes``: graph input name -> axes (a string names a dynamic axis). The message names
    the axis, the user's line whose guard fixed it, and the fix.
    """
    placeholders = [node for node in traced.graph.nodes if node.op == "placeholder"]
    shape_env = getattr(traced, "shape_env", None)
    for node, (input_name, axes) in zip(placeholders, input_axes.items()):
        value = node.meta.get("val")
        if value is None:
            continue
        for position, axis in enumerate(axes):
            if isinstance(axis, str) and is_concrete_int(value.shape[position]):
                raise ExportError(
                    f"model {type(model).__name__}: the {axis} axis (input {input_name}) became the constant "
                    f"{int(value.shape[position])} while tracing, {_specialising_line(shape_env)}: the graph would only accept "
                    "that size. Avoid int() or Python branches on sizes; compute with tensor shapes as they are (symbolic)"
                )


def _specialising_line(shape_env) -> str:
    """Where the first guard that fixed a size to a number came from, as text."""
    for guard in getattr(shape_env, "guards", []):
        if guard.expr.func.__name__ == "Equality" and any(arg.is_number for arg in guard.expr.args):
            loc = guard.sloc
            for frame in (getattr(loc, "maybe_user_loc", None), getattr(loc, "framework_loc", None)):
                if isinstance(frame, traceback.FrameSummary) and not _is_library_frame(frame.filename):
                    return _where(frame)
                if isinstance(frame, str) and frame:
                    return f"at {frame}"
    return "where is not known (no guard with a source line)"
