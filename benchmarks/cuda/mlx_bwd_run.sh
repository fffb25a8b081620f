#!/bin/bash
# Device call for the wgmma backward (after tests/cuda/device_setup.sh; run
# from the checkout root): test_cuda.py through MLX in 14 shards
# (tests/cuda/gpu_suite.sh; NO_HARNESS=1 skips its nvcc harness), then the
# MLX benchmark (forward + backward) with the wgmma backward off
# (NATTEN_CUDA_WGMMA_BWD=0: the fused mma.sync launch) and on (default),
# FlexAttention off.  Logs under $OUT.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT/gb0 $OUT/gb1
CASES=${CASES:-flux-2d-256-w80,1d-32k-w2k}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $OUT/bench.log
OUT=$OUT bash tests/cuda/gpu_suite.sh 14 tests/python/test_cuda.py
export PYTHONUNBUFFERED=1 MLX_PTX_CACHE_DIR=/tmp/ptxcache
for w in 0 1; do
  echo "== NATTEN_CUDA_WGMMA_BWD=$w" | tee -a $OUT/bench.log
  NATTEN_CUDA_WGMMA_BWD=$w python3 benchmarks/gpu_benchmark.py --cases $CASES --dtype bf16 --no-pure --no-flex \
      --out $OUT/gb$w 2>&1 | grep -E "^\| |floor" | tee -a $OUT/bench.log
done
