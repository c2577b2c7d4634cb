"""Building engines: our builder logic around TensorRT, and (where TensorRT and a GPU exist) the
real engine against the eager model. The CLI's argument checks and its advice without TensorRT are
in tests/test_cli.py.

``FakeTensorRTForTests`` (tests/fake_tensorrt.py) stands in for the missing TensorRT library ONLY
to test our code around it (flags, profiles, caches, files written); it builds nothing.
"""

from __future__ import annotations

import pytest
import torch
from fake_tensorrt import FAKE_PLAN, FAKE_TIMING_CACHE, fake_library

from mlff_export.export import engine_builder
from mlff_export.export.engine_builder import BuilderSettings, EngineBuildError, OnnxParseError, build_engine
from mlff_export.export.engine_profiles import profile_from_ranges, select_profiles
from mlff_export.export.engine_sidecar import check_engine
from mlff_export.export.metadata import ArtifactMetadata
from mlff_export.export.tensorrt_compat import (
    TensorRTLibrary,
    TensorRTUnavailableError,
    import_tensorrt,
    tensorrt_rtx_runs_on,
)


def tensorrt_here() -> TensorRTLibrary | None:
    try:
        return import_tensorrt()
    except TensorRTUnavailableError:
        return None


def graph_metadata(**changes) -> ArtifactMetadata:
    values = dict(
        interface_version="1", cutoff=5.0, species=(1, 6, 7, 8), precision="fp32", input_layout="neighbor_table",
        force_method="conservative", model_sha256="c" * 64, weights_sha256="d" * 64, exporter="mlff-export",
        torch_version="2.13", onnx_version="1.23", opset=18,
    )
    return ArtifactMetadata(**{**values, **changes})


@pytest.fixture
def without_gpu_or_graph(monkeypatch):
    """The builder's two contacts with the machine and the ONNX file, replaced by fixed answers."""
    monkeypatch.setattr(engine_builder, "current_gpu", lambda: ("NVIDIA GeForce RTX 3080 Ti", "8.6"))
    monkeypatch.setattr(engine_builder, "read_metadata", lambda path: graph_metadata())


def build(tmp_path, library, profiles=("medium",), settings=BuilderSettings(), report=lambda line: None):
    return build_engine(tmp_path / "x.onnx", tmp_path / "e.plan", select_profiles(list(profiles)), "fp32",
                        settings, report=report, library=library)


def test_builder_sets_profiles_workspace_and_clears_tf32(tmp_path, without_gpu_or_graph):
    library = fake_library()
    result = build(tmp_path, library, ("small-molecules", "medium"), BuilderSettings(workspace_mb=512))
    calls = library.module.calls
    assert calls.cleared_flags == [6] and calls.workspace == (0, 512 << 20)  # BuilderFlag.TF32, MemoryPoolType.WORKSPACE
    assert [p["positions"] for p in calls.profiles] == [((1, 3), (32, 3), (256, 3)), ((64, 3), (512, 3), (2048, 3))]
    assert calls.profiles[1]["neighbor_index"] == ((64, 8), (512, 48), (2048, 96))
    assert (tmp_path / "e.plan").read_bytes() == FAKE_PLAN
    assert result.layer_counts == {"ELEMENTWISE": 1, "GATHER": 1}
    sidecar = check_engine(tmp_path / "e.plan", tensorrt_flavour="tensorrt", tensorrt_version="10.16.0",
                           compute_capability="8.6")
    assert sidecar.builder["tf32_cleared"] and sidecar.weights_sha256 == "d" * 64 and len(sidecar.profiles) == 2


# The words TensorRT receives, from each version's own headers (tests/fake_tensorrt.py): 10.x STRONGLY_TYPED = 1,
# 11.x none (always strongly typed, the flag deprecated), RTX STRONGLY_TYPED = 0; REQUIRE_USER_ALLOCATION = 28 (RTX).
@pytest.mark.parametrize(
    ("version", "rtx", "network_flags", "set_flags"),
    [("10.0.1", False, 0b10, []), ("10.16.0", False, 0b10, []), ("11.1.0", False, 0, []), ("1.7.1", True, 0b1, [28])],
)
def test_flag_words_are_those_of_each_version(tmp_path, without_gpu_or_graph, version, rtx, network_flags, set_flags):
    library = fake_library(version, rtx=rtx)
    sidecar = build(tmp_path, library).sidecar
    assert library.module.calls.network_flags == network_flags
    assert library.module.calls.set_flags == set_flags and library.module.calls.cleared_flags == [6]
    assert sidecar.builder["require_user_allocation"] is rtx


def test_timing_cache_is_kept_beside_the_engine_and_reused(tmp_path, without_gpu_or_graph):
    library = fake_library()
    for _ in range(2):
        result = build(tmp_path, library)
    assert result.timing_cache_path == tmp_path / "timing-tensorrt-10.16.0-sm86.cache"
    assert library.module.calls.cache_blobs == [b"", FAKE_TIMING_CACHE]


def test_a_damaged_timing_cache_is_a_clear_error(tmp_path, without_gpu_or_graph):
    damaged = tmp_path / "mine.cache"
    damaged.write_bytes(b"\x00 not a timing cache")
    with pytest.raises(EngineBuildError, match=r"timing cache .*mine.cache is damaged .*delete it .*--timing-cache"):
        build(tmp_path, fake_library(), settings=BuilderSettings(timing_cache=damaged))
    assert damaged.read_bytes() == b"\x00 not a timing cache" and not (tmp_path / "e.plan").exists()


