"""The embedded runner: every shard in this process, one after another, on the local GPU or CPU.

No Ray needed. The model is loaded once; each shard is read, evaluated and written before the
next starts, so an interruption loses at most the shard in progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlff_export.screening.evaluation import ShardEvaluator
from mlff_export.screening.inputs import Shard, read_shard
from mlff_export.screening.outputs import write_shard
from mlff_export.screening.progress import ShardProgress
from mlff_export.screening.settings import ModelSettings


def run_embedded(out: Path, shards: Sequence[Shard], settings: ModelSettings, progress: ShardProgress) -> None:
    """Evaluate ``shards`` into ``out``, reporting each to ``progress``."""
    evaluator = ShardEvaluator(settings)
    progress.start()
    for shard in shards:
        records = read_shard(shard)
        evaluation = evaluator.evaluate(records)
        progress.shard_done(write_shard(out, shard, records, evaluation))
