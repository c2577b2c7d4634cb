"""Large systems: periodic water of 10k, 100k and 1M atoms through the calculator on one GPU.

    python3 -m mlff_export.bench.large_systems --out DIR [--backends compile-reduce-overhead,cuda-graphs]
        [--precisions fp32,fp16] [--sizes 10000,100000,1000000] [--parity-up-to 100000] [--repeats 3]
        [--memory-limit-gb 40] [--skins 0,0.5] [--md-steps 50] [--profile]

For each backend, precision (``fp16``: the FP16 body, ``load_calculator``'s ``precision``) and size, in one process: the first call (neighbor search on the GPU, domains,
compilation or capture: ``first_call_s``), then the median of ``--repeats`` calls with a new
geometry each (``median_s``), the peak of torch's GPU memory (``peak_gpu_gib``), the energy per
atom, and, up to ``--parity-up-to`` atoms, the largest force and energy-per-atom differences from
eager FP32 on the same structure. With ``--skins``, each row is measured once per Verlet skin (Å; the
calculator's ``skin``: its timed calls then reuse the first call's neighbor table). With
``--md-steps``, each row then runs that many velocity-Verlet steps (0.5 fs, from 300 K) and reports
the median step (``md_median_step_s``) and how many neighbor searches they took
(``md_neighbor_searches``: every step without a skin, only the rebuilds with one). Writes ``DIR/large_systems.jsonl`` (a line per row, as it is
measured) and ``DIR/large_systems.json`` (rows, the 100k/10k and 1M/100k time ratios, the FP32/FP16
time ratio per size, environment). With ``--profile``, one more call per row runs under
torch.profiler: ``DIR/profile-<backend>-<precision>-<atoms>-skin<skin>.txt`` lists the 25 operations with the
most GPU time and the 25 with the most CPU time of their own (neighbor search, table, model, checks),
and ``profile-...trace.json.gz`` is that call's timeline (open it in Perfetto or ``chrome://tracing``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.bench.environment import describe_environment
from mlff_export.bench.timing import first_call
from mlff_export.bench.workloads import water_box
from mlff_export.cli.options import require_cuda
from mlff_export.runtime import load_calculator
from mlff_export.runtime.calculator import MLFFCalculator


def write_profile(atoms, path: Path) -> None:
    """One more call on a moved geometry under torch.profiler: the operations with the most GPU
    time, then those with the most CPU time of their own, as tables in ``path``; the call's
    timeline (CPU and GPU, where either waits) as a Chrome trace beside it (``.trace.json.gz``)."""
    from torch.profiler import ProfilerActivity, profile

    atoms.positions[0, 0] += 1e-4
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        atoms.get_forces()
        torch.cuda.synchronize()
    averages = profiler.key_averages()
    path.write_text(f"{averages.table(sort_by='device_time_total', row_limit=25)}\n{averages.table(sort_by='self_cpu_time_total', row_limit=25)}\n")
    profiler.export_chrome_trace(str(path.with_suffix(".trace.json.gz")))


def neighbor_searches(calc: MLFFCalculator) -> int:
    """How many neighbor searches ``calc`` has run: on the GPU (its backend's device search) and
    on the CPU (its Verlet list)."""
    device_feeds = getattr(calc.backend, "device_feeds", None)
    return calc.neighbor_list.builds + (device_feeds.searches if device_feeds is not None else 0)


def md_steps(calc: MLFFCalculator, atoms, steps: int) -> dict:
    """``steps`` velocity-Verlet steps of ``atoms`` (a copy; 0.5 fs, Maxwell-Boltzmann 300 K,
    seeded) through ``calc``: the steps done, their median in seconds and the neighbor searches
    they took. A step the calculator refuses (e.g. atoms closer than its minimum distance) ends
    the run: ``md_error`` says why, the steps before it are kept."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    searches = neighbor_searches(calc)
    seconds, failure = [], {}
    for _ in range(steps):
        start = time.perf_counter()
        try:
            dynamics.run(1)
        except Exception as error:  # noqa: BLE001 - a trajectory the calculator refuses ends the run, the steps done are kept
            failure = {"md_error": f"{type(error).__name__}: {str(error)[:300]}"}
            break
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds)) if seconds else None
    return {"md_steps": len(seconds), "md_median_step_s": median, "md_neighbor_searches": neighbor_searches(calc) - searches, **failure}


