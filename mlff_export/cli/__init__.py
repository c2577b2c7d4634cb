"""The ``mlff-export`` command line: a thin layer over the library, one module per subcommand.

Each subcommand is a module of this package with ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``, listed in :data:`SUBCOMMANDS`; its module docstring is its ``--help``
description. Option groups used by several subcommands (model, device, output folder, comma
lists) live in :mod:`.options`. To add a subcommand: write its module, add it to
:data:`SUBCOMMANDS`, add its test to ``tests/test_cli.py`` (the start-up test covers its
``--help`` by itself).

Start-up: the modules import only the standard library and :mod:`.options` at import time;
torch, onnx and onnxruntime are imported inside ``run``, so ``--help`` and ``--version`` answer
at once. User mistakes print one line (``error: ...``) and exit 1 (2 for argparse's
own checks); a command that checks something ends with ``PASSED`` or ``FAILED``.
"""

from __future__ import annotations

import argparse
import os
import sys

import mlff_export
from mlff_export.cli import bench, build_engine, compile_kernels, demo, export, info, pipeline, predict, validate

SUBCOMMANDS = (info, demo, export, build_engine, compile_kernels, validate, bench, pipeline, predict)
"""Subcommand modules, in the order ``--help`` lists them."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line naming the command and where help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="mlff-export", description=mlff_export.__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlff-export {mlff_export.__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in SUBCOMMANDS:
        subparser = subparsers.add_parser(
            command.NAME, help=command.HELP, description=command.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except BrokenPipeError:  # the reader went away (`mlff-export info | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, RuntimeError, OSError) as error:  # user mistakes and refusals: one line, exit 1
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
