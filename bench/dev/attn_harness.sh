#!/usr/bin/env bash
# Build and run the flash attention dev harness on a CUDA machine (no Node, no PyTorch).
#   bench/dev/attn_harness.sh [all|check|bench|wgmma] LENS="16384 65536 131072" BIG=524288 to override
#   BENCH_ARGS="--d64" times head_dim 64 instead of 128 (the product's and the variants' benches alike)
# The library's backward is the wgmma kernel on sm_90 (MEGABEAM_ATTN_BWD_CONFIG=mma|small selects the mma.sync
# ones). WGMMA=1 adds direct calls of the wgmma kernel next to the mma.sync one:
#   all/check: + `selftest` (small cases, one tile first) and `check --wgmma` (the matrix, d=128 cases);
#   all/bench: bench timings get wgmma columns (and a wgmma-vs-current comparison up to 64K);
#   wgmma:     only the wgmma selftest, check and bench (skips the library's own check).
# Logs go to $OUT (device tool) or bench/out/.
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${OUT:-bench/out}
mkdir -p "$OUTDIR"
BUILD=${BUILD:-/tmp/attn_build}
mkdir -p "$BUILD"
BUILD=$(cd "$BUILD" && pwd)  # absolute: the variants' links to the main build's objects must resolve from their folders
ARCH=${ARCH:-"-gencode arch=compute_90a,code=sm_90a"}
FLAGS="-O3 -std=c++17 -DMEGABEAM_CUDA -Icsrc $ARCH -Xptxas -v"
MODE=${1:-all}
WGMMA=${WGMMA:-}
[ "$MODE" = wgmma ] && WGMMA=1
HFLAGS=""
if [ -n "$WGMMA" ]; then HFLAGS="-DMB_ATTN_WGMMA"; fi

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"

# Translation units compiled in parallel: the main build, plus one kernel build per flag in VARIANTS
# (e.g. VARIANTS="-DMY_FLAG") and one per script in VARIANT_SCRIPTS (e.g. bench/dev/variants/bwd_dq_wg.py:
# it writes edited copies of product kernels into a folder, which replace the kernels of the same name) for A/B
# timing in the same call. The shipped kernels have no variant macros: a variant is a set of edits of the .cu,
# kept under bench/dev/variants/.
# REUSE_BUILD=1: take the binaries a previous call of this script left in $BUILD (same VARIANTS/VARIANT_SCRIPTS),
# e.g. to time BENCH_ARGS=--d64 after an `all` run without compiling again.
if [ -n "${REUSE_BUILD:-}" ] && [ -x "$BUILD/main/attn_harness" ]; then
  echo "reusing the build in $BUILD"
  VARIANTS=${VARIANTS:-}
  VARIANT_SCRIPTS=${VARIANT_SCRIPTS:-}
else
  t0=$(date +%s)
  pids=()
  VARIANTS=${VARIANTS:-}
  build_kernels() {  # $1 = output dir, $2 = extra flags, $3 = a folder of replacement .cu files (optional)
    mkdir -p "$1"
    for f in attention_fwd attention_fwd_wgmma attention_bwd attention_bwd_wgmma; do
      src=csrc/ops/attention/$f.cu
      [ -n "${3:-}" ] && [ -f "$3/$f.cu" ] && src="$3/$f.cu"
      # a variant script that leaves this kernel alone links the main build's object (no second compile)
      if [ -n "${3:-}" ] && [ -z "$2" ] && [ ! -f "$3/$f.cu" ]; then ln -sf "$BUILD/main/$f.o" "$1/$f.o"; : >"$1/$f.log"; continue; fi
      nvcc $FLAGS $2 -c "$src" -o "$1/$f.o" >"$1/$f.log" 2>&1 &
      pids+=($!)
    done
  }
  build_kernels "$BUILD/main" ""
  i=0
  for v in $VARIANTS; do i=$((i + 1)); build_kernels "$BUILD/var$i" "${v//,/ }"; done  # commas join flags of one variant
  VARIANT_SCRIPTS=${VARIANT_SCRIPTS:-}
  for v in $VARIANT_SCRIPTS; do
    i=$((i + 1))
    python3 "$v" "$BUILD/var$i/src" || { echo "VARIANT $v FAILED"; exit 1; }
    build_kernels "$BUILD/var$i" "" "$BUILD/var$i/src"
  done
  nvcc $FLAGS $HFLAGS -c bench/dev/attn_harness.cu -o "$BUILD/harness.o" >"$BUILD/harness.log" 2>&1 &
  pids+=($!)
  fail=0
  for p in "${pids[@]}"; do wait "$p" || fail=1; done
  cat "$BUILD"/main/attention_fwd.log "$BUILD"/main/attention_fwd_wgmma.log "$BUILD"/main/attention_bwd.log "$BUILD"/main/attention_bwd_wgmma.log |
    grep -E "error|warning|Compiling entry|registers|spill|Potential" >"$OUTDIR/ptxas.txt"
  if [ $fail -ne 0 ]; then
    cat "$BUILD"/*.log "$BUILD"/*/*.log
    echo "BUILD FAILED"
    exit 1
  fi
  for d in "$BUILD"/main "$BUILD"/var*; do
    [ -d "$d" ] || continue
    nvcc $ARCH "$d"/attention_fwd.o "$d"/attention_fwd_wgmma.o "$d"/attention_bwd.o "$d"/attention_bwd_wgmma.o "$BUILD"/harness.o -o "$d/attn_harness" || { echo "LINK FAILED"; exit 1; }
  done
  echo "build: $(( $(date +%s) - t0 )) s"
  grep -E "registers|spill" "$OUTDIR/ptxas.txt" | sort | uniq -c
  grep -E -A3 "Compiling entry.*wgmma_kernel" "$BUILD/main/attention_bwd_wgmma.log" | grep -E "registers|spill|Potential"
