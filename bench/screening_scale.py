"""Screening throughput at scale: small molecules through ``mlff-export predict``'s pipeline on one
GPU, then on two (Ray, one actor per GPU).

    python3 bench/screening_scale.py --out DIR [--molecules 100000] [--backend compile-reduce-overhead]

Generates the molecules (ASE's g2 set, H/C/N/O, rattled: ``bench.workloads.small_molecule_batch``)
into one extxyz file under ``--work`` (default: a temporary folder), then runs
:func:`mlff_export.screening.screen` on it: ``embedded`` (this process, one GPU, no Ray),
``ray-1`` (a local Ray cluster, one worker) and ``ray-2`` (two workers, one per GPU), each into a
fresh output folder. For each run it records the wall time, the end-to-end rate and the
steady-state rate: structures finished after every worker finished its first shard (model load,
compilation and the batch-size probe excluded), over the time from then to the last shard. It
checks every structure came back ``ok`` and compares each run's energies with the first run's.

Writes ``DIR/runs.jsonl`` (one line per run, as soon as it finished) and ``DIR/screening_scale.json``
(runs, the ray-2 / ray-1 steady-state ratio, the environment: GPUs, driver, versions); prints one
summary line. Needs a CUDA GPU for ``embedded``, two for ``ray-2``, and Ray (``pip install
"mlff-export[ray]"``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import shutil
import tempfile
import time
from pathlib import Path

import ase.io
import torch

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.bench.environment import describe_environment
from mlff_export.bench.workloads import small_molecule_batch
from mlff_export.cli.options import add_device_option, resolve_device_or_exit
from mlff_export.screening import ModelSettings, screen

RUNS = {"ray-1": ("local", 1), "ray-2": ("local", 2), "embedded": (None, None)}  # the ratio first


def rates(events: list[tuple[float, str, int]], seconds: float) -> dict:
    """End-to-end and steady-state structures/s from (seconds from the start to the end of the
    shard's evaluation, worker, structures) per shard; the steady state starts once every
    worker has evaluated a shard, and measures the workers, not the writing behind them."""
    first_shard_done: dict[str, float] = {}
    for at, worker, _ in events:
        first_shard_done.setdefault(worker, at)
    warm = max(first_shard_done.values())
    after = sum(structures for at, _, structures in events if at > warm)
    last = events[-1][0]
    return {
        "structures": sum(structures for _, _, structures in events),
        "wall_s": round(seconds, 2),
        "end_to_end_per_s": round(sum(s for _, _, s in events) / seconds, 1),
        "workers": len(first_shard_done),
        "warm_after_s": round(warm, 2),
        "steady_structures": after,
        "steady_per_s": round(after / (last - warm), 1) if after and last > warm else None,
    }


def write_molecules(work: Path, count: int) -> tuple[Path, int]:
    """``count`` molecules in ``work/molecules-<count>.extxyz`` (kept, with their atom count in a
    ``.json`` beside it: a second call reuses them), and their number of atoms."""
    dataset, sidecar = work / f"molecules-{count}.extxyz", work / f"molecules-{count}.json"
    start = time.perf_counter()
    if not sidecar.exists():
        molecules = small_molecule_batch(count, seed=0)
        ase.io.write(dataset, molecules, format="extxyz")
        sidecar.write_text(json.dumps({"atoms": sum(len(m) for m in molecules)}))
    atoms = json.loads(sidecar.read_text())["atoms"]
    print(f"{count} molecules ({atoms} atoms) in {dataset}: {time.perf_counter() - start:.1f} s", flush=True)
    return dataset, atoms


def energies(out: Path) -> dict[str, float]:
    with (out / "summary.csv").open(newline="") as file:
        return {row["structure_id"]: float(row["energy_eV"]) for row in csv.DictReader(file) if row["status"] == "ok"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for runs.jsonl and screening_scale.json")
    parser.add_argument("--molecules", type=int, default=100_000)
    parser.add_argument("--backend", default="compile-reduce-overhead", help="runtime backend (default: the fastest batched one on the H100)")
    parser.add_argument("--model", default=str(REFERENCE_CHECKPOINT))
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated of {', '.join(RUNS)}")
    add_device_option(parser, default="cuda")  # cpu: a smoke test of this script (its Ray cluster is this machine)
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the dataset (reused if there) and outputs (default: a temporary one)")
    args = parser.parse_args(argv)
    args.device = resolve_device_or_exit(parser, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="screening-scale-"))
    work.mkdir(parents=True, exist_ok=True)

    dataset, atoms = write_molecules(work, args.molecules)

    settings = ModelSettings(args.model, backend=args.backend, device=args.device)
    results, first_energies = {}, None
    for name in args.runs.split(","):
        address, workers = RUNS[name]
        if address is not None:
            import ray

            if not ray.is_initialized():
                ray.init(address="local", include_dashboard=False, logging_level="WARNING")
        shutil.rmtree(work / name, ignore_errors=True)  # a fresh run, never a resumed one
        records = []
        begin, begin_unix = time.perf_counter(), time.time()
        report = screen([dataset], work / name, settings, shard_size=args.shard_size, ray=address, workers=workers,
                        show_progress=False, on_shard_done=records.append)
        events = sorted((r["evaluation"]["finished_at"] - begin_unix, r["evaluation"]["worker"], r["structures"]) for r in records)
        run = {"run": name, **rates(events, time.perf_counter() - begin), "ok": report.ok, "failed": report.failed,
               "worker_names": sorted({worker for _, worker, _ in events})}
        run_energies = energies(work / name)
        first_energies = first_energies or run_energies
        shared = run_energies.keys() & first_energies.keys()
        run["max_energy_difference_to_first_run_eV"] = max(abs(run_energies[k] - first_energies[k]) for k in shared)
        results[name] = run
        with (args.out / "runs.jsonl").open("a") as file:
            file.write(json.dumps(run) + "\n")
        print(json.dumps(run), flush=True)

    environment = describe_environment(torch.device(args.device))
    environment["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["no GPU"]
    for name in ("ray", "pyarrow", "pandas"):
        try:
            environment["libraries"][name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    ratio = None
    if "ray-1" in results and "ray-2" in results and results["ray-1"]["steady_per_s"] and results["ray-2"]["steady_per_s"]:
        ratio = round(results["ray-2"]["steady_per_s"] / results["ray-1"]["steady_per_s"], 3)
    summary = {"molecules": args.molecules, "atoms": atoms, "backend": args.backend, "model": Path(args.model).name,
               "shard_size": args.shard_size, "runs": results, "ray_2_over_1_steady": ratio, "environment": environment}
    (args.out / "screening_scale.json").write_text(json.dumps(summary, indent=1))
    line = ", ".join(f"{name} {run['steady_per_s']}/s steady ({run['end_to_end_per_s']}/s end to end)" for name, run in results.items())
    print(f"screening {args.molecules} molecules, {args.backend} on {len(environment['gpus'])}x {environment['gpus'][0]}: "
          f"{line}; 2 workers / 1 worker = {ratio}")


if __name__ == "__main__":
    main()
