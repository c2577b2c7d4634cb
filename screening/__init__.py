"""Screening at scale: ``mlff-export predict`` over datasets, in-process or on a Ray cluster.

Inputs are cut into shards (:mod:`.inputs`); a worker evaluates a shard with one calculator,
batching structures by atom count (:mod:`.batching`, :mod:`.evaluation`); each shard's outputs
are written atomically (:mod:`.outputs`) and the folder's manifest lets the same command resume
(:mod:`.manifest`). Runners: in this process (:mod:`.embedded`) or on Ray (:mod:`.ray_runner`,
needs the ``[ray]`` extra); :func:`screen` (:mod:`.run`) is the entry point.
"""

from mlff_export.screening.run import ScreeningReport, screen
from mlff_export.screening.settings import ModelSettings

__all__ = ["ModelSettings", "ScreeningReport", "screen"]
