#!/usr/bin/env bash
# Issue 12 on the GPU: what the integrity and sanity checks cost, the GPU tests of the device-side
# check, and a 10k-step NVE run of benzene that must not trip any check.
# Usage, after `bash bench/device/gpu_checks.sh install` on the same machine:
#   bash bench/device/sanity.sh STEP...    steps: tests costs nve
#   tests: pytest -m gpu tests/test_bad_inputs.py (cuda-graphs, compile-reduce-overhead, ORT CUDA)
#   costs: python -m mlff_export.bench.sanity_cost (exports the fp32 reference graph, times load and
#          per-call checks of eager, cuda-graphs, compile-reduce-overhead, compile-max-autotune, ORT)
#   nve:   10,000 VelocityVerlet steps with compile-max-autotune vs the float64 reference
#          (needs the graph `costs` exported, kept in /tmp while the machine stays warm)
# Results collect in /tmp/sanity-checks; every call packs them (without the .onnx) into
# $OUT/sanity-checks.tar.gz.
set -uo pipefail
export PYTHONPATH=/tmp/mlff:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
repo=$PWD
out=/tmp/sanity-checks; mkdir -p "$out"
status=0
for step in "$@"; do
  echo "=== $step ($(date -u +%H:%M:%S))"
  case $step in
    tests)
      (cd /tmp && python3 -m pytest -m gpu -q -p no:cacheprovider --rootdir "$repo" "$repo/tests/test_bad_inputs.py") > "$out/tests.log" 2>&1 ;;
    costs)
      (cd /tmp && timeout 560 python3 -m mlff_export.bench.sanity_cost "$out/costs" --nve-steps 0 --note "H200, one job") > "$out/costs.log" 2>&1 ;;
    nve)
      (cd /tmp && timeout 560 python3 -m mlff_export.bench.sanity_cost "$out/nve" --onnx "$out/costs/painn-hcno.fp32.onnx" \
        --backends none --nve-steps 10000 --nve-backend compile-max-autotune --note "H200, one job") > "$out/nve.log" 2>&1 ;;
    *) echo "unknown step $step"; status=2; continue ;;
  esac
  code=$?; [ $code -ne 0 ] && status=$code
  echo "=== $step exit $code"; tail -n 25 "$out/$step.log"
done
[ -n "${OUT:-}" ] && tar czf "$OUT/sanity-checks.tar.gz" --exclude '*.onnx' -C /tmp sanity-checks
exit $status
