"""The progress of a run: one tqdm bar on stderr with structures done, structures/s, ETA and
failures so far; updated as each shard completes."""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm


class ShardProgress:
    """Counts finished shards. The runner calls :meth:`start` once its workers can start (after
    the model loaded or the cluster was checked), so a mistake found before is the only output,
    then :meth:`shard_done` with each shard's record (and ``on_shard_done`` gets it too)."""

    def __init__(self, total_structures: int, show: bool, on_shard_done: Callable[[dict], None] | None = None):
        self.total_structures = total_structures
        self.show = show
        self.on_shard_done = on_shard_done
        self.failed = 0
        self._bar: tqdm | None = None

    def start(self) -> None:
        self._bar = tqdm(total=self.total_structures, unit=" structures", desc="predict", disable=not self.show,
                         dynamic_ncols=True)

    def shard_done(self, record: dict) -> None:
        self.failed += record["failed"]
        self._bar.set_postfix(failed=self.failed, refresh=False)
        self._bar.update(record["structures"])
        if self.on_shard_done is not None:
            self.on_shard_done(record)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
