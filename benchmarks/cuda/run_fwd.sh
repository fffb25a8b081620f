#!/bin/bash
# One device call for the tensor-core forward (run from the checkout root on
# the device machine, binaries built beforehand with nvcc into $BIN):
# harness, A/B timing, FlexAttention forward on the same card, ncu profiles.
# Usage: BIN=devbin NCU="case:variant ..." bash benchmarks/cuda/run_fwd.sh
OUT=${OUT:-/tmp/out}; BIN=${BIN:-devbin}; mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
$BIN/test_kernels > $OUT/harness.log 2>&1; echo "harness rc $?" >> $OUT/harness.log
grep -E "FAIL|ALL OK|FAILED|rc" $OUT/harness.log
$BIN/fwd_bench all all 2>&1 | tee $OUT/bench.log
python3 benchmarks/cuda/flex_fwd.py ${FLEX:-flux-2d-256-w80 1d-32k-w2k} 2>&1 | grep FLEX | tee -a $OUT/bench.log
$BIN/fwd_bench all all 2>&1 | tee -a $OUT/bench.log   # second run: spread
mkdir -p /tmp/ncu
for cv in $NCU; do
  c=${cv%%:*}; v=${cv##*:}
  ncu --clock-control none --set full --import-source yes -k regex:k_bench --launch-skip 1 --launch-count 1 \
      -o /tmp/ncu/${c}_$v $BIN/fwd_bench $c $v 1 > /dev/null 2>&1
  ncu -i /tmp/ncu/${c}_$v.ncu-rep --page details > /tmp/ncu/ncu_${c}_$v.txt 2>&1
  grep -E "Duration|Registers Per|Achieved Occupancy|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" /tmp/ncu/ncu_${c}_$v.txt | sed "s/^/$c:$v /"
  ncu -i /tmp/ncu/${c}_$v.ncu-rep --page source --csv --print-source sass > /tmp/ncu/src_${c}_$v.csv 2>&1
done
cuobjdump -sass $BIN/fwd_bench > /tmp/ncu/sass.txt 2>&1
tar czf $OUT/ncu.tgz -C /tmp/ncu . 2>/dev/null
ls -la $OUT /tmp/ncu
