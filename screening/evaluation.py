"""Evaluate a shard's structures with one calculator, loaded once: checks, batches, refusals.

Each structure is checked before it joins a batch: what the calculator refuses (no atoms,
non-finite positions, elements the model does not know, a singular cell) and overlapping atoms
(:mod:`~mlff_export.screening.overlaps`). A batch the model still refuses (a :class:`ValueError`
from the calculator: a structure outside every engine profile, say; or a single structure out of
GPU memory) is split in halves until the refused structure is alone; it fails with the reason and
the others go on. Results that are not finite fail too.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence

import numpy as np
import torch

from mlff_export.neighbors import StructureError, check_structure
from mlff_export.runtime import load_calculator
from mlff_export.screening.batching import batches, largest_fitting_atoms
from mlff_export.screening.inputs import StructureRecord
from mlff_export.screening.overlaps import overlap_problems
from mlff_export.screening.settings import ModelSettings


class ShardEvaluator:
    """One calculator for many shards: the model is loaded once, in ``__init__``."""

    def __init__(self, settings: ModelSettings):
        self.settings = settings
        self.calc = load_calculator(settings.model, settings.device, backend=settings.backend)
        self.max_atoms: int | None = None  # automatic: found on the first valid structures
        self.worker = f"{socket.gethostname()} pid {os.getpid()} {self.calc.backend.name} on {self.calc.backend.device}"

    def evaluate(self, records: Sequence[StructureRecord]) -> dict:
        """Fill ``results`` (or ``error``) of every record that has atoms and no error yet.

        Returns where and when it ran: ``worker``, ``seconds`` spent, ``finished_at`` (Unix time).
        """
        start = time.perf_counter()
        valid = self._accepted([record for record in records if record.error is None])
        if valid:
            self._evaluate_valid(valid)
        return {"worker": self.worker, "seconds": round(time.perf_counter() - start, 4), "finished_at": time.time()}

    def _evaluate_valid(self, valid: list[StructureRecord]) -> None:
        structures = [record.atoms for record in valid]
        if self.settings.batch_size is None and self.max_atoms is None:
            self.max_atoms = largest_fitting_atoms(self.calc, structures)
        counts = [len(atoms) for atoms in structures]
        for batch in batches(counts, self.max_atoms, self.settings.batch_size):
            self._predict_isolating([valid[position] for position in batch])

    def _accepted(self, records: list[StructureRecord]) -> list[StructureRecord]:
        """The records the model can take; the others get their ``error``."""
        checked = []
        for record in records:
            try:
                check_structure(record.atoms, self.calc.species)
                checked.append(record)
            except StructureError as error:
                record.error = str(error)
        problems = overlap_problems([record.atoms for record in checked], self.settings.min_distance)
        for record, problem in zip(checked, problems):
            record.error = problem
        return [record for record in checked if record.error is None]

    def _predict_isolating(self, records: list[StructureRecord]) -> None:
        try:
            results = self.calc.predict([record.atoms for record in records])
        except (ValueError, torch.cuda.OutOfMemoryError) as error:
            if len(records) == 1:
                records[0].error = f"refused by the model: {error}"
                return
            half = len(records) // 2
            self._predict_isolating(records[:half])
            self._predict_isolating(records[half:])
            return
        for record, result in zip(records, results):
            if all(np.isfinite(value).all() for value in result.values()):
                record.results = result
            else:
                record.error = "the model returned non-finite energy, forces or stress"
