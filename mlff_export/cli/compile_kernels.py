"""Compile a model for the compile backends once and keep the kernels: every shape bucket the given
structures need (one at a time, as MD and single-point calls run, and in batches of --batch-sizes)
is compiled and saved to the compile cache, which later processes load instead of compiling
(load_calculator's compile_cache; default folder $MLFF_EXPORT_COMPILE_CACHE or
~/.cache/mlff-export/compiled). Prints each bucket as it is compiled, with its seconds. With --aot,
the graph is compiled once into an AOTInductor package that serves every bucket and loads with no
Dynamo trace and no compile (checked against eager on the first structures before it is kept)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mlff_export.cli.options import (
    UsageError,
    add_device_option,
    add_model_options,
    model_spec,
    output_folder,
    positive_int,
    resolve_device,
)

NAME = "compile"
HELP = "compile a model's shape buckets for the compile backends and keep the kernels for later processes"
BACKENDS = ("compile", "compile-reduce-overhead", "compile-max-autotune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--backend", choices=BACKENDS, default="compile-reduce-overhead",
                        help="the compile backend to compile for (default: compile-reduce-overhead)")
    add_device_option(parser)
    parser.add_argument("--structures", nargs="+", metavar="FILE",
                        help="structures whose buckets to compile (any file ASE reads, every frame); default: the g2 "
                             "molecules made of the model's elements")
    parser.add_argument("--batch-sizes", default="", metavar="B,B,...",
                        help="also compile calc.predict of the structures in batches of these sizes (default: none)")
    parser.add_argument("--aot", action="store_true",
                        help="instead: compile the graph ahead of time into one AOTInductor package for every bucket "
                             "(a new process loads it in milliseconds: no Dynamo trace, no compile); checked against eager on the "
                             "first structures")
    parser.add_argument("--cache", metavar="DIR", help="compile cache folder (default: $MLFF_EXPORT_COMPILE_CACHE or "
                        "~/.cache/mlff-export/compiled)")


def batch_sizes(text: str) -> list[int]:
    try:
        return [positive_int(value) for value in text.split(",") if value.strip()]
    except (ValueError, argparse.ArgumentTypeError):
        raise UsageError(f"--batch-sizes must be comma-separated integers >= 1, such as 16,256; got {text!r}") from None


def read_structures(paths: list[str] | None, species: tuple[int, ...]) -> list:
    """Every frame of ``paths``, or the g2 molecules whose elements are all in ``species``."""
    from ase.build import molecule
    from ase.collections import g2
    from ase.io import read

    if not paths:
        return [molecule(name) for name in g2.names if set(molecule(name).numbers) <= set(species)]
    structures = []
    for path in paths:
        try:
            structures += read(path, index=":")
        except Exception as error:  # noqa: BLE001 - ASE raises many types for unreadable files
            raise UsageError(f"--structures {path}: ASE cannot read it ({type(error).__name__}: {error})") from None
    return structures


def run(args: argparse.Namespace) -> int:
    sizes = batch_sizes(args.batch_sizes)
    if args.aot and sizes:
        raise UsageError("--batch-sizes has no effect with --aot: its one package serves every bucket")
    for path in args.structures or []:
        if not Path(path).is_file():
            raise UsageError(f"--structures {path} is not a file")
    cache = True if args.cache is None else output_folder(args.cache, "--cache")
    spec, device = model_spec(args), resolve_device(args.device)

    from mlff_export.runtime import load_calculator

    calc = load_calculator(spec.load().module, device=device, backend=args.backend, compile_cache=cache)
    compile_cache = calc.backend.compile_cache
    structures = read_structures(args.structures, calc.species)
    if args.aot:
        return build_package(calc.backend, spec, device, args.backend, cache, structures)
    known = len(compile_cache.buckets)
    print(f"{args.backend} on {device}: {len(structures)} structures; cache {compile_cache.folder} holds {known} buckets")
    calls = [(f"{atoms.get_chemical_formula()} alone", [atoms]) for atoms in structures]
    calls += [(f"batch of {len(structures[i:i + size])}", structures[i : i + size]) for size in sizes for i in range(0, len(structures), size)]
    start = time.perf_counter()
    for label, batch in calls:
        before, began = len(compile_cache.buckets), time.perf_counter()
        if len(batch) == 1:
            batch[0].calc = calc
            batch[0].get_forces()  # the single-structure path (on a GPU: inputs built on the device)
        else:
            calc.predict(batch)
        for bucket in compile_cache.buckets[before:]:
            done = "ran on earlier kernels:" if bucket in compile_cache.without_new_kernels else "compiled"
            print(f"  {done} {bucket_text(bucket)} ({label}) in {time.perf_counter() - began:.1f} s")
    reused = len(compile_cache.without_new_kernels)
    compiled = len(compile_cache.buckets) - known - reused
    print(f"{compiled} buckets compiled and {reused} ran on earlier kernels in {time.perf_counter() - start:.1f} s, "
          f"{known} were in the cache; kept in {compile_cache.folder}")
    return 0


def build_package(backend, spec, device, backend_name: str, cache, structures: list, checked: int = 3) -> int:
    """Build the AOTInductor package of ``backend``'s graph (kept only if a new process loads it),
    then load it as a new calculator would and compare its forces with eager's on the first
    ``checked`` structures (1e-4 eV/Å, the FP32 tolerance); a package that disagrees is removed."""
    import numpy as np

    from mlff_export.runtime import load_calculator
    from mlff_export.runtime.aot_package import AotPackageError

    start = time.perf_counter()
    print(f"{backend_name} on {device}: compiling the joint graph ahead of time (one package for every bucket)...", flush=True)
    try:
        path = backend.aot_package.build(backend.graph, backend.example_inputs)
    except AotPackageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"  built {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    began = time.perf_counter()
    packaged = load_calculator(spec.load().module, device=device, backend=backend_name, compile_cache=cache)
    if not packaged.backend.ahead_of_time:
        raise UsageError(f"the package just built in {path.parent} was not loaded (see the warning above)")
    print(f"  a new calculator loaded it in {time.perf_counter() - began:.1f} s (model trace included)")
    eager = load_calculator(spec.load().module, device=device, backend="eager")
    for atoms in structures[:checked]:
        forces = [calc.get_forces(atoms.copy()) for calc in (packaged, eager)]
        error = float(np.abs(forces[0] - forces[1]).max())
        print(f"  {atoms.get_chemical_formula()}: forces within {error:.1e} eV/Å of eager")
        if not error <= 1e-4:
            backend.aot_package.remove()
            print(f"error: the package's forces differ from eager's by {error:.1e} eV/Å (> 1e-4) on "
                  f"{atoms.get_chemical_formula()}; the package was removed", file=sys.stderr)
            return 1
    return 0


def bucket_text(bucket: list) -> str:
    """A bucket (input shapes: positions [N, 3], neighbor_index [N, K], ..., cell [B, 3, 3]) as N x K x B."""
    shapes = [shape for shape in bucket if isinstance(shape, list)]
    weighted = "weighted " if bucket and bucket[0] == "weighted" else ""
    return f"{weighted}{shapes[0][0]} atoms x {shapes[2][1]} neighbors x {shapes[-1][0]} structures"
