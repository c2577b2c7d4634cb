"""bench/large_systems.py with Inductor's Triton kernels computing in the tensors' own dtype.

    python fp16_arithmetic.py {upcast,no-upcast} LARGE_SYSTEMS_ARGS...

``no-upcast`` sets ``torch._inductor.config.triton.codegen_upcast_to_fp32 = False``: float16 loads
stay float16 inside the fused kernels (Inductor upcasts them to float32 by default). One setting
per process (Inductor's cache keys include it).
"""
import sys

import torch._inductor.config as inductor

from mlff_export.bench.large_systems import main

setting, argv = sys.argv[1], sys.argv[2:]
if setting not in ("upcast", "no-upcast"):
    sys.exit(f"first argument: upcast or no-upcast, got {setting!r}")
if not hasattr(inductor.triton, "codegen_upcast_to_fp32"):
    sys.exit("this torch has no triton.codegen_upcast_to_fp32")
inductor.triton.codegen_upcast_to_fp32 = setting == "upcast"
print(f"triton.codegen_upcast_to_fp32 = {inductor.triton.codegen_upcast_to_fp32}", flush=True)
sys.exit(main(argv))
