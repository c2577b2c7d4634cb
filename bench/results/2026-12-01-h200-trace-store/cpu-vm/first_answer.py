"""A new process: import, load_calculator(backend="compile", compile_cache="cc") and benzene's first answer, timed (CPU VM)."""
import time; t0=time.perf_counter()
import sys
from ase.build import molecule
from mlff_export.runtime import load_calculator
t1=time.perf_counter()
calc = load_calculator(device="cpu", backend="compile", compile_cache="cc")
t2=time.perf_counter()
a=molecule("C6H6"); a.calc=calc; e=a.get_potential_energy()
t3=time.perf_counter()
print(sys.argv[1], "import", round(t1-t0,2), "load", round(t2-t1,2), "first", round(t3-t2,2), "total", round(t3-t0,2), e)
