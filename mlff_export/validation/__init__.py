"""Validation of deployed artifacts against their PyTorch model (``mlff-export validate``).

Entry point: :func:`mlff_export.validation.validate.validate_artifact`. Modules, one idea each:
:mod:`.structures` (the built-in set, reading files), :mod:`.tolerances` (per-precision defaults),
:mod:`.comparison` (error statistics, pass/fail), :mod:`.provenance` (is it the same model?),
:mod:`.physics` (finite differences, NVE), :mod:`.runtime_comparison` (polygraphy, ONNX across
runtimes), :mod:`.report` (JSON, Markdown, parity plot). This package imports nothing at import
time, so the CLI can build its parser without loading torch.
"""
