"""Run a benchmark suite: every case on every workload, in one process, with parity to eager.

Workload kinds:

* ``latency``: one structure through the ASE calculator (``atoms.get_forces()``, a new geometry
  each call, neighbor list included): median seconds per call;
* ``model``: the backend's model call alone on prepared device inputs (no neighbor list, no
  conversion), where the backend separates ``prepare`` and ``run``;
* ``batch``: ``calc.predict`` of B small molecules: structures per second;
* ``loop``: the same 1024 molecules one call at a time (the baseline batching must beat);
* ``md``: ASE VelocityVerlet steps per second through the calculator (Verlet skin 0.5 Å).

Each (case, workload) also records peak GPU memory (torch allocations), the largest energy and
force differences from eager FP32 on the same structures, whether its timing stayed noisy
(:mod:`.timing`) and how busy the machine was meanwhile (:mod:`.machine_load`).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from mlff_export.bench.availability import ALL_BACKENDS
from mlff_export.bench.cases import Case
from mlff_export.bench.machine_load import LoadMeter, MachineLoad
from mlff_export.bench.timing import time_calls
from mlff_export.bench.workloads import LARGER_MOLECULE, SEED_MOLECULES, seed_molecule, small_molecule_batch, water_box
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime.calculator import MLFFCalculator


@dataclass
class Workload:
    """One measured task. ``structures`` are what parity is checked on."""

    name: str
    kind: str
    structures: list[Atoms]
    repeats: int = 20
    md_steps: int = 0
    max_seconds: float = 10.0
    """Time budget of the timed calls (the noise guard's extra samples stop there)."""

    @property
    def num_atoms(self) -> int:
        return sum(len(atoms) for atoms in self.structures)


@dataclass
class Suite:
    """Workloads, and the backends run when none are named."""

    name: str
    workloads: list[Workload] = field(default_factory=list)
    default_backends: tuple[str, ...] = ALL_BACKENDS
    only_on: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """backend -> the workloads it runs (the others are skipped for it); absent: all."""

    def runs(self, backend: str, workload: Workload) -> bool:
        if workload.kind == "loop":
            return backend == "eager"  # the baseline that batching must beat
        return workload.name in self.only_on.get(backend, (workload.name,))


QUICK_ROW_SECONDS = 3.0
"""The quick suite's time budget per row: a busy CPU gets noisy rows, not a run of many minutes."""


def build_suite(name: str, only: str | None = None) -> Suite:
    """``quick`` (CPU-sized), ``full`` (the GPU run) or ``models`` (a user's model on the GPU:
    benzene, a batch of 1024 molecules, 10k-atom water); ``only`` keeps the workloads whose name
    contains it."""
    suite = _named_suite(name)
    if only:
        suite.workloads = [w for w in suite.workloads if only in w.name]
        if not suite.workloads:
            raise ValueError(f"--only {only!r} matches no workload of suite {name!r}")
    return suite


def _named_suite(name: str) -> Suite:
    if name == "quick":
        return Suite(
            "quick",
            [Workload(f"latency {m}", "latency", [seed_molecule(m)], repeats=10, max_seconds=QUICK_ROW_SECONDS) for m in SEED_MOLECULES]
            + [Workload("model C6H6", "model", [seed_molecule("C6H6")], repeats=10, max_seconds=QUICK_ROW_SECONDS)]
            + [Workload(f"batch {b}", "batch", small_molecule_batch(b), repeats=5, max_seconds=QUICK_ROW_SECONDS) for b in (1, 4, 16)]
            + [Workload("latency water-81", "latency", [water_box(81)], repeats=5, max_seconds=QUICK_ROW_SECONDS)]
            + [Workload("md C6H6", "md", [seed_molecule("C6H6")], repeats=1, md_steps=20)],
            default_backends=("eager", "onnxruntime"),  # compiling on a CPU alone takes minutes
        )
    if name == "full":
        return Suite(
            "full",
            [Workload(f"latency {m}", "latency", [seed_molecule(m)]) for m in (*SEED_MOLECULES, LARGER_MOLECULE)]
            + [Workload(f"model {m}", "model", [seed_molecule(m)], repeats=50) for m in ("C6H6", LARGER_MOLECULE)]
            + [Workload(f"batch {b}", "batch", small_molecule_batch(b), repeats=10) for b in (1, 2, 4, 16, 64, 256, 1024)]
            + [Workload("loop 1024", "loop", small_molecule_batch(1024), repeats=1)]
            + [Workload(f"latency water-{n}", "latency", [water_box(n)], repeats=10) for n in (1000, 10000, 100000)]
            + [Workload("md C6H6", "md", [seed_molecule("C6H6")], repeats=1, md_steps=200)],
            # Each compiled shape bucket costs tens of seconds of compilation: the seed's other
            # compile modes are re-measured on benzene; reduce-overhead runs everything.
            only_on={mode: ("latency C6H6", "model C6H6") for mode in ("compile", "compile-max-autotune")},
        )
    if name == "models":  # a user's model on the GPU: the three workloads, against its own eager
        return Suite(
            "models",
            [Workload("latency C6H6", "latency", [seed_molecule("C6H6")]),
             Workload("batch 1024", "batch", small_molecule_batch(1024), repeats=10),
             Workload("latency water-10000", "latency", [water_box(10000)], repeats=10)],
            only_on={"compile-max-autotune": ("latency C6H6",)},
        )
    raise ValueError(f"suite must be 'quick', 'full' or 'models', got {name!r}")


def _jiggle(atoms: Atoms, step: int) -> None:
    """A new geometry each call (no calculator cache hits), returning to the start every 2 steps."""
    atoms.positions[0, 0] += 1e-4 * (-1) ** step


def _timed_task(workload: Workload, calc: MLFFCalculator) -> tuple[Callable[[int], object], int]:
    """The call to time for ``workload`` and how many structures one call evaluates."""
    if workload.kind == "latency":
        atoms = workload.structures[0].copy()
        atoms.calc = calc
        return (lambda step: (_jiggle(atoms, step), atoms.get_forces())), 1
    if workload.kind == "model":
        atoms = workload.structures[0]
        inputs = batch_inputs([atoms], [compute_pairs(atoms, calc.neighbor_list.cutoff)], dtype=calc.backend.dtype)
        backend = calc.backend
        if hasattr(backend, "prepare"):
            # The feeds the calculator builds: on the GPU where the backend can (device_feeds).
            device_feeds = getattr(backend, "device_feeds", None)
            prepared = device_feeds(atoms) if device_feeds is not None else None
            prepared = prepared if prepared is not None else backend.prepare(inputs)
            return (lambda step: backend.run(prepared)), 1
        on_device = inputs.to(backend.device)
        return (lambda step: backend.evaluate(on_device)), 1
    if workload.kind == "batch":
        return (lambda step: calc.predict(workload.structures)), len(workload.structures)
    if workload.kind == "loop":
        return (lambda step: [calc.predict([atoms]) for atoms in workload.structures]), len(workload.structures)
    raise ValueError(f"unknown workload kind {workload.kind!r}")


def _md_steps_per_second(workload: Workload, calc: MLFFCalculator, device: torch.device) -> tuple[float, float, MachineLoad]:
    """(steps per second, total-energy drift in eV, the machine's load meanwhile) of a
    VelocityVerlet run at 0.5 fs."""
    atoms = workload.structures[0].copy()
    skin, calc.skin = calc.skin, 0.5
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.run(5)  # warm-up: compile or capture outside the clock
    start_energy = atoms.get_total_energy()
    meter = LoadMeter()
    start = time.perf_counter()
    dynamics.run(workload.md_steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    load = meter.stop()
    calc.skin = skin
    return workload.md_steps / seconds, float(atoms.get_total_energy() - start_energy), load


def _parity(calc: MLFFCalculator, reference: list[dict], structures: list[Atoms]) -> dict[str, float]:
    results = calc.predict(structures)
    energy = max(abs(r["energy"] - e["energy"]) for r, e in zip(results, reference))
    forces = max(float(np.abs(r["forces"] - e["forces"]).max()) for r, e in zip(results, reference))
    return {"max_abs_energy_error_ev": energy, "max_abs_force_error_ev_per_a": forces}


def run_suite(
    suite: Suite,
    cases: list[Case],
    reference_calc: MLFFCalculator,
    device: torch.device,
    progress: Callable[[str], None],
) -> Iterator[dict]:
    """Measure every case on every workload; yields one JSON-ready record per pair.

    A failure (out of memory, an unsupported op) becomes a record with ``error`` set, and the
    suite goes on.
    """
    references: dict[str, list[dict] | None] = {}

    def reference_for(workload: Workload) -> list[dict] | None:
        """Eager FP32 results of the workload, computed once; None where eager itself fails (OOM)."""
        if workload.kind == "loop":
            return None
        if workload.name not in references:
            try:
                references[workload.name] = reference_calc.predict(workload.structures)
            except torch.cuda.OutOfMemoryError:
                references[workload.name] = None
                torch.cuda.empty_cache()
        return references[workload.name]

    for case in cases:
        progress(f"{case.label}: building")
        try:
            calc = case.build()
        except Exception as error:  # noqa: BLE001 - a row that cannot be built is reported, not fatal
            yield {"case": case.label, "backend": case.backend, "precision": case.precision, "error": f"build: {error}"}
            continue
        for workload in suite.workloads:
            if not suite.runs(case.backend, workload):
                continue
            progress(f"{case.label}: {workload.name}")
            yield _measure(case, workload, calc, lambda: reference_for(workload), device)
        del calc
        gc.collect()
        # A fresh torch.compile state per case: after an out-of-memory inside one case, later
        # compiles in the same process failed with "Attempt to trace generator" (H100, torch 2.11).
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _measure(
    case: Case, workload: Workload, calc: MLFFCalculator, reference: Callable[[], list[dict] | None], device
) -> dict:
    """Time ``calc`` on ``workload``, then compare with the eager ``reference`` (computed after the
    timing: an eager out-of-memory must not precede a compiled backend's first call)."""
    record = {
        "case": case.label,
        "backend": case.backend,
        "precision": case.precision,
        "workload": workload.name,
        "kind": workload.kind,
        "num_atoms": workload.num_atoms,
        "num_structures": len(workload.structures),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if workload.kind == "md":
            steps_per_second, drift, load = _md_steps_per_second(workload, calc, device)
            record.update(steps_per_s=steps_per_second, atom_steps_per_s=steps_per_second * workload.num_atoms,
                          md_energy_drift_ev=drift, median_s=1 / steps_per_second, load=load.to_dict())
        else:
            call, structures_per_call = _timed_task(workload, calc)
            timing = time_calls(call, device, repeats=workload.repeats, warmup=2 if workload.kind == "loop" else 3,
                                max_seconds=workload.max_seconds)
            q1, q3 = timing.interquartile
            record.update(
                median_s=timing.median, q1_s=q1, q3_s=q3, samples_s=timing.samples, noisy=timing.noisy,
                load=timing.load.to_dict(), structures_per_s=structures_per_call / timing.median,
                atom_steps_per_s=workload.num_atoms / timing.median,
            )
        expected = reference()
        if expected is not None:
            record.update(_parity(calc, expected, workload.structures))
        elif workload.kind != "loop":
            record["parity"] = "not measured: eager FP32 ran out of GPU memory on this workload"
    except torch.cuda.OutOfMemoryError as error:
        record["error"] = f"out of GPU memory: {str(error).splitlines()[0]}"
    except Exception as error:  # noqa: BLE001 - reported in the table, the suite goes on
        record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if device.type == "cuda":
        record["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def write_jsonl(records: Iterator[dict], path: Path) -> list[dict]:
    """Append each record to ``path`` as it arrives (a cut-off run keeps what it measured)."""
    kept = []
    with open(path, "a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            kept.append(record)
    return kept
