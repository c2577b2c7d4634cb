#!/bin/bash
# Water of 10,125 atoms through compile-reduce-overhead, FP32 and FP16, one process per set of
# extra Inductor options (name:json pairs as arguments), with a profiled call per row.
# Outputs under $OUT/r/<name>/ and $OUT/r/<name>.log.   Usage: variants.sh SIZES name:json ...
repo=${REPO:?set REPO to the repository root}
sizes=$1; shift
options_script=$repo/bench/results/2026-12-01-h200-autotune-memory/scripts/with_inductor_options.py
for variant in "$@"; do
  name=${variant%%:*}; options=${variant#*:}
  start=$(date +%s)
  timeout ${VARIANT_TIMEOUT:-170} python3 "$options_script" "$options" large_systems --out "$OUT/r/$name" \
    --backends compile-reduce-overhead --precisions fp32,fp16 --sizes "$sizes" --parity-up-to 20000 \
    --repeats 7 --profile > "$OUT/r/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - start )) s"
done