def measure(backend: str, atoms, repeats: int, reference: dict | None, precision: str = "fp32", memory_limit_gb: float | None = None,
            profile_to: Path | None = None, skin: float = 0.0, steps: int = 0) -> dict:
    """One row: first call, median of ``repeats`` calls, peak memory, parity with ``reference``;
    with ``profile_to``, :func:`write_profile` there after the timed calls; with ``steps``,
    :func:`md_steps` last. The timed calls move one atom by 1e-4 Å: with a ``skin`` (Å) every one
    of them reuses the first call's neighbor table."""
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    calc = load_calculator(REFERENCE_CHECKPOINT, device="cuda", backend=backend, precision=precision, memory_limit_gb=memory_limit_gb, skin=skin)
    atoms, forces, energy, first = first_call(calc, atoms)
    seconds = []
    for step in range(repeats):
        atoms.positions[0, 0] += 1e-4 * (-1) ** step
        start = time.perf_counter()
        atoms.get_forces()
        seconds.append(time.perf_counter() - start)
    row = {"backend": backend, "precision": precision, "atoms": len(atoms), "first_call_s": first, "median_s": float(np.median(seconds)),
           "samples_s": seconds, "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30,
           "energy_per_atom_ev": energy / len(atoms), "memory_limit_gb": memory_limit_gb, "skin_a": skin}
    if reference is not None:
        row["max_abs_force_error_ev_per_a"] = float(np.abs(forces - reference["forces"]).max())
        row["energy_per_atom_error_ev"] = abs(energy - reference["energy"]) / len(atoms)
    if profile_to is not None:
        write_profile(atoms, profile_to)
    if steps:
        row.update(md_steps(calc, atoms, steps))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backends", default="compile-reduce-overhead,cuda-graphs")
    parser.add_argument("--precisions", default="fp32", help="fp32, fp16 (the FP16 body) or both, comma-separated")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--parity-up-to", type=int, default=100_000, help="compare with eager FP32 up to this many atoms")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-limit-gb", type=float, help="memory a call may take (domains below it; default: 80%% of the free memory)")
    parser.add_argument("--skins", default="0", help="Verlet skins, Å, comma-separated: a row each (timed calls reuse the first call's neighbor table)")
    parser.add_argument("--md-steps", type=int, default=0, help="velocity-Verlet steps per row after the timed calls (0: none)")
    parser.add_argument("--profile", action="store_true", help="one more call per row under torch.profiler: tables and a Chrome trace, DIR/profile-*")
    args = parser.parse_args(argv)
    try:
        skins = [float(text) for text in args.skins.split(",")]
    except ValueError:
        parser.error(f"--skins: {args.skins!r} is not a comma-separated list of numbers (Å)")
    if not all(np.isfinite(skin) and skin >= 0 for skin in skins):
        parser.error(f"--skins: {args.skins!r}: every skin must be a finite number >= 0 (Å)")
    if args.md_steps < 0:
        parser.error(f"--md-steps: {args.md_steps} is negative; give a number of steps >= 0")
    require_cuda(parser, "time and memory")
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the domain grid of each call is logged
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(text) for text in args.sizes.split(",")):
        atoms = water_box(size)
        reference = None
        if len(atoms) <= args.parity_up_to:
            reference = load_calculator(REFERENCE_CHECKPOINT, device="cuda").predict([atoms])[0]
        for backend, precision, skin in itertools.product(args.backends.split(","), args.precisions.split(","), skins):
            try:
                profile_to = args.out / f"profile-{backend}-{precision}-{len(atoms)}-skin{skin:g}.txt" if args.profile else None
                row = measure(backend, atoms, args.repeats, reference, precision, args.memory_limit_gb, profile_to, skin, args.md_steps)
            except Exception as error:  # noqa: BLE001 - reported as the row, the others still run
                row = {"backend": backend, "precision": precision, "atoms": len(atoms), "skin_a": skin, "error": f"{type(error).__name__}: {str(error)[:300]}"}
            rows.append(row)
            with open(args.out / "large_systems.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps({key: value for key, value in row.items() if key != "samples_s"}), flush=True)
    document = {"rows": rows, "ratios": time_ratios(rows), "environment": describe_environment(torch.device("cuda"))}
    (args.out / "large_systems.json").write_text(json.dumps(document, indent=1))
    print(json.dumps(document["ratios"]))
    return 0


def time_ratios(rows: list[dict]) -> dict[str, float]:
    """Per backend, precision and skin: median time at each size over the median at the next
    smaller size; per backend, skin and size: the FP32 median over the FP16 median (the FP16 body's
    speed-up). Keys name a skin only where it is not 0."""
    def named(backend: str, skin: float) -> str:
        return f"{backend} skin {skin:g}" if skin else backend

    ratios = {}
    medians = {(row["backend"], row.get("precision", "fp32"), row.get("skin_a", 0.0), row["atoms"]): row["median_s"] for row in rows if "median_s" in row}
    for backend, precision, skin in {key[:3] for key in medians}:
        sized = sorted((atoms, seconds) for (b, p, s, atoms), seconds in medians.items() if (b, p, s) == (backend, precision, skin))
        for (small, small_s), (large, large_s) in zip(sized, sized[1:]):
            ratios[f"{named(backend, skin)} {precision} {large}/{small} atoms"] = large_s / small_s
    for (backend, precision, skin, atoms), seconds in medians.items():
        if precision == "fp16" and (backend, "fp32", skin, atoms) in medians:
            ratios[f"{named(backend, skin)} {atoms} atoms fp32/fp16"] = medians[backend, "fp32", skin, atoms] / seconds
    return ratios


if __name__ == "__main__":
    raise SystemExit(main())
