"""Building engines: our builder logic around TensorRT, and (where TensorRT and a GPU exist) the
real engine against the eager model. The CLI's argument checks and its advice without TensorRT are
in tests/test_cli.py.

:class:`FakeTensorRTForTests` stands in for the missing TensorRT library ONLY to test our code
around it (flags, profiles, timing cache, files written); it builds nothing.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mlff_export.export import engine_builder
from mlff_export.export.engine_builder import BuilderSettings, EngineBuildError, OnnxParseError, build_engine
from mlff_export.export.engine_profiles import profile_from_ranges, select_profiles
from mlff_export.export.engine_sidecar import check_engine
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE
from mlff_export.export.metadata import ArtifactMetadata
from mlff_export.export.tensorrt_compat import TensorRTLibrary, TensorRTUnavailableError, import_tensorrt


def tensorrt_here() -> TensorRTLibrary | None:
    try:
        return import_tensorrt()
    except TensorRTUnavailableError:
        return None


class FakeTensorRTForTests:
    """Records what our builder asks of TensorRT; a stand-in for the library, not an engine builder."""

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 0

    class BuilderFlag:
        TF32 = "TF32"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            self.severity = severity

    def __init__(self, parse_errors: tuple[str, ...] = ()):
        self.parse_errors = parse_errors
        self.calls = SimpleNamespace(network_flags=None, profiles=[], cleared_flags=[], workspace=None, cache_blobs=[])
        fake = self

        class Builder:
            def __init__(self, logger):
                self.config = None

            def create_network(self, flags):
                fake.calls.network_flags = flags
                inputs = [SimpleNamespace(name=name) for name in NEIGHBOR_TABLE.input_names]
                layers = [SimpleNamespace(type="LayerType.ELEMENTWISE"), SimpleNamespace(type="LayerType.GATHER")]
                return SimpleNamespace(
                    num_inputs=len(inputs), get_input=inputs.__getitem__, num_outputs=3,
                    num_layers=len(layers), get_layer=layers.__getitem__,
                )

            def create_builder_config(self):
                self.config = Config()
                return self.config

            def create_optimization_profile(self):
                profile = {}
                fake.calls.profiles.append(profile)
                return SimpleNamespace(set_shape=lambda name, *shapes: profile.__setitem__(name, shapes))

            def build_serialized_network(self, network, config):
                return b"fake plan bytes"

        class Config:
            builder_optimization_level = 3

            def set_memory_pool_limit(self, pool, size):
                fake.calls.workspace = (pool, size)

            def clear_flag(self, flag):
                fake.calls.cleared_flags.append(flag)

            def add_optimization_profile(self, profile):
                pass

            def create_timing_cache(self, blob):
                fake.calls.cache_blobs.append(bytes(blob))
                return SimpleNamespace(serialize=lambda: b"timing cache bytes")

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                return True

            def get_timing_cache(self):
                return self.cache

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = len(fake.parse_errors)

            def parse_from_file(self, path):
                return not fake.parse_errors

            def get_error(self, index):
                return fake.parse_errors[index]

        self.Builder, self.OnnxParser = Builder, OnnxParser


def fake_library(version: str = "10.16.0", **kwargs) -> TensorRTLibrary:
    return TensorRTLibrary(FakeTensorRTForTests(**kwargs), "tensorrt", "tensorrt", version)


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


def test_builder_sets_strong_typing_profiles_workspace_and_clears_tf32(tmp_path, without_gpu_or_graph):
    library = fake_library()
    profiles = select_profiles(["small-molecules", "medium"])
    result = build_engine(tmp_path / "x.onnx", tmp_path / "e.plan", profiles, "fp32",
                          BuilderSettings(workspace_mb=512), report=lambda line: None, library=library)
    calls = library.module.calls
    assert calls.network_flags == 1 << FakeTensorRTForTests.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert calls.cleared_flags == ["TF32"] and calls.workspace == ("WORKSPACE", 512 << 20)
    assert [p["positions"] for p in calls.profiles] == [((1, 3), (32, 3), (256, 3)), ((64, 3), (512, 3), (2048, 3))]
    assert calls.profiles[1]["neighbor_index"] == ((64, 8), (512, 48), (2048, 96))
    assert (tmp_path / "e.plan").read_bytes() == b"fake plan bytes"
    assert result.layer_counts == {"ELEMENTWISE": 1, "GATHER": 1}
    sidecar = check_engine(tmp_path / "e.plan", tensorrt_flavour="tensorrt", tensorrt_version="10.16.0",
                           compute_capability="8.6")
    assert sidecar.builder["tf32_cleared"] and sidecar.weights_sha256 == "d" * 64 and len(sidecar.profiles) == 2


def test_tensorrt_11_networks_get_no_deprecated_flag(tmp_path, without_gpu_or_graph):
    library = fake_library(version="11.1.0")
    build_engine(tmp_path / "x.onnx", tmp_path / "e.plan", select_profiles(["medium"]), "fp32",
                 report=lambda line: None, library=library)
    assert library.module.calls.network_flags == 0


def test_timing_cache_is_kept_beside_the_engine_and_reused(tmp_path, without_gpu_or_graph):
    library = fake_library()
    for _ in range(2):
        result = build_engine(tmp_path / "x.onnx", tmp_path / "e.plan", select_profiles(["medium"]), "fp32",
                              report=lambda line: None, library=library)
    assert result.timing_cache_path == tmp_path / "timing-tensorrt-10.16.0-sm86.cache"
    assert library.module.calls.cache_blobs == [b"", b"timing cache bytes"]


def test_parser_errors_are_listed(tmp_path, without_gpu_or_graph):
    library = fake_library(parse_errors=("node 12: unsupported operator ScatterND", "node 40: bad shape"))
    with pytest.raises(OnnxParseError, match="2 error\\(s\\): node 12: unsupported operator ScatterND \\| node 40"):
        build_engine(tmp_path / "x.onnx", tmp_path / "e.plan", select_profiles(["medium"]), "fp32",
                     report=lambda line: None, library=library)
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
    major, _ = torch.cuda.get_device_capability()
    if library.flavour == "tensorrt-rtx" and major == 9:
        return "TensorRT for RTX builds but does not deserialize on compute capability 9.x (bench/trt_rtx_check.py covers the build)"
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
    for names in (["H2"], ["benzene"], ["benzene", "diamond-primitive", "triclinic"], ["benzene"]):
        structures = [zoo[name] for name in names]
        inputs = batch_inputs(structures, [compute_pairs(a, model.cutoff) for a in structures], device=device)
        expected, got = eager.evaluate(inputs), engine.evaluate(inputs)
        for name in ("energy", "forces", "virial"):
            torch.testing.assert_close(got[name], expected[name], atol=2e-4, rtol=1e-5, msg=lambda m: f"{names} {name}: {m}")


def test_load_calculator_sends_plan_files_to_the_tensorrt_backend(tmp_path):
    from ase.calculators.calculator import CalculatorSetupError

    from mlff_export.runtime import load_calculator

    with pytest.raises(CalculatorSetupError, match=r"a \.plan artifact takes float32"):
        load_calculator(tmp_path / "e.plan", device="cpu", dtype="float64")
    with pytest.raises(ValueError, match="runs on a CUDA device; got device 'cpu'"):
        load_calculator(tmp_path / "e.plan", device="cpu")
