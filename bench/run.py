"""``run_benchmark``: export what the cases need, run the suite, write JSON, Markdown and plots."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from mlff_export.bench.cases import plan_cases
from mlff_export.bench.environment import describe_environment
from mlff_export.bench.machine_load import LoadMeter
from mlff_export.bench.report import markdown_table, write_plots
from mlff_export.bench.suite import Suite, run_suite, write_jsonl
from mlff_export.model_spec import ModelSpec
from mlff_export.runtime.calculator import load_calculator


def run_benchmark(
    model: ModelSpec,
    suite: Suite,
    backends: list[str],
    precisions: list[str],
    device: torch.device,
    out: Path,
    *,
    not_run: dict[str, str] | None = None,
    onnx_files: dict[str, Path] | None = None,
) -> dict:
    """Run ``suite`` for ``backends`` x ``precisions`` on ``device``; returns the JSON written.

    ``backends`` must all be able to run here (:mod:`.availability` decides; ``not_run`` holds
    the skipped ones and why, for the report). ``onnx_files`` (precision -> exported graph) are
    used instead of exporting ``model`` again; otherwise graphs and engines go to a
    temporary folder, removed at the end.

    Writes into ``out``: ``records.jsonl`` (as it goes), ``results.json`` (environment, machine
    load, records, rows not run and why), ``results.md`` and the PNG plots that have data.
    """
    with tempfile.TemporaryDirectory(prefix="mlff-bench-") as artifacts:
        if onnx_files is None and {"onnxruntime", "tensorrt"} & set(backends):
            from mlff_export.export import to_onnx

            logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes on absent torchvision ops
            loaded = model.load()
            onnx_files = {
                precision: to_onnx(loaded.module, Path(artifacts) / f"{model.name}.{precision}.onnx", precision=precision,
                                   model_source=loaded.source)
                for precision in tqdm(precisions, desc="bench: exporting ONNX", unit="graph")
            }
        cases = plan_cases(model, onnx_files or {}, device, backends, precisions)
        return _run(suite, cases, model, device, out, dict(not_run or {}))


def _run(suite: Suite, cases, model: ModelSpec, device: torch.device, out: Path, not_run: dict[str, str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    if not any(case.backend == "eager" for case in cases):
        not_run.setdefault("eager", "not requested (used as the parity reference only)")
    reference = load_calculator(model.load().module, device)
    (out / "records.jsonl").unlink(missing_ok=True)
    steps = sum(suite.runs(case.backend, workload) for case in cases for workload in suite.workloads)
    meter = LoadMeter()
    with tqdm(total=steps, desc=f"bench {suite.name}", unit="row") as bar:

        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            if not message.endswith("building"):
                bar.update(1)

        records = write_jsonl(run_suite(suite, cases, reference, device, progress), out / "records.jsonl")
    load = meter.stop()
    environment = describe_environment(device)
    results = {"suite": suite.name, "model": model.argv()[1:], "environment": environment, "machine_load": load.to_dict(), "records": records,
               "not_run": not_run}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(markdown_table(records, environment, not_run, load))
    where = environment.get("gpu") or environment.get("cpu") or str(device)
    write_plots(records, out, f"{where} (busy machine)" if load.busy else where)
    return results
