"""Lowerings that keep the traced forward+backward graph exportable and free of scatters.

Three aten ops of a traced backward need help on the way to ONNX:

* ``aten.silu_backward`` has no ONNX translation in torch 2.13; :func:`silu_backward` gives it
  one (``grad * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``, in the input's dtype).
* ``aten.slice_backward`` (the gradient of ``x[:, a:b]``, ``split`` and ``cat``) decomposes by
  default into zeros + ``slice_scatter``, which ONNX writes as ScatterND. Zero padding of the
  gradient is the same thing: :func:`slice_backward_as_pad` makes it an ONNX ``Pad``.
"""

from __future__ import annotations

import torch
from torch._decomp import get_decompositions


def silu_backward(grad_output, self):
    """ONNX translation of ``aten.silu_backward(grad_output, self)``: d silu(x)/dx times the grad."""
    from onnxscript import opset18 as op  # here, not at the top: the runtime imports this module and needs no ONNX

    sigmoid = op.Sigmoid(self)
    one = op.CastLike(1.0, self)
    return op.Mul(grad_output, op.Mul(sigmoid, op.Add(one, op.Mul(self, op.Sub(one, sigmoid)))))


_default_slice_backward = get_decompositions([torch.ops.aten.slice_backward.default])[
    torch.ops.aten.slice_backward.default
]


def slice_backward_as_pad(grad_output, input_sizes, dim, start, end, step):
    """``aten.slice_backward`` for unit steps as zero padding (``Pad``), never a scatter.

    ``grad_output`` holds the gradient of ``input[..., start:end, ...]`` along ``dim``; the
    gradient of ``input`` is it padded with zeros to ``input_sizes``. Strided slices keep the
    default decomposition.
    """
    if step != 1:
        return _default_slice_backward(grad_output, input_sizes, dim, start, end, step)
    dim = dim % len(input_sizes)
    size = input_sizes[dim]
    before = start + size if start < 0 else start
    after = size - before - grad_output.shape[dim]
    padding = []
    for axis in reversed(range(len(input_sizes))):
        padding += [before, after] if axis == dim else [0, 0]
    return torch.constant_pad_nd(grad_output, padding, 0.0)


_default_diagonal_backward = get_decompositions([torch.ops.aten.diagonal_backward.default])[
    torch.ops.aten.diagonal_backward.default
]


def diagonal_backward_as_embedding(grad_output, input_sizes, offset, dim1, dim2):
    """``aten.diagonal_backward`` (gradient of ``x.diagonal()``, e.g. of a trace) as ``diag_embed``.

    The default decomposition writes the gradient into a view of zeros (``copy_``), an in-place
    step the ONNX exporter refuses; for the main diagonal of square axes the gradient is the
    gradient vector placed on a diagonal, which ``diag_embed`` computes without mutation.
    """
    dim1, dim2 = dim1 % len(input_sizes), dim2 % len(input_sizes)
    if offset != 0 or input_sizes[dim1] != input_sizes[dim2]:
        return _default_diagonal_backward(grad_output, input_sizes, offset, dim1, dim2)
    return torch.diag_embed(grad_output, 0, dim1, dim2)


ONNX_TRANSLATIONS = {torch.ops.aten.silu_backward.default: silu_backward}
"""Extra aten -> ONNX translations for ``torch.onnx.export(custom_translation_table=...)``."""

TRACE_DECOMPOSITIONS = {
    torch.ops.aten.slice_backward.default: slice_backward_as_pad,
    torch.ops.aten.diagonal_backward.default: diagonal_backward_as_embedding,
}
"""Decompositions for ``make_fx(decomposition_table=...)`` when tracing the joint graph."""
