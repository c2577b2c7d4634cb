"""``mlff-export bench --suite quick`` on the CPU: schema, positive numbers, parity, reports."""

from __future__ import annotations

import json

import pytest
from conftest import make_small_painn

from mlff_export.checkpoint import save_checkpoint
from mlff_export.cli import main


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    checkpoint = save_checkpoint(make_small_painn(), folder / "small.json")
    out = folder / "results"
    assert main(["bench", "--checkpoint", str(checkpoint), "--suite", "quick", "--device", "cpu", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_every_measurement_succeeded_with_positive_numbers(quick_results):
    _, results = quick_results
    records = results["records"]
    assert {r["case"] for r in records} == {"eager fp32", "onnxruntime fp32", "onnxruntime fp16"}
    for record in records:
        assert "error" not in record, record
        assert record["median_s"] > 0 and record["atom_steps_per_s"] > 0
        if record["kind"] != "md":
            assert len(record["samples_s"]) >= 3 and record["q1_s"] <= record["median_s"] <= record["q3_s"]


def test_parity_with_eager_within_tolerance(quick_results):
    from mlff_export.export.parity import PARITY_TOLERANCES

    for record in quick_results[1]["records"]:
        energy, forces = (PARITY_TOLERANCES[record["precision"]][name] for name in ("energy", "forces"))
        atoms = record["num_atoms"]  # bounds the atom count of each structure of the workload
        # |E| <= 120 eV per atom bounds the relative term for H/C/N/O with xTB-sized energies.
        energy_allowed = energy.absolute + energy.per_atom * atoms + energy.relative * 120 * atoms
        assert record["max_abs_force_error_ev_per_a"] <= forces.absolute, record
        assert record["max_abs_energy_error_ev"] <= energy_allowed, record


def test_environment_and_reports_are_written(quick_results):
    out, results = quick_results
    environment = results["environment"]
    assert environment["device"] == "cpu" and environment["libraries"]["torch"]
    assert "tensorrt" in results["not_run"] or "tensorrt" not in results["records"]
    table = (out / "results.md").read_text()
    assert "| latency C6H6 | eager fp32 |" in table and "1.00x" in table
    for plot in ("latency_vs_atoms.png", "throughput_vs_batch.png", "speedup_benzene.png"):
        assert (out / plot).stat().st_size > 10_000


def test_unknown_backend_is_one_line(capsys):
    assert main(["bench", "--backends", "eager,warp-drive"]) == 1
    assert "must be a comma-separated list" in capsys.readouterr().err
