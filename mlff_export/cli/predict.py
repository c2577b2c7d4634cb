"""Energy, forces and stress of many structures (extxyz files, ASE databases, folders of them), in
this process or on a Ray cluster. Writes OUT/shards/*.extxyz (results in ASE's conventions),
OUT/summary.csv and OUT/manifest.json; re-running the same command resumes. Ray: docs/scale-out.md."""

from __future__ import annotations

import argparse

from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.cli.options import UsageError, add_device_option, positive_int

NAME = "predict"
HELP = "energy, forces, stress of many structures (extxyz, ASE db, folders): in this process or on Ray"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="extxyz files (.xyz, .extxyz), ASE databases (.db), folders of them")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (on Ray: a path every node can write)")
    parser.add_argument("--model", "--checkpoint", dest="model", default=str(REFERENCE_CHECKPOINT),
                        help="checkpoint card (.json), exported .onnx or .plan engine (default: the bundled reference model)")
    parser.add_argument("--backend", default=None, help="runtime backend (default: from the model file; eager for checkpoints)")
    add_device_option(parser)
    parser.add_argument("--batch-size", default="auto", metavar="N|auto",
                        help="structures per model call (default auto: the largest atom count that fits, per worker)")
    parser.add_argument("--shard-size", type=positive_int, help="structures per shard: unit of work, retry and resume (default 1000)")
    parser.add_argument("--min-distance", type=float, metavar="Å",
                        help="atoms closer than this fail as overlapping (default 0.5; 0: no check)")
    parser.add_argument("--ray", metavar="auto|ADDRESS|local", help="run on Ray: local (start one here), auto (this machine's cluster) or HOST:PORT")
    parser.add_argument("--workers", type=positive_int, help="Ray actors (default: one per GPU; on a CPU cluster all CPUs but one)")
    parser.add_argument("--gpus-per-worker", type=float, help="GPUs per Ray actor (default: 1 where the cluster has GPUs)")


def run(args: argparse.Namespace) -> int:
    if args.batch_size != "auto" and not (args.batch_size.isdigit() and int(args.batch_size) > 0):
        raise UsageError(f"--batch-size must be a positive integer or auto; got {args.batch_size!r}")

    from mlff_export.screening import ModelSettings, screen

    overlap = {} if args.min_distance is None else {"min_distance": args.min_distance}  # None: the library's default
    batch_size = None if args.batch_size == "auto" else int(args.batch_size)
    settings = ModelSettings(args.model, args.backend, args.device, batch_size, **overlap)
    report = screen(args.inputs, args.out, settings, shard_size=args.shard_size, ray=args.ray,
                    workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    print(f"{report.ok + report.failed} structures in {report.shards} shards ({report.shards_resumed} already done): "
          f"{report.ok} ok, {report.failed} failed; {report.evaluated} evaluated now in {report.seconds:.1f} s "
          f"({report.structures_per_second:.1f} structures/s)")
    print(f"results in {args.out}/shards/*.extxyz, table {args.out}/summary.csv")
    return 0
