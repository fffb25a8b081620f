#!/bin/bash
# Device call (after tests/cuda/device_setup.sh; run from the checkout root):
# the forward A/B harness, the nvcc harness + test_cuda.py through MLX
# (tests/cuda/gpu_suite.sh), the MLX benchmark of the forward on the big
# cases, and FlexAttention's forward on the same card right after.
# Binaries in $BIN (built with nvcc beforehand).  Logs under $OUT.
OUT=${OUT:-/tmp/out}; BIN=${BIN:-devbin}; mkdir -p $OUT/gb
CASES=${CASES:-flux-2d-256-w80,1d-32k-w2k,hunyuan-3d-w18x24x24,vision-2d-64-k7}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/bench.log
$BIN/fwd_bench all all 2>&1 | tee -a $OUT/bench.log
OUT=$OUT bash tests/cuda/gpu_suite.sh 14 tests/python/test_cuda.py
PYTHONUNBUFFERED=1 MLX_PTX_CACHE_DIR=/tmp/ptxcache python3 benchmarks/gpu_benchmark.py --cases $CASES \
    --dtype bf16 --no-pure --no-flex --fwd-only --out $OUT/gb 2>&1 | tail -12
python3 benchmarks/cuda/flex_fwd.py ${CASES//,/ } 2>&1 | grep FLEX | tee $OUT/flex.log
