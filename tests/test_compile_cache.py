"""Compiled kernels kept across processes (runtime/compile_cache.py): a second process reuses them,
and a cache made for anything else — another model, weights, torch, Triton, device, mode — or a
damaged, edited or unsafe one is never used."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compiled_versions

from mlff_export.export.joint_graph import trace_joint_graph
from mlff_export.model import PaiNN, PaiNNConfig
from mlff_export.runtime import load_calculator
from mlff_export.runtime.compile_cache import FORMAT, CompileCache, CompileCacheKey, graph_fingerprint

TESTS = Path(__file__).parent

CHILD = """
import json, sys, torch
from ase.build import molecule
from torch._dynamo.utils import counters
from mlff_export.model import PaiNN, PaiNNConfig
from mlff_export.runtime import load_calculator
torch.manual_seed(0)
model = PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
calc = load_calculator(model, backend="compile", compile_cache=sys.argv[1])
energies = []
for name in sys.argv[2].split(","):
    atoms = molecule(name)
    atoms.calc = calc
    energies.append(atoms.get_potential_energy())
energy = energies[0]
print(json.dumps({"energy": energy, "hits": counters["inductor"]["fxgraph_cache_hit"] + counters["aot_autograd"]["autograd_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"]}))
"""


def tiny_graph(seed: int = 0, **config) -> torch.fx.GraphModule:
    torch.manual_seed(seed)
    model = PaiNN(PaiNNConfig(**{"num_features": 8, "num_interactions": 1, "num_radial": 4, "cutoff": 4.0, **config})).eval()
    return trace_joint_graph(model)[0]


def run_child(cache: Path, inductor_cache: Path, molecules: str = "C6H6") -> dict:
    """One fresh process evaluating ``molecules`` (comma-separated; benzene's energy returned),
    with its own (empty) Inductor cache."""
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(cache), molecules], capture_output=True, text=True, env=environment, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_new_process_uses_the_kernels_the_first_one_compiled(tmp_path):
    """The first process compiles two buckets (benzene's static, then C60's with symbolic sizes)
    and runs a third (biphenyl's) on the symbolic-size kernels; a new one doing the same compiles
    nothing and writes nothing. One file pair per save that adds kernels: a pair per bucket
    repeated the earlier compiles in each (torch returns all of them at every save), and when one
    file was rewritten instead, a new process compiled a graph again (torch loads only the last
    save's kernels from a payload)."""
    first = run_child(tmp_path / "cache", tmp_path / "inductor-1", "C6H6,C60,biphenyl")
    assert first["misses"] >= 2 and first["hits"] == 0
    (folder,) = {path.parent for path in (tmp_path / "cache").glob("*/*.bin")}  # beside it: the traced graph's folder
    manifests = sorted(folder.glob("*.json"))
    assert [len(json.loads(manifest.read_text())["buckets"]) for manifest in manifests] == [1, 2], "one file pair per compile; biphenyl's bucket listed beside C60's"
    assert {oct(path.stat().st_mode & 0o777) for path in folder.iterdir()} == {oct(0o600)}
    files = sorted((tmp_path / "cache").rglob("*"))
    second = run_child(tmp_path / "cache", tmp_path / "inductor-2", "C6H6,C60,biphenyl")  # nothing in Inductor's own cache
    assert second["hits"] >= 2 and second["misses"] == 0
    assert second["energy"] == pytest.approx(first["energy"], abs=1e-5)
    assert sorted((tmp_path / "cache").rglob("*")) == files, "a process that compiled and traced nothing added files"


def test_the_key_changes_with_everything_a_kernel_depends_on():
    graph = tiny_graph()
    key = CompileCacheKey.of(graph, torch.device("cpu"), "default")
    changed = {
        "weights": CompileCacheKey.of(tiny_graph(seed=1), torch.device("cpu"), "default"),
        "architecture": CompileCacheKey.of(tiny_graph(num_interactions=2), torch.device("cpu"), "default"),
        "cutoff": CompileCacheKey.of(tiny_graph(cutoff=5.0), torch.device("cpu"), "default"),
        "mode": CompileCacheKey.of(graph, torch.device("cpu"), "max-autotune"),
        "torch": dataclasses.replace(key, torch="2.11.0"),
        "triton": dataclasses.replace(key, triton="3.6.0"),
        "device": dataclasses.replace(key, device="NVIDIA H200 sm_90"),
    }
    assert CompileCacheKey.of(tiny_graph(), torch.device("cpu"), "default").digest == key.digest  # same model, same key
    for what, other in changed.items():
        assert other.digest != key.digest, what


def test_a_gpu_is_keyed_by_its_model_and_compute_capability(monkeypatch):
    """Kernels compiled for one GPU model never serve another, nor the CPU. The GPU's properties
    come from a fake (``fake_h200_properties``: this machine has no CUDA); what is tested is our naming."""
    from types import SimpleNamespace

    from mlff_export.runtime.compile_cache import device_model

    fake_h200_properties = SimpleNamespace(name="NVIDIA H200", major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: fake_h200_properties)
    assert device_model(torch.device("cuda")) == "NVIDIA H200 sm_90"
    assert device_model(torch.device("cpu")).startswith("cpu ")


def test_one_weight_moved_by_one_float32_step_changes_the_fingerprint():
    graph = tiny_graph()
    before = graph_fingerprint(graph)
    name, weight = next(iter(graph.named_parameters()))
    with torch.no_grad():
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(float("inf")))
    assert graph_fingerprint(graph) != before, name


def stored_cache(tmp_path: Path, cache_key: CompileCacheKey, payload: bytes = b"payload", **manifest_changes) -> CompileCache:
    """A cache folder holding one payload and its manifest, written by hand (``manifest_changes``
    replace its entries)."""
    cache = CompileCache(tmp_path, cache_key)
    cache.folder.mkdir(mode=0o700)
    cache.payload_path.write_bytes(payload)
    manifest = {"format": FORMAT, "key": dataclasses.asdict(cache_key), "buckets": [[[16, 3]]],
                "payload_sha256": hashlib.sha256(payload).hexdigest(), **manifest_changes}
    cache.manifest_path.write_text(json.dumps(manifest))
    for path in (cache.payload_path, cache.manifest_path):
        path.chmod(0o600)
    return cache


KEY = CompileCacheKey(graph="g" * 64, torch="2.13.0", triton=None, device="cpu x86_64 AVX2", mode="default")


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda cache: cache.payload_path.write_bytes(b"payloaD"), "does not match the SHA-256"),
        (lambda cache: cache.manifest_path.write_text("{not json"), "cannot be read"),
        (lambda cache: cache.payload_path.chmod(0o666), "writable by others"),
        (lambda cache: cache.folder.chmod(0o777), "writable by others"),
        (lambda cache: cache.payload_path.unlink(), "is missing"),
    ],
    ids=["edited-payload", "broken-manifest", "payload-writable-by-others", "folder-writable-by-others", "payload-missing"],
)
def test_a_damaged_or_unsafe_cache_is_not_used(tmp_path, caplog, spoil, reason):
    cache = stored_cache(tmp_path, KEY)
    spoil(cache)
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        assert CompileCache(tmp_path, KEY).load() == 0
    assert reason in caplog.text


