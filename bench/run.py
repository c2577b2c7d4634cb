"""``run_benchmark``: export what the cases need, run the suite, write JSON, Markdown and plots."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from mlff_export.bench.cases import plan_cases
from mlff_export.bench.environment import describe_environment
from mlff_export.bench.report import markdown_table, write_plots
from mlff_export.bench.suite import build_suite, run_suite, write_jsonl
from mlff_export.runtime.calculator import load_calculator


def run_benchmark(
    checkpoint: Path,
    suite_name: str,
    backends: list[str] | None,
    precisions: list[str],
    device: torch.device,
    out: Path,
    only: str | None = None,
) -> dict:
    """Run ``suite_name`` for ``backends`` (default: the suite's) x ``precisions`` on ``device``;
    returns the JSON written.

    Writes into ``out``: ``records.jsonl`` (as it goes), ``results.json`` (environment, records,
    rows not run and why), ``results.md`` and the PNG plots. Exported graphs and engines go to a
    temporary folder, removed at the end.
    """
    with tempfile.TemporaryDirectory(prefix="mlff-bench-") as artifacts:
        return _run(checkpoint, suite_name, backends, precisions, device, out, only, Path(artifacts))


def _run(checkpoint, suite_name, backends, precisions, device, out: Path, only, artifacts: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    suite = build_suite(suite_name, only)
    backends = list(backends or suite.default_backends)
    onnx_files = {}
    if "onnxruntime" in backends or "tensorrt" in backends:
        from mlff_export.checkpoint import load_checkpoint
        from mlff_export.export import to_onnx

        model = load_checkpoint(checkpoint)
        for precision in precisions:
            onnx_files[precision] = to_onnx(model, artifacts / f"{checkpoint.stem}.{precision}.onnx", precision=precision)
    cases, not_run = plan_cases(checkpoint, onnx_files, device, backends, precisions)
    if "eager" not in backends:
        not_run.setdefault("eager", "not requested (used as the parity reference only)")
    reference = load_calculator(checkpoint, device)
    (out / "records.jsonl").unlink(missing_ok=True)
    steps = sum(suite.runs(case.backend, workload) for case in cases for workload in suite.workloads)
    with tqdm(total=steps, desc=f"bench {suite_name}", unit="task") as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            if not message.endswith("building"):
                bar.update(1)

        records = write_jsonl(run_suite(suite, cases, reference, device, progress), out / "records.jsonl")
    environment = describe_environment(device)
    results = {"suite": suite_name, "environment": environment, "records": records, "not_run": not_run}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown_table(records, environment, not_run))
    write_plots(records, out, environment.get("gpu") or str(device))
    return results
