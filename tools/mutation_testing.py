"""Mutation testing of the physics-critical modules with cosmic-ray, one module at a time.

    python tools/mutation_testing.py                   # every module in MODULES, in order
    python tools/mutation_testing.py mlff_export/forces.py runtime/domains.py
    python tools/mutation_testing.py --jobs 8          # eight modules at a time (a many-core machine)
    python tools/mutation_testing.py --jobs 6 --workers 2   # and two mutants of each module at a time
    python tools/mutation_testing.py --retest-survivors  # survivors again, against the tests as they are now
    python tools/mutation_testing.py --report          # the score table of what has run so far

Needs the ``mutation`` extra (``pip install -e '.[test,mutation]'``). Slow (each mutant runs its
module's test selection in a fresh Python): run on demand, never in CI. docs/testing.md has the
scores and the triage of every surviving mutant.

How it works, per module: the repository's files (as git sees them, committed or not) are copied
to ``.mutation/trees/<module>`` (with the ``mlff_export.export``/``runtime``/... package mapping of
pyproject.toml laid out as links, so the copy imports as itself); cosmic-ray mutates files there,
never in your checkout, so an interrupted run leaves nothing behind, and modules run side by side
(``--jobs``) without seeing each other's mutants. The session database
``.mutation/sessions/<module>.sqlite`` keeps the results: running again resumes where it stopped
(``--fresh`` starts over; needed after the module's source changed, since mutants are positions). Each mutant runs the module's own fast test selection (:data:`MODULES`).
With ``--workers N`` a module's mutants go to N cosmic-ray HTTP workers (its ``http`` distributor),
each in its own copy of the tree (``.mutation/trees/<module>.w<i>``), on free local ports.

Operators: cosmic-ray's core set without the operator replacements that only produce type errors
on floats and tensors (``|``, ``&``, ``^``, ``<<``, ``>>``, ``%``, ``//``, ``**`` as replacements,
``is``/``in`` comparisons) and without ``VariableReplacer``/``VariableInserter`` (random names):
each of those mutants dies on the first line it runs and says nothing about the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider"

MODULES = {
    "mlff_export/forces.py": "tests/test_force_routes.py tests/test_physics.py -k 'routes or gradient or strain_derivative or batched'",
    "mlff_export/structure_sanity.py": "tests/test_structure_sanity.py tests/test_bad_inputs.py "
    "-k 'sanity or ((apart or threshold or legal or distance or image or collapsed or position or overlapping) and not validate)'",
    "mlff_export/pair_layouts.py": "tests/test_pair_layout_tables.py tests/test_force_routes.py tests/test_pair_layouts.py "
    "tests/test_structure_sums.py -k 'not onnxruntime and not tensorrt'",
    "mlff_export/neighbors.py": "tests/test_neighbors.py tests/test_neighbor_search_limits.py tests/test_force_routes.py",
    "runtime/shape_buckets.py": "tests/test_engine_shape_buckets.py",
    "runtime/domains.py": "tests/test_domain_splitting.py tests/test_calculator.py -k domain",
    "export/metadata.py": "tests/test_metadata_reader.py tests/test_export.py -k 'metadata or reader or load_calculator_runs'",
    "mlff_export/validation/tolerances.py": "tests/test_validate.py -k 'tolerances or nan'",
    "mlff_export/validation/comparison.py": "tests/test_comparison.py tests/test_validate.py -k 'comparison or energy or forces "
    "or statistics or rtol or empty or zero or shapes or nan or correct or adversarial'",
    "mlff_export/validation/provenance.py": "tests/test_validate.py -k 'provenance or integrity or correct'",
    "mlff_export/validation/physics.py": "tests/test_validation_physics.py tests/test_validate.py "
    "-k 'test_validation_physics or finite or NVE or negated or correct'",
    "mlff_export/validation/validate.py": "tests/test_validation_validate.py tests/test_validate.py",
    "export/table_rewrite.py": "tests/test_bring_your_own_model.py -k 'scatter_free or matches_the_modules or cannot'",
    "runtime/traced_graphs.py": "tests/test_traced_graphs.py",
    "mlff_export/checkpoint.py": "tests/test_checkpoint.py tests/test_bad_inputs.py -k 'test_checkpoint or card'",
    "export/engine_sidecar.py": "tests/test_engine_sidecar.py tests/test_bad_inputs.py tests/test_engine_runtime.py "
    "-k '(test_engine_sidecar or engine or test_engine_runtime) and not tampered'",
    "mlff_export/memory.py": "tests/test_memory.py tests/test_domain_splitting.py tests/test_neighbor_search_limits.py "
    "tests/test_bad_inputs.py -k 'test_memory or memory or fit or domain or allocator or halved or limit'",
    "export/engine_profiles.py": "tests/test_engine_profiles.py tests/test_engine_shape_buckets.py tests/test_bad_inputs.py "
    "-k 'test_engine_profiles or test_engine_shape_buckets or profile'",
    "runtime/device_feeds.py": "tests/test_device_feeds.py",
    "runtime/compile_cache.py": "tests/test_compile_cache.py tests/test_traced_graphs.py tests/test_bad_inputs.py "
    "-k '(key or damaged or payload or manifest or compiles_twice or stored or compile_cache or compile-cache or unsafe or private) "
    "and not new_process and not max_autotune and not half_body and not onnx'",
    "mlff_export/interface.py": "tests/test_interface_inputs.py tests/test_pair_layout_tables.py tests/test_pair_layouts.py "
    "tests/test_calculator.py -k 'test_interface_inputs or check or interface or inputs or pair_index or lattice or reverse "
    "or nan or structure'",
    "export/precision.py": "tests/test_model_for_precision.py tests/test_checkpoint.py tests/test_fp16_body.py",
}
"""Module -> the pytest selection each of its mutants runs (arguments after ``pytest``)."""

EXCLUDED_OPERATORS = [
    r"core/ReplaceBinaryOperator_.*_(FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
    r"core/ReplaceBinaryOperator_(FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)_.*",
    r"core/ReplaceComparisonOperator_.*_(Is|IsNot|In|NotIn)$",
    r"core/ReplaceComparisonOperator_(Is|IsNot|In|NotIn)_.*",
    r"core/ReplaceUnaryOperator_.*_(Invert|Not)$",
    r"core/VariableReplacer",
    r"core/VariableInserter",
]
TIMEOUT_SECONDS = 900.0
COSMIC_RAY = {
    "cosmic-ray": "cosmic_ray.cli",
    "cr-filter-operators": "cosmic_ray.tools.filters.operators_filter",
    "cr-filter-pragma": "cosmic_ray.tools.filters.pragma_no_mutate",
}
"""cosmic-ray's commands as modules (run with this Python: works where its scripts are not on PATH)."""


