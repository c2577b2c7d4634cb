"""One screening run: plan or resume the output folder, evaluate the pending shards in this
process or on Ray, show progress, join the summary."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mlff_export.screening.manifest import open_run
from mlff_export.screening.outputs import (
    remove_partial_files,
    shard_is_done,
    write_summary,
)
from mlff_export.screening.progress import ShardProgress
from mlff_export.screening.settings import ModelSettings

DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class ScreeningReport:
    """What a run did: structures in the whole folder by status, shards skipped as already done,
    structures evaluated by this call and its wall time (seconds, model loading included)."""

    ok: int
    failed: int
    shards: int
    shards_resumed: int
    evaluated: int
    seconds: float

    @property
    def structures_per_second(self) -> float:
        return self.evaluated / self.seconds if self.seconds > 0 else 0.0


def screen(
    inputs: Sequence[str | Path],
    out: str | Path,
    settings: ModelSettings,
    *,
    shard_size: int | None = None,
    ray: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    show_progress: bool = True,
    on_shard_done: Callable[[dict], None] | None = None,
) -> ScreeningReport:
    """Evaluate every structure of ``inputs`` (extxyz files, ASE databases, folders) into ``out``.

    ``shard_size``: structures per shard (default :data:`DEFAULT_SHARD_SIZE`). ``ray`` None runs
    in this process (``settings.device`` None: CUDA where available); else it is the Ray address
    (``"local"``, ``"auto"`` or ``HOST:PORT``; ``workers``, ``gpus_per_worker``: see
    :func:`~mlff_export.screening.ray_runner.run_on_ray`). Re-running with the same inputs and
    settings resumes: shards already written are skipped. Outputs are described in
    :mod:`~mlff_export.screening.outputs`. ``on_shard_done`` is called in this process with each
    shard's record as the shard completes.
    """
    out = Path(out)
    if ray is None and (workers is not None or gpus_per_worker is not None):
        raise ValueError("--workers and --gpus-per-worker need --ray (local, auto or an address)")
    if ray is not None:
        from mlff_export.screening.ray_runner import check_settings

        check_settings(settings)
    shards = open_run(out, inputs, settings, shard_size or DEFAULT_SHARD_SIZE)
    remove_partial_files(out)  # no worker runs yet: anything written aside is an interrupted write
    pending = [shard for shard in shards if not shard_is_done(out, shard)]
    start = time.perf_counter()
    progress = ShardProgress(sum(shard.size for shard in pending), show_progress, on_shard_done)
    try:
        if pending and ray is None:
            from mlff_export.screening.embedded import run_embedded

            run_embedded(out, pending, _local_device(settings), progress)
        elif pending:
            from mlff_export.screening.ray_runner import run_on_ray

            run_on_ray(out, pending, settings, ray, progress, workers=workers, gpus_per_worker=gpus_per_worker)
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    counts = write_summary(out, shards)
    return ScreeningReport(counts["ok"], counts["failed"], len(shards), len(shards) - len(pending),
                           sum(shard.size for shard in pending), seconds)


def _local_device(settings: ModelSettings) -> ModelSettings:
    if settings.device is not None:
        return settings
    import torch

    return replace(settings, device="cuda" if torch.cuda.is_available() else "cpu")
