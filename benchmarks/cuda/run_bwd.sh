#!/bin/bash
# One device call for the tensor-core backward (run from the checkout root on
# the device machine; binaries built beforehand with nvcc into $BIN, see
# build_bwd.sh): nvcc harness (and a harness built with a planted bug, which
# must fail), bwd_bench A/B (bwd_base: the kernels of the base revision),
# CASES / REPS (A/B rounds), optional FlexAttention (FLEX="tag ...") and ncu source-level profiles
# (NCU="case ...", kernels k_bwd_dq_tc / k_bwd_dkdv_tc of bwd_new).
OUT=${OUT:-/tmp/out}; BIN=${BIN:-devbin}; mkdir -p $OUT
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > $OUT/gpu.txt
$BIN/test_kernels > $OUT/harness.log 2>&1; echo "harness rc $?" >> $OUT/harness.log
grep -E "FAIL|ALL OK|FAILED|rc" $OUT/harness.log | tail -5
if [ -x $BIN/test_planted ]; then
  $BIN/test_planted > $OUT/planted.log 2>&1; echo "planted rc $? (must be 1)" >> $OUT/planted.log
  grep -cE "FAIL$" $OUT/planted.log; tail -1 $OUT/planted.log
fi
if [ -x $BIN/test_planted_wg ]; then
  $BIN/test_planted_wg > $OUT/planted_wg.log 2>&1; echo "planted_wg rc $? (must be 1)" >> $OUT/planted_wg.log
  grep -E "FAIL$" $OUT/planted_wg.log | cut -c1-60; tail -1 $OUT/planted_wg.log
fi
for c in ${CASES:-flux vision 1d hunyuan}; do
  for r in $(seq ${REPS:-2}); do $BIN/bwd_base $c | sed 's/^/base /'; $BIN/bwd_new $c | sed 's/^/new  /'; done
done 2>&1 | grep -v "^.... *device" | tee -a $OUT/bench.log
[ -n "$FLEX" ] && PYTHONUNBUFFERED=1 timeout 300 python3 benchmarks/cuda/flex_cases.py $FLEX 2>&1 | grep '^{' | tee -a $OUT/bench.log
mkdir -p /tmp/ncu
for c in $NCU; do
  for k in k_bwd_dq_tc k_bwd_dkdv_tc; do
    timeout 200 ncu --clock-control none --set full --import-source yes -k regex:$k --launch-count 1 \
        -o /tmp/ncu/${c}_$k $BIN/bwd_new $c once > /dev/null 2>&1
    ncu -i /tmp/ncu/${c}_$k.ncu-rep --page details > /tmp/ncu/ncu_${c}_$k.txt 2>&1
    grep -E "Duration|Registers Per|Achieved Occupancy|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" \
        /tmp/ncu/ncu_${c}_$k.txt | sed "s/^/$c:$k /"
    ncu -i /tmp/ncu/${c}_$k.ncu-rep --page source --csv --print-source sass > /tmp/ncu/src_${c}_$k.csv 2>&1
  done
done
[ -n "$NCU" ] && { rm -f /tmp/ncu/*.ncu-rep; tar czf $OUT/ncu.tgz -C /tmp/ncu .; }
cat $OUT/gpu.txt