def importable(tree: Path) -> dict[str, str]:
    """The environment that imports the project from ``tree`` first, then what the caller's path has."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}


def session_name(module: str) -> str:
    return module.replace("/", ".").removesuffix(".py")


def copy_tree(module: str, worker: int | None = None) -> Path:
    """The repository's files in ``.mutation/trees/<module>`` (``<module>.w<worker>`` for an HTTP
    worker), importable as the package (see the module docstring)."""
    tree = WORK / "trees" / (session_name(module) + ("" if worker is None else f".w{worker}"))
    if tree.exists():
        shutil.rmtree(tree)
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in listed:
        source = ROOT / name
        if source.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dirs.items():
        link = tree / package.replace(".", "/")
        if not link.exists():
            link.symlink_to(tree / folder, target_is_directory=True)
    return tree


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(port: int, seconds: float = 120.0) -> None:
    """Returns once a worker accepts connections on ``port``; raises after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no cosmic-ray http-worker listening on port {port} after {seconds:.0f} s") from None
            time.sleep(0.2)


def config_file(module: str, worker_urls: list[str]) -> Path:
    """cosmic-ray's configuration: the local distributor, or the HTTP one when ``worker_urls`` are given."""
    distributor = ['name = "http"', "", "[cosmic-ray.distributor.http]", f"worker-urls = {json.dumps(worker_urls)}"]
    lines = [
        "[cosmic-ray]",
        f'module-path = "{module}"',
        f"timeout = {TIMEOUT_SECONDS}",
        "excluded-modules = []",
        f"test-command = {json.dumps(PYTEST + ' ' + MODULES[module])}",
        "",
        "[cosmic-ray.distributor]",
        *(distributor if worker_urls else ['name = "local"']),
        "",
        "[cosmic-ray.filters.operators-filter]",
        f"exclude-operators = {json.dumps(EXCLUDED_OPERATORS)}",
    ]
    path = WORK / "configs" / f"{session_name(module)}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def forget_survivors(session: Path) -> int:
    """Deletes the surviving mutants' results from ``session`` so that the next run tests them again
    (after tests were added); returns how many. Only valid while the module's source is unchanged."""
    with sqlite3.connect(session) as database:  # cosmic-ray's own schema: one work_results row per mutant run
        return database.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'").rowcount


