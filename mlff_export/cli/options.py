"""Option groups shared by several subcommands, and the checks that turn a user's mistake into
one line.

A group is added with ``add_<group>_options(parser)`` and read back with the function beside it
(e.g. :func:`add_model_options` and :func:`model_spec`), so a new subcommand gets the same
flags, defaults, help and checks by calling the pair. Nothing here imports torch at import time:
``--help`` must stay fast (torch is imported only where a device is resolved).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mlff_export import REFERENCE_CHECKPOINT

if TYPE_CHECKING:
    from mlff_export.model_spec import ModelSpec


class UsageError(ValueError):
    """A mistake in the command line; the message is one line that names the option and the fix."""


# --- files -------------------------------------------------------------------------------------


def input_file(path: str | Path, option: str, kinds: dict[str, str]) -> Path:
    """``path`` as an existing file whose suffix is one of ``kinds`` (suffix -> what it is).

    Raises :class:`UsageError` naming ``option`` and the expected kind for a missing path, a
    folder or another suffix.
    """
    path = Path(path)
    described = [f"{description} ({suffix})" for suffix, description in kinds.items()]
    expected = described[0] if len(described) == 1 else ", ".join(described[:-1]) + " or " + described[-1]
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; expected {expected}")
    if not path.exists():
        raise UsageError(f"{option} {path} does not exist; expected {expected}")
    if path.suffix.lower() not in kinds:
        raise UsageError(f"{option} {path}: expected {expected}, got a {path.suffix or 'suffix-less'} file")
    return path


def output_folder(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a folder to write into (created later by the command); refuses an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file; expected a folder to write results into")
    return path


# --- the model ---------------------------------------------------------------------------------

CHECKPOINT_KINDS = {".json": "a checkpoint card"}
MODEL_FILE_KINDS = {".json": "a checkpoint card", ".pt2": "a torch.export program"}


def json_object(text: str) -> dict:
    """argparse ``type``: a JSON object (``--model-kwargs '{"channels": 64}'``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({error.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"channels\": 64}}', got {text!r}")
    return value


def add_model_options(parser: argparse.ArgumentParser, flags: tuple[str, ...] = ("--model", "--checkpoint"),
                      role: str = "the model", model_group=None) -> argparse._ArgumentGroup:
    """The "model" group: which model a command works on (default: the bundled reference model).

    ``flags`` name the model option (the first is the one in messages); ``--weights`` and
    ``--model-kwargs`` go with it (docs/bring-your-own-model.md). ``model_group``: where the model
    option itself goes instead (e.g. a mutually exclusive group of sources). Read back with
    :func:`model_spec`.
    """
    group = parser.add_argument_group("model")
    (model_group or group).add_argument(
        *flags, dest="model", metavar="SPEC", default=None,
        help=f"{role}: a checkpoint card (.json), package.module:factory or file.py:factory (a callable returning an "
        "interface nn.Module), or a torch.export program (.pt2); default: the bundled reference model",
    )
    group.add_argument("--weights", metavar="FILE", help="weights loaded strictly into a factory's module: .safetensors, or a "
                       "torch.save state dict (read with weights_only=True)")
    group.add_argument("--model-kwargs", type=json_object, metavar="JSON", help="keyword arguments of the factory, a JSON object")
    parser.set_defaults(model_flag=flags[0])
    return group


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The model the model options name, checked as far as it can be without importing it."""
    from mlff_export.model_spec import ModelSpec, is_factory_spec

    if args.model is None:
        spec = str(REFERENCE_CHECKPOINT)
    elif is_factory_spec(args.model):
        spec = args.model
    else:
        spec = str(input_file(args.model, args.model_flag, MODEL_FILE_KINDS))
    if args.weights is not None:
        if spec.endswith(".json"):
            raise UsageError(f"--weights go with a factory or a .pt2 program; the checkpoint card {spec} names its own weights")
        input_file(args.weights, "--weights", {".safetensors": "a safetensors file", ".pt": "a state dict",
                                                 ".pth": "a state dict", ".bin": "a state dict"})
    if args.model_kwargs and spec.endswith(".json"):
        raise UsageError(f"--model-kwargs go with a factory or a .pt2 program, not with the checkpoint card {spec}")
    return ModelSpec(spec, args.weights, args.model_kwargs)


def checkpoint_path(args: argparse.Namespace) -> Path:
    """The checkpoint card the model options name (for commands that read a card's provenance)."""
    spec = model_spec(args)
    if not spec.spec.endswith(".json"):
        raise UsageError(f"{args.model_flag} {spec.spec}: this command reads a checkpoint card (.json); "
                         "factories and .pt2 programs carry no card")
    return Path(spec.spec)


# --- the device --------------------------------------------------------------------------------

_DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


def device_name(text: str) -> str:
    """argparse ``type``: ``cpu``, ``cuda`` or ``cuda:N`` (syntax only; availability is checked later)."""
    if not _DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def add_device_option(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``: where models run. ``default`` None means "cuda if a GPU is visible, else cpu"."""
    described = default or "cuda if a GPU is visible, else cpu"
    parser.add_argument("--device", type=device_name, default=default, metavar="DEVICE",
                        help=f"cpu, cuda or cuda:N (default: {described})")


def resolve_device(name: str | None) -> str:
    """The device to run on: ``name`` after checking that it exists here, or the default.

    Imports torch (unless ``name`` is ``"cpu"``). Raises :class:`UsageError` (with advice in CLI
    syntax) for a CUDA device that this machine does not have.
    """
    if name == "cpu":
        return name
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return name


def require_cuda(parser: argparse.ArgumentParser, what: str) -> None:
    """``parser``'s one-line usage error (exit status 2) unless a CUDA GPU is visible here: for
    scripts that measure ``what`` on one. Imports torch."""
    import torch

    if not torch.cuda.is_available():
        parser.error(f"it measures {what} on a CUDA GPU: none is visible here")


def resolve_device_or_exit(parser: argparse.ArgumentParser, name: str | None) -> str:
    """:func:`resolve_device` for a script's own ``parser``: a device this machine lacks is that
    parser's one-line usage error (exit status 2), before any work."""
    try:
        return resolve_device(name)
    except UsageError as error:
        parser.error(str(error))


# --- CPU threads -------------------------------------------------------------------------------


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads``: torch's CPU threads for this command."""
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: torch's, one per core); on a machine other jobs keep "
                        "busy, 1 is often several times faster (threads wait for each other's cores)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``--threads`` (imports torch only when it is given)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


# --- numbers and lists -------------------------------------------------------------------------------------

PRECISIONS = ("fp32", "fp16")


def positive_int(text: str) -> int:
    """argparse ``type``: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def comma_list(text: str, allowed: Iterable[str], option: str) -> list[str]:
    """A comma-separated option value as a list, refusing unknown or no values with the allowed ones."""
    allowed = tuple(allowed)
    values = [value.strip() for value in text.split(",") if value.strip()]
    unknown = [value for value in values if value not in allowed]
    if unknown or not values:
        raise UsageError(f"{option} must be a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return values
