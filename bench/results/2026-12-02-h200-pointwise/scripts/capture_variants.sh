#!/bin/bash
# As variants.sh, with a CUDA-graph capture limit per variant (name:slots:json), profiled and traced.
repo=${REPO:?set REPO to the repository root}
sizes=$1; shift
script=$repo/bench/results/2026-12-02-h200-pointwise/scripts/with_capture_limit.py
for variant in "$@"; do
  IFS=: read -r name slots options <<< "$variant"
  start=$(date +%s)
  timeout ${VARIANT_TIMEOUT:-170} python3 "$script" "$slots" "$options" --out "$OUT/r/$name" \
    --backends compile-reduce-overhead --precisions ${PRECISIONS:-fp32,fp16} --sizes "$sizes" --parity-up-to 20000 \
    --repeats 9 --profile > "$OUT/r/$name.log" 2>&1
  echo "$name rc=$? $(( $(date +%s) - start )) s"
done
