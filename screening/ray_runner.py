"""The Ray runner: the same shards on a Ray cluster, one actor per GPU holding a loaded model.

A Ray Data pipeline with one row per shard::

    from_items(shards)                       the driver's plan, one block per shard
    .map(_read_shard)                        CPU tasks: parse the shard's structures
    .map_batches(_EvaluateShards,            an actor pool of ``workers`` actors with
                 batch_size=1,                 ``gpus_per_worker`` GPUs each (Ray sets
                 compute=ActorPool(workers),   CUDA_VISIBLE_DEVICES); each loads the model once
                 num_gpus=gpus_per_worker)     and batches structures by size
    .map(_write_shard)                       CPU tasks: write the shard's files atomically
    .iter_rows()                             the driver: one record per shard, for progress

Faults are Ray's: an actor that dies (a crashed process, a lost node) is restarted and the
shards it held are retried; read and write tasks are retried likewise (Ray Data's defaults,
without a limit; Ray 2.60 deprecates setting them per stage). Writes are atomic, so a retried
shard replaces its files whole. A shard that kills its worker every time (a host out of
memory on one huge structure, say) is retried until the run is interrupted: Ray's log names the
deaths; re-running the command resumes after the cause is removed.

Paths: ``out``, the inputs and the model file must be reachable at the same path from every
node (a shared file system); relative paths are resolved on the driver. Every node needs the
same ``mlff-export`` and Ray installed.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mlff_export.screening.inputs import Shard, read_shard
from mlff_export.screening.outputs import write_shard
from mlff_export.screening.progress import ShardProgress
from mlff_export.screening.settings import ModelSettings


class RayRunError(RuntimeError):
    """The cluster cannot run the pipeline as asked, or the pipeline failed (a worker could not
    load the model, a write failed); the message ends with the cause."""


def import_ray():
    """Ray, or one clear message saying how to install it (it is an optional extra)."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray without its data library cannot run the pipeline)
    except ImportError as error:
        raise RayRunError(f'--ray needs Ray with Ray Data: pip install "mlff-export[ray]" ({error})') from None
    return ray


def run_on_ray(
    out: Path,
    shards: Sequence[Shard],
    settings: ModelSettings,
    address: str,
    progress: ShardProgress,
    *,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
) -> None:
    """Evaluate ``shards`` into ``out`` on the Ray cluster at ``address`` (``"local"``: start one
    on this machine; ``"auto"``: the cluster this machine belongs to; or ``HOST:PORT``). Ray that is
    already initialised in this process is used as it is. ``workers`` defaults to one per GPU
    (``gpus_per_worker`` 1 where the cluster has GPUs), or to all CPUs but one on a CPU cluster.
    """
    check_settings(settings)
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        options = {"include_dashboard": False} if address == "local" else {}
        try:
            ray.init(address=address, logging_level=logging.WARNING, **options)
        except ConnectionError as error:
            raise RayRunError(f"cannot reach a Ray cluster at {address!r}: {error}") from None
    try:
        workers, gpus_per_worker, device = _worker_layout(ray.cluster_resources(), workers, gpus_per_worker, settings.device)
        model = Path(settings.model)
        settings = replace(settings, device=device, model=str(model.resolve()) if model.is_file() else settings.model)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver shows one bar: structures/s and ETA
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plan and progress notes, per run
        # Retries are Ray Data's defaults: actors restart without limit (max_restarts=-1) and their
        # shards are retried (max_task_retries=-1); read and write tasks likewise (max_retries=-1).
        dataset = (
            ray.data.from_items([{"shard": json.dumps(shard.as_dict())} for shard in shards], override_num_blocks=len(shards))
            .map(_read_shard, fn_kwargs={"base": str(Path.cwd())})
            .map_batches(
                _EvaluateShards,
                fn_constructor_kwargs={"settings": settings},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=1,
                num_gpus=gpus_per_worker,
            )
            .map(_write_shard, fn_kwargs={"out": str(out.resolve())})
        )
        progress.start()
        try:
            for row in dataset.iter_rows():
                progress.shard_done(json.loads(row["record"]))
        except ray.exceptions.RayError as error:
            raise RayRunError(f"the Ray pipeline failed: {_last_line(error)}") from error
    finally:
        if started_here:
            ray.shutdown()