@pytest.mark.parametrize("offset", [1, -1], ids=["owner-below-us", "owner-above-us"])
def test_a_cache_owned_by_another_user_is_not_used(tmp_path, caplog, monkeypatch, offset):
    """Files this user did not write (their owner's uid below or above ours: here, by making this
    process's uid look different) hold code that someone else chose."""
    import mlff_export.runtime.compile_cache as compile_cache

    stored_cache(tmp_path, KEY)
    real_uid = os.getuid()
    monkeypatch.setattr(compile_cache.os, "getuid", lambda: real_uid + offset)
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        assert CompileCache(tmp_path, KEY).load() == 0
    assert "not owned by this user" in caplog.text


def test_a_payload_torch_cannot_read_is_not_used(tmp_path, caplog):
    stored_cache(tmp_path, KEY, payload=b"not what save_cache_artifacts writes")
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        assert CompileCache(tmp_path, KEY).load() == 0
    assert "torch cannot read its payload" in caplog.text


@pytest.mark.parametrize("field", ["graph", "torch", "device", "mode"])
def test_a_manifest_made_for_another_key_is_not_used(tmp_path, caplog, field):
    """A file under this key's folder whose manifest names another key (copied or renamed by hand)."""
    other = dataclasses.replace(KEY, **{field: "other"})
    stored_cache(tmp_path, KEY, key=dataclasses.asdict(other))
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        assert CompileCache(tmp_path, KEY).load() == 0
    assert "made for another" in caplog.text


def test_a_manifest_of_another_format_is_not_used(tmp_path, caplog):
    """A manifest written by a newer (or older) mlff-export's cache format, under this key's folder."""
    for index, other_format in enumerate(("mlff-export-compile-cache/2", "mlff-export-compile-cache/0")):
        folder = tmp_path / str(index)
        folder.mkdir()
        stored_cache(folder, KEY, format=other_format)
        with caplog.at_level(logging.WARNING, logger="mlff_export"):
            assert CompileCache(folder, KEY).load() == 0, other_format
    assert caplog.text.count("made for another") == 2


