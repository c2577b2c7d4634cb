"""mlff-export predict over a dataset: in this process and on a local Ray cluster of 2 workers.

One dataset (tests/screening_data.py: 500 molecules, 4 periodic cells, 5 structures the model
must refuse, in two extxyz files and an ASE database) and its one-by-one reference serve every
test; the Ray cluster starts once, for the tests at the end of the module.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_small_painn
from screening_data import (
    ENERGY_TOLERANCE,
    FORCE_TOLERANCE,
    STRESS_TOLERANCE,
    read_results,
    read_summary,
    write_dataset,
)

from mlff_export.checkpoint import save_checkpoint
from mlff_export.cli import main
from mlff_export.runtime import load_calculator
from mlff_export.screening import ModelSettings, screen
from mlff_export.screening.inputs import Shard
from mlff_export.screening.manifest import RunMismatchError
from mlff_export.screening.outputs import shard_file, shard_is_done

SHARD_SIZE = 40  # 15 shards: enough to stop half-way and to keep two Ray workers busy


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread, as each Ray worker has: two threads on a busy 2-core machine were 7x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("screening")


@pytest.fixture(scope="module")
def checkpoint(folder):
    return save_checkpoint(make_small_painn(), folder / "small.json")


@pytest.fixture(scope="module")
def dataset(folder):
    data = folder / "data"
    data.mkdir()
    return write_dataset(data)


@pytest.fixture(scope="module")
def reference(checkpoint, dataset):
    """calc.predict on each accepted structure alone, by structure id."""
    calc = load_calculator(checkpoint)
    _, accepted, _ = dataset
    return {structure_id: calc.predict([atoms])[0] for structure_id, atoms in accepted.items()}


@pytest.fixture(scope="module")
def settings(checkpoint):
    return ModelSettings(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def uninterrupted(folder, dataset, settings):
    out = folder / "uninterrupted"
    report = screen(dataset[0], out, settings, shard_size=SHARD_SIZE, show_progress=False)
    return out, report


def assert_matches_reference(out, reference):
    results = read_results(out)
    assert set(results) == set(reference)
    for structure_id, want in reference.items():
        have = results[structure_id].calc.results
        assert have["energy"] == pytest.approx(want["energy"], abs=ENERGY_TOLERANCE), structure_id
        np.testing.assert_allclose(have["forces"], want["forces"], atol=FORCE_TOLERANCE, err_msg=structure_id)
        assert ("stress" in have) == ("stress" in want), structure_id
        if "stress" in want:
            np.testing.assert_allclose(have["stress"], want["stress"], atol=STRESS_TOLERANCE, err_msg=structure_id)


def assert_same_outputs(out, expected_out):
    """Same rows in the same order with the same status and errors, numbers within float32
    rounding, each structure once."""
    rows, expected_rows = read_summary(out), read_summary(expected_out)
    assert [row["structure_id"] for row in rows] == [row["structure_id"] for row in expected_rows]
    assert len({row["structure_id"] for row in rows}) == len(rows)
    for row, expected in zip(rows, expected_rows):
        assert (row["status"], row["error"], row["formula"]) == (expected["status"], expected["error"], expected["formula"])
        if row["status"] == "ok":
            assert float(row["energy_eV"]) == pytest.approx(float(expected["energy_eV"]), abs=ENERGY_TOLERANCE)
    results, expected_results = read_results(out), read_results(expected_out)
    assert set(results) == set(expected_results)
    for structure_id, atoms in results.items():
        np.testing.assert_allclose(atoms.get_forces(), expected_results[structure_id].get_forces(), atol=FORCE_TOLERANCE)


def test_results_equal_one_by_one_predictions(uninterrupted, reference):
    out, report = uninterrupted
    assert (report.ok, report.failed) == (len(reference), 5)
    assert_matches_reference(out, reference)


def test_periodic_cells_carry_stress_and_molecules_do_not(uninterrupted, dataset):
    results = read_results(uninterrupted[0])
    cells = [atoms for structure_id, atoms in results.items() if ".db:" in structure_id]
    assert [atoms.pbc.all() for atoms in cells] == [True, True, True, False]
    for atoms in cells:
        assert ("stress" in atoms.calc.results) == atoms.pbc.all()
    assert not any("stress" in atoms.calc.results for structure_id, atoms in results.items() if ".db:" not in structure_id)


def test_refused_structures_are_reported_and_the_run_goes_on(uninterrupted, dataset):
    inputs, accepted, refused = dataset
    rows = read_summary(uninterrupted[0])
    assert len(rows) == len(accepted) + len(refused)
    failed = {row["structure_id"]: row["error"] for row in rows if row["status"] == "failed"}
    assert set(failed) == set(refused)
    for structure_id, phrase in refused.items():
        assert phrase in failed[structure_id], failed[structure_id]
    assert not set(refused) & set(read_results(uninterrupted[0]))


def test_summary_follows_the_input_order(uninterrupted, dataset):
    inputs, _, _ = dataset
    rows = read_summary(uninterrupted[0])
    sources = [row["source"] for row in rows]
    first, more = inputs
    assert list(dict.fromkeys(sources)) == [str(first), str(more / "cells.db"), str(more / "rest.xyz")]
    indices = [int(row["index"]) for row in rows if row["source"] == str(first)]
    assert indices == sorted(indices) == list(range(len(indices)))


def test_rerun_of_a_finished_run_evaluates_nothing(uninterrupted, dataset, settings):
    out, first_report = uninterrupted
    before = {path: path.stat().st_mtime_ns for path in (out / "shards").iterdir()}
    report = screen(dataset[0], out, settings, shard_size=SHARD_SIZE, show_progress=False)
    assert (report.shards_resumed, report.evaluated) == (first_report.shards, 0)
    assert {path: path.stat().st_mtime_ns for path in (out / "shards").iterdir()} == before


def test_a_folder_of_another_run_is_refused(uninterrupted, dataset, settings):
    with pytest.raises(RunMismatchError, match="shard_size"):
        screen(dataset[0], uninterrupted[0], settings, shard_size=SHARD_SIZE + 1, show_progress=False)
    with pytest.raises(RunMismatchError, match="sources"):
        screen(dataset[0][:1], uninterrupted[0], settings, shard_size=SHARD_SIZE, show_progress=False)


def test_a_shard_with_a_missing_file_is_not_done(uninterrupted, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted[0], out)
    shard = Shard("00003", "unused", "extxyz", 120, 160)
    assert shard_is_done(out, shard)
    shard_file(out, "00003", ".extxyz").write_text("")
    assert not shard_is_done(out, shard)


def predict_command(inputs, out, checkpoint, *options):
    return [sys.executable, "-m", "mlff_export.cli", "predict", *map(str, inputs), "--out", str(out),
            "--checkpoint", str(checkpoint), "--device", "cpu", "--shard-size", str(SHARD_SIZE), *options]


def test_a_killed_run_resumes_to_the_same_outputs(folder, dataset, checkpoint, uninterrupted, reference):
    out = folder / "killed"
    command = predict_command(dataset[0], out, checkpoint)
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
    deadline = time.monotonic() + 300
    while not list((out / "shards").glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((out / "shards").glob("*.json")))
    assert 0 < done < uninterrupted[1].shards, f"the run was not stopped half-way ({done} shards done)"
    for record in (out / "shards").glob("*.json"):  # what was recorded done is whole
        shard_id = record.stem
        assert shard_file(out, shard_id, ".extxyz").exists() and shard_file(out, shard_id, ".csv").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({done} already done)" in resumed.stdout
    assert not list((out / "shards").glob(".*.tmp"))
    assert_same_outputs(out, uninterrupted[0])
    assert_matches_reference(out, reference)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["missing.xyz"], "does not exist"),
        (["{checkpoint}"], "unknown kind"),
        (["{data}", "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["{data}", "--workers", "2"], "need --ray"),
        (["{data}", "--ray", "local", "--device", "cuda:1"], "give --device cuda or cpu"),  # before Ray starts
        (["{data}", "--ray", "local", "--model", "missing.onnx"], "model file missing.onnx does not exist"),
    ],
)
def test_user_mistakes_are_one_line(arguments, message, folder, dataset, checkpoint, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(folder)
    arguments = [a.format(checkpoint=checkpoint, data=dataset[0][0]) for a in arguments]
    if "--model" not in arguments:
        arguments += ["--checkpoint", str(checkpoint)]
    assert main(["predict", *arguments, "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and message in error and "\n" not in error, error
    assert not (tmp_path / "out").exists(), "a mistake is found before anything is written"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster for this module: 3 logical CPUs (two workers, one for reading and
    writing) and a small object store (the machine is shared)."""
    ray = pytest.importorskip("ray", reason='Ray is the optional extra [ray] (the test extra brings it)')
    ray.init(num_cpus=3, object_store_memory=300 * 2**20, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def processes_of_this_test(title_part: str) -> dict[int, str]:
    """Processes descending from this test's process whose title holds ``title_part``, by pid
    (Ray titles a worker ``ray::<what it runs>[.<method it is running>]``)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if entry.name.isdigit() and title_part in title and descends_from(int(entry.name), os.getpid()):
                found[int(entry.name)] = title
        except OSError:  # a process that ended while we looked
            continue
    return found


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = int((Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[1])
        if pid == ancestor:
            return True
    return False


def kill_a_worker_inside_a_shard(actors: dict[int, str], killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first evaluating actor seen running a shard (its title ends in ``.submit``);
    ``actors`` collects every evaluating actor seen until then."""
    while not stop.is_set():
        actors.update(processes_of_this_test("MapBatches(_EvaluateShards)"))
        busy = [pid for pid, title in actors.items() if title.rstrip().endswith(".submit")]
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            killed.append(busy[0])
            return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def on_ray(ray_cluster, folder, dataset, settings):
    """The dataset on Ray with 2 workers, one of them killed (SIGKILL) while it evaluates a shard."""
    out = folder / "ray"
    actors_before_kill, killed, stop = {}, [], threading.Event()
    killer = threading.Thread(target=kill_a_worker_inside_a_shard, args=(actors_before_kill, killed, stop))
    killer.start()
    records = []
    try:
        report = screen(dataset[0], out, settings, shard_size=SHARD_SIZE, ray="local", workers=2, show_progress=False,
                        on_shard_done=records.append)
    finally:
        stop.set()
        killer.join()
    return out, report, records, killed, set(actors_before_kill)


def test_ray_results_equal_one_by_one_predictions(on_ray, reference, uninterrupted):
    out, report = on_ray[:2]
    assert (report.ok, report.failed) == (len(reference), 5)
    assert_matches_reference(out, reference)
    assert_same_outputs(out, uninterrupted[0])


def test_ray_restarts_a_killed_worker_and_retries_its_shard(on_ray):
    out, report, records, killed, actors_before_kill = on_ray
    assert killed, "no worker was seen evaluating a shard"
    assert sorted(record["shard_id"] for record in records) == [f"{i:05d}" for i in range(report.shards)]
    pids = {int(re.search(r"pid (\d+)", record["evaluation"]["worker"]).group(1)) for record in records}
    assert pids - actors_before_kill, "a restarted worker (a new process) evaluated the killed worker's shard"
