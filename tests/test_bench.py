"""``mlff-export bench``: the quick suite on the CPU (schema, positive numbers, parity, reports),
the noise guard, the table's order and columns, the plots, and the exit status."""

from __future__ import annotations

import json

import pytest
import torch

from mlff_export.bench import timing
from mlff_export.bench.machine_load import LoadMeter, MachineLoad
from mlff_export.bench.report import markdown_table, write_plots
from mlff_export.checkpoint import save_checkpoint
from mlff_export.cli import main
from mlff_export.model import PaiNN, PaiNNConfig


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, small_painn_export):
    """The quick suite on the small PaiNN and its exported graphs (as the pipeline runs it)."""
    out = tmp_path_factory.mktemp("bench") / "results"
    onnx = small_painn_export["onnx"]
    argv = ["bench", "--checkpoint", str(small_painn_export["checkpoint"]), "--suite", "quick", "--device", "cpu",
            "--out", str(out), "--onnx", str(onnx["fp32"]), "--onnx", str(onnx["fp16"])]
    assert main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_every_measurement_succeeded_with_positive_numbers(quick_results):
    _, results = quick_results
    records = results["records"]
    assert {r["case"] for r in records} == {"eager fp32", "onnxruntime fp32", "onnxruntime fp16"}
    for record in records:
        assert "error" not in record, record
        assert record["median_s"] > 0 and record["atom_steps_per_s"] > 0
        assert isinstance(record["load"]["busy"], bool)
        if record["kind"] != "md":
            assert len(record["samples_s"]) >= 3 and record["q1_s"] <= record["median_s"] <= record["q3_s"]
            assert isinstance(record["noisy"], bool)


def test_parity_with_eager_within_tolerance(quick_results):
    from mlff_export.export.parity import PARITY_TOLERANCES

    for record in quick_results[1]["records"]:
        energy, forces = (PARITY_TOLERANCES[record["precision"]][name] for name in ("energy", "forces"))
        atoms = record["num_atoms"]  # bounds the atom count of each structure of the workload
        # |E| <= 120 eV per atom bounds the relative term for H/C/N/O with xTB-sized energies.
        energy_allowed = energy.absolute + energy.per_atom * atoms + energy.relative * 120 * atoms
        assert record["max_abs_force_error_ev_per_a"] <= forces.absolute, record
        assert record["max_abs_energy_error_ev"] <= energy_allowed, record


def test_environment_load_and_reports_are_written(quick_results):
    out, results = quick_results
    environment = results["environment"]
    assert environment["device"] == "cpu" and environment["libraries"]["torch"]
    assert results["machine_load"]["cpu_count"] >= 1 and "busy" in results["machine_load"]
    assert "tensorrt" in results["not_run"] or "tensorrt" not in {r["backend"] for r in results["records"]}
    table = (out / "results.md").read_text()
    assert "| latency C6H6 | eager fp32 | 12 |" in table and "1.00x" in table
    assert "Machine during the run: load average" in table
    for plot in ("latency_vs_atoms.png", "throughput_vs_batch.png", "speedup_benzene.png"):
        assert (out / plot).stat().st_size > 10_000


def record(workload, kind, case="eager fp32", atoms=3, structures=1, median=0.01, **values):
    backend, precision = case.split()
    return {"case": case, "backend": backend, "precision": precision, "workload": workload, "kind": kind,
            "num_atoms": atoms, "num_structures": structures, "median_s": median, "q1_s": 0.9 * median,
            "q3_s": 1.1 * median, "atom_steps_per_s": atoms / median, "structures_per_s": structures / median, **values}


ENVIRONMENT = {"device": "cpu", "cpu": "test CPU", "libraries": {"torch": "2.x"}, "date": "today"}


def table_rows(table: str) -> list[dict[str, str]]:
    """The Markdown table's rows as column -> cell."""
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    return [dict(zip(lines[0], cells)) for cells in lines[2:]]