fi
H="$BUILD/main/attn_harness"
WGFLAG=${WGMMA:+--wgmma}

rc=0
if [ "$MODE" = all ] || [ "$MODE" = check ]; then
  "$H" check 2>&1 | tee "$OUTDIR/check.log"
  crc=${PIPESTATUS[0]}
  if [ $crc -ne 0 ]; then
    rc=1
    if command -v compute-sanitizer >/dev/null; then
      timeout 120 compute-sanitizer --tool memcheck --print-limit 20 "$H" check quick >"$OUTDIR/memcheck.log" 2>&1
      tail -40 "$OUTDIR/memcheck.log"
    fi
  fi
fi
if [ -n "$WGMMA" ] && { [ "$MODE" = all ] || [ "$MODE" = check ] || [ "$MODE" = wgmma ]; }; then
  timeout "${WG_TIMEOUT:-300}" "$H" selftest 2>&1 | tee "$OUTDIR/wgmma_selftest.log"
  src=${PIPESTATUS[0]}
  if [ $src -ne 0 ]; then
    rc=1
    if command -v compute-sanitizer >/dev/null; then
      timeout 180 compute-sanitizer --tool memcheck --print-limit 20 "$H" selftest >"$OUTDIR/wgmma_memcheck.log" 2>&1
      tail -40 "$OUTDIR/wgmma_memcheck.log"
    fi
  fi
  timeout "${WG_TIMEOUT:-300}" "$H" check --wgmma 2>&1 | tee "$OUTDIR/wgmma_check.log"
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ] || [ "$MODE" = wgmma ]; then
  t1=$(date +%s)
  "$H" bench ${LENS:-16384 65536 131072} $WGFLAG ${BENCH_ARGS:-} 2>&1 | tee "$OUTDIR/bench.log" || rc=1
  took=$(( $(date +%s) - t1 ))
  # The 512K point takes ~16x the 128K one; run it only when that fits comfortably.
  if [ -n "${BIG-524288}" ] && [ "$took" -lt "${BIG_IF_UNDER:-25}" ]; then
    timeout "${BIG_TIMEOUT:-120}" "$H" bench ${BIG-524288} $WGFLAG ${BENCH_ARGS:-} 2>&1 | tee -a "$OUTDIR/bench.log"
  else
    echo "skipping 512K (smaller sizes took ${took} s)"
  fi
fi
i=0
for v in $VARIANTS $VARIANT_SCRIPTS; do
  i=$((i + 1))
  echo "== variant $i: $v"
  cat "$BUILD/var$i"/attention_*wgmma.log | grep -E -A3 "Compiling entry.*wgmma_kernel" | grep -E "spill|C75" | sort | uniq -c
  if [ -n "${VARIANT_CHECK:-}" ]; then
    if [ "$VARIANT_CHECK" != selftest ]; then  # VARIANT_CHECK=selftest: only the small wgmma cases (faster)
      "$BUILD/var$i/attn_harness" check >"$OUTDIR/check_var$i.log" 2>&1 || rc=1
      tail -1 "$OUTDIR/check_var$i.log"
    fi
    if [ -n "$WGMMA" ]; then  # the wgmma kernels' small cases, one tile first (harness built with MB_ATTN_WGMMA)
      timeout "${WG_TIMEOUT:-300}" "$BUILD/var$i/attn_harness" selftest >"$OUTDIR/selftest_var$i.log" 2>&1 || rc=1
      tail -1 "$OUTDIR/selftest_var$i.log"
    fi
  fi
  "$BUILD/var$i/attn_harness" bench ${VLENS:-16384 65536} ${BENCH_ARGS:-} 2>&1 | tee -a "$OUTDIR/variants.log"
done
# One profiled launch of each kernel at 16K (ncu reads counters on the Firecracker machines).
if [ -n "${NCU:-}" ] && command -v ncu >/dev/null; then
  NCU_K="regex:^attn_(fwd|bwd)_kernel"
  NCU_N=2
  if [ -n "$WGMMA" ]; then NCU_K="regex:^attn_(fwd|bwd)_kernel|attn_bwd_wgmma_kernel"; NCU_N=3; fi
  timeout 90 ncu --clock-control none -k "$NCU_K" --launch-skip 0 --launch-count $NCU_N \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    --section ComputeWorkloadAnalysis --section Occupancy --section LaunchStats \
    "$H" bench 16384 $WGFLAG >"$OUTDIR/ncu.txt" 2>&1
  grep -E "attn_|Duration|Throughput|Stall|Warp Cycles|Issued|Eligible|Bank|Registers|Achieved Occupancy|Pipe" "$OUTDIR/ncu.txt" | head -80
fi
exit $rc
