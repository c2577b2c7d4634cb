"""GPU time of one GEMM under cuBLAS, cuBLASLt, TF32 and a Triton broadcast-and-sum, per shape.

    python3 bench/blas_gemms.py        # on a CUDA machine; prints one JSON line per variant

The shapes are those of the reference PaiNN's joint graph in benzene's bucket (16 atoms, 16-wide
table: [M, K] x [K, N] with M = 16, 48 = 3 x 16 or 256 = 16 x 16) and two of a 4096-row batch.
Each GEMM (``x @ w.T``, float32) is captured 50 times in a CUDA graph and replayed 20 times: the
per-GEMM GPU time without launch overhead. The last line times the same GEMMs launched one by one
(default cuBLAS, 1000 calls). Measured on the H200: ``bench/results/2026-12-01-h200/gemm/``; it is
why captured buckets choose their BLAS library (:mod:`mlff_export.runtime.blas_choice`).
"""

from __future__ import annotations

import argparse
import json
import subprocess

import torch

from mlff_export.cli.options import require_cuda

SHAPES = [(16, 128, 128), (16, 128, 384), (256, 20, 384), (48, 128, 128), (16, 256, 128), (16, 384, 128),
          (256, 384, 20), (16, 64, 128), (16, 128, 64), (240, 20, 384), (4096, 20, 384), (4096, 128, 384)]


def clocks() -> str:
    query = "--query-gpu=clocks.sm,clocks.max.sm,pstate,power.draw"
    return subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()


def graph_microseconds(call, repeats: int = 50, replays: int = 20) -> float:
    """GPU µs per ``call``, captured ``repeats`` times in one CUDA graph replayed ``replays`` times."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            call()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            call()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (repeats * replays)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    require_cuda(parser, "GEMM times")
    device = torch.device("cuda")
    print("clocks idle:", clocks())
    broadcast_sum = torch.compile(lambda x, w: (x[:, None, :] * w[None, :, :]).sum(-1), fullgraph=True)
    for variant in ("cublas", "cublaslt", "tf32", "triton-bcast"):
        torch.backends.cuda.matmul.allow_tf32 = variant == "tf32"
        torch.backends.cuda.preferred_blas_library("cublaslt" if variant == "cublaslt" else "cublas")
        row = {}
        for m, k, n in SHAPES:
            x, w = torch.randn(m, k, device=device), torch.randn(n, k, device=device)
            call = (lambda: broadcast_sum(x, w)) if variant == "triton-bcast" else (lambda: torch.mm(x, w.t()))
            row[f"{m}x{k}x{n}"] = round(graph_microseconds(call), 2)
        print(variant, json.dumps(row), flush=True)
    print("clocks after:", clocks())
    torch.backends.cuda.preferred_blas_library("cublas")
    torch.backends.cuda.matmul.allow_tf32 = False
    row = {}
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k, device=device), torch.randn(n, k, device=device)
        for _ in range(10):
            torch.mm(x, w.t())
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(1000):
            torch.mm(x, w.t())
        end.record()
        torch.cuda.synchronize()
        row[f"{m}x{k}x{n}"] = round(start.elapsed_time(end), 2)  # ms per 1000 calls = µs per call
    print("eager-stream", json.dumps(row))


if __name__ == "__main__":
    main()
