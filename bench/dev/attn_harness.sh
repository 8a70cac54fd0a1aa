#!/usr/bin/env bash
# Build and run the flash attention dev harness on a CUDA machine (no Node, no PyTorch).
#   bench/dev/attn_harness.sh [all|check|bench]      LENS="16384 65536 131072" BIG=524288 to override
# Logs go to $OUT (device tool) or bench/out/.
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${OUT:-bench/out}
mkdir -p "$OUTDIR"
BUILD=${BUILD:-/tmp/attn_build}
mkdir -p "$BUILD"
ARCH=${ARCH:-"-gencode arch=compute_90a,code=sm_90a"}
FLAGS="-O3 -std=c++17 -DMEGABEAM_CUDA -Icsrc $ARCH -Xptxas -v"
MODE=${1:-all}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"

# Three translation units compiled in parallel.
t0=$(date +%s)
pids=()
for f in attention_fwd attention_bwd; do
  nvcc $FLAGS -c csrc/ops/attention/$f.cu -o "$BUILD/$f.o" >"$BUILD/$f.log" 2>&1 &
  pids+=($!)
done
nvcc $FLAGS -c bench/dev/attn_harness.cu -o "$BUILD/harness.o" >"$BUILD/harness.log" 2>&1 &
pids+=($!)
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
cat "$BUILD"/attention_fwd.log "$BUILD"/attention_bwd.log | grep -E "error|warning|Compiling entry|registers|spill" >"$OUTDIR/ptxas.txt"
if [ $fail -ne 0 ]; then
  cat "$BUILD"/*.log
  echo "BUILD FAILED"
  exit 1
fi
nvcc $ARCH "$BUILD"/attention_fwd.o "$BUILD"/attention_bwd.o "$BUILD"/harness.o -o "$BUILD/attn_harness" || { echo "LINK FAILED"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
grep -E "registers|spill" "$OUTDIR/ptxas.txt" | sort | uniq -c

rc=0
if [ "$MODE" = all ] || [ "$MODE" = check ]; then
  "$BUILD/attn_harness" check 2>&1 | tee "$OUTDIR/check.log"
  crc=${PIPESTATUS[0]}
  if [ $crc -ne 0 ]; then
    rc=1
    if command -v compute-sanitizer >/dev/null; then
      timeout 120 compute-sanitizer --tool memcheck --print-limit 20 "$BUILD/attn_harness" check quick >"$OUTDIR/memcheck.log" 2>&1
      tail -40 "$OUTDIR/memcheck.log"
    fi
  fi
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  t1=$(date +%s)
  "$BUILD/attn_harness" bench ${LENS:-16384 65536 131072} 2>&1 | tee "$OUTDIR/bench.log" || rc=1
  took=$(( $(date +%s) - t1 ))
  # The 512K point takes ~16x the 128K one; run it only when that fits comfortably.
  if [ -n "${BIG-524288}" ] && [ "$took" -lt "${BIG_IF_UNDER:-25}" ]; then
    timeout "${BIG_TIMEOUT:-120}" "$BUILD/attn_harness" bench ${BIG-524288} 2>&1 | tee -a "$OUTDIR/bench.log"
  else
    echo "skipping 512K (smaller sizes took ${took} s)"
  fi
fi
exit $rc
