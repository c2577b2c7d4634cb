"""Joint graphs kept across processes: a new process skips the trace of the model.

Tracing a model's energy, forces and virial with symbolic sizes (``make_fx``,
:func:`~mlff_export.export.joint_graph.trace_joint_graph`) takes seconds per process (2 s on a
2-core CPU, ~4 s on the H200 host for the reference PaiNN); rebuilding the same graph from its
Python code and its weights and checking it against the model takes 0.05-0.06 s on that CPU
(``bench/results/2026-12-01-h200-trace-store/cpu-vm``). A :class:`TracedGraphStore` keeps, per
:class:`TracedGraphKey`, the graph's code and its tensors in one safetensors file (the code in its
metadata) beside the compile cache's files, and hands the graph back to the next process.

What a traced graph depends on is known before tracing, and all of it is in the key: the model
(the source files of its modules' classes, their hyperparameters, its weights), mlff-export's own
source (the tracer), torch's version, the device (the graph names it), the body precision and
which graph (the domain path's has per-atom energy weights).
A helper function the model imports from another file is not in the key, so a loaded graph is
also checked against the model itself on the tracing example (energy, forces and virial within
the precision's tolerances, :func:`~mlff_export.export.joint_graph.graph_deviations_from_model`)
and traced again, with a warning, where it differs or the model cannot be evaluated eagerly to
check it. The file's SHA-256, its key and the folder's
ownership are checked first (:func:`~mlff_export.runtime.compile_cache.checked_manifest`). Like the
compile cache, a stored graph is code that runs in the process: use folders you own.

Every process runs the rebuilt graph, the first one included (it stores the trace and rebuilds it
at once), so the compile cache's key (the graph's code) is the same in every process.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import math
import operator
import os
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import mlff_export
import mlff_export.export
import mlff_export.runtime
from mlff_export.export.precision import weights_sha256
from mlff_export.runtime.compile_cache import keep_with_manifest, usable_payload

logger = logging.getLogger("mlff_export")

FORMAT = "mlff-export-traced-graph/1"
CODE_GLOBALS = {
    "torch": torch,
    "device": torch.device,
    "inf": math.inf,
    "nan": math.nan,
    "NoneType": type(None),
    "fx_pytree": torch.fx._pytree,
    "pytree": torch.utils._pytree,
}
"""The names a traced graph's code may use (what FX's code generation imports for aten graphs),
besides mlff-export's own functions (the table rewrite's, :func:`own_function_path`); a graph whose
code needs anything else is not stored."""
HYPERPARAMETER_TYPES = (bool, int, float, str, tuple, list, dict, type(None))


def source_sha256(files: list[Path]) -> str:
    """SHA-256 over the contents of ``files`` (sorted by path; each with its name)."""
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        digest.update(f"{path.name}:".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def model_sha256(model: nn.Module) -> str:
    """SHA-256 over what ``model``'s trace depends on, short of helpers imported from other files:
    the source files of its modules' classes (and their base classes), each module's
    hyperparameters (plain attributes: numbers, strings, tuples, lists, dicts, dataclasses such as a
    config) and the weights."""
    files, hyperparameters = [], []
    for name, module in model.named_modules():
        for cls in type(module).__mro__:
            source = _source_file(cls)
            if source is not None:
                files.append(source)
        plain = sorted((key, repr(value)) for key, value in vars(module).items() if not key.startswith("_") and key != "training"
                       and (isinstance(value, HYPERPARAMETER_TYPES) or dataclasses.is_dataclass(value) and not isinstance(value, type)))
        hyperparameters.append(f"{name}:{type(module).__qualname__}:{plain}")
    text = f"{source_sha256(files)}\n{hyperparameters}\n{weights_sha256(model)}"
    return hashlib.sha256(text.encode()).hexdigest()


def _source_file(cls: type) -> Path | None:
    try:
        source = inspect.getsourcefile(cls)
    except TypeError:  # a built-in class
        return None
    return Path(source) if source is not None and Path(source).is_file() else None


def tracer_sha256() -> str:
    """SHA-256 over mlff-export's own Python source (the tracer, the rewrite, the decompositions)."""
    packages = (mlff_export, mlff_export.export, mlff_export.runtime)
    return source_sha256([path for package in packages for folder in package.__path__ for path in Path(folder).rglob("*.py")])


@dataclass(frozen=True)
class TracedGraphKey:
    """Everything a traced joint graph depends on (see the module's docstring)."""

    model: str
    """:func:`model_sha256` of the model in its body precision"""
    tracer: str
    """:func:`tracer_sha256`"""
    torch: str
    device: str
    precision: str
    weighted: bool
    """the domain path's graph, with per-atom energy weights"""

    @classmethod
    def of(cls, model: nn.Module, device: torch.device, precision: str, weighted: bool = False) -> TracedGraphKey:
        return cls(model_sha256(model), tracer_sha256(), torch.__version__, str(device), precision, weighted)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


