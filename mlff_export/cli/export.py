"""Export a model to ONNX with energy, forces and virial in the graph: NAME.fp32.onnx and
NAME.fp16.onnx (float32 geometry and sums, half body). The model is a checkpoint card or the
user's own (--model package.module:factory, file.py:factory or a .pt2 program; its pair-list sums
are rewritten onto the neighbor table: docs/bring-your-own-model.md). Each graph is checked
against the eager model on water, benzene and a diamond cell before its file is written; the
layout and the count of scatters with a reduction (0 on the neighbor table) are printed."""

from __future__ import annotations

import argparse
import time
import warnings

from mlff_export.cli.options import PRECISIONS, add_model_options, comma_list, model_spec, output_folder

NAME = "export"
HELP = "export a model to ONNX (energy, forces, virial in the graph): NAME.<precision>.onnx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--out", default=".", metavar="DIR", help="output folder (default: the current folder)")
    parser.add_argument("--precision", default="fp32,fp16", metavar="LIST",
                        help="comma-separated, of fp32, fp16 (default: both)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 18)")


def run(args: argparse.Namespace) -> int:
    precisions = comma_list(args.precision, PRECISIONS, "--precision")
    spec, out = model_spec(args), output_folder(args.out)

    import logging

    import onnx
    from ase.build import bulk, molecule

    from mlff_export.export import ScatterGraphWarning, read_metadata, to_onnx
    from mlff_export.export.onnx_export import DEFAULT_OPSET, scatters_with_reduction
    from mlff_export.runtime.parity import OnnxParityCheck

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's notes on absent torchvision ops
    loaded = spec.load()
    structures = [molecule("H2O"), molecule("C6H6"), bulk("C", "diamond", a=3.57)]
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    for precision in precisions:
        start = time.perf_counter()
        parity = OnnxParityCheck(loaded.module, structures, precision)  # runs before the file appears
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ScatterGraphWarning)
            path = to_onnx(loaded.module, out / f"{spec.name}.{precision}.onnx", precision=precision, opset=opset,
                           check=parity, model_source=loaded.source)
        seconds = time.perf_counter() - start
        graph = onnx.load(str(path))
        print(f"{path}  {seconds:.1f} s  {len(graph.graph.node)} nodes  {len(graph.graph.initializer)} initializers")
        print(f"  layout {read_metadata(path).input_layout}, {len(scatters_with_reduction(graph))} scatters with a reduction")
        for warning in caught:
            if issubclass(warning.category, ScatterGraphWarning):
                print(f"  note: {warning.message}")
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        report = "  ".join(f"|d{name}| {d.difference:.2e} (<= {d.allowed:.2e})" for name, d in parity.deviations.items())
        print(f"  vs eager (H2O, benzene, diamond): {report}")
    print("PASSED")
    return 0
