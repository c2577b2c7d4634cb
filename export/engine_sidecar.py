"""The sidecar ``NAME.plan.json`` beside every engine, and the check that runs before loading one.

A TensorRT plan is specific to one TensorRT version and one GPU compute capability, and
deserializing a mismatched one fails late and cryptically (or, for a damaged file, not at all).
The sidecar records what the engine was built from and for; :func:`check_engine` compares it with
the plan's bytes and the machine before anything is deserialized, and refuses with a message that
says to rebuild and gives the exact command.

Integrity: ``integrity_sha256`` is the sha256 of the canonical JSON of every other field of the
sidecar, and those include ``plan_sha256``, the sha256 of the engine's bytes; so one hash covers
engine and metadata. Both are recomputed on every load: an edited sidecar (a cutoff, a species
list, a profile) and a replaced or damaged engine are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlff_export.checkpoint import file_sha256
from mlff_export.export.engine_profiles import ShapeProfile, load_profiles
from mlff_export.interface import INTERFACE_VERSION
from mlff_export.json_documents import read_json_document

SIDECAR_FORMAT = "mlff-export-engine"
SIDECAR_FORMAT_VERSION = 2  # 2: integrity_sha256
INTEGRITY_KEY = "integrity_sha256"


class EngineMismatchError(RuntimeError):
    """An engine that must not be loaded here (damaged, or built for another TensorRT, GPU or interface)."""


@dataclass(frozen=True)
class EngineSidecar:
    """What ``NAME.plan.json`` records about ``NAME.plan``.

    Attributes:
        plan_sha256: sha256 of the plan file's bytes.
        tensorrt_flavour, tensorrt_version: ``"tensorrt"`` or ``"tensorrt-rtx"`` and its version.
        gpu_name, compute_capability: the build GPU, e.g. ``"NVIDIA H100 80GB HBM3"``, ``"9.0"``.
        precision: ``"fp32"`` or ``"fp16"`` (of the ONNX graph it was built from).
        profiles: the optimization profiles, in engine order (``ShapeProfile.to_dict``).
        onnx_path, onnx_sha256, weights_sha256: the source graph (path as given, graph hash from
            its metadata) and the weights it was exported from.
        interface_version, cutoff, species: the model contract (cutoff in Å, atomic numbers).
        build_time, build_seconds: UTC ISO time of the build and its duration in s.
        builder: builder settings (workspace MiB, optimisation level, TF32 cleared, timing cache).
    """

    plan_sha256: str
    tensorrt_flavour: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profiles: list[dict[str, str]]
    onnx_path: str
    onnx_sha256: str
    weights_sha256: str
    interface_version: str
    cutoff: float
    species: list[int]
    build_time: str
    build_seconds: float
    builder: dict = field(default_factory=dict)

    def shape_profiles(self) -> list[ShapeProfile]:
        return [ShapeProfile.from_dict(values, values["name"]) for values in self.profiles]


def sidecar_path(plan_path: str | Path) -> Path:
    """``NAME.plan`` -> ``NAME.plan.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".json")


def runtime_cache_path(plan_path: str | Path) -> Path:
    """``NAME.plan`` -> ``NAME.plan.runtime-cache`` (TensorRT-RTX's kernels compiled at run time)."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".runtime-cache")


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write ``path`` through a temporary file and a rename: readers never see half a file."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def integrity_sha256(document: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of every field of ``document`` but
    ``integrity_sha256``; the fields include ``plan_sha256``, so this covers engine and metadata."""
    body = {key: value for key, value in document.items() if key != INTEGRITY_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_sidecar(plan_path: str | Path, sidecar: EngineSidecar) -> Path:
    """Write the sidecar, with its integrity hash, beside ``plan_path`` atomically; returns its path."""
    path = sidecar_path(plan_path)
    document = {"format": SIDECAR_FORMAT, "format_version": SIDECAR_FORMAT_VERSION, **asdict(sidecar)}
    document[INTEGRITY_KEY] = integrity_sha256(document)
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode())
    return path


def rebuild_command(sidecar: EngineSidecar, plan_path: str | Path) -> str:
    """The ``mlff-export build-engine`` command that rebuilds this engine here."""
    named = load_profiles()
    words = ["mlff-export", "build-engine", "--onnx", sidecar.onnx_path, "--precision", sidecar.precision]
    for profile in sidecar.shape_profiles():
        if named.get(profile.name) == profile:
            words += ["--profile", profile.name]
        else:
            words += ["--atoms", str(profile.atoms), "--pairs", str(profile.neighbors), "--structures", str(profile.structures)]
    words += ["--out", str(plan_path)]
    return shlex.join(words)


def read_sidecar(plan_path: str | Path) -> EngineSidecar:
    """Read ``NAME.plan.json`` and check its integrity hash; raise :class:`EngineMismatchError` when it
    is missing, unreadable, of another version, or edited since the build."""
    path = sidecar_path(plan_path)
    hint = f"rebuild the engine with `mlff-export build-engine ... --out {plan_path}` (it writes both files)"
    document = read_json_document(
        path,
        kind="engine sidecar",
        format_name=SIDECAR_FORMAT,
        version_key="format_version",
        version=SIDECAR_FORMAT_VERSION,
        error=EngineMismatchError,
        hint=hint,
    )
    if document.get(INTEGRITY_KEY) != integrity_sha256(document):
        raise EngineMismatchError(
            f"{plan_path}: sidecar {path.name} does not match its integrity hash (edited or damaged since the "
            f"build), so what it says about the engine cannot be trusted; {hint}"
        )
    values = {key: value for key, value in document.items() if key not in ("format", "format_version", INTEGRITY_KEY)}
    try:
        return EngineSidecar(**values)
    except TypeError as error:
        raise EngineMismatchError(f"{plan_path}: sidecar {path.name} has unexpected fields ({error}); {hint}") from None


def check_engine(
    plan_path: str | Path, *, tensorrt_flavour: str, tensorrt_version: str, compute_capability: str
) -> EngineSidecar:
    """The engine's sidecar, after checking its integrity hash, the plan's sha256, the interface
    version, and that the TensorRT flavour+version and the GPU compute capability here are those it
    was built with.

    Raises :class:`EngineMismatchError` naming each mismatch, with the exact rebuild command.
    """
    plan_path = Path(plan_path)
    if not plan_path.is_file():
        raise EngineMismatchError(f"engine {plan_path} does not exist; build it with `mlff-export build-engine`")
    sidecar = read_sidecar(plan_path)
    problems = []
    if file_sha256(plan_path) != sidecar.plan_sha256:
        problems.append("the engine's bytes differ from those its sidecar recorded at build time (plan sha256: damaged or replaced file)")
    if sidecar.interface_version != INTERFACE_VERSION:
        problems.append(f"built for interface version {sidecar.interface_version!r}, this mlff-export uses {INTERFACE_VERSION!r}")
    if (sidecar.tensorrt_flavour, sidecar.tensorrt_version) != (tensorrt_flavour, tensorrt_version):
        problems.append(
            f"built with {sidecar.tensorrt_flavour} {sidecar.tensorrt_version}, this machine has {tensorrt_flavour} {tensorrt_version}"
        )
    if sidecar.compute_capability != compute_capability:
        problems.append(
            f"built for a GPU of compute capability {sidecar.compute_capability} ({sidecar.gpu_name}), "
            f"this GPU has {compute_capability}"
        )
    if problems:
        raise EngineMismatchError(
            f"engine {plan_path} cannot be used here: {'; '.join(problems)}. Rebuild it: {rebuild_command(sidecar, plan_path)}"
        )
    return sidecar
