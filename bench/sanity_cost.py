"""What the load-time integrity checks and the per-call sanity checks cost, and a long NVE run
that must never trip them.

    python bench/sanity_cost.py OUT [--device cuda] [--onnx FILE] [--backends none] [--nve-steps 10000]

Writes ``OUT/sanity_cost.json`` and ``OUT/sanity_cost.md`` (and ``OUT/nve_benzene.json`` when
``--nve-steps`` > 0), all with the reference model and benzene:

* **load**: ``read_verified_artifact`` of the fp32 ``.onnx`` (read, parse, metadata, hash, finite
  weights) against a cold ``load_calculator(.onnx)`` and against that plus its first benzene call;
  the checkpoint card's checks (card and weights hashes) against ``load_checkpoint``.
* **per call**, for each backend: the warm benzene call through the calculator (median); the host
  checks it runs (structure, density, finite results, the one-caller lock, and the closest pair
  where the neighbor list is built on the host), timed one by one and as an A/B of the same
  backend with them switched off; on the GPU input path the device check (``closest_distance``):
  for captured backends the bucket's CUDA graph replayed with and without it, for ONNX Runtime
  its own small CUDA graph replayed back to back. ``sanity_share`` = (host + device) / warm call.
* **NVE**: ``--nve-steps`` VelocityVerlet steps of benzene (0.5 fs, 300 K) with ``--nve-backend``
  and with the float64 eager reference from the same start; passes when the artifact's drift
  exceeds the reference's by at most the validated fp32 bound and no check fired. The closest
  pair of every step is recorded, for the margin to ``min_distance``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from ase import Atoms
from ase.build import molecule

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.bench.environment import describe_environment
from mlff_export.checkpoint import card_sha256, load_checkpoint, read_card
from mlff_export.export.metadata import read_verified_artifact
from mlff_export.neighbors import check_structure
from mlff_export.runtime import calculator as calculator_module
from mlff_export.runtime import device_feeds, joint_graph
from mlff_export.runtime.calculator import MLFFCalculator, _structure_results, all_finite, load_calculator
from mlff_export.structure_sanity import check_closest_pair, check_density
from mlff_export.validation.physics import compare_nve
from mlff_export.validation.tolerances import default_tolerances

CPU_BACKENDS = ("eager", "onnxruntime")
GPU_BACKENDS = ("eager", "cuda-graphs", "compile-reduce-overhead", "compile-max-autotune", "onnxruntime")


def median_us(call: Callable[[], object], device: torch.device, repeats: int, warmup: int = 20) -> float:
    """Median wall time of ``call`` in µs, the device synchronised after each call."""
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        call()
    synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        synchronize()
        samples.append(time.perf_counter() - start)
    return 1e6 * float(np.median(samples))


def benzene() -> Atoms:
    atoms = molecule("C6H6")
    atoms.rattle(0.02, seed=0)
    return atoms


def moving_calls(calc: MLFFCalculator, atoms: Atoms) -> Callable[[], object]:
    """A benzene call through the calculator with new positions each time (no cache hits)."""
    atoms = atoms.copy()
    atoms.calc = calc
    step = [0]

    def call():
        step[0] += 1
        atoms.positions[0, 0] += 1e-4 * (-1) ** step[0]
        return atoms.get_forces()

    return call


# ---------------------------------------------------------------------------------------------- load


def load_costs(onnx_path: Path, device: torch.device, repeats: int) -> dict:
    """Integrity checks at load against what loading costs anyway. The check is timed alone (warm
    caches) and just before each cold load (what a load meets: caches flushed by the last one)."""
    artifact_ms = median_us(lambda: read_verified_artifact(onnx_path), torch.device("cpu"), repeats, warmup=2) / 1e3
    in_sequence, cold_loads, with_first_call = [], [], []
    for _ in range(max(3, repeats // 4)):
        start = time.perf_counter()
        read_verified_artifact(onnx_path)
        checked = time.perf_counter()
        calc = load_calculator(onnx_path, device)
        loaded = time.perf_counter()
        calc.get_potential_energy(benzene())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        in_sequence.append(checked - start)
        cold_loads.append(loaded - checked)
        with_first_call.append(time.perf_counter() - checked)
    check_ms, cold_load_ms, first_call_ms = (1e3 * float(np.median(values)) for values in (in_sequence, cold_loads, with_first_call))
    card = read_card(REFERENCE_CHECKPOINT)
    weights = REFERENCE_CHECKPOINT.parent / card["weights_file"]
    card_checks_ms = median_us(
        lambda: (card_sha256(read_card(REFERENCE_CHECKPOINT)), hashlib.sha256(weights.read_bytes()).hexdigest()),
        torch.device("cpu"),
        repeats,
        warmup=2,
    ) / 1e3
    checkpoint_ms = median_us(lambda: load_checkpoint(REFERENCE_CHECKPOINT), torch.device("cpu"), repeats, warmup=2) / 1e3
    return {
        "onnx_file_bytes": onnx_path.stat().st_size,
        "onnx_integrity_check_alone_ms": artifact_ms,
        "onnx_integrity_check_ms": check_ms,
        "cold_load_calculator_ms": cold_load_ms,
        "cold_load_and_first_call_ms": first_call_ms,
        "integrity_share_of_cold_load": check_ms / cold_load_ms,
        "integrity_share_of_cold_load_and_first_call": check_ms / first_call_ms,
        "checkpoint_card_and_weights_hash_ms": card_checks_ms,
        "load_checkpoint_ms": checkpoint_ms,
        "checkpoint_checks_share": card_checks_ms / checkpoint_ms,
    }


# ---------------------------------------------------------------------------------------------- per call


@contextlib.contextmanager
def host_checks_off(calc: MLFFCalculator) -> Iterator[None]:
    """The calculator's host-side checks replaced by nothing (for the A/B only)."""
    skip = lambda *args, **kwargs: None  # noqa: E731
    with contextlib.ExitStack() as stack:
        for name in ("check_structure", "check_density", "check_closest_pair"):
            stack.enter_context(mock.patch.object(calculator_module, name, skip))
        stack.enter_context(mock.patch.object(calc, "_results", lambda structures, outputs, indices: _structure_results(structures, outputs)))
        stack.enter_context(mock.patch.object(calc, "_one_caller", contextlib.nullcontext()))
        yield


