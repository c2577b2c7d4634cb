"""What a screening run writes, each file atomically (written aside, then renamed: never half-written).

``OUT/shards/NNNNN.extxyz``
    The shard's evaluated structures (input atoms, ``info`` and ``arrays`` kept) with energy,
    free_energy (eV), forces (eV/Å) and, for 3-D periodic cells, stress (eV/Å^3, ASE's sign and
    Voigt order) as ASE writes calculator results; ``info["mlff_structure_id"]`` joins it to the
    summary. Results the input carried (a reference ``energy=``, ``forces``) are kept as
    ``input_energy``, ``input_forces``, ... Failed structures are left out (they are in the summary).
``OUT/shards/NNNNN.csv``
    The shard's rows of the summary.
``OUT/shards/NNNNN.json``
    The shard's record, written last: it marks the shard done (counts, size and sha256 of its two
    files, the worker that evaluated it, when and for how long).
``OUT/summary.csv``
    Every structure of the run in input order: :data:`SUMMARY_COLUMNS`, written at the end.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.extxyz import per_atom_properties

from mlff_export.screening.inputs import Shard, StructureRecord

SUMMARY_COLUMNS = ("structure_id", "source", "index", "formula", "atoms", "energy_eV", "max_force_eV_per_A", "status", "error")
"""``structure_id`` is ``source:index``; ``max_force_eV_per_A`` the largest per-atom force norm;
``status`` ``ok`` or ``failed`` (then ``error`` says why)."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_partial_files(out: Path) -> int:
    """Delete what an interrupted write left aside (never a shard file itself); returns how many."""
    partial = list((out / "shards").glob(".*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def shard_file(out: Path, shard_id: str, suffix: str) -> Path:
    """``OUT/shards/<shard_id><suffix>``, suffix one of ``.extxyz``, ``.csv``, ``.json``."""
    return out / "shards" / f"{shard_id}{suffix}"


def write_shard(out: Path, shard: Shard, records: Sequence[StructureRecord], evaluation: dict) -> dict:
    """Write the shard's structures and summary rows, then its record (returned), which keeps
    ``evaluation`` (where and when the shard was evaluated). The records' atoms are given the
    results as their calculator (no copies: writing is the costly part of a run)."""
    frames = [_evaluated_atoms(shard, record) for record in records if record.results is not None]
    text = io.StringIO()
    if frames:
        ase.io.write(text, frames, format="extxyz")
    table = io.StringIO()
    csv.writer(table, lineterminator="\n").writerows([SUMMARY_COLUMNS, *(_summary_row(shard, r) for r in records)])
    files = {}
    for suffix, content in ((".extxyz", text.getvalue()), (".csv", table.getvalue())):
        data = content.encode()
        atomic_write(shard_file(out, shard.shard_id, suffix), data)
        files[suffix] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    failed = sum(record.error is not None for record in records)
    record = {"shard_id": shard.shard_id, "structures": len(records), "ok": len(records) - failed,
              "failed": failed, "files": files, "evaluation": evaluation}
    atomic_write(shard_file(out, shard.shard_id, ".json"), json.dumps(record, indent=1).encode())
    return record


def shard_is_done(out: Path, shard: Shard) -> bool:
    """Whether the shard's record exists and its files are there with the recorded sizes."""
    try:
        record = json.loads(shard_file(out, shard.shard_id, ".json").read_text())
        return record["structures"] == shard.size and all(
            shard_file(out, shard.shard_id, suffix).stat().st_size == entry["bytes"]
            for suffix, entry in record["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_summary(out: Path, shards: Sequence[Shard]) -> dict[str, int]:
    """Join the shards' tables into ``OUT/summary.csv`` in shard order; count rows by status."""
    rows = []
    for shard in shards:
        with shard_file(out, shard.shard_id, ".csv").open(newline="") as file:
            rows.extend(list(csv.reader(file))[1:])
    table = io.StringIO()
    csv.writer(table, lineterminator="\n").writerows([SUMMARY_COLUMNS, *rows])
    atomic_write(out / "summary.csv", table.getvalue().encode())
    status = SUMMARY_COLUMNS.index("status")
    return {name: sum(row[status] == name for row in rows) for name in ("ok", "failed")}


def _structure_id(shard: Shard, record: StructureRecord) -> str:
    return f"{shard.source}:{record.index}"


def _evaluated_atoms(shard: Shard, record: StructureRecord):
    atoms = record.atoms
    for name, value in getattr(atoms.calc, "results", {}).items():  # the input's own results, kept as input_*
        (atoms.arrays if name in per_atom_properties else atoms.info)[f"input_{name}"] = value
    atoms.info["mlff_structure_id"] = _structure_id(shard, record)
    atoms.calc = SinglePointCalculator(atoms, **record.results)
    return atoms


def _summary_row(shard: Shard, record: StructureRecord) -> list[str]:
    atoms, results = record.atoms, record.results
    energy = max_force = ""
    if results is not None:
        energy = repr(float(results["energy"]))
        max_force = repr(float(np.linalg.norm(results["forces"], axis=1).max()))
    return [
        _structure_id(shard, record), shard.source, str(record.index),
        atoms.get_chemical_formula() if atoms is not None else "", str(len(atoms)) if atoms is not None else "",
        energy, max_force, "failed" if record.error is not None else "ok", record.error or "",
    ]
