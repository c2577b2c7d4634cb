"""A model named on the command line: ``--model`` (card, factory or ``.pt2``) with ``--weights``
and ``--model-kwargs``. Torch-free, so commands check their arguments before importing torch;
:meth:`ModelSpec.load` hands over to :mod:`mlff_export.model_intake`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlff_export.model_intake import LoadedModel


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``package.module:factory`` or ``file.py:factory``."""
    module, colon, name = spec.rpartition(":")
    dotted = all(part.isidentifier() for part in module.split("."))
    return bool(colon) and name.isidentifier() and (dotted or module.endswith(".py"))


@dataclass(frozen=True)
class ModelSpec:
    """What ``--model``, ``--weights`` and ``--model-kwargs`` name; :meth:`load` gives a fresh module."""

    spec: str
    weights: str | None = None
    model_kwargs: Mapping | None = None

    def load(self) -> LoadedModel:
        """The module (:func:`mlff_export.model_intake.load_model`; imports torch)."""
        from mlff_export.model_intake import load_model

        return load_model(self.spec, weights=self.weights, model_kwargs=self.model_kwargs)

    @property
    def name(self) -> str:
        """A file-name stem for what is made from the model: the card's or program's stem, the
        factory's module (``pkg.student:make`` and ``student.py:make`` give ``student``)."""
        if is_factory_spec(self.spec):
            module = self.spec.rpartition(":")[0]
            return Path(module).stem if module.endswith(".py") else module.rpartition(".")[2]
        return Path(self.spec).stem

    def argv(self, model_flag: str = "--model") -> list[str]:
        """The command-line arguments that name this model again."""
        words = [model_flag, self.spec]
        if self.weights is not None:
            words += ["--weights", str(self.weights)]
        if self.model_kwargs:
            words += ["--model-kwargs", json.dumps(dict(self.model_kwargs))]
        return words
