#!/usr/bin/env bash
# The GPU checks of the project, run on the lent H100 (see README.md beside this file).
# Usage: bash bench/device/gpu_checks.sh STEP...
#   steps: install tests ort-parity trt-rtx validate validate-backends profile bench-quick bench-full bench-full-uncompiled bench-full-compiled
#          byom-student byom-mace byom-hippynn (users' models: needs the byom-examples wheels for mace, hippynn)
#          peer-mace peer-hippynn peer-graph-pes (the package's own calculator beside ours on the same model: the byom-examples wheels)
#          screening-scale (two GPUs and Ray: nvidia-h200-x2)
#          cold-start cold-start-autotune (after validate, which exports the ONNX graph) bench-batch bench-c6h6 large-systems
# Results collect in /tmp/gpu-checks (kept while the machine stays warm); every call ends by packing
# that folder into $OUT/gpu-checks.tar.gz (the device returns at most 8 files).
# Commands run from /tmp: `python -m` in the checkout would import its unmapped mlff_export/.
set -uo pipefail
export PYTHONPATH=/tmp/mlff:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
repo=$PWD
out=/tmp/gpu-checks; mkdir -p "$out"
cli=/tmp/mlff/bin/mlff-export
status=0
for step in "$@"; do
  echo "=== $step ($(date -u +%H:%M:%S))"
  case $step in
    install)  # the project itself, non-editable, with the setuptools from the wheels
      python3 -m pip install -q --upgrade --no-deps --no-build-isolation --no-index --target /tmp/mlff . > "$out/install.log" 2>&1 \
        && (cd /tmp && python3 -c "import mlff_export.runtime, mlff_export.bench; print('mlff_export installed')") ;;
    tests)
      nvidia-smi > "$out/tests.log" 2>&1
      # GPU_TESTS: test files or node ids under tests/ (default: all); GPU_TESTS_K: a -k selection
      (cd /tmp && python3 -m pytest -m gpu -q -p no:cacheprovider --rootdir "$repo" ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} \
        $(for t in ${GPU_TESTS:-.}; do echo "$repo/tests/$t"; done)) >> "$out/tests.log" 2>&1 ;;
    ort-parity)
      python3 bench/ort_cuda_parity.py --out "$out" > "$out/ort-parity.log" 2>&1 ;;
    trt-rtx)
      python3 bench/trt_rtx_check.py --out "$out" --profile small-molecules --profile medium > "$out/trt-rtx.log" 2>&1 ;;
    validate)
      (cd /tmp && $cli export --out /tmp/onnx) > "$out/validate.log" 2>&1 \
        && for p in fp32 fp16; do (cd /tmp && $cli validate /tmp/onnx/painn-hcno.$p.onnx --precision $p --device cuda --report "$out/validate-$p"); done >> "$out/validate.log" 2>&1 ;;
    validate-backends)  # the reference checkpoint on each GPU backend and precision that a result quotes
      # VALIDATE_RUNS: backend:precision pairs (compile-max-autotune: minutes of autotuning per precision)
      failed=0
      for run in ${VALIDATE_RUNS:-cuda-graphs:fp32 compile-reduce-overhead:fp32 compile-reduce-overhead:fp16 compile-max-autotune:fp32}; do
        (cd /tmp && $cli validate /tmp/mlff/mlff_export/reference/painn-hcno.json --backend ${run%:*} --precision ${run#*:} \
          --device cuda --report "$out/validate-${run%:*}-${run#*:}") || failed=1
      done > "$out/$step.log" 2>&1; (exit $failed) ;;
    profile)  # where one benzene call goes, per GPU backend (bench/profile_call.py)
      for b in ${PROFILE_BACKENDS:-cuda-graphs compile-reduce-overhead compile-max-autotune}; do
        (cd /tmp && python3 "$repo/bench/profile_call.py" --backend $b); done > "$out/profile.log" 2>&1 ;;
    bench-quick|bench-full)
      (cd /tmp && timeout 560 $cli bench --suite "${step#bench-}" --device cuda --out "$out/$step") > "$out/$step.log" 2>&1 ;;
    bench-full-uncompiled|bench-full-compiled)  # the full suite in two calls of < 10 min, eager in both
      backends=eager,eager-fp16-autocast,torchscript,cuda-graphs,onnxruntime
      python3 -c "import tensorrt" 2>/dev/null && backends=$backends,tensorrt  # bench refuses a backend it cannot run
      [ "$step" = bench-full-compiled ] && backends=eager,compile,compile-reduce-overhead,compile-max-autotune
      (cd /tmp && TORCH_LOGS=perf_hints timeout 560 $cli bench --suite full --backends $backends --device cuda --out "$out/$step") > "$out/$step.log" 2>&1 ;;
    byom-student|byom-mace|byom-hippynn)  # a user's model (docs/bring-your-own-model.md) against its own eager
      case ${step#byom-} in
        student) spec="$repo/tests/byom_models.py:make_student"; stem=byom_models ;;
        mace) spec="$repo/examples/byom/mace_model.py:make_model"; stem=mace_model ;;
        hippynn) spec="$repo/examples/byom/hippynn_hipnn.py:make_model"; stem=hippynn_hipnn ;;
      esac
      graphs=${BYOM_ONNX:-/tmp/byom/$step}  # BYOM_ONNX: a folder of graphs exported elsewhere (mlff-export export --model)
      ( [ -f "$graphs/$stem.fp32.onnx" ] || (cd /tmp && $cli export --model "$spec" --precision fp32 --out "$graphs") ) > "$out/$step.log" 2>&1 \
        && (cd /tmp && timeout ${BYOM_SECONDS:-480} $cli bench --model "$spec" --suite models --precision fp32 --device cuda \
             --backends eager,onnxruntime,compile-reduce-overhead,compile-max-autotune \
             --onnx "$graphs/$stem.fp32.onnx" --out "$out/$step") >> "$out/$step.log" 2>&1 ;;
    cold-start|cold-start-autotune)  # a new process's first answer and ~100 molecules: empty caches, the compile cache kept, the AOT package
      # The image sets PYTHONDONTWRITEBYTECODE=1 (each process compiled torch's source again: ~4 s of a start, 2026-12-01); a
      # pip-installed torch has its bytecode, so the processes write theirs into /tmp/pycache (the first run fills it).
      # COLD_BACKENDS / COLD_ONNX=none: fewer processes per call (each compile backend runs three, plus the package build)
      backends=${COLD_BACKENDS:-eager,cuda-graphs,compile-reduce-overhead}; onnx=(--onnx /tmp/onnx/painn-hcno.fp32.onnx); seconds=150
      [ "${COLD_ONNX:-}" = none ] && onnx=()
      [ "$step" = cold-start-autotune ] && backends=compile-max-autotune && onnx=() && seconds=270
      (cd /tmp && env -u PYTHONDONTWRITEBYTECODE PYTHONPYCACHEPREFIX=/tmp/pycache python3 -m mlff_export.bench.cold_start --out "$out/$step" --backends $backends "${onnx[@]}" --timeout $seconds) > "$out/$step.log" 2>&1 ;;
    bench-batch)  # batches of 1-1024 molecules and the loop of 1024 single eager calls, every GPU backend
      for only in batch loop; do
        (cd /tmp && timeout 280 $cli bench --suite full --only "$only" --backends eager,cuda-graphs,onnxruntime,compile-reduce-overhead \
          --device cuda --out "$out/$step-$only"); done > "$out/$step.log" 2>&1 ;;
    bench-c6h6)  # benzene through the calculator, the model call alone and MD, every GPU backend
      (cd /tmp && timeout 500 $cli bench --suite full --only C6H6 --device cuda --out "$out/$step" \
        --backends ${C6H6_BACKENDS:-eager,cuda-graphs,onnxruntime,compile-reduce-overhead,compile-max-autotune}) > "$out/$step.log" 2>&1 ;;
    large-systems)  # periodic water of 10k, 100k and 1M atoms: GPU search, domains, memory (bench/large_systems.py)
      (cd /tmp && timeout ${LARGE_SECONDS:-560} python3 -m mlff_export.bench.large_systems --out "$out/$step" \
        --backends ${LARGE_BACKENDS:-compile-reduce-overhead}) > "$out/$step.log" 2>&1 ;;
    peer-mace|peer-hippynn|peer-graph-pes)  # the package's own calculator (mace-torch: eager, compile, cuEquivariance; hippynn: its GPU kernels) beside ours (bench/peer_calculators.py)
      (cd /tmp && timeout ${PEER_SECONDS:-560} python3 -m mlff_export.bench.peer_calculators --device cuda --out "$out/$step" \
        --model "$repo/examples/byom/$(case $step in peer-mace) echo mace_model ;; peer-hippynn) echo hippynn_hipnn ;; *) echo graph_pes_tensornet ;; esac).py:make_model") > "$out/$step.log" 2>&1 ;;
    screening-scale)  # 100k molecules through mlff-export predict: one Ray worker, two, then in-process
      (cd /tmp && timeout 560 python3 "$repo/bench/screening_scale.py" --out "$out/screening-scale" --work /tmp/screening-work) > "$out/$step.log" 2>&1 ;;
    *) echo "unknown step $step"; status=2; continue ;;
  esac
  code=$?; [ $code -ne 0 ] && status=$code
  echo "=== $step exit $code"; tail -n 25 "$out/$step.log" 2>/dev/null
done
[ -n "${OUT:-}" ] && tar czf "$OUT/gpu-checks.tar.gz" -C /tmp gpu-checks
exit $status