def check_settings(settings: ModelSettings) -> None:
    """Refuse settings no Ray worker could run, before any cluster starts or any file is written."""
    if settings.device not in (None, "cpu", "cuda"):
        raise RayRunError(f"with --ray, each worker uses the GPUs Ray gives it: give --device cuda or cpu, not {settings.device!r}")
    model = Path(settings.model)
    if model.suffix and not model.is_file():  # found here, not by each worker once the cluster started
        raise RayRunError(f"model file {model} does not exist")


def _worker_layout(resources: dict, workers: int | None, gpus_per_worker: float | None, device: str | None):
    """(workers, GPUs per worker, device) for the cluster's ``resources``, or a clear refusal."""
    gpus, cpus = resources.get("GPU", 0), int(resources.get("CPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = 1 if gpus and device != "cpu" else 0
    if gpus_per_worker < 0 or (device == "cpu" and gpus_per_worker):
        raise RayRunError(f"--gpus-per-worker must be >= 0, and 0 with --device cpu; got {gpus_per_worker}")
    if device == "cuda" and not gpus_per_worker:
        raise RayRunError("--device cuda on Ray needs GPUs: the cluster has none (or --gpus-per-worker is 0)")
    if workers is None:
        workers = int(gpus // gpus_per_worker) if gpus_per_worker else max(1, cpus - 1)
    if workers < 1:
        raise RayRunError(f"--workers must be at least 1; the cluster has {gpus:g} GPUs for {gpus_per_worker:g} per worker")
    if workers * gpus_per_worker > gpus:
        raise RayRunError(f"{workers} workers with {gpus_per_worker:g} GPUs each need {workers * gpus_per_worker:g} GPUs; the cluster has {gpus:g}")
    if workers + 1 > cpus:
        raise RayRunError(
            f"{workers} workers need {workers + 1} CPUs (one each, one more for reading and writing); the cluster has {cpus}"
        )
    return workers, gpus_per_worker, "cuda" if gpus_per_worker else "cpu"


def _last_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _read_shard(row: dict, base: str) -> dict:
    shard = Shard(**json.loads(row["shard"]))
    # Pickle carries the parsed structures between our own pipeline stages (Ray pickles all it moves).
    return {"shard": row["shard"], "records": pickle.dumps(read_shard(shard, Path(base)))}


class _EvaluateShards:
    """The actor: loads the model once, evaluates one shard per call."""

    def __init__(self, settings: ModelSettings):
        import ray

        from mlff_export.screening.evaluation import ShardEvaluator  # imports torch: in the actors alone

        self.evaluator = ShardEvaluator(settings)
        if ray.get_gpu_ids():
            self.evaluator.worker += f" (Ray GPU {','.join(map(str, ray.get_gpu_ids()))})"

    def __call__(self, batch: dict) -> dict:
        outcomes, evaluations = [], []
        for payload in batch["records"]:
            records = pickle.loads(payload)
            evaluations.append(json.dumps(self.evaluator.evaluate(records)))
            # Only what evaluation added travels on: re-pickling the structures with their results cost
            # 147 ms per 1000 small molecules, the outcomes alone 16 ms (busy 2-core CPU)
            outcomes.append(pickle.dumps([(record.error, record.results) for record in records]))
        return {"shard": batch["shard"], "records": batch["records"], "outcomes": outcomes, "evaluation": evaluations}


def _write_shard(row: dict, out: str) -> dict:
    shard = Shard(**json.loads(row["shard"]))
    records = pickle.loads(row["records"])
    for record, (error, results) in zip(records, pickle.loads(row["outcomes"])):
        record.error, record.results = error, results
    return {"record": json.dumps(write_shard(Path(out), shard, records, json.loads(row["evaluation"])))}
