#!/bin/bash
# Device-side profile of the backward kernels (run from the checkout root):
# timings (bwd_bench), ncu sections on one launch of each kernel, SASS
# statistics, FlexAttention for the same cases.  BIN: a prebuilt bwd_bench
# (built here with nvcc when absent).  Logs under $OUT.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
BIN=${BIN:-/tmp/bwd_bench}
[ -x "$BIN" ] || nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Iinclude \
    benchmarks/cuda/bwd_bench.cu -o $BIN || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw --format=csv > $OUT/gpu.txt
$BIN "${CASES:-}" > $OUT/bench.txt 2>&1; cat $OUT/bench.txt
cuobjdump -sass $BIN | awk '/Function : /{f=$3} /LDL|STL/{l[f]++} /HMMA/{h[f]++} /BAR.SYNC|BAR /{b[f]++}
  END{for(k in h) printf "%s HMMA=%d LDL/STL=%d BAR=%d\n", k, h[k], l[k], b[k]}' > $OUT/sass_stats.txt
S="--section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats \
   --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section InstructionStats"
for c in ${NCU_CASES:-vision 1d flux-h4}; do
  timeout 200 ncu --clock-control none $S -k regex:'k_bwd|k_delta' $BIN $c once > $OUT/ncu_$c.txt 2>&1
done
[ -n "$FLEX" ] && PYTHONUNBUFFERED=1 timeout 300 python3 benchmarks/cuda/flex_cases.py $FLEX > $OUT/flex.txt 2>&1
cat $OUT/flex.txt 2>/dev/null | grep '^{'
cat $OUT/gpu.txt
