#!/bin/bash
# Run on the device machine (after tests/cuda/device_setup.sh): the nvcc harness,
# the whole Python suite with the CUDA tier selected, and the tensor-core tests
# again with 128-query tiles.  pytest runs in parallel shards (NVRTC compiles of
# the kernel instantiations are CPU-bound and dominate: ~270 s for test_cuda.py
# in one process on H100).  Logs: $OUT/suite.log (all shards, in order) and
# $OUT/harness.log.  Usage: bash tests/cuda/gpu_suite.sh [SHARDS [TEST PATHS...]]
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
N=${1:-8}
shift
PATHS=${*:-tests/python}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 NATTEN_BACKEND=fast_metal MLX_PTX_CACHE_DIR=${MLX_PTX_CACHE_DIR:-/tmp/ptxcache}
S=/tmp/shards; rm -rf $S; mkdir -p $S
# NO_HARNESS=1: skip the harness (a call that ran it from prebuilt binaries)
( [ -n "$NO_HARNESS" ] || { nvcc -std=c++17 -Xcompiler -fopenmp -gencode=arch=compute_90a,code=sm_90a -Iinclude tests/cuda/test_kernels.cu \
     -o /tmp/test_kernels && /tmp/test_kernels; } ) > $OUT/harness.log 2>&1 &
HPID=$!
$PY -m pytest -q --collect-only $PATHS 2>/dev/null | grep '::' > $S/all
wc -l < $S/all
# round-robin so the slow parametrisations of one test spread over shards
awk -v n=$N -v d=$S '{ print > (d "/s" (NR % n)) }' $S/all
pids=""
for f in $S/s*; do
  $PY -m pytest -q -p no:cacheprovider @$f > $f.log 2>&1 & pids="$pids $!"
done
for tq in 128 128w; do
  NATTEN_CUDA_TQ=$tq $PY -m pytest -q -p no:cacheprovider tests/python/test_cuda.py \
     -k "tensor_core or compile" > $S/tq$tq.log 2>&1 & pids="$pids $!"
done
# the shard logs go to $OUT/suite.log also when a timeout stops this script
# (a 330 s limit cut it off on H100 with nothing back, 2026-11-27 20:52)
collect() { for f in $S/s*.log $S/tq*.log; do echo "=== $f"; cat $f; done > $OUT/suite.log 2>/dev/null; }
trap 'collect; exit 124' TERM INT
rc=0
for p in $pids; do wait $p || rc=1; done
wait $HPID || rc=1
collect
grep -h -E "passed|failed|error" $S/*.log
tail -3 $OUT/harness.log
exit $rc
