"""Compiled kernels kept across processes: a new process reaches warm speed without compiling again.

``torch.compile`` of the joint graph costs seconds per shape bucket (minutes with max-autotune),
and Inductor's own cache lives in a temporary folder of one machine. A :class:`CompileCache` keeps
what Inductor produced (``torch.compiler.save_cache_artifacts``: compiled graphs, Triton kernels,
autotuning results) in a folder the user chooses, a subfolder per :class:`CompileCacheKey`, and hands
it back to Inductor (``load_cache_artifacts``) before anything compiles.

A stale cache is never used: the file name is the digest of the key — the compiled graph and its
weights (:func:`graph_fingerprint`), torch and Triton versions, the device model and the compile
mode — and the key is stored inside and compared on load, with a SHA-256 over the payload. The
shape buckets compiled so far are listed in the file (Inductor's own keys decide, per bucket,
whether a kernel matches). A damaged or foreign file is skipped with a warning; the process then
compiles and writes its own files beside it.

A cache holds executable kernels and Python pickles: it is read only from a folder owned by the
user and writable by no one else, like any cache of compiled code (use caches you made).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mlff_export.export.precision import weights_sha256

logger = logging.getLogger("mlff_export")

CACHE_ENV = "MLFF_EXPORT_COMPILE_CACHE"
"""Environment variable: the default cache folder (else ``$XDG_CACHE_HOME/mlff-export/compiled``)."""
FORMAT = "mlff-export-compile-cache/1"


def default_cache_folder() -> Path:
    """``$MLFF_EXPORT_COMPILE_CACHE``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/mlff-export/compiled``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mlff-export" / "compiled"


def graph_fingerprint(graph: torch.fx.GraphModule) -> str:
    """SHA-256 over a traced graph's code and its weights (:func:`~mlff_export.export.precision.weights_sha256`)."""
    return hashlib.sha256(f"{graph.code}\n{weights_sha256(graph)}".encode()).hexdigest()


def device_model(device: torch.device) -> str:
    """What compiled kernels depend on: the GPU model and compute capability, or the CPU's
    architecture and vector instruction set."""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{properties.name} sm_{properties.major}{properties.minor}"
    return f"cpu {platform.machine()} {torch.backends.cpu.get_cpu_capability()}"


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


@dataclass(frozen=True)
class CompileCacheKey:
    """Everything a compiled kernel depends on besides the shape bucket."""

    graph: str
    """:func:`graph_fingerprint` of the compiled graph (architecture and weights)."""
    torch: str
    triton: str | None
    device: str
    """:func:`device_model`"""
    mode: str
    """the backend's compile mode (``default``, ``reduce-overhead``, ``max-autotune``)"""

    @classmethod
    def of(cls, graph: torch.fx.GraphModule, device: torch.device, mode: str) -> CompileCacheKey:
        return cls(graph_fingerprint(graph), torch.__version__, triton_version(), device_model(device), mode)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:32]


def artifact_keys(info: object) -> set[tuple[str, str]]:
    """The (kind, key) of every artifact a ``torch.compiler`` ``CacheInfo`` lists."""
    return {(kind, key) for kind, keys in getattr(info, "artifacts", {}).items() for key in keys}


