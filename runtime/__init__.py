"""Runtime backends behind one ASE calculator: :func:`load_calculator` is the entry point."""

from mlff_export.runtime.calculator import MLFFCalculator, load_calculator

__all__ = ["MLFFCalculator", "load_calculator"]