def host_check_components_us(calc: MLFFCalculator, atoms: Atoms, repeats: int, on_device_path: bool) -> dict:
    """Each host check of one benzene call, timed alone (µs). On the GPU input path the closest
    pair is measured on the device instead, so the host's ``check_closest_pair`` is not among them."""
    cpu = torch.device("cpu")
    pairs = calc.neighbor_list.pairs(atoms)
    outputs = {"energy": np.zeros(1), "forces": np.zeros((len(atoms), 3)), "virial": np.zeros((1, 3, 3))}

    def one_caller():
        with calc._one_caller:
            pass

    components = {
        "check_structure": median_us(lambda: check_structure(atoms, calc.species), cpu, repeats),
        "check_density": median_us(lambda: check_density(atoms), cpu, repeats),
        "finite_results": median_us(lambda: all_finite(outputs.values()), cpu, repeats),
        "one_caller_lock": median_us(one_caller, cpu, repeats),
    }
    if not on_device_path:
        components["check_closest_pair"] = median_us(lambda: check_closest_pair(atoms, pairs, calc.min_distance), cpu, repeats)
    return components


def replay_us(replay: Callable[[], object], device: torch.device, repeats: int) -> float:
    """GPU time per replay (CUDA events around ``repeats`` back-to-back replays), µs."""
    for _ in range(10):
        replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(repeats):
        replay()
    end.record()
    torch.cuda.synchronize(device)
    return 1e3 * start.elapsed_time(end) / repeats


def device_check_us(calc: MLFFCalculator, atoms: Atoms, repeats: int) -> dict:
    """The GPU input path's closest-pair check on the device, µs (empty where the path is not used)."""
    backend = calc.backend
    feeds = backend.device_feeds(atoms) if getattr(backend, "device_feeds", None) is not None else None
    if feeds is None:
        return {}
    device = backend.device
    if isinstance(backend, joint_graph.JointGraphBackend) and backend.capture:
        with_check = joint_graph._CapturedBucket(backend.call, feeds, device, backend.closest_call)
        infinity = torch.full((1,), math.inf, device=device)
        without_check = joint_graph._CapturedBucket(backend.call, feeds, device, lambda _buffers: infinity)
        with_us = replay_us(with_check.graph.replay, device, repeats)
        without_us = replay_us(without_check.graph.replay, device, repeats)
        return {"how": "inside the bucket's CUDA graph", "graph_replay_with_us": with_us, "graph_replay_without_us": without_us,
                "device_check_us": max(0.0, with_us - without_us)}
    if hasattr(backend, "_buckets") and backend._buckets:  # ONNX Runtime: our own small CUDA graph per bucket
        bucket = next(iter(backend._buckets.values()))
        if bucket.closest is not None:
            return {"how": "its own CUDA graph, one replay per call (back-to-back replays, CUDA events)",
                    "device_check_us": replay_us(bucket.closest, device, repeats)}
    return {"how": "plain torch ops", "device_check_us": median_us(lambda: device_feeds.closest_distance(device_feeds.on_device(feeds, device)), device, repeats)}


