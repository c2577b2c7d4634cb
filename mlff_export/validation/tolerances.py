"""Pass/fail tolerances of a validation, per artifact precision (FP32, FP16), overridable.

Defaults (measured and justified in ``docs/validation.md``):

=====================  =================  =================  ====================================
check                  FP32               FP16               unit
=====================  =================  =================  ====================================
energy per atom        atol 1e-5,         atol 3e-3,         eV/atom (rtol 5e-7: four float32
                       rtol 5e-7          rtol 5e-7          ulps of a per-atom energy)
forces                 atol 1e-4          atol 2e-2,         eV/Å
                                          rtol 2e-2
stress                 atol 1e-5          atol 1e-3          eV/Å³ (1e-5 eV/Å³ = 1.6 MPa)
finite differences     rtol 1e-2          rtol 1e-1          of the force norm, plus the energy's
                                                             noise floor (see .physics)
NVE drift excess       1e-4               2e-3               eV/atom over the run, beyond the
                                                             reference model's own drift
cross-runtime (ONNX)   atol 1e-4,         atol 5e-3,         output units (energy in eV); FP16 rtol
                       rtol 1e-5          rtol 2e-3          is two float16 epsilons
=====================  =================  =================  ====================================
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class OutputTolerance:
    """``|predicted - reference| <= atol + rtol * |reference|`` for every value (output units)."""

    atol: float
    rtol: float = 0.0


@dataclass(frozen=True)
class Tolerances:
    """Everything a validation decides pass/fail on.

    Attributes:
        outputs: output name (``energy_per_atom``, ``forces``, ``stress``) -> tolerance vs the reference.
        finite_difference_rtol: allowed error of a finite-difference directional derivative,
            as a fraction of the force norm (see :mod:`mlff_export.validation.physics`).
        nve_drift_excess: eV/atom by which the artifact's NVE energy drift may exceed the
            reference model's drift over the same run.
        runtime_atol, runtime_rtol: cross-runtime ONNX comparison (polygraphy), all outputs.
    """

    outputs: dict[str, OutputTolerance]
    finite_difference_rtol: float
    nve_drift_excess: float
    runtime_atol: float
    runtime_rtol: float

    def overridden(self, values: dict[str, float]) -> Tolerances:
        """A copy with the tolerances named in ``values`` (keys of :data:`OVERRIDABLE`) replaced."""
        unknown = sorted(set(values) - set(OVERRIDABLE))
        if unknown:
            raise ValueError(f"unknown tolerance(s) {unknown}; known {list(OVERRIDABLE)}")
        outputs = dict(self.outputs)
        scalars = {}
        for key, value in values.items():
            if not value >= 0:
                raise ValueError(f"tolerance {key} must be >= 0, got {value}")
            output, _, kind = key.partition(".")
            if kind:
                outputs[output] = replace(outputs[output], **{kind: value})
            else:
                scalars[key] = value
        return replace(self, outputs=outputs, **scalars)


OVERRIDABLE = {
    "energy_per_atom.atol": "energy per atom vs reference, absolute, eV/atom",
    "energy_per_atom.rtol": "energy per atom vs reference, relative",
    "forces.atol": "forces vs reference, absolute, eV/Å",
    "forces.rtol": "forces vs reference, relative",
    "stress.atol": "stress vs reference, absolute, eV/Å³",
    "stress.rtol": "stress vs reference, relative",
    "finite_difference_rtol": "finite-difference directional derivative error, fraction of |F|",
    "nve_drift_excess": "NVE |energy drift| beyond the reference's, eV/atom",
    "runtime_atol": "cross-runtime ONNX comparison, absolute, output units",
    "runtime_rtol": "cross-runtime ONNX comparison, relative",
}
"""Tolerance name -> description; the CLI offers each as ``--tolerance-<name>`` (``.``/``_`` -> ``-``)."""

DEFAULT_TOLERANCES = {
    "fp32": Tolerances(
        outputs={
            "energy_per_atom": OutputTolerance(atol=1e-5, rtol=5e-7),
            "forces": OutputTolerance(atol=1e-4),
            "stress": OutputTolerance(atol=1e-5),
        },
        finite_difference_rtol=1e-2,
        nve_drift_excess=1e-4,
        runtime_atol=1e-4,
        runtime_rtol=1e-5,
    ),
    "fp16": Tolerances(
        outputs={
            "energy_per_atom": OutputTolerance(atol=3e-3, rtol=5e-7),
            "forces": OutputTolerance(atol=2e-2, rtol=2e-2),
            "stress": OutputTolerance(atol=1e-3),
        },
        finite_difference_rtol=1e-1,
        nve_drift_excess=2e-3,
        runtime_atol=5e-3,  # 4x the largest difference measured (virial, 1.2e-3 eV; docs/validation.md)
        runtime_rtol=2e-3,  # two float16 epsilons: fused and unfused kernels round the FP16 body differently
    ),
}


def default_tolerances(precision: str) -> Tolerances:
    """The documented defaults for ``precision`` (``"fp32"`` or ``"fp16"``): frozen, with an
    ``outputs`` dict of the caller's own (changing it changes no one else's defaults)."""
    if precision not in DEFAULT_TOLERANCES:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    defaults = DEFAULT_TOLERANCES[precision]
    return replace(defaults, outputs=dict(defaults.outputs))