class TracedGraphStore:
    """``folder/<key digest>/joint-graph.safetensors`` (the graph's tensors, its code in the
    metadata) and its manifest ``joint-graph.json`` (format, key, the file's SHA-256)."""

    def __init__(self, folder: str | Path, key: TracedGraphKey):
        self.key = key
        self.folder = Path(folder).expanduser() / key.digest
        self.graph_path = self.folder / "joint-graph.safetensors"
        self.manifest_path = self.folder / "joint-graph.json"

    def load(self) -> torch.fx.GraphModule | None:
        """The stored graph, or ``None``: none stored, or one that fails a check (a warning says why)."""
        if not usable_payload(self.manifest_path, self.graph_path, FORMAT, self.key, "traced graph"):
            return None
        return self._rebuilt()

    def _rebuilt(self) -> torch.fx.GraphModule:
        """The graph rebuilt from the stored file (each tensor on the device it was stored from)."""
        with safe_open(self.graph_path, framework="pt") as stored:
            metadata = stored.metadata()
            layout = json.loads(metadata["tensors"])
            tensors = {name: stored.get_tensor(name).to(layout[name]["device"]) for name in stored.keys()}
        parameters = {name for name, entry in layout.items() if entry["parameter"]}
        return rebuilt_graph(metadata["code"], json.loads(metadata["functions"]), tensors, parameters)

    def save(self, graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Store ``graph`` and return it rebuilt from the file (what later processes get);
        ``graph`` itself where it cannot be stored (logged: code that needs more than
        :data:`CODE_GLOBALS`, submodule calls, attributes that are not tensors)."""
        stored = stored_form(graph)
        if isinstance(stored, str):
            logger.info("mlff-export: traced graph not kept across processes: %s", stored)
            return graph
        code, functions, tensors, parameters = stored
        layout = {name: {"device": str(tensor.device), "parameter": name in parameters} for name, tensor in tensors.items()}
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.folder / f".joint-graph-{os.getpid()}.tmp"
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, temporary,
                  metadata={"code": code, "functions": json.dumps(functions), "tensors": json.dumps(layout)})
        keep_with_manifest(temporary, self.graph_path, self.manifest_path, FORMAT, self.key)
        return self._rebuilt()


def stored_form(graph: torch.fx.GraphModule) -> tuple[str, dict[str, str], dict[str, torch.Tensor], set[str]] | str:
    """(code, the mlff-export functions it calls by name, tensors by attribute name, names of the
    parameters) of ``graph``, or why it cannot be stored."""
    python_code = graph.graph.python_code(root_module="self")
    functions = {name: own_function_path(value) for name, value in python_code.globals.items() if CODE_GLOBALS.get(name, object()) is not value}
    foreign = sorted(name for name, path in functions.items() if path is None)
    if foreign:
        return f"its code uses {foreign[:5]}"
    tensors = {}
    for node in graph.graph.nodes:
        if node.op == "call_module":
            return f"it calls submodule {node.target!r}"
        if node.op == "get_attr":
            value = operator.attrgetter(node.target)(graph)
            if not isinstance(value, torch.Tensor):
                return f"its attribute {node.target!r} is a {type(value).__name__}, not a tensor"
            tensors[node.target] = value
    return python_code.src, functions, tensors, {name for name, _ in graph.named_parameters() if name in tensors}


def own_function_path(value: object) -> str | None:
    """``"module:name"`` of a function defined at the top of an mlff-export module (its source is in
    the key: :func:`tracer_sha256`), else ``None``."""
    module, name = getattr(value, "__module__", None) or "", getattr(value, "__qualname__", "")
    if not (isinstance(value, types.FunctionType) and module.startswith("mlff_export.")):
        return None
    return f"{module}:{name}" if getattr(importlib.import_module(module), name, None) is value else None


def rebuilt_graph(code: str, functions: dict[str, str], tensors: dict[str, torch.Tensor], parameters: set[str]) -> torch.fx.GraphModule:
    """The graph module whose ``forward`` is ``code`` (a traced graph's Python code) calling
    ``functions`` (name in the code -> ``"module:name"`` of an mlff-export function, kept as a call)
    over ``tensors`` (attribute name -> tensor; ``parameters`` become frozen parameters, the rest
    the graph module's buffers). Each name must hold its own tensor: FX names a constant by the
    tensor it finds."""
    refused = ValueError(f"a stored graph may call mlff-export's own functions only; got {sorted(functions.values())}")
    if not all(path.startswith("mlff_export.") for path in functions.values()):  # before importing anything named
        raise refused
    imported = {name: getattr(importlib.import_module(path.partition(":")[0]), path.partition(":")[2], None) for name, path in functions.items()}
    if any(own_function_path(function) != functions[name] for name, function in imported.items()):
        raise refused
    namespace = {**CODE_GLOBALS, **imported}
    exec(compile(code, "<mlff-export traced graph>", "exec"), namespace)  # noqa: S102 (the stored graph: see the module docstring)
    root = type("StoredJointGraph", (nn.Module,), {"forward": namespace["forward"]})()
    for name, tensor in tensors.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = root
        for part in owner_name.split(".") if owner_name else ():
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        # A parameter the tracer finds among the parameters, any other tensor among the plain
        # attributes (not buffers, which it would add again as new constants under other names).
        setattr(owner, attribute, nn.Parameter(tensor, requires_grad=False) if name in parameters else tensor)
    tracer = torch.fx.Tracer(autowrap_functions=tuple(imported.values()))
    # FX folds calls without symbolic inputs (a scalar_tensor) into new constants, named by a counter
    # its tracers share in a process: one of our own keeps the names, hence the code and the compile
    # cache's key, the same in every process.
    tracer._qualname_counter = collections.defaultdict(int)
    return torch.fx.GraphModule(root, tracer.trace(root)).eval()
