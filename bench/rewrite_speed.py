"""ONNX Runtime CPU time per benzene call of a user's model: the graph as written (pair list,
``ScatterND`` with a reduction) against the scatter-free rewrite (neighbor table).

    python bench/rewrite_speed.py OUT_DIR [--model SPEC] [--repeats 300]

Both graphs come from one trace of the same module (``--model``, default the distilled student of
``tests/byom_models.py``), are converted the way ``to_onnx`` converts, and run in ONNX Runtime
sessions with one intra-op thread (the pair-list graph's scatters race with more), timed in
turn call by call. Writes
``OUT_DIR/rewrite_speed.json`` (medians, quartiles, environment); exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from ase.build import molecule

from mlff_export.bench.environment import describe_environment
from mlff_export.export.functional import functionalized
from mlff_export.export.graph_layouts import NEIGHBOR_TABLE, PAIR_LIST
from mlff_export.export.joint_graph import rewritten_to_neighbor_table, trace_pair_list_graph
from mlff_export.export.onnx_export import DEFAULT_OPSET, scatters_with_reduction, traced_to_model_proto
from mlff_export.model_spec import ModelSpec
from mlff_export.neighbors import batch_inputs, compute_pairs

STUDENT = f"{Path(__file__).resolve().parents[1] / 'tests' / 'byom_models.py'}:make_student"


def interleaved_ms(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float, float]]:
    """Median, first and third quartile (ms) of each run, timed in turn within every repeat so
    that a change in machine load hits all of them alike."""
    for run in runs.values():
        for _ in range(20):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: tuple(float(1e3 * q) for q in np.percentile(times, [50, 25, 75])) for name, times in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for rewrite_speed.json")
    parser.add_argument("--model", default=STUDENT, help="model specification (default: the distilled student)")
    parser.add_argument("--repeats", type=int, default=1000)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = ModelSpec(args.model).load().module

    pair_graph, pair_args = trace_pair_list_graph(model)
    table_graph, table_args = rewritten_to_neighbor_table(model, pair_graph, pair_args)
    atoms = molecule("C6H6")
    inputs = batch_inputs([atoms], [compute_pairs(atoms, float(model.cutoff))])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    runs, protos = {}, {}
    for name, layout, graph, example in (("pair list", PAIR_LIST, pair_graph, pair_args),
                                         ("neighbor table", NEIGHBOR_TABLE, table_graph, table_args)):
        protos[name] = traced_to_model_proto(functionalized(graph, example), example, layout, DEFAULT_OPSET)
        session = ort.InferenceSession(protos[name].SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {key: value.numpy() for key, value in layout.feeds(inputs).items()}
        runs[name] = lambda session=session, feeds=feeds: session.run(None, feeds)
    rows = {}
    for name, (median, q1, q3) in interleaved_ms(runs, args.repeats).items():
        proto = protos[name]
        rows[name] = {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "nodes": len(proto.graph.node),
                      "scatters_with_a_reduction": len(scatters_with_reduction(proto))}
        print(f"{name:<15} {median:.3f} ms (IQR {q1:.3f}-{q3:.3f})  {len(proto.graph.node)} nodes  "
              f"{rows[name]['scatters_with_a_reduction']} scatters with a reduction", flush=True)
    ratio = rows["pair list"]["median_ms"] / rows["neighbor table"]["median_ms"]
    print(f"rewritten graph: {ratio:.2f}x the pair-list graph's speed (benzene, ORT CPU, 1 thread)")
    summary = {"model": args.model, "structure": "benzene (12 atoms)", "threads": 1, "rows": rows,
               "pair_list_over_table": ratio, "environment": describe_environment(torch.device("cpu"))}
    (args.out / "rewrite_speed.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
