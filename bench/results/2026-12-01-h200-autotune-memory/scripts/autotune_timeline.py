"""Where a cold compile-max-autotune first pass over the many-molecules workload spends its time.

    python3 autotune_timeline.py OUT.jsonl [--dynamic] [--cap 240] [--precision fp32] [--backend compile-max-autotune]

A fresh process (run it with an empty TORCHINDUCTOR_CACHE_DIR) loads the reference model with
compile-max-autotune and no compile cache, then sends the ~100 structures one call each; one JSON
line per call (seconds, padded bucket, Dynamo's compiled graphs so far, Inductor's counters) is
written as it ends, so a run stopped at ``--cap`` seconds still says where the time went.
``--dynamic``: compile with ``dynamic=True`` (one symbolic-size compile) instead of the backend's
``dynamic=None`` (static first bucket, then symbolic). After a finished pass: benzene's model call
(bucket replay and synchronize) and calculator call, medians of 500. An experiment, not package code.
"""

import argparse
import json
import time

launched = time.time()

import torch  # noqa: E402
from ase.build import molecule  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from mlff_export import REFERENCE_CHECKPOINT  # noqa: E402
from mlff_export.bench.workloads import many_molecules  # noqa: E402
from mlff_export.runtime import joint_graph  # noqa: E402
from mlff_export.runtime import load_calculator  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--dynamic", action="store_true")
parser.add_argument("--cap", type=float, default=240.0)
parser.add_argument("--precision", default="fp32")
parser.add_argument("--backend", default="compile-max-autotune")
args = parser.parse_args()

if args.dynamic:
    def compiled_dynamic(self, graph):
        options = joint_graph.inductor_options(self.inductor_mode, joint_graph.has_half_body(self.model, self.precision))
        return torch.compile(joint_graph.with_numel_as_method(graph), options=options, fullgraph=True, dynamic=True)
    joint_graph.CompiledBackend.compiled = compiled_dynamic

seen_buckets = []
original_bucket_ran = joint_graph.CompiledBackend.bucket_ran


def bucket_ran(self, bucket):
    seen_buckets.append(bucket)
    original_bucket_ran(self, bucket)


joint_graph.CompiledBackend.bucket_ran = bucket_ran
out = open(args.out, "w")


def record(**fields):
    fields["since_launch_s"] = round(time.time() - launched, 3)
    fields["dynamo_graphs"] = counters["stats"]["unique_graphs"]
    fields["inductor"] = {k: v for k, v in counters["inductor"].items() if "autotune" in k or "select" in k or "cache" in k}
    out.write(json.dumps(fields) + "\n")
    out.flush()


calc = load_calculator(str(REFERENCE_CHECKPOINT), device="cuda" if torch.cuda.is_available() else "cpu", backend=args.backend, compile_cache=False, precision=args.precision)
record(event="loaded")
structures = [molecule("C6H6")] + many_molecules()
for index, atoms in enumerate(structures):
    before = len(seen_buckets)
    start = time.perf_counter()
    atoms.calc = calc
    atoms.get_forces()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    record(event="call", index=index, atoms=len(atoms), seconds=round(time.perf_counter() - start, 3),
           new_bucket=[list(map(list, b)) for b in seen_buckets[before:]][:1])
    if time.time() - launched > args.cap:
        record(event="stopped at cap", done=index + 1, of=len(structures))
        break
else:
    record(event="pass done", structures=len(structures))
    import numpy as np

    benzene = structures[0]
    feeds = calc.backend.device_feeds.dense(benzene)

    def median_us(call, repeats=500):
        samples = []
        for step in range(repeats):
            benzene.positions[0, 0] += 1e-4 * (-1) ** step
            start = time.perf_counter()
            call()
            torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
        return round(1e6 * float(np.median(samples)), 1)

    record(event="benzene", model_call_us=median_us(lambda: calc.backend.run(feeds)), calculator_call_us=median_us(benzene.get_forces),
           energy_ev=float(benzene.get_potential_energy()))
print(torch._dynamo.utils.compile_times(repr="str"), flush=True)
