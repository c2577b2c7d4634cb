"""The manifest: what an output folder computes, so that re-running the same command resumes it.

``OUT/manifest.json`` is written once, before any work: the inputs (resolved path, size and
modification time of each), the model (its file's resolved path, size and modification time),
the backend, the shard size, the overlap distance, and the shards. A later run over the same
folder must name the same inputs and settings (the device, the batch size and Ray or not may
change: they change results only within float rounding); it then reuses the planned shards and
skips those already done (:func:`~mlff_export.screening.outputs.shard_is_done`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from mlff_export.screening.inputs import Shard, find_sources, plan_shards
from mlff_export.screening.outputs import atomic_write
from mlff_export.screening.settings import ModelSettings

MANIFEST_NAME = "manifest.json"
FORMAT = "mlff-export-screening/1"


class RunMismatchError(ValueError):
    """The output folder holds a run of other inputs or settings."""


def model_identity(model: str) -> dict:
    """The model as the manifest records it: a file by resolved path, size and modification
    time; anything else (a name ``load_calculator`` resolves) as given."""
    path = Path(model)
    if path.is_file():
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"name": model}


def open_run(out: Path, inputs: Sequence[str | Path], settings: ModelSettings, shard_size: int) -> list[Shard]:
    """The shards of the run in ``out``: planned and recorded in a new folder, read back from the
    manifest of an earlier run of the same command (refused, saying what differs, otherwise)."""
    sources = find_sources(inputs)
    identity = {
        "format": FORMAT,
        "model": model_identity(settings.model),
        "backend": settings.backend,
        "min_distance": settings.min_distance,
        "shard_size": shard_size,
        "sources": [source.identity() for source in sources],
    }
    path = out / MANIFEST_NAME
    if path.exists():
        recorded = json.loads(path.read_text())
        differing = [key for key, value in identity.items() if recorded.get(key) != value]
        if differing:
            raise RunMismatchError(
                f"{out} holds a run of other {', '.join(differing)} than this command's: give another --out, "
                f"or delete {out} to start over"
            )
        return [Shard(**shard) for shard in recorded["shards"]]
    shards = plan_shards(sources, shard_size)
    manifest = {**identity, "sources_as_given": [asdict(source) for source in sources],
                "shards": [shard.as_dict() for shard in shards]}
    atomic_write(path, json.dumps(manifest, indent=1).encode())
    return shards