def test_the_cache_folder_is_the_users_choice_then_xdgs_then_home(tmp_path, monkeypatch):
    from mlff_export.runtime.compile_cache import CACHE_ENV, default_cache_folder

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(CACHE_ENV, "~/my-kernels")
    assert default_cache_folder() == tmp_path / "home" / "my-kernels"
    monkeypatch.setenv(CACHE_ENV, "")  # set but empty: as if unset
    assert default_cache_folder() == tmp_path / "xdg" / "mlff-export" / "compiled"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_folder() == tmp_path / "home" / ".cache" / "mlff-export" / "compiled"


def test_every_bucket_a_process_ran_is_listed_beside_a_payload(tmp_path, caplog):
    """In one process, three buckets (two compiles, then the symbolic-size kernels again) in a
    cache folder not made yet: the folder (private, made with its parents) holds one payload per
    compile, every manifest beside its payload (private), and a cache opened afresh on the folder
    loads every file and lists all three buckets, nothing refused; files it cannot use, sorted
    before the good ones, are refused one by one and the rest still load; a cache on another
    folder whose parents do not exist saves there too."""
    from mlff_export.bench.workloads import small_molecule_batch

    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
    folder = tmp_path / "not" / "made" / "yet"
    calc = load_calculator(model, backend="compile", compile_cache=folder)
    for size in (1, 6, 20):
        calc.predict(small_molecule_batch(size, seed=size))
    cache = calc.backend.compile_cache
    assert len(cache.buckets) == 3
    payloads = sorted(cache.folder.glob("*.bin"))
    assert len(payloads) == 2 and sorted(cache.folder.glob("*.json")) == [path.with_suffix(".json") for path in payloads]
    with caplog.at_level(logging.INFO, logger="mlff_export"):
        reopened = CompileCache(folder, cache.key)
        assert reopened.load() == 2
    assert sorted(reopened.buckets) == sorted(cache.buckets) and "not used" not in caplog.text
    assert "3 buckets from 2 files" in caplog.text
    assert oct(cache.folder.stat().st_mode & 0o777) == oct(0o700)
    assert {oct(path.stat().st_mode & 0o777) for path in cache.folder.iterdir()} == {oct(0o600)}

    manifest = json.loads(sorted(cache.folder.glob("*.json"))[0].read_text())
    for name, payload in (("0-edited", b"edited"), ("0-unreadable", b"not what save_cache_artifacts writes")):
        (cache.folder / f"{name}.bin").write_bytes(payload)
        sha256 = hashlib.sha256(payload).hexdigest() if name == "0-unreadable" else manifest["payload_sha256"]
        (cache.folder / f"{name}.json").write_text(json.dumps({**manifest, "payload_sha256": sha256}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlff_export"):
        reopened = CompileCache(folder, cache.key)
        assert reopened.load() == 2
    assert sorted(reopened.buckets) == sorted(cache.buckets)
    assert caplog.text.count("not used") == 2 and "does not match the SHA-256" in caplog.text and "cannot read its payload" in caplog.text

    elsewhere = CompileCache(tmp_path / "elsewhere" / "nested", cache.key)  # no traced graph made its parents
    elsewhere.add(((16, 3),))
    assert len(list(elsewhere.folder.glob("*.bin"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["compile", "compile-max-autotune"])
def test_a_compile_backend_compiles_twice_for_any_number_of_buckets(tmp_path, backend):
    """Three batches in three buckets: a static compile, a dynamic one, then no more; every
    bucket gives the eager numbers. compile-max-autotune's static (autotuned) graph serves the
    first bucket only, its dynamic one (default kernels) the other two."""
    from torch._dynamo.utils import counters

    from mlff_export.bench.workloads import small_molecule_batch

    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
    compiled = load_calculator(model, backend=backend, compile_cache=False)
    eager = load_calculator(model)
    buckets = []  # the input shapes of each graph call, as the backend runs them
    run = compiled.backend.run
    compiled.backend.run = lambda feeds: buckets.append(tuple(tensor.shape for tensor in feeds.values())) or run(feeds)
    before = counters["stats"]["unique_graphs"]
    for size in (1, 6, 20):
        structures = small_molecule_batch(size, seed=size)
        for want, have in zip(eager.predict(structures), compiled.predict(structures)):
            assert have["energy"] == pytest.approx(want["energy"], abs=1e-4)
            np.testing.assert_allclose(have["forces"], want["forces"], atol=1e-4)
    assert counters["stats"]["unique_graphs"] - before == 2 and len(set(buckets)) == 3
    if backend == "compile-max-autotune":  # the autotuned graph compiled once, for the first bucket alone
        graph = compiled.backend.call
        assert graph.tuned_shapes == buckets[0] and len(compiled_versions(graph.tuned)) == 1
        assert len(compiled_versions(graph.general)) == 1


def test_max_autotune_keeps_inductors_options_without_its_autotuning_tables(monkeypatch, caplog):
    """Inductor writes every autotuned GEMM's candidates to stderr (~500 lines for one ``validate``
    on the H200): compile-max-autotune compiles with GEMM autotuning (not Inductor's whole
    max-autotune mode: no coordinate-descent or pointwise tuning, minutes of compile for nothing
    on the H200) plus the two options that silence those tables, says once that it autotunes, and
    leaves other modes' options (hence their caches) as they were. A user who sets
    TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED gets Inductor's tables."""
    from mlff_export.runtime.joint_graph import inductor_options

    monkeypatch.delenv("TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED", raising=False)
    options = inductor_options("max-autotune")
    assert options["max_autotune_gemm"] and not options.get("max_autotune") and not options.get("coordinate_descent_tuning")
    assert options["autotune_num_choices_displayed"] == 0 and options["max_autotune_report_choices_stats"] is False
    assert inductor_options("reduce-overhead") == inductor_options("default") == {}
    monkeypatch.setenv("TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED", "10")
    assert inductor_options("max-autotune") == {"max_autotune_gemm": True, "test_configs.max_mm_configs": 4}

    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
    with caplog.at_level(logging.INFO, logger="mlff_export"):
        load_calculator(model, backend="compile-max-autotune", compile_cache=False)
    assert "autotunes the GEMMs for the shape bucket of its first call" in caplog.text


def test_max_autotune_drops_inductors_errors_for_gemm_candidates_too_large_for_the_gpu(monkeypatch):
    """A Triton GEMM candidate needing more shared memory than the GPU has is skipped by Inductor,
    which still logs an error with a traceback for each (~90 lines in one H200 ``validate``):
    compile-max-autotune filters those records and no others, unless the user asked for
    Inductor's autotuning output (TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED)."""
    from mlff_export.runtime.joint_graph import AUTOTUNING_LOGGER, SkippedGemmCandidates

    autotuning_log = logging.getLogger(AUTOTUNING_LOGGER)
    for existing in [f for f in autotuning_log.filters if isinstance(f, SkippedGemmCandidates)]:
        autotuning_log.removeFilter(existing)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    autotuning_log.addHandler(handler)
    skipped = "No valid triton configs. OutOfMemoryError: out of resource: triton_mm Required: 262144 Hardware limit:232448"
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
    try:
        monkeypatch.setenv("TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED", "10")
        load_calculator(model, backend="compile-max-autotune", compile_cache=False)
        autotuning_log.error("Runtime error during autotuning: \n%s. \nIgnoring this choice.", skipped)
        assert len(records) == 1  # the user asked for Inductor's own output: all of it
        monkeypatch.delenv("TORCHINDUCTOR_AUTOTUNE_NUM_CHOICES_DISPLAYED")
        load_calculator(model, backend="compile-max-autotune", compile_cache=False)
        autotuning_log.error("Runtime error during autotuning: \n%s. \nIgnoring this choice.", skipped)
        autotuning_log.error("Exception %s for benchmark choice %s", RuntimeError(skipped), "triton_mm_7")
        autotuning_log.error("Runtime error during autotuning: \n%s. \nIgnoring this choice.", "illegal memory access")
        assert records[1:] == ["Runtime error during autotuning: \nillegal memory access. \nIgnoring this choice."]
    finally:
        autotuning_log.removeHandler(handler)


def test_the_half_body_compiles_with_half_arithmetic_and_float32_models_without(monkeypatch):
    """Inductor computes the FP16 body's float16 tensors in float16 (HALF_ARITHMETIC; 1.33x FP32 at
    10k atoms on the H200 instead of 1.10x) and tiles its pointwise kernels in two axes
    (POINTWISE_TILING); FP32 graphs keep Inductor's defaults (and their caches)."""
    from mlff_export.runtime import joint_graph
    from mlff_export.runtime.joint_graph import HALF_ARITHMETIC, POINTWISE_TILING, CompiledBackend

    compiled_with = []

    def recording_compile(function, **kwargs):  # records what the backend asks of torch.compile; compiles nothing
        compiled_with.append(kwargs.get("options"))
        return function

    monkeypatch.setattr(joint_graph.torch, "compile", recording_compile)
    torch.manual_seed(0)
    model = PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
    for precision, expected in (("fp16", HALF_ARITHMETIC | POINTWISE_TILING), ("fp32", {})):
        compiled_with.clear()
        CompiledBackend(model, torch.device("cpu"), precision=precision)
        graph_options = compiled_with[0]
        assert graph_options.items() >= expected.items(), precision
        assert not ({"triton.codegen_upcast_to_fp32", "triton.prefer_nd_tiling"} & set(graph_options) - set(expected)), precision