def test_tensorrt_rtx_builds_without_a_timing_cache(tmp_path, without_gpu_or_graph):
    lines = []
    result = build(tmp_path, fake_library("1.7.1", rtx=True), report=lines.append)
    assert result.timing_cache_path is None and result.sidecar.builder["timing_cache"] is None
    assert not list(tmp_path.glob("*.cache")) and any("no timing cache" in line for line in lines)


def test_a_profile_tensorrt_refuses_is_named(tmp_path, without_gpu_or_graph):
    library = fake_library(refuse_profile=1)
    with pytest.raises(EngineBuildError, match=r"refused optimization profile 'medium' \(atoms 64:512:2048"):
        build(tmp_path, library, ("small-molecules", "medium"))
    assert not (tmp_path / "e.plan").exists()


def test_a_tensorrt_that_does_not_load_is_one_clear_error(tmp_path, monkeypatch):
    package = tmp_path / "trt_missing_dll"
    package.mkdir()
    (package / "__init__.py").write_text(  # what the TensorRT wheel's __init__ does on Windows without its DLLs
        'raise FileNotFoundError("Could not find: nvinfer_10.dll. Is it on your PATH?\\nNote: Paths searched were: ...")'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TensorRTUnavailableError) as error:
        import_tensorrt(("trt_absent_module", "trt_missing_dll"))
    message = str(error.value)
    assert "does not load (trt_missing_dll: FileNotFoundError: Could not find: nvinfer_10.dll" in message
    assert "PATH" in message and "\n" not in message and "trt_absent_module" not in message
    with pytest.raises(TensorRTUnavailableError, match=r"not installed \(tried trt_absent_module\)"):
        import_tensorrt(("trt_absent_module",))


def test_parser_errors_are_listed(tmp_path, without_gpu_or_graph):
    library = fake_library(parse_errors=("node 12: unsupported operator ScatterND", "node 40: bad shape"))
    with pytest.raises(OnnxParseError, match="2 error\\(s\\): node 12: unsupported operator ScatterND \\| node 40"):
        build(tmp_path, library)
    assert not (tmp_path / "e.plan").exists()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [(graph_metadata(precision="fp32"), "--precision fp16 \\| .* is a fp32 graph"),
     (graph_metadata(input_layout="pair_list", precision="fp16"), "scatter-free 'neighbor_table' export")],
)
def test_graphs_that_cannot_make_this_engine_are_refused_before_tensorrt(tmp_path, monkeypatch, metadata, message):
    monkeypatch.setattr(engine_builder, "read_metadata", lambda path: metadata)
    with pytest.raises(EngineBuildError, match=message):
        build_engine(tmp_path / "x.onnx", tmp_path / "e.plan", select_profiles(["medium"]), "fp16",
                     library=fake_library())


def test_builder_settings_are_checked():
    with pytest.raises(EngineBuildError, match="optimisation level \\| received 7 \\| expected 0..5"):
        BuilderSettings(optimization_level=7)


def _tensorrt_engine_runs_here() -> str | None:
    """Why a real engine cannot run here, or None."""
    library = tensorrt_here()
    if library is None:
        return "TensorRT is not installed here (pip install \"mlff-export[trt]\")"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability()
    if library.is_rtx and not tensorrt_rtx_runs_on(major, minor):
        return (f"TensorRT-RTX runs engines on compute capability 8.0, 8.6, 8.9 and 12.x, this GPU has {major}.{minor} "
                "(bench/trt_rtx_check.py covers the build there)")
    return None


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(_tensorrt_engine_runs_here() is not None, reason=str(_tensorrt_engine_runs_here()))
def test_tensorrt_engine_matches_eager_across_buckets(tmp_path):
    from conftest import make_small_painn, structure_zoo

    from mlff_export.export import to_onnx
    from mlff_export.neighbors import batch_inputs, compute_pairs
    from mlff_export.runtime.eager import EagerBackend
    from mlff_export.runtime.tensorrt_backend import TensorRTBackend

    model = make_small_painn()
    onnx_path = to_onnx(model, tmp_path / "painn.onnx")
    profile = profile_from_ranges("1:16:64", "1:32:64", "1:2:4")
    build_engine(onnx_path, tmp_path / "painn.plan", [profile], "fp32", report=lambda line: None)
    device = torch.device("cuda")
    engine = TensorRTBackend(tmp_path / "painn.plan", device)
    eager = EagerBackend(model, device, torch.float32)
    zoo = structure_zoo()
    calls = []
    for names in (["H2"], ["benzene"], ["benzene", "diamond-primitive", "triclinic"], ["benzene"], ["H2"]):
        structures = [zoo[name] for name in names]
        inputs = batch_inputs(structures, [compute_pairs(a, model.cutoff) for a in structures], device=device)
        calls.append((names, eager.evaluate(inputs), engine.evaluate(inputs)))
    # Compared after all calls: a result must stay what it was when later calls reuse the bucket's buffers.
    for names, expected, got in calls:
        for name in ("energy", "forces", "virial"):
            torch.testing.assert_close(got[name], expected[name], atol=2e-4, rtol=1e-5, msg=lambda m: f"{names} {name}: {m}")
    report = engine.memory_report()
    assert report["scratch_buffers"] == 1 and len(report["buckets"]) >= 3, report
    print(report)  # pytest -s shows it: the engine's shared scratch and each bucket's buffers, bytes


def test_load_calculator_sends_plan_files_to_the_tensorrt_backend(tmp_path):
    from ase.calculators.calculator import CalculatorSetupError

    from mlff_export.runtime import load_calculator

    with pytest.raises(CalculatorSetupError, match=r"a \.plan artifact takes float32"):
        load_calculator(tmp_path / "e.plan", device="cpu", dtype="float64")
    with pytest.raises(ValueError, match="runs on a CUDA device; got device 'cpu'"):
        load_calculator(tmp_path / "e.plan", device="cpu")
