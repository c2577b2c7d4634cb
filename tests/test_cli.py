"""The command line: start-up without heavy imports, help text, info, demo, and one-line errors
that name the option and the fix, checked before any work."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

import mlff_export
from mlff_export.cli import SUBCOMMANDS, build_parser, main
from mlff_export.export.tensorrt_compat import TensorRTUnavailableError, import_tensorrt

HEAVY_MODULES = ("torch", "onnx", "onnxruntime")


def one_error_line(capsys) -> str:
    """The single stderr line of a refused command (and nothing on stdout)."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def tensorrt_installed() -> bool:
    try:
        import_tensorrt()
    except TensorRTUnavailableError:
        return False
    return True


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and mlff_export.__version__ in capsys.readouterr().out


def test_help_and_version_import_no_torch_onnx_or_onnxruntime():
    """--help of every subcommand and --version in a fresh interpreter leave torch, onnx and
    onnxruntime unimported (each costs seconds to tens of seconds on a loaded 2-core CPU)."""
    script = f"""
import contextlib, io, sys
from mlff_export.cli import SUBCOMMANDS, main
for argv in [["--help"], ["--version"]] + [[command.NAME, "--help"] for command in SUBCOMMANDS]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exit_:
            assert exit_.code == 0, argv
print(sorted(name for name in sys.modules if name.split(".")[0] in {HEAVY_MODULES!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_console_script_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "mlff_export.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in SUBCOMMANDS:
        assert command.NAME in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=lambda command: command.NAME)
def test_every_option_has_help_text(command):
    parser = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    subparser = parser.choices[command.NAME]
    assert subparser.description, f"{command.NAME} has no description (its module docstring)"
    for action in subparser._actions:
        assert action.help, f"{command.NAME} {'/'.join(action.option_strings) or action.dest} has no help text"


def test_info_is_a_readable_block(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "PaiNN, 387,457 parameters" in out and "H C N O" in out and "5.0 Å" in out
    assert "{" not in out and "'" not in out, "raw Python dicts in the output"
    assert out.count("387,457") == 1 and "387457" not in out, "parameters printed twice"
    assert "forces meV/Å" in out  # the test-error table has unit headers


def test_info_json_is_one_document(capsys):
    assert main(["info", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["parameters"] == 387_457 and document["species"] == ["H", "C", "N", "O"]
    assert document["weights"]["sha256 verified"] is True and document["extra"]["dataset"]["structures"] == 2998


def test_demo_runs_the_seed_molecules(capsys):
    assert main(["demo", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("H2", "H2O", "CH4", "C6H6"):
        assert name in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["info", "--checkpoint", "{tmp}"], "--model {tmp} is a folder; expected a checkpoint card (.json) or a torch.export program (.pt2)"),
        (["info", "--checkpoint", "{tmp}/missing.json"], "does not exist; expected a checkpoint card (.json)"),
        (["info", "--model", "{tmp}/model.pt"], "expected a checkpoint card (.json) or a torch.export program (.pt2), got a .pt file"),
        (["info", "--model", "mlff_export.model:PaiNN"], "this command reads a checkpoint card (.json)"),
        (["export", "--weights", "{tmp}/model.pt"], "--weights go with a factory or a .pt2 program"),
        (["export", "--model", "a.b:make", "--weights", "{tmp}/missing.safetensors"], "--weights {tmp}/missing.safetensors does not exist"),
        (["bench", "--model-kwargs", '{{"channels": 8}}'], "--model-kwargs go with a factory or a .pt2 program"),
        (["validate", "{tmp}/model.onnx", "--reference", "{tmp}/model.pt"], "--reference {tmp}/model.pt: expected a checkpoint card"),
        (["validate", "{tmp}/model.pt"], "validate takes .onnx or .plan"),
        (["validate", "{tmp}"], "artifact {tmp} is a folder; expected an exported ONNX graph (.onnx)"),
        (["export", "--out", "{tmp}/model.pt"], "--out {tmp}/model.pt is a file; expected a folder"),
        (["bench", "--device", "cpu", "--onnx", "{tmp}/model.pt"], "--onnx {tmp}/model.pt: expected an exported ONNX graph"),
    ],
)
def test_wrong_file_kinds_name_the_expected_kind(tmp_path, capsys, argv, expected):
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint card")
    (tmp_path / "model.onnx").write_bytes(b"not read: the arguments are checked first")
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 1
    assert expected.format(tmp=tmp_path) in one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_a_gpu_is_advised_in_cli_syntax(capsys):
    assert main(["demo", "--device", "cuda"]) == 1
    line = one_error_line(capsys)
    assert "use --device cpu" in line and "device='cpu'" not in line


def test_argparse_mistakes_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--repeats", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1
    assert "--repeats" in lines[0] and "mlff-export demo --help" in lines[0]


def test_unknown_backend_is_one_line(capsys):
    assert main(["bench", "--backends", "eager,warp-drive"]) == 1
    assert "--backends must be a comma-separated list of eager" in one_error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_bench_refuses_a_backend_that_cannot_run_here_before_any_work(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "--backends", "eager,tensorrt", "--device", "cpu", "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert "tensorrt needs a CUDA GPU" in line and "eager" not in line.partition("here:")[2]
    assert not out.exists(), "the refused run wrote results"


def test_bench_refuses_pytorch_backends_without_fp32(capsys):
    assert main(["bench", "--backends", "eager", "--precision", "fp16", "--device", "cpu"]) == 1
    assert "eager runs the PyTorch model in fp32 only" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--onnx", "{tmp}/missing.onnx"], "--onnx {tmp}/missing.onnx does not exist; expected an exported ONNX graph (.onnx)"),
        (["--onnx", "{tmp}"], "--onnx {tmp} is a folder"),
        (["--checkpoint", "{tmp}/model.pt"], "--model {tmp}/model.pt: expected a checkpoint card (.json)"),
        (["--onnx", "{tmp}/model.onnx", "--weights", "{tmp}/model.pt"], "--weights and --model-kwargs go with --model"),
        (["--profile", "bogus"], "profile(s) ['bogus'] not in"),
        (["--atoms", "8:4:2", "--pairs", "1:32:64", "--structures", "1:1:2"], "--atoms | received '8:4:2' | expected 1 <= MIN <= OPT <= MAX"),
        (["--atoms", "1:8:64"], "missing --pairs, --structures"),
        (["--profile", "medium", "--atoms", "1:8:64"], "either --profile NAME ... or --atoms"),
        (["--out", "{tmp}/engine.onnx"], "--out {tmp}/engine.onnx: expected an engine file name ending in .plan"),
    ],
)
def test_build_engine_checks_its_arguments_before_looking_for_tensorrt(tmp_path, capsys, arguments, expected):
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "model.onnx").write_bytes(b"")
    assert main(["build-engine"] + [arg.format(tmp=tmp_path) for arg in arguments]) == 1
    line = one_error_line(capsys)
    assert expected.format(tmp=tmp_path) in line and "TensorRT" not in line


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_gives_install_advice_that_works(tmp_path):
    """From a checkout and from a wheel, and that a CUDA GPU is needed; one line, exit 1."""
    graph = tmp_path / "model.fp32.onnx"
    graph.write_bytes(b"")  # not read: TensorRT is looked for first
    command = [sys.executable, "-m", "mlff_export.cli", "build-engine", "--onnx", str(graph)]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    for advice in ('pip install -e ".[trt]"', "tensorrt-cu12", "tensorrt-cu13", "CUDA GPU"):
        assert advice in lines[0]
    assert 'pip install "mlff-export[trt]"' not in lines[0]


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["info", "--checkpoint", str(tmp_path / "missing.json")]) == 1
    assert "does not exist" in one_error_line(capsys)


def test_pipeline_validates_the_onnx_graphs_and_benchmarks_them_without_exporting_again(tmp_path):
    from mlff_export.cli import pipeline

    args = build_parser().parse_args(["pipeline", "--out", str(tmp_path / "results"), "--device", "cpu"])
    planned = dict(pipeline.steps(args, "cpu", tensorrt_here=False))
    assert list(planned) == ["export", "validate fp32", "validate fp16", "bench"]
    onnx = tmp_path / "results" / "onnx"
    assert planned["validate fp16"][1] == str(onnx / "painn-hcno.fp16.onnx")
    bench = planned["bench"]
    assert [bench[i + 1] for i, arg in enumerate(bench) if arg == "--onnx"] == [str(onnx / "painn-hcno.fp32.onnx"), str(onnx / "painn-hcno.fp16.onnx")]
    with_engines = dict(pipeline.steps(args, "cuda", tensorrt_here=True))
    assert "build-engine fp16" in with_engines and with_engines["validate fp16"][1].endswith("painn-hcno.fp16.plan")
    threaded = dict(pipeline.steps(build_parser().parse_args(["pipeline", "--threads", "1"]), "cpu", tensorrt_here=False))
    assert all(argv[-2:] == ["--threads", "1"] for name, argv in threaded.items() if name != "export")


def test_pipeline_passes_a_users_model_to_every_step(tmp_path):
    """--model, --weights and --model-kwargs reach export and bench as given, and validate as its --reference."""
    from mlff_export.cli import pipeline

    weights = tmp_path / "student.safetensors"
    weights.write_bytes(b"not read while planning")
    spec = "my_models.student:make_student"
    args = build_parser().parse_args(["pipeline", "--model", spec, "--weights", str(weights),
                                      "--model-kwargs", '{"layers": 3}', "--out", str(tmp_path / "results")])
    planned = dict(pipeline.steps(args, "cpu", tensorrt_here=False))
    model = [spec, "--weights", str(weights), "--model-kwargs", '{"layers": 3}']
    assert planned["export"][1:7] == ["--model", *model]
    assert planned["bench"][1:7] == ["--model", *model]
    validate = planned["validate fp32"]
    assert validate[1] == str(tmp_path / "results" / "onnx" / "student.fp32.onnx")
    assert validate[2:8] == ["--reference", *model]


def test_threads_option_sets_torch_threads():
    from mlff_export.cli.options import apply_threads

    before = torch.get_num_threads()
    try:
        apply_threads(build_parser().parse_args(["demo", "--threads", "3"]))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


TINY_MODEL_FACTORY = """
import torch
from mlff_export.model import PaiNN, PaiNNConfig

