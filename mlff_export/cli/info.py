"""Describe a checkpoint: architecture, parameters, species, cutoff, and the provenance its card
keeps (teacher, dataset, training, test errors). --json prints the same as one JSON document."""

from __future__ import annotations

import argparse
import json
import re

from mlff_export.cli.options import add_model_options, checkpoint_path

NAME = "info"
HELP = "describe a checkpoint (default: the bundled reference model); --json for a JSON document"
INLINE_WIDTH = 72
"""Objects of scalars whose ``key value, ...`` text is at most this long print on one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of the text block")


def run(args: argparse.Namespace) -> int:
    path = checkpoint_path(args)

    from ase.data import chemical_symbols

    from mlff_export.checkpoint import load_checkpoint, read_card
    from mlff_export.model import count_parameters

    card = read_card(path)
    model = load_checkpoint(path)  # checks the weights' sha256 and their agreement with the config
    parameters = count_parameters(model)
    extra = dict(card.get("extra", {}))
    if extra.get("parameters") == parameters:
        del extra["parameters"]  # the card's copy of what is counted above
    species = [chemical_symbols[z] for z in model.species]
    weights = {"file": card["weights_file"], "sha256": card["weights_sha256"], "sha256 verified": True}
    if args.json:
        document = {"checkpoint": str(path), "architecture": card["architecture"], "parameters": parameters,
                    "species": species, "cutoff_angstrom": float(model.cutoff), "config": card["config"],
                    "weights": weights, "extra": extra}
        print(json.dumps(document, indent=1))
        return 0
    settings = {key: value for key, value in card["config"].items() if key not in ("species", "cutoff")}
    summary = {
        "checkpoint": str(path),
        "architecture": f"{card['architecture']}, {parameters:,} parameters",
        "config": settings,
        "species": species,
        "cutoff": f"{float(model.cutoff)} Å",
        "weights": weights,
    }
    print("\n".join(describe({**summary, **extra})))
    return 0


def describe(document: dict, indent: int = 0) -> list[str]:
    """A nested JSON-like document as aligned ``label  value`` lines: objects of scalars inline
    when short, other objects indented, an object whose values are objects with common keys as a
    table. Key names become labels (``energy_meV_per_atom`` -> ``energy meV/atom``)."""
    pad = " " * indent
    width = max((len(_label(key)) for key in document), default=0) + 2
    lines = []
    for key, value in document.items():
        label = _label(key)
        if isinstance(value, dict) and _is_table(value):
            lines += [f"{pad}{label}"] + [f"{pad}  {line}" for line in _table(value)]
        elif isinstance(value, dict) and len(inline := _inline(value)) <= INLINE_WIDTH:
            lines.append(f"{pad}{label:<{width}}{inline}")
        elif isinstance(value, dict):
            lines += [f"{pad}{label}"] + describe(value, indent + 2)
        else:
            lines.append(f"{pad}{label:<{width}}{_scalar(value)}")
    return lines


def _inline(value: dict) -> str:
    """An object of scalars on one line; a long string (never inlined) for anything else."""
    if any(isinstance(item, dict) for item in value.values()):
        return " " * (INLINE_WIDTH + 1)
    return ", ".join(f"{_label(key)} {_scalar(item)}" for key, item in value.items())


def _label(key: str) -> str:
    label = key.replace("_per_", "/").replace("_", " ")
    return re.sub(r"/A\b", "/Å", re.sub(r"/A3\b", "/Å³", label))


def _is_table(value: dict) -> bool:
    rows = list(value.values())
    return len(rows) > 1 and all(isinstance(row, dict) and row and not any(isinstance(v, dict) for v in row.values())
                                 for row in rows)


def _table(rows: dict[str, dict]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows.values() for key in row))
    cells = [[""] + [_label(column) for column in columns]]
    cells += [[name] + [_scalar(row[column]) if column in row else "-" for column in columns] for name, row in rows.items()]
    widths = [max(len(row[index]) for row in cells) for index in range(len(cells[0]))]
    return ["  ".join(cell.ljust(widths[0]) if index == 0 else cell.rjust(widths[index]) for index, cell in enumerate(row))
            for row in cells]


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, list):
        return " ".join(_scalar(item) for item in value)
    return str(value)