def run_module(module: str, fresh: bool, workers: int, retest_survivors: bool = False) -> None:
    tree = copy_tree(module)
    session = WORK / "sessions" / f"{session_name(module)}.sqlite"
    session.parent.mkdir(parents=True, exist_ok=True)
    environment = importable(tree)
    ports = [free_port() for _ in range(workers)] if workers > 1 else []
    config = config_file(module, [f"http://127.0.0.1:{port}" for port in ports])

    def run(*command: str) -> None:
        subprocess.run([sys.executable, "-m", COSMIC_RAY[command[0]], *command[1:]], cwd=tree, env=environment, check=True)

    if fresh or not session.exists():
        session.unlink(missing_ok=True)
        baseline = subprocess.run(f"{PYTEST} {MODULES[module]}", shell=True, cwd=tree, env=environment)
        if baseline.returncode != 0:
            sys.exit(f"{module}: its test selection fails on the unmutated code (exit {baseline.returncode}); fix that first")
        run("cosmic-ray", "init", str(config), str(session))
        run("cr-filter-operators", str(session), str(config))
        run("cr-filter-pragma", str(session))
    elif retest_survivors:
        print(f"{module}: {forget_survivors(session)} survivors to test again", flush=True)
    print(f"mutation testing {module} ({workers} at a time): {PYTEST} {MODULES[module]}", flush=True)
    servers = []
    for worker, port in enumerate(ports):
        worker_tree = copy_tree(module, worker)
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", COSMIC_RAY["cosmic-ray"], "http-worker", "--port", str(port)],
                cwd=worker_tree,
                env=importable(worker_tree),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        for port in ports:
            wait_until_listening(port)
        run("cosmic-ray", "exec", str(config), str(session))
    finally:
        for server in servers:
            server.terminate()


def module_results(module: str) -> dict | None:
    """Counts and surviving mutants (with their diffs) of ``module``'s session, if it ran."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    session = WORK / "sessions" / f"{session_name(module)}.sqlite"
    if not session.exists():
        return None
    counts = {"mutants": 0, "killed": 0, "survived": 0, "incompetent": 0, "pending": 0}
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        counts["pending"] = sum(1 for _ in db.pending_work_items)
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            counts["mutants"] += 1
            if result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                mutation = item.mutations[0]
                survivors.append({"job": item.job_id, "operator": mutation.operator_name, "line": mutation.start_pos[0], "diff": result.diff})
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            else:
                counts["killed"] += 1
    return {"module": module, **counts, "survivors": survivors}


def report(modules: list[str]) -> None:
    rows = [results for module in modules if (results := module_results(module)) is not None]
    print(f"{'module':<40} {'mutants':>7} {'killed':>7} {'survived':>8} {'incompetent':>11} {'pending':>7} {'score':>6}")
    for row in rows:
        decided = row["killed"] + row["survived"]
        score = f"{100 * row['killed'] / decided:5.1f}%" if decided else "-"
        print(
            f"{row['module']:<40} {row['mutants']:>7} {row['killed']:>7} {row['survived']:>8} "
            f"{row['incompetent']:>11} {row['pending']:>7} {score:>6}"
        )
    (WORK / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"survivors with their diffs: {WORK / 'results.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {list(MODULES)})")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results of these modules")
    parser.add_argument("--jobs", type=int, default=1, help="modules mutated at the same time (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="mutants of one module tested at the same time (default 1)")
    parser.add_argument("--retest-survivors", action="store_true", help="test the surviving mutants again (after adding tests)")
    parser.add_argument("--report", action="store_true", help="only print the score table")
    args = parser.parse_args()
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {list(MODULES)}")
    if args.jobs < 1 or args.workers < 1:
        parser.error(f"--jobs and --workers must be at least 1 (got {args.jobs} and {args.workers})")
    modules = args.modules or list(MODULES)
    if not args.report:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each module's work is its own processes
            list(pool.map(lambda module: run_module(module, args.fresh, args.workers, args.retest_survivors), modules))
    report(modules)


if __name__ == "__main__":
    main()
