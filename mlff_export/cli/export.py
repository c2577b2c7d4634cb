"""Export a checkpoint to ONNX with energy, forces and virial in the graph: NAME.fp32.onnx and
NAME.fp16.onnx (float32 geometry and sums, half body), each checked against the eager model on
water, benzene and a diamond cell before the command ends with PASSED or FAILED."""

from __future__ import annotations

import argparse
import time

from mlff_export.cli.options import PRECISIONS, add_model_options, checkpoint_path, comma_list, output_folder

NAME = "export"
HELP = "export a checkpoint to ONNX (energy, forces, virial in the graph): NAME.<precision>.onnx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--out", default=".", metavar="DIR", help="output folder (default: the current folder)")
    parser.add_argument("--precision", default="fp32,fp16", metavar="LIST",
                        help="comma-separated, of fp32, fp16 (default: both)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18)")


def run(args: argparse.Namespace) -> int:
    precisions = comma_list(args.precision, PRECISIONS, "--precision")
    checkpoint, out = checkpoint_path(args), output_folder(args.out)

    import logging

    import onnx
    from ase.build import bulk, molecule

    from mlff_export.checkpoint import load_checkpoint
    from mlff_export.export import to_onnx
    from mlff_export.export.onnx_export import DEFAULT_OPSET
    from mlff_export.runtime.parity import OnnxParityCheck

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes on absent torchvision ops
    model = load_checkpoint(checkpoint)
    structures = [molecule("H2O"), molecule("C6H6"), bulk("C", "diamond", a=3.57)]
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    for precision in precisions:
        start = time.perf_counter()
        parity = OnnxParityCheck(model, structures, precision)  # runs before the file appears
        path = to_onnx(model, out / f"{checkpoint.stem}.{precision}.onnx", precision=precision, opset=opset, check=parity)
        seconds = time.perf_counter() - start
        graph = onnx.load(str(path)).graph
        print(f"{path}  {seconds:.1f} s  {len(graph.node)} nodes  {len(graph.initializer)} initializers")
        report = "  ".join(f"|d{name}| {d.difference:.2e} (<= {d.allowed:.2e})" for name, d in parity.deviations.items())
        print(f"  vs eager (H2O, benzene, diamond): {report}")
    print("PASSED")
    return 0
