"""A compile backend's joint graph compiled ahead of time: one AOTInductor package in the compile cache folder.

Inductor's cache artifacts (:mod:`~mlff_export.runtime.compile_cache`) spare a new process Inductor's
code generation, not Dynamo's trace of the joint graph: with them the first answer still took 27 s
on the H200 (``bench/results/2026-11-30-h200-perf``). An AOTInductor package is the graph exported
with symbolic sizes (atoms, table width, structures: one package serves every shape bucket) and
compiled to a shared library (``torch._inductor.aoti_compile_and_package``); loading it takes
milliseconds and involves no tracer (the backend has traced the joint graph once already: the
package's key is that graph's fingerprint). ``mlff-export compile --aot`` builds it and keeps it only if a
new process loads it (:func:`load_problem`); a compile backend that
finds a package for its key runs it instead of ``torch.compile`` (and still captures each bucket's
CUDA graph around it).

The package sits beside the compile cache's files, under the digest of its key: the compile cache's
key with mode ``aot-<mode>`` (the graph and its weights, torch and Triton versions, the device
model), checked together with the package's SHA-256 and the folder's ownership before it is loaded
(:func:`~mlff_export.runtime.compile_cache.checked_manifest`); a package that fails a check is not
loaded, with the reason logged. Like the compile cache it holds executable code: use packages you built.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.runtime.compile_cache import CompileCacheKey, keep_with_manifest, usable_payload


FORMAT = "mlff-export-aot-package/1"
INDUCTOR_CONFIGS = {
    "default": {},
    "reduce-overhead": {},
    "max-autotune": {"max_autotune_gemm": True, "test_configs.max_mm_configs": 4},
}
"""Inductor options per compile mode, of ``torch.compile`` and of the package alike (CUDA graphs are
ours, per bucket). ``max-autotune`` autotunes the GEMMs only, not Inductor's ``max-autotune`` mode
(which adds autotuning of every fused kernel and coordinate-descent tuning), and times at most four
Triton candidates per GEMM besides ATen's (Inductor's list starts with the small tiles that small
molecules need; ~15 otherwise). On the H200 the GEMMs alone gave the fastest benzene graph of the
options tried (replay 156 µs; 180 µs with default options or with coordinate-descent tuning alone)
and a first compile of 133 s where the whole mode took 206 s; four candidates then gave the same
benzene speed as all of them (FP16 model call 189.4 against 190.0 µs) in a first compile of 34 s
against 87 s (``bench/results/2026-12-01-h200-kernels-memory``, ``bench/results/2026-12-01-h200-autotune-memory``,
``bench/results/2026-12-01-h200-autotune-candidates``)."""


def aot_key(key: CompileCacheKey) -> CompileCacheKey:
    """The package's key: the compile cache's, with mode ``aot-<mode>``."""
    return replace(key, mode=f"aot-{key.mode}")


class AotPackage:
    """``folder/<key digest>/joint-graph.pt2`` and its manifest ``joint-graph.json`` (key, SHA-256)."""

    def __init__(self, folder: str | Path, key: CompileCacheKey):
        self.key = aot_key(key)
        self.folder = Path(folder).expanduser() / self.key.digest
        self.package_path = self.folder / "joint-graph.pt2"
        self.manifest_path = self.folder / "joint-graph.json"

    def load(self) -> Callable | None:
        """The compiled graph (called like the traced one), or ``None``: no package, or one that
        fails a check (logged as a warning with the reason)."""
        if not usable_payload(self.manifest_path, self.package_path, FORMAT, self.key, "compiled package"):
            return None
        return torch._inductor.aoti_load_package(str(self.package_path))

    def remove(self) -> None:
        """Delete the package and its manifest (the manifest first: a package without one is never loaded)."""
        self.manifest_path.unlink(missing_ok=True)
        self.package_path.unlink(missing_ok=True)

    def build(self, graph: torch.fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> Path:
        """Export ``graph`` (a traced neighbor-table joint graph, on the device it is compiled for) with
        symbolic sizes, compile it and write the package and its manifest; returns the package path."""
        from mlff_export.runtime.joint_graph import with_numel_as_method

        mode = self.key.mode.removeprefix("aot-")
        program = torch.export.export(
            with_numel_as_method(graph), tuple(example_inputs), dynamic_shapes=NEIGHBOR_TABLE.dynamic_shapes(), strict=False
        )
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.folder / ".joint-graph.tmp.pt2"  # the packager wants the .pt2 suffix
        torch._inductor.aoti_compile_and_package(program, package_path=str(temporary), inductor_configs=INDUCTOR_CONFIGS[mode])
        problem = load_problem(temporary)
        if problem is not None:  # never moved into place, no manifest: never loaded by anyone
            temporary.unlink()
            raise AotPackageError(
                f"the AOTInductor package just built does not load in a new process ({problem}; torch {torch.__version__}); "
                "it was not kept. The compile cache (mlff-export compile without --aot) serves this machine"
            )
        keep_with_manifest(temporary, self.package_path, self.manifest_path, FORMAT, self.key)
        return self.package_path


class AotPackageError(RuntimeError):
    """A package was built but cannot be used here (it was not kept)."""


LOAD_PROBE = "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1])"
"""What a new process does with the package before it is kept (on the H200 image of 2026-12-01, torch
2.11+cu130, loading any CUDA package crashed the process with a segmentation fault)."""


def load_problem(package_path: Path, probe: str = LOAD_PROBE, timeout: float = 300.0) -> str | None:
    """Why ``package_path`` does not load in a fresh Python process (``None``: it loads). A child
    process, because a broken package can crash the process that loads it (``probe``: the child's
    code, given the path; replaced only by tests of this logic)."""
    try:
        done = subprocess.run([sys.executable, "-c", probe, str(package_path)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"loading took over {timeout:.0f} s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        return f"the process loading it died of signal {-done.returncode} ({signal.Signals(-done.returncode).name})"
    last = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
    return f"loading it failed: {last[0]}"
