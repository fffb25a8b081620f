#!/bin/bash
# One device call for the tensor-core forward (run from the checkout root on
# the device machine, binaries built beforehand with nvcc into $BIN):
# A/B timing of one or more builds of fwd_bench (each holds the base entry
# too, see base_entry.sh), FlexAttention's forward on the same card, a second
# timing pass (spread), the nvcc harness of each build, short ncu profiles.
# Usage: BIN=devbin VARIANTS="A D" HARNESS="A D" NCU="D:1d:new128 A:1d:base128" \
#        bash benchmarks/cuda/run_fwd.sh
# (a variant X means $BIN/fwd_bench_X and $BIN/test_kernels_X; none: the
# unsuffixed fwd_bench / test_kernels).  Logs under $OUT.
OUT=${OUT:-/tmp/out}; BIN=${BIN:-devbin}; mkdir -p $OUT
sfx() { [ -n "$1" ] && [ "$1" != "-" ] && echo "_$1"; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
for v in ${VARIANTS:--}; do
  $BIN/fwd_bench$(sfx $v) all all 2>&1 | sed "s/^/[$v] /" | tee -a $OUT/bench.log
done
python3 benchmarks/cuda/flex_fwd.py ${FLEX:-1d-32k-w2k flux-2d-256-w80} 2>&1 | grep FLEX | tee -a $OUT/bench.log
for c in ${CASES2:-1d flux}; do   # second pass: spread
  for v in ${VARIANTS:--}; do $BIN/fwd_bench$(sfx $v) $c all 2>&1 | grep -v "^device\|^case" | sed "s/^/[$v] /" | tee -a $OUT/bench.log; done
done
for v in ${HARNESS}; do
  $BIN/test_kernels$(sfx $v) > $OUT/harness$(sfx $v).log 2>&1; echo "harness rc $?" >> $OUT/harness$(sfx $v).log
  echo "harness [$v]: $(grep -c ' ok$' $OUT/harness$(sfx $v).log) ok, $(grep -c FAIL $OUT/harness$(sfx $v).log) FAIL, $(tail -2 $OUT/harness$(sfx $v).log | tr '\n' ' ')"
done
for vcv in $NCU; do
  v=${vcv%%:*}; cv=${vcv#*:}; c=${cv%%:*}; k=${cv##*:}
  ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis \
      --section InstructionStats --section Occupancy -k regex:k_bench --launch-skip 1 --launch-count 1 \
      $BIN/fwd_bench$(sfx $v) $c $k 1 > $OUT/ncu_${v}_${c}_$k.txt 2>&1
  grep -E "Duration|Registers Per|Achieved Occupancy|Compute \(SM\) Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Executed Ipc Active|Stall" $OUT/ncu_${v}_${c}_$k.txt | head -12 | sed "s/^/$v:$c:$k /"
done
ls -la $OUT
