"""Check that a module obeys the interface before tracing it, with a message that says where not."""

from __future__ import annotations

import torch
from torch import nn

from mlff_export.export.errors import ExportError
from mlff_export.export.graph_layouts import example_inputs
from mlff_export.forces import energy_forces_virial
from mlff_export.interface import AtomicInputs, interface_declaration_problem

INTERFACE_DOC = "see docs/interface.md"


def check_declares_interface(model: nn.Module) -> None:
    """Raise :class:`ExportError` unless ``model`` is a module declaring ``cutoff`` and ``species``."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"model | received {type(model).__name__} | expected a torch.nn.Module ({INTERFACE_DOC})")
    problem = interface_declaration_problem(model)
    if problem is not None:
        raise ExportError(f"model {type(model).__name__}: {problem}")


def check_interface_outputs(model: nn.Module, device: torch.device | str = "cpu") -> None:
    """Raise :class:`ExportError` unless ``model`` (on ``device``, float32 inputs) returns energy [B]
    for interface inputs, with finite forces [N, 3] and virial [B, 3, 3]."""
    name = type(model).__name__
    inputs = example_inputs(tuple(model.species)).to(device)
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
    change = _energy_change_from_far_pairs(model, inputs, outputs[0])
    if change > FAR_PAIR_TOLERANCE * (1.0 + float(outputs[0].detach().abs().max())):
        raise ExportError(
            f"model {name}: pairs beyond its cutoff ({model.cutoff} Å) change the energy by up to {change:.3g} eV; the "
            "interface requires them to contribute exactly nothing (runtimes reuse Verlet lists and pad neighbor "
            f"tables with such pairs): multiply every pair term by a cutoff function after any bias ({INTERFACE_DOC})"
        )
    if _ignores_the_pairs(model, inputs, outputs[0]):
        raise ExportError(
            f"model {name}: its energy does not change when the pairs it is given are removed: does it search for "
            f"neighbors itself? The caller owns neighbor lists; the model must use pair_index and pair_shifts ({INTERFACE_DOC})"
        )


FAR_PAIR_TOLERANCE = 1e-6
"""Relative energy change allowed when pairs beyond the cutoff are added (float32 rounding)."""


def _energy_change_from_far_pairs(model: nn.Module, inputs: AtomicInputs, energy: torch.Tensor) -> float:
    """Largest |energy change| (eV) when every atom gets its own image 1.5 cutoffs away, both ways."""
    atoms = torch.arange(inputs.num_atoms, device=inputs.pair_index.device)
    away = torch.zeros(inputs.num_atoms, 3, dtype=inputs.pair_shifts.dtype, device=inputs.pair_shifts.device)
    away[:, 0] = 1.5 * float(model.cutoff)
    with_far_pairs = AtomicInputs(
        inputs.positions,
        inputs.species,
        torch.cat([inputs.pair_index, atoms.repeat(2, 1), atoms.repeat(2, 1)], dim=1),
        torch.cat([inputs.pair_shifts, away, -away]),
        inputs.structure_index,
        inputs.cell,
    )
    with torch.no_grad():
        changed = model(*with_far_pairs.as_tuple())
    return float((changed - energy.detach()).abs().max())


def _ignores_the_pairs(model: nn.Module, inputs: AtomicInputs, energy: torch.Tensor) -> bool:
    """Whether ``model`` gives the very same energies with no pairs at all (a model that finds
    its own neighbors); ``False`` where it cannot run without pairs."""
    no_pairs = AtomicInputs(
        inputs.positions, inputs.species, inputs.pair_index[:, :0], inputs.pair_shifts[:0], inputs.structure_index, inputs.cell
    )
    try:
        with torch.no_grad():
            unpaired = model(*no_pairs.as_tuple())
    except Exception:  # a model may not take an empty pair list; then it evidently uses the pairs
        return False
    return isinstance(unpaired, torch.Tensor) and unpaired.shape == energy.shape and torch.equal(unpaired, energy.detach())