def test_table_orders_sizes_numerically_and_gives_md_its_own_columns():
    records = [
        record("batch 16", "batch", structures=16, atoms=100),
        record("md C6H6", "md", atoms=12, steps_per_s=50.0, md_energy_drift_ev=-1e-4),
        record("batch 4", "batch", structures=4, atoms=20),
        record("latency C6H6", "latency", "onnxruntime fp16", atoms=12),
        record("latency C6H6", "latency", atoms=12),
        record("batch 1", "batch", atoms=5),
        record("latency H2", "latency", atoms=2),
    ]
    rows = table_rows(markdown_table(records, ENVIRONMENT, {}))
    assert [(row["workload"], row["backend"]) for row in rows] == [
        ("latency H2", "eager fp32"), ("latency C6H6", "eager fp32"), ("latency C6H6", "onnxruntime fp16"),
        ("batch 1", "eager fp32"), ("batch 4", "eager fp32"), ("batch 16", "eager fp32"), ("md C6H6", "eager fp32"),
    ]
    md = rows[-1]
    assert md["structures/s"] == "" and md["MD steps/s"] == "50" and md["MD drift eV"] == "-1.00e-04"


def test_noisy_rows_and_a_busy_machine_are_marked():
    busy = MachineLoad(load_average=5.0, cpu_count=2, other_cpu_percent=70.0, steal_percent=0.0)
    records = [record("latency H2", "latency", noisy=True, load=busy.to_dict())]
    records[0]["q3_s"] = 0.02  # IQR 110% of the median
    table = markdown_table(records, ENVIRONMENT, {}, busy)
    assert "**busy: timings may be inflated**" in table
    assert "noisy (IQR 110% of the median)" in table and "busy (others 70% CPU)" in table
    quiet = MachineLoad(load_average=0.5, cpu_count=2, other_cpu_percent=3.0, steal_percent=0.0)
    assert "(quiet)" in markdown_table([record("latency H2", "latency")], ENVIRONMENT, {}, quiet)


def test_load_meter_counts_other_processes_not_this_one():
    meter = LoadMeter()
    total = 0
    for value in range(3_000_000):  # our own CPU time must not count as "others"
        total += value
    load = meter.stop()
    assert load.cpu_count >= 1 and load.load_average >= 0
    if load.other_cpu_percent is not None:  # Linux
        assert 0 <= load.other_cpu_percent <= 100 and 0 <= load.steal_percent <= 100


class FakeClockForTests:
    """Stands in for ``time.perf_counter`` inside bench.timing only, so that the noise guard's
    logic can be tested with exact call durations; each call advances it by the next duration."""

    def __init__(self, durations):
        self.now, self.durations = 0.0, iter(durations)

    def perf_counter(self) -> float:
        return self.now

    def call(self, step) -> None:
        self.now += next(self.durations)


def fake_timing(monkeypatch, durations, **options):
    clock = FakeClockForTests(durations)
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    return timing.time_calls(clock.call, torch.device("cpu"), warmup=1, **options)


def test_a_stable_row_stops_at_the_requested_samples(monkeypatch):
    result = fake_timing(monkeypatch, [1.0] + [0.010, 0.0101, 0.0099] * 50, repeats=6)
    assert len(result.samples) == 6 and not result.noisy


def test_an_unstable_row_samples_more_and_is_marked_noisy(monkeypatch):
    result = fake_timing(monkeypatch, [1.0] + [0.010, 0.030] * 100, repeats=6, max_seconds=100.0)
    assert len(result.samples) == timing.EXTRA_SAMPLES_FACTOR * 6 and result.noisy


def test_a_row_that_settles_after_extra_samples_is_not_noisy(monkeypatch):
    result = fake_timing(monkeypatch, [1.0] + [0.010, 0.050, 0.030] + [0.010] * 100, repeats=4, max_seconds=100.0)
    assert 4 < len(result.samples) < timing.EXTRA_SAMPLES_FACTOR * 4 and not result.noisy


def test_plots_mark_the_batch_sizes_and_skip_plots_without_data(tmp_path):
    records = [record(f"batch {b}", "batch", case, structures=b, atoms=5 * b)
               for b in (1, 4, 16) for case in ("eager fp32", "onnxruntime fp32")]
    written = write_plots(records, tmp_path, "test")
    assert [path.name for path in written] == ["throughput_vs_batch.png"], "plots without data were written"


