"""Check that a module obeys the interface before tracing it, with a message that says where not."""

from __future__ import annotations

import torch
from torch import nn

from mlff_export.export.errors import ExportError
from mlff_export.export.graph_layouts import example_inputs
from mlff_export.forces import energy_forces_virial

INTERFACE_DOC = "see docs/interface.md"


def check_declares_interface(model: nn.Module) -> None:
    """Raise :class:`ExportError` unless ``model`` is a module declaring ``cutoff`` and ``species``."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"model | received {type(model).__name__} | expected a torch.nn.Module ({INTERFACE_DOC})")
    name = type(model).__name__
    cutoff = getattr(model, "cutoff", None)
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not cutoff > 0:
        raise ExportError(f"model {name}: attribute `cutoff` | received {cutoff!r} | expected a cutoff > 0 in Å ({INTERFACE_DOC})")
    species = getattr(model, "species", None)
    if not species or not all(isinstance(z, int) and 1 <= z <= 118 for z in species):
        raise ExportError(
            f"model {name}: attribute `species` | received {species!r} | expected atomic numbers ({INTERFACE_DOC})"
        )


def check_interface_outputs(model: nn.Module) -> None:
    """Raise :class:`ExportError` unless ``model`` (on the CPU, float32 inputs) returns energy [B]
    for interface inputs, with finite forces [N, 3] and virial [B, 3, 3]."""
    name = type(model).__name__
    inputs = example_inputs(tuple(model.species))
    n, b = inputs.num_atoms, inputs.num_structures
    try:
        outputs = energy_forces_virial(model, inputs)
    except Exception as error:  # user code: any failure means the module breaks the contract
        raise ExportError(
            f"model {name} fails on interface inputs (B={b}, N={n}, E={inputs.num_pairs}): "
            f"{type(error).__name__}: {error} ({INTERFACE_DOC})"
        ) from error
    for output, value, shape in zip(("energy", "forces", "virial"), outputs, ((b,), (n, 3), (b, 3, 3))):
        if tuple(value.shape) != shape or not value.is_floating_point():
            raise ExportError(
                f"model {name}: output {output} | received {value.dtype} {tuple(value.shape)} | "
                f"expected float {shape} ({INTERFACE_DOC})"
            )
        if not bool(torch.isfinite(value).all()):
            raise ExportError(f"model {name}: output {output} is not finite on the example inputs")