def per_call_costs(backend_name: str, onnx_path: Path, device: torch.device, repeats: int) -> dict:
    model = onnx_path if backend_name == "onnxruntime" else REFERENCE_CHECKPOINT
    calc = load_calculator(model, device, backend=None if backend_name == "onnxruntime" else backend_name)
    atoms = benzene()
    call = moving_calls(calc, atoms)
    for _ in range(5):  # compile, capture, autotune outside the timing
        call()
    warm_us, unchecked_us = [], []
    for _ in range(10):  # interleaved blocks: the machine's drift hits both alike
        warm_us.append(median_us(call, device, repeats // 10, warmup=5))
        with host_checks_off(calc):
            unchecked_us.append(median_us(call, device, repeats // 10, warmup=5))
    device_part = device_check_us(calc, atoms, repeats) if device.type == "cuda" else {}
    components = host_check_components_us(calc, atoms, repeats, on_device_path=bool(device_part))
    warm, unchecked = float(np.median(warm_us)), float(np.median(unchecked_us))
    host_total = sum(components.values())
    return {
        "warm_call_us": warm,
        "warm_call_host_checks_off_us": unchecked,
        "host_checks_ab_us": warm - unchecked,
        "host_checks_us": components,
        "host_checks_sum_us": host_total,
        "device_check": device_part,
        "sanity_share": (host_total + device_part.get("device_check_us", 0.0)) / warm,
    }


# ---------------------------------------------------------------------------------------------- NVE


def nve_run(backend_name: str, onnx_path: Path, device: torch.device, steps: int) -> dict:
    """``steps`` of NVE with ``backend_name`` against the float64 eager reference (validate's check)."""
    model = onnx_path if backend_name == "onnxruntime" else REFERENCE_CHECKPOINT
    artifact = load_calculator(model, device, backend=None if backend_name == "onnxruntime" else backend_name, skin=0.5)
    reference = load_calculator(REFERENCE_CHECKPOINT, device, dtype="float64", skin=0.5)
    closest: list[float] = []
    original = artifact.calculate

    def calculate_and_record(atoms=None, *args, **kwargs):
        original(atoms, *args, **kwargs)
        positions = artifact.atoms.positions
        distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        closest.append(float(distances[np.triu_indices(len(positions), 1)].min()))

    artifact.calculate = calculate_and_record
    allowed = default_tolerances("fp32").nve_drift_excess
    start = time.perf_counter()
    try:
        comparison = compare_nve(artifact, reference, molecule("C6H6"), structure="benzene", steps=steps, allowed_excess=allowed)
    except Exception as error:  # a check firing falsely is the failure this run looks for
        return {"backend": backend_name, "steps": steps, "passed": False, "check_fired": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(), "closest_pair_min_A": min(closest, default=None)}
    energies = np.array(comparison.artifact.total_energies)
    return {
        "backend": backend_name,
        "steps": steps,
        "timestep_fs": comparison.artifact.timestep_fs,
        "temperature_K": comparison.artifact.temperature_K,
        "seconds": time.perf_counter() - start,
        "drift_per_atom_eV": comparison.artifact.drift_per_atom,
        "reference_drift_per_atom_eV": comparison.reference.drift_per_atom,
        "excess_eV_per_atom": comparison.excess,
        "allowed_excess_eV_per_atom": allowed,
        "max_deviation_per_atom_eV": comparison.artifact.max_deviation_per_atom,
        "check_fired": None,
        "closest_pair_min_A": min(closest),
        "min_distance_A": artifact.min_distance,
        "total_energy_every_100_steps_eV": energies[::100].tolist(),
        "passed": comparison.passed,
    }


# ---------------------------------------------------------------------------------------------- report


def summary_markdown(results: dict) -> str:
    load = results["load"]
    lines = [
        f"# Sanity and integrity cost ({results['environment'].get('gpu', results['environment']['cpu'])}, {results['environment']['date']})",
        "",
        f"Load: integrity check of the fp32 .onnx ({load['onnx_file_bytes'] / 2**20:.1f} MiB) {load['onnx_integrity_check_ms']:.2f} ms "
        f"({load['onnx_integrity_check_alone_ms']:.2f} ms with warm caches) "
        f"= {100 * load['integrity_share_of_cold_load']:.1f} % of a cold load_calculator ({load['cold_load_calculator_ms']:.1f} ms), "
        f"{100 * load['integrity_share_of_cold_load_and_first_call']:.1f} % of load + first call ({load['cold_load_and_first_call_ms']:.1f} ms). "
        f"Checkpoint card + weights hashes {load['checkpoint_card_and_weights_hash_ms']:.2f} ms of load_checkpoint's {load['load_checkpoint_ms']:.1f} ms.",
        "",
        "| backend | warm call µs | host checks µs (sum / A-B) | device check µs | sanity share |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in results["per_call"].items():
        if "error" in row:
            lines.append(f"| {name} | error: {row['error']} | | | |")
            continue
        device_us = row["device_check"].get("device_check_us")
        lines.append(
            f"| {name} | {row['warm_call_us']:.1f} | {row['host_checks_sum_us']:.1f} / {row['host_checks_ab_us']:.1f} | "
            f"{'-' if device_us is None else f'{device_us:.2f}'} | {100 * row['sanity_share']:.2f} % |"
        )
    if results.get("nve"):
        nve = results["nve"]
        lines += ["", f"NVE, {nve['steps']} steps with {nve['backend']}: " + (
            f"drift {nve['drift_per_atom_eV']:.2e} eV/atom (reference {nve['reference_drift_per_atom_eV']:.2e}), excess "
            f"{nve['excess_eV_per_atom']:.2e} <= {nve['allowed_excess_eV_per_atom']:.0e}; closest pair {nve['closest_pair_min_A']:.3f} Å "
            f"(min_distance {nve['min_distance_A']} Å); no check fired; {'PASSED' if nve['passed'] else 'FAILED'}"
            if nve["check_fired"] is None else f"a check fired: {nve['check_fired']} FAILED")]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for sanity_cost.json, sanity_cost.md, nve_benzene.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--onnx", type=Path, help="the reference model's fp32 export (default: exported into OUT)")
    parser.add_argument("--backends", help=f"comma-separated, or 'none' (default: {','.join(CPU_BACKENDS)} on CPU, {','.join(GPU_BACKENDS)} on CUDA)")
    parser.add_argument("--repeats", type=int, default=500, help="timed calls per measurement (default 500)")
    parser.add_argument("--nve-steps", type=int, default=None, help="NVE steps (default: 10000 on CUDA, 0 on CPU)")
    parser.add_argument("--nve-backend", default="compile-max-autotune", help="backend of the NVE run (default: the fastest, compile-max-autotune)")
    parser.add_argument("--note", default="", help="a line about the machine (e.g. 'shared with other jobs')")
    args = parser.parse_args()
    if args.repeats < 10 or (args.nve_steps is not None and args.nve_steps < 0):
        parser.error("--repeats must be >= 10 and --nve-steps >= 0")
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.onnx
    if onnx_path is None:
        from mlff_export.export import to_onnx
        from mlff_export.runtime.parity import OnnxParityCheck

        onnx_path = to_onnx(load_checkpoint(REFERENCE_CHECKPOINT), args.out / "painn-hcno.fp32.onnx",
                            check=OnnxParityCheck(load_checkpoint(REFERENCE_CHECKPOINT), [benzene()], "fp32"))
    backends = list(GPU_BACKENDS if device.type == "cuda" else CPU_BACKENDS) if args.backends is None else [
        name for name in args.backends.split(",") if name and name != "none"
    ]
    results = {"environment": describe_environment(device), "note": args.note, "molecule": "C6H6", "repeats": args.repeats}
    print(f"load costs ({device}) ...", flush=True)
    results["load"] = load_costs(onnx_path, device, max(20, args.repeats // 10))
    results["per_call"] = {}
    for name in backends:
        print(f"per-call costs: {name} ...", flush=True)
        try:
            results["per_call"][name] = per_call_costs(name, onnx_path, device, args.repeats)
        except Exception as error:  # one backend missing here (e.g. onnxruntime-gpu) must not lose the others
            results["per_call"][name] = {"error": f"{type(error).__name__}: {error}"}
    nve_steps = args.nve_steps if args.nve_steps is not None else (10_000 if device.type == "cuda" else 0)
    if nve_steps:
        print(f"NVE: {nve_steps} steps with {args.nve_backend} and the float64 reference ...", flush=True)
        results["nve"] = nve_run(args.nve_backend, onnx_path, device, nve_steps)
        (args.out / "nve_benzene.json").write_text(json.dumps(results["nve"], indent=2) + "\n")
    (args.out / "sanity_cost.json").write_text(json.dumps(results, indent=2) + "\n")
    summary = summary_markdown(results)
    (args.out / "sanity_cost.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
