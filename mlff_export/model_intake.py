"""Where a model comes from: a checkpoint card, a Python factory, or a ``torch.export`` program.

:func:`load_model` takes the ``--model`` specification every command and ``load_calculator``
accept and returns the interface module (docs/interface.md) with a line saying where it came from
(recorded in exported artifacts' metadata):

* ``path/to/card.json``: one of our checkpoint cards (:mod:`mlff_export.checkpoint`);
* ``package.module:factory`` or ``path/to/file.py:factory``: a Python callable returning an
  interface ``nn.Module``, called with ``model_kwargs``; ``weights`` (a safetensors file, or a ``torch.load`` state dict read with
  ``weights_only=True``) are loaded into it strictly;
* ``path/to/model.pt2``: a ``torch.export`` program of the energy function with the six interface
  inputs (how a model ships without its source), written by
  :func:`mlff_export.export.save_energy_program` or by ``torch.export.save`` with an ``mlff-interface.json`` extra file giving ``cutoff`` and
  ``species``. It is read with every pickle refused.

Every mistake is a :class:`ModelIntakeError` with one line that names the thing and the fix.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlff_export.checkpoint import file_sha256, load_checkpoint, read_card
from mlff_export.interface import INPUT_NAMES, interface_declaration_problem
from mlff_export.model_spec import is_factory_spec

INTERFACE_FILE = "mlff-interface.json"
"""Extra file of a ``.pt2`` program holding ``{"cutoff": Å, "species": [atomic numbers]}``."""


class ModelIntakeError(ValueError):
    """A model specification, factory, program or weights file that cannot give an interface model."""


@dataclass(frozen=True)
class LoadedModel:
    """An interface module and where it came from (one line, stored in artifact metadata)."""

    module: nn.Module
    source: str


def load_model(spec: str | Path, *, weights: str | Path | None = None, model_kwargs: Mapping | None = None) -> LoadedModel:
    """The interface module ``spec`` names (see the module docstring), in eval mode."""
    spec_text = str(spec)
    kwargs = dict(model_kwargs or {})
    if is_factory_spec(spec_text):
        loaded = _from_factory(spec_text, kwargs)
    else:
        path = Path(spec_text)
        if path.is_dir():
            raise ModelIntakeError(f"--model {path} is a folder; expected a checkpoint card .json, a .pt2 program or package.module:factory")
        if not path.is_file():
            raise ModelIntakeError(
                f"--model {path} does not exist (expected a checkpoint card .json, a .pt2 program, or package.module:factory)"
            )
        if path.suffix == ".pt2":
            loaded = _from_program(path, kwargs)
        elif path.suffix == ".json":
            if kwargs:
                raise ModelIntakeError(f"--model-kwargs apply to factories and .pt2 programs, not to the checkpoint card {path}")
            loaded = _from_checkpoint(path)
        else:
            raise ModelIntakeError(
                f"--model {path}: unknown kind {path.suffix or '(no suffix)'}; expected a checkpoint card .json, a .pt2 "
                "program, or package.module:factory"
            )
    if weights is not None:
        if spec_text.endswith(".json"):
            raise ModelIntakeError(f"--weights: the checkpoint card {spec_text} names its own weights")
        loaded = LoadedModel(loaded.module, f"{loaded.source}; weights {Path(weights).name} sha256 {file_sha256_checked(weights)[:16]}")
        load_weights(loaded.module, weights)
    check_declares_interface(loaded.module, spec_text)
    return LoadedModel(loaded.module.eval(), loaded.source)


def file_sha256_checked(path: str | Path) -> str:
    if not Path(path).is_file():
        raise ModelIntakeError(f"--weights {path} does not exist")
    return file_sha256(path)


def check_declares_interface(module: nn.Module, spec: str) -> None:
    """The module must declare ``cutoff`` and ``species`` (docs/interface.md)."""
    problem = interface_declaration_problem(module)
    if problem is not None:
        raise ModelIntakeError(f"--model {spec}: {type(module).__name__} {problem}")


def _from_checkpoint(path: Path) -> LoadedModel:
    card = read_card(path)
    return LoadedModel(load_checkpoint(path), f"checkpoint {path.name} (weights sha256 {card['weights_sha256'][:16]})")


def _import(module_name: str, spec: str):
    """The module ``module_name`` names: a dotted module path, or a ``.py`` file."""
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ModelIntakeError(f"--model {spec}: file {path} does not exist")
        import_spec = importlib.util.spec_from_file_location(f"mlff_export_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(import_spec)
        sys.modules[import_spec.name] = module  # dataclasses and pickling look modules up by name
        import_spec.loader.exec_module(module)
        return module
    return importlib.import_module(module_name)


def _from_factory(spec: str, kwargs: dict) -> LoadedModel:
    module_name, _, factory_name = spec.rpartition(":")
    try:
        module = _import(module_name, spec)
    except ModelIntakeError:
        raise
    except ImportError as error:
        raise ModelIntakeError(
            f"--model {spec}: cannot import module '{module_name}' ({error}); install it or put its folder on PYTHONPATH"
        ) from None
    except Exception as error:  # the user's module failed while importing
        raise ModelIntakeError(f"--model {spec}: importing '{module_name}' failed: {type(error).__name__}: {error}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelIntakeError(f"--model {spec}: module '{module_name}' ({module.__file__}) has no callable '{factory_name}'")
    try:
        model = factory(**kwargs)
    except Exception as error:  # the user's factory: any failure is reported, in one line
        raise ModelIntakeError(f"--model {spec}: {factory_name}(**{kwargs}) failed: {type(error).__name__}: {error}") from None
    if not isinstance(model, nn.Module):
        raise ModelIntakeError(f"--model {spec}: {factory_name}() returned {type(model).__name__}, expected a torch.nn.Module")
    arguments = f" {json.dumps(kwargs, sort_keys=True)}" if kwargs else ""
    return LoadedModel(model, f"factory {spec}{arguments}")


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state dict (safetensors, or ``torch.load`` with ``weights_only=True``) into
    ``module``, strictly; a mismatch names the first tensor that does not fit. Entries named
    ``*._extra_state`` may be plain data (what ``weights_only`` lets through)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable or unsafe file: one line, no unpickling beyond tensors
        raise ModelIntakeError(f"--weights {path}: not a readable state dict ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) or _is_extra_state(k) for k, v in state.items()):
        raise ModelIntakeError(f"--weights {path}: expected a mapping of parameter names to tensors (a state dict)")
    expected = module.state_dict()
    for name in sorted(expected):
        if name not in state:
            raise ModelIntakeError(f"--weights {path}: tensor '{name}' of the model is missing from the file")
        if not isinstance(expected[name], torch.Tensor):
            continue  # a module's extra state (plain data: torch.load allowed nothing else)
        if not isinstance(state[name], torch.Tensor) or tuple(state[name].shape) != tuple(expected[name].shape):
            found = tuple(state[name].shape) if isinstance(state[name], torch.Tensor) else type(state[name]).__name__
            raise ModelIntakeError(
                f"--weights {path}: tensor '{name}' has shape {found} in the file, "
                f"{tuple(expected[name].shape)} in the model"
            )
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise ModelIntakeError(f"--weights {path}: tensor '{unexpected[0]}' of the file is not in the model")
    module.load_state_dict(state, strict=True)


def _is_extra_state(name: str) -> bool:
    """Whether a state-dict entry is a module's ``get_extra_state()`` (hippynn, graph-pes keep
    settings there), which may be plain data rather than a tensor."""
    return name.rpartition(".")[2] == "_extra_state"


# ---------------------------------------------------------------------------------------------
# torch.export programs (.pt2)


class ExportedEnergyModel(nn.Module):
    """A ``torch.export`` program of the energy function as an interface module."""

    def __init__(self, program_module: nn.Module, cutoff: float, species: tuple[int, ...]):
        super().__init__()
        self.program = program_module
        self.cutoff = float(cutoff)
        self.species = tuple(int(z) for z in species)

    def forward(self, positions, species, pair_index, pair_shifts, structure_index, cell):
        return self.program(positions, species, pair_index, pair_shifts, structure_index, cell)

    def train(self, mode: bool = True) -> ExportedEnergyModel:
        """A program has no training mode (it was exported in eval mode); only the flag is set."""
        self.training = mode
        return self


@contextlib.contextmanager
def _pickles_refused() -> Iterator[None]:
    """While torch reads a .pt2 archive: tensors only (``weights_only=True``), no other pickle."""
    from torch.export.pt2_archive import _package

    real_load, real_pickle_load_obj, real_pickle = torch.load, torch._C._pickle_load_obj, _package.pickle

    def tensors_only(source, *args, **kwargs):
        kwargs["weights_only"] = True
        return real_load(source, *args, **kwargs)

    def refused(*_args, **_kwargs):
        raise ModelIntakeError("the .pt2 archive holds pickled Python objects, which are not loaded (unsafe)")

    class _NoPickle:
        loads = staticmethod(refused)

    try:
        torch.load, torch._C._pickle_load_obj, _package.pickle = tensors_only, refused, _NoPickle
        yield
    finally:
        torch.load, torch._C._pickle_load_obj, _package.pickle = real_load, real_pickle_load_obj, real_pickle


def _interface_of_program(path: Path, kwargs: dict) -> tuple[float, tuple[int, ...]]:
    """cutoff and species from the archive's :data:`INTERFACE_FILE` or from ``kwargs``."""
    declared = {}
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith(f"extra/{INTERFACE_FILE}")]
        if names:
            try:
                declared = json.loads(archive.read(names[0]))
            except json.JSONDecodeError:
                raise ModelIntakeError(f"--model {path}: {INTERFACE_FILE} in the archive is not JSON") from None
    declared.update({key: value for key, value in kwargs.items() if key in ("cutoff", "species")})
    unknown = sorted(set(kwargs) - {"cutoff", "species"})
    if unknown:
        raise ModelIntakeError(f"--model-kwargs {unknown} do not apply to a .pt2 program (only cutoff and species)")
    if "cutoff" not in declared or "species" not in declared:
        raise ModelIntakeError(
            f"--model {path}: the program does not say its cutoff and species: save it with "
            f"mlff_export.model_intake.save_energy_program, or pass --model-kwargs '{{\"cutoff\": 5.0, \"species\": [1, 6, 7, 8]}}'"
        )
    return float(declared["cutoff"]), tuple(int(z) for z in declared["species"])


def _from_program(path: Path, kwargs: dict) -> LoadedModel:
    cutoff, species = _interface_of_program(path, kwargs) if zipfile.is_zipfile(path) else (None, None)
    if cutoff is None:
        raise ModelIntakeError(f"--model {path} is not a torch.export archive (not a zip file)")
    try:
        with _pickles_refused():
            program = torch.export.load(str(path))
    except ModelIntakeError as error:
        raise ModelIntakeError(f"--model {path}: {error}") from None
    except Exception as error:  # a damaged or foreign archive
        raise ModelIntakeError(f"--model {path}: torch.export.load failed: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    inputs = [spec for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    outputs = [spec for spec in program.graph_signature.output_specs if spec.kind.name == "USER_OUTPUT"]
    if len(inputs) != len(INPUT_NAMES) or len(outputs) != 1:
        raise ModelIntakeError(
            f"--model {path}: the program takes {len(inputs)} inputs and returns {len(outputs)} outputs; expected the six "
            f"interface inputs ({', '.join(INPUT_NAMES)}) and the energy [B]"
        )
    return LoadedModel(ExportedEnergyModel(program.module(), cutoff, species), f"torch.export program {path.name} sha256 {file_sha256(path)[:16]}")