def test_tick_labels_skip_sizes_too_close_to_read():
    import matplotlib.pyplot as plt

    from mlff_export.bench.report import _label_ticks

    figure, axes = plt.subplots()
    axes.set_xscale("log")
    _label_ticks(axes.xaxis, [2, 3, 5, 12, 81, 1000], minimum_gap=0.2)
    labels = [label.get_text() for label in axes.xaxis.get_ticklabels()]
    plt.close(figure)
    assert list(axes.xaxis.get_major_locator().tick_values(1, 1000)) == [2, 3, 5, 12, 81, 1000]
    assert labels == ["2", "", "5", "12", "81", "1,000"]


def test_failed_rows_make_the_command_fail(tmp_path, capsys):
    """A model that lacks carbon cannot evaluate benzene: the row is reported and the exit is 1."""
    hydrogen_only = PaiNN(PaiNNConfig(species=(1,), num_features=8, num_interactions=1, num_radial=4, cutoff=3.0)).eval()
    checkpoint = save_checkpoint(hydrogen_only, tmp_path / "h.json")
    argv = ["bench", "--checkpoint", str(checkpoint), "--backends", "eager", "--device", "cpu", "--only", "latency C6H6",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "1 of 1 benchmark rows failed" in err[-1] and "element(s) C" in err[-1] and "results.md" in err[-1]
    assert "failed: StructureError" in (tmp_path / "out" / "results.md").read_text()


def test_nothing_to_measure_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["bench", "--suite", "full", "--backends", "compile", "--only", "loop", "--device", "cpu", "--out", str(out)]) == 1
    assert "nothing to measure" in capsys.readouterr().err and not out.exists()


def test_joint_graph_backends_get_fp16_rows_on_a_gpu_only():
    """Rows planned per backend and precision: exported graphs at every precision anywhere, the
    joint-graph backends' FP16 body on CUDA only, the rest fp32 (cases are built lazily: no GPU needed)."""
    from mlff_export import REFERENCE_CHECKPOINT
    from mlff_export.bench.cases import plan_cases
    from mlff_export.model_spec import ModelSpec

    backends = ["eager", "compile-reduce-overhead", "cuda-graphs", "onnxruntime"]
    onnx_files = {"fp32": "m.fp32.onnx", "fp16": "m.fp16.onnx"}
    model = ModelSpec(str(REFERENCE_CHECKPOINT))
    on_gpu = [case.label for case in plan_cases(model, onnx_files, torch.device("cuda"), backends, ["fp32", "fp16"])]
    assert on_gpu == ["eager fp32", "compile-reduce-overhead fp32", "compile-reduce-overhead fp16", "cuda-graphs fp32",
                      "cuda-graphs fp16", "onnxruntime fp32", "onnxruntime fp16"]
    on_cpu = [case.label for case in plan_cases(model, onnx_files, torch.device("cpu"), ["eager", "compile", "onnxruntime"], ["fp32", "fp16"])]
    assert on_cpu == ["eager fp32", "compile fp32", "onnxruntime fp32", "onnxruntime fp16"]


