"""``save_energy_program``: ship a model as a ``torch.export`` program that ``--model x.pt2`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from mlff_export.export.graph_layouts import example_inputs
from mlff_export.model_intake import INTERFACE_FILE


def save_energy_program(model: nn.Module, path: str | Path) -> Path:
    """Save ``model``'s energy function (the six interface inputs -> energy [B], eV) as a ``.pt2``
    program with dynamic atoms, pairs and structures, and its cutoff and species beside it in the
    archive (:data:`~mlff_export.model_intake.INTERFACE_FILE`). Returns ``path``."""
    atoms, pairs, structures = Dim("num_atoms", min=1), Dim("num_pairs", min=0), Dim("num_structures", min=1)
    dynamic = ({0: atoms}, {0: atoms}, {1: pairs}, {0: pairs}, {0: atoms}, {0: structures})
    inputs = example_inputs(tuple(model.species)).as_tuple()
    program = torch.export.export(model.eval(), inputs, dynamic_shapes=dynamic, strict=False)
    interface = json.dumps({"cutoff": float(model.cutoff), "species": [int(z) for z in model.species]})
    torch.export.save(program, str(path), extra_files={INTERFACE_FILE: interface})
    return Path(path)