class CompileCache:
    """One key's compiled kernels under ``folder/<key digest>/``: per save that holds something the
    folder lacked, ``<stamp>-<n>.bin`` (Inductor's artifacts) and ``<stamp>-<n>.json`` (the key, the
    payload's SHA-256 and the buckets it adds). Each process writes only its own files, so
    processes sharing a folder never overwrite each other.

    A new pair per save: ``load_cache_artifacts`` keeps, per kind of artifact, only those of the
    last save in a payload (torch 2.13; a process whose one file was rewritten compiled one of its
    graphs again). A bucket whose kernels were all loaded from the folder or already saved (the
    third and later buckets, which the symbolic-size compile serves) writes nothing: with a pair per
    bucket, each repeating the earlier compiles, the H200's folder had reached 266 MB for 8 buckets."""

    def __init__(self, folder: str | Path, key: CompileCacheKey):
        self.folder = Path(folder).expanduser() / key.digest
        self.key = key
        self._stamp = f"{time.time_ns()}-{os.getpid()}"
        self._saves = 0
        self.buckets: list[list] = []
        """Buckets compiled before (loaded) or in this process."""
        self.without_new_kernels: list[list] = []
        """Buckets of this process that ran on kernels the folder held already (the symbolic-size
        compile of an earlier bucket), as far as this torch tells (``CacheInfo`` keys)."""
        self._stored: set[tuple[str, str]] = set()  # artifact keys the folder holds (loaded or written here)
        self._unsaved: list[list] = []  # buckets run since the last save: listed in the next manifest
        self._last_manifest: dict | None = None  # this process's last manifest (save self._saves - 1)

    @property
    def payload_path(self) -> Path:
        """Where this process's next save puts its payload: ``<stamp>-<n>.bin``."""
        return self._save_path(self._saves, ".bin")

    @property
    def manifest_path(self) -> Path:
        """The next save's manifest: ``<stamp>-<n>.json``."""
        return self._save_path(self._saves, ".json")

    def _save_path(self, save: int, suffix: str) -> Path:
        return self.folder / f"{self._stamp}-{save}{suffix}"

    def load(self) -> int:
        """Hand every usable stored payload to Inductor; returns how many were loaded. Unusable
        ones (damaged, edited, foreign, unsafe permissions) are skipped with a logged reason."""
        loaded = 0
        for manifest_path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            payload_path = manifest_path.with_suffix(".bin")
            manifest, problem = checked_manifest(manifest_path, payload_path, FORMAT, self.key)
            if problem is not None:
                logger.warning("mlff-export: compile cache %s not used: %s", manifest_path, problem)
                continue
            info = torch.compiler.load_cache_artifacts(payload_path.read_bytes())
            if info is None:
                logger.warning("mlff-export: compile cache %s not used: torch cannot read its payload", payload_path)
                continue
            self._stored |= artifact_keys(info)
            self.buckets += [bucket for bucket in manifest["buckets"] if bucket not in self.buckets]
            loaded += 1
        if loaded:
            logger.info("mlff-export: compile cache %s: %d buckets from %d files", self.folder, len(self.buckets), loaded)
        return loaded

    def add(self, bucket: tuple) -> None:
        """Record ``bucket`` (a tuple of input shapes) as compiled; if it is new and Inductor has made
        or used artifacts the folder lacks, save them as a new file pair (each file through a
        temporary file and a rename); if not, list it in this process's last manifest, if any."""
        entry = json.loads(json.dumps(bucket))  # tuples as lists, as they come back from a file
        if entry in self.buckets:
            return
        self.buckets.append(entry)
        self._unsaved.append(entry)
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return
        payload, keys = saved[0], artifact_keys(saved[1])
        if keys and keys <= self._stored:  # the folder holds all of it (a torch whose CacheInfo names no keys: always saved)
            self.without_new_kernels.append(entry)
            if self._last_manifest is not None:  # listed in this process's last manifest, beside its payload
                self._last_manifest["buckets"] += self._unsaved
                write_atomically(self._save_path(self._saves - 1, ".json"), json.dumps(self._last_manifest, indent=1).encode())
                self._unsaved = []
            return
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._last_manifest = {"format": FORMAT, "key": asdict(self.key), "payload_sha256": hashlib.sha256(payload).hexdigest(),
                               "buckets": self._unsaved}
        write_atomically(self.payload_path, payload)
        write_atomically(self.manifest_path, json.dumps(self._last_manifest, indent=1).encode())
        self._saves += 1
        self._unsaved = []
        self._stored |= keys


def checked_manifest(manifest_path: Path, payload_path: Path, format: str, key: CompileCacheKey) -> tuple[dict | None, str | None]:
    """(manifest, None) for a usable pair of cache files, else (None, why not): both files and their
    folder owned by this user and writable by no one else (they hold executable code), the manifest
    of ``format`` made for ``key``, the payload matching the SHA-256 the manifest records."""
    for path in (manifest_path.parent, manifest_path, payload_path):
        if not path.exists():
            return None, f"{path.name} is missing"
        status = path.stat()
        if status.st_uid != os.getuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None, f"{path} is not owned by this user or is writable by others (a cache holds executable code)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return None, f"its manifest cannot be read ({error})"
    if not isinstance(manifest, dict) or manifest.get("format") != format or manifest.get("key") != asdict(key):
        return None, "it was made for another graph, torch, Triton, device or compile mode"
    if hashlib.sha256(payload_path.read_bytes()).hexdigest() != manifest.get("payload_sha256"):
        return None, "its payload does not match the SHA-256 in its manifest (damaged or edited)"
    return manifest, None


def usable_payload(manifest_path: Path, payload_path: Path, format: str, key: object, what: str) -> bool:
    """Whether a single-payload store's ``payload_path`` may be used: its manifest exists and passes
    :func:`checked_manifest`; where it does not pass, a warning "``what`` <payload> not used: <why>"."""
    if not manifest_path.exists():
        return False
    _, problem = checked_manifest(manifest_path, payload_path, format, key)
    if problem is not None:
        logger.warning("mlff-export: %s %s not used: %s", what, payload_path, problem)
    return problem is None


def keep_with_manifest(finished: Path, payload_path: Path, manifest_path: Path, format: str, key: object) -> None:
    """Make the ``finished`` file (written beside ``payload_path``) the payload, private and by a
    rename (no reader sees half a file), then write its manifest: ``format``, ``key``, the payload's SHA-256."""
    os.chmod(finished, 0o600)
    os.replace(finished, payload_path)
    manifest = {"format": format, "key": asdict(key), "payload_sha256": hashlib.sha256(payload_path.read_bytes()).hexdigest()}
    write_atomically(manifest_path, json.dumps(manifest, indent=1).encode())


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file and a rename, readable and writable by this user only."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