def test_the_benchmarks_fp16_body_backends_are_the_runtimes_joint_graph_backends():
    """bench/availability names them without importing torch; they must stay the runtime's list."""
    from mlff_export.bench.availability import HALF_BODY_BACKENDS
    from mlff_export.runtime.calculator import MODULE_BACKENDS

    assert HALF_BODY_BACKENDS == set(MODULE_BACKENDS) - {"eager"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("script, argv, message", [
    ("large_systems", ["--out", "OUT"], "it measures time and memory on a CUDA GPU: none is visible here"),
    ("cold_start", ["--out", "OUT", "--device", "cuda"], "--device cuda: no CUDA GPU is visible here; use --device cpu"),
    ("cold_start", ["--out", "OUT", "--device", "gpu"], "expected cpu, cuda or cuda:N, got 'gpu'"),
    ("screening_scale", ["--out", "OUT"], "--device cuda: no CUDA GPU is visible here; use --device cpu"),
    ("trt_rtx_check", ["--out", "OUT"], "it measures TensorRT-RTX's parse and build on a CUDA GPU: none is visible here"),
    ("profile_call", [], "it measures a calculator call's stages on a CUDA GPU: none is visible here"),
    ("blas_gemms", [], "it measures GEMM times on a CUDA GPU: none is visible here"),
])
def test_the_gpu_scripts_refuse_a_machine_without_cuda_in_one_line(script, argv, message, tmp_path, capsys):
    """``python -m mlff_export.bench.<script>`` where the GPU is missing: a usage error (exit
    status 2) naming why, before any output folder or work; not a traceback from the first CUDA call."""
    import importlib

    main = importlib.import_module(f"mlff_export.bench.{script}").main
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out") if arg == "OUT" else arg for arg in argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("written, noted", [(False, True), (True, False), (None, False)])
def test_cold_start_lines_say_when_a_process_wrote_no_bytecode(written, noted):
    """A cold start measured where Python writes no bytecode caches (the GPU image's
    PYTHONDONTWRITEBYTECODE) pays seconds that an installed torch does not: its line says so."""
    from mlff_export.bench.cold_start import summary_line

    record = {"backend": "eager", "phase": "warm", "first_call_s": 12.6, "first_pass_s": 5.7, "second_pass_s": 0.06,
              "warm_call_ms": 0.35, "buckets_in_cache": 8}
    if written is not None:
        record["bytecode_written"] = written
    assert ("no bytecode written" in summary_line(record)) is noted


def test_large_systems_ratios_pair_rows_of_one_skin_only():
    """FP32/FP16 and size ratios compare rows of the same backend and skin; a skin is named in
    the key only where it is not 0."""
    from mlff_export.bench.large_systems import time_ratios

    rows = [{"backend": "b", "precision": precision, "skin_a": skin, "atoms": atoms, "median_s": seconds}
            for precision, skin, atoms, seconds in [("fp32", 0.0, 10, 2.0), ("fp16", 0.0, 10, 1.0), ("fp32", 0.5, 10, 1.5),
                                                    ("fp16", 0.5, 10, 1.2), ("fp16", 0.5, 100, 6.0)]]
    assert time_ratios(rows) == {"b 10 atoms fp32/fp16": 2.0, "b skin 0.5 10 atoms fp32/fp16": 1.25, "b skin 0.5 fp16 100/10 atoms": 5.0}


@pytest.mark.parametrize("option, value", [("--skins", "0,-0.5"), ("--skins", "0.5,nan"), ("--skins", "half"), ("--md-steps", "-1")])
def test_large_systems_refuses_a_skin_or_step_count_it_cannot_use_in_one_line(option, value, tmp_path, capsys):
    from mlff_export.bench.large_systems import main as large_systems

    with pytest.raises(SystemExit) as exit_info:
        large_systems(["--out", str(tmp_path / "out"), option, value])
    assert exit_info.value.code == 2
    assert f"{option}: " in capsys.readouterr().err


def test_large_systems_md_counts_a_search_per_step_without_a_skin_and_fewer_with_one():
    """The MD column's searches: every force call searches without a skin (the first step's two
    calls included); a 1 Å skin at 300 K keeps one list for six 0.5 fs steps of water."""
    from mlff_export import REFERENCE_CHECKPOINT
    from mlff_export.bench.large_systems import md_steps
    from mlff_export.bench.workloads import water_box
    from mlff_export.runtime import load_calculator

    atoms = water_box(96)
    searches = {skin: md_steps(load_calculator(REFERENCE_CHECKPOINT, device="cpu", skin=skin), atoms, 6) for skin in (0.0, 1.0)}
    assert searches[0.0]["md_neighbor_searches"] == 7
    assert searches[1.0]["md_neighbor_searches"] == 1
    assert all(row["md_steps"] == 6 and row["md_median_step_s"] > 0 for row in searches.values())


def test_large_systems_md_keeps_the_steps_before_one_the_calculator_refuses():
    """A trajectory that brings two atoms closer than the calculator's minimum distance ends
    with the reason, not with the row lost."""
    from ase import Atoms

    from mlff_export import REFERENCE_CHECKPOINT
    from mlff_export.bench.large_systems import md_steps
    from mlff_export.runtime import load_calculator

    atoms = Atoms("H2", positions=[[0, 0, 0], [0.95, 0, 0]])  # stretched: the bond swings in past 0.7 Å within ~4 fs
    row = md_steps(load_calculator(REFERENCE_CHECKPOINT, device="cpu", min_distance=0.7), atoms, 50)
    assert 0 < row["md_steps"] < 50 and row["md_median_step_s"] > 0
    assert row["md_error"].startswith("StructureError: ") and "closer than the minimum" in row["md_error"]