def make():
    torch.manual_seed(0)
    return PaiNN(PaiNNConfig(num_features=8, num_interactions=1, num_radial=4, cutoff=4.0)).eval()
"""


@pytest.mark.slow
def test_compile_keeps_the_buckets_and_the_next_run_finds_them(tmp_path, capsys):
    from ase.build import molecule
    from ase.io import write

    (tmp_path / "tiny.py").write_text(TINY_MODEL_FACTORY)
    write(tmp_path / "molecules.xyz", [molecule("H2O"), molecule("C60"), molecule("biphenyl")])
    argv = ["compile", "--model", f"{tmp_path / 'tiny.py'}:make", "--backend", "compile", "--device", "cpu",
            "--structures", str(tmp_path / "molecules.xyz"), "--cache", str(tmp_path / "cache")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "compiled 16 atoms x" in first and "(H2O alone)" in first
    # static kernels for water's bucket, symbolic sizes for C60's, which then serve biphenyl's
    assert "ran on earlier kernels: 32 atoms x" in first and "(C12H10 alone)" in first
    assert "2 buckets compiled and 1 ran on earlier kernels" in first and "0 were in the cache" in first
    assert main(argv) == 0
    assert "0 buckets compiled and 0 ran on earlier kernels" in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["compile", "--batch-sizes", "16,x"], "--batch-sizes must be comma-separated integers >= 1"),
        (["compile", "--batch-sizes", "0"], "--batch-sizes must be comma-separated integers >= 1"),
        (["compile", "--aot", "--batch-sizes", "16"], "--batch-sizes has no effect with --aot"),
        (["compile", "--structures", "{tmp}/missing.xyz"], "--structures {tmp}/missing.xyz is not a file"),
        (["compile", "--cache", "{tmp}/file"], "--cache {tmp}/file is a file"),
    ],
)
def test_compile_checks_its_arguments_first(tmp_path, capsys, argv, expected):
    (tmp_path / "file").write_text("")
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 1
    assert expected.format(tmp=tmp_path) in one_error_line(capsys)
