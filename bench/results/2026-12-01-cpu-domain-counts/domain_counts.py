import sys, time, logging, torch
logging.basicConfig(level=logging.INFO, format="%(message)s")
torch.set_num_threads(2)
from mlff_export import REFERENCE_CHECKPOINT
from mlff_export.checkpoint import load_checkpoint
from mlff_export.bench.workloads import water_box
from mlff_export.neighbors import batch_inputs, compute_pairs
from mlff_export.runtime.eager import EagerBackend
model = load_checkpoint(REFERENCE_CHECKPOINT)
atoms = water_box(int(sys.argv[1]))
inputs = batch_inputs([atoms], [compute_pairs(atoms, model.cutoff)])
limit = int(float(sys.argv[2]) * inputs.num_pairs)
backend = EagerBackend(model, torch.device("cpu"), torch.float32, max_pairs=limit)
with torch.no_grad() if False else torch.enable_grad():
    backend.evaluate(inputs)
    times = []
    for _ in range(3):
        t = time.perf_counter(); out = backend.evaluate(inputs); times.append(time.perf_counter() - t)
print(f"{len(atoms)} atoms, {inputs.num_pairs} pairs, limit {limit}: median {sorted(times)[1]:.2f} s, energy {out['energy'].item():.6f}")
