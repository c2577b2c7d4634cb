import time, numpy as np
from ase.build import molecule
from mlff_export.runtime.calculator import MLFFCalculator
from mlff_export.runtime.padded_table import unpacked_outputs
marks = {}
class FakeInstantBackend:  # stand-in for a GPU backend: fixed outputs at once, to time our Python only
    name = "fake"; dtype = None
    def __init__(self, n):
        self.values = np.zeros(1 + 3*n + 9 + 1, dtype=np.float32); self.values[-1] = 1.0; self.n = n
    def launch_atoms(self, atoms):
        marks["launch"] = time.perf_counter()
        def finish():
            marks["finish"] = time.perf_counter()
            return unpacked_outputs(self.values, self.n, 1)
        return finish
atoms = molecule("C6H6"); atoms.calc = MLFFCalculator(FakeInstantBackend(len(atoms)), cutoff=5.0, species=(1, 6, 7, 8))
base = atoms.positions.copy(); rng = np.random.default_rng(0)
pre, mid, post = [], [], []
for i in range(30000):
    atoms.positions = base + rng.normal(scale=0.01, size=base.shape)
    t0 = time.perf_counter(); atoms.get_forces(); t1 = time.perf_counter()
    if i > 2000: pre.append(marks["launch"] - t0); mid.append(marks["finish"] - marks["launch"]); post.append(t1 - marks["finish"])
print("pre-launch %.1f us, launch->finish (overlaps the GPU) %.1f us, after finish %.1f us" % tuple(1e6*np.median(x) for x in (pre, mid, post)))
