#!/bin/bash
# Build the backward device binaries here (nvcc, no GPU needed) into DIR:
# test_kernels, bwd_new (this tree, with the wgmma dk/dv pass: -DNA_BENCH_WG),
# bwd_base (src/cuda/na_bwd_tc.cuh and na_bwd_f32.cuh of git revision BASE,
# default main), test_planted (the harness with na_box_load2 reading every
# row's offset from its first row: it must fail) and test_planted_wg (the
# wgmma dk/dv pass reading Q of stage 0 for dK += dS^T Q: its checks must fail).
# Usage: benchmarks/cuda/build_bwd.sh DIR [BASE]
set -e
DIR=$1; BASE=${2:-main}; mkdir -p $DIR
F="-std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Iinclude"
T=$(mktemp -d); trap 'rm -rf $T' EXIT
cp -r src include benchmarks tests $T/
for f in na_bwd_tc.cuh na_bwd_f32.cuh; do git show "$BASE:src/cuda/$f" > $T/src/cuda/$f; done
(cd $T && nvcc $F benchmarks/cuda/bwd_bench.cu -o $DIR/bwd_base) &
nvcc $F -DNA_BENCH_WG benchmarks/cuda/bwd_bench.cu -o $DIR/bwd_new
wait
nvcc $F tests/cuda/test_kernels.cu -o $DIR/test_kernels &
cp src/cuda/na_bwd_tc.cuh src/cuda/na_bwd_f32.cuh $T/src/cuda/
sed -i 's/off\[i\] = toff\[row0 + i \* STEP\];/off[i] = toff[row0];/' $T/src/cuda/na_bwd_tc.cuh
grep -q 'off\[i\] = toff\[row0\];' $T/src/cuda/na_bwd_tc.cuh
(cd $T && nvcc $F tests/cuda/test_kernels.cu -o $DIR/test_planted)
wait
cp src/cuda/na_bwd_tc.cuh $T/src/cuda/
cp src/cuda/na_bwd_wgmma.cuh $T/src/cuda/
sed -i 's/na_wg_desc_add(dQm, st \* STAGE16)/dQm/' $T/src/cuda/na_bwd_wgmma.cuh
grep -q 'na_wg_pv_issue<T, HD>(dka, da, dQm)' $T/src/cuda/na_bwd_wgmma.cuh
(cd $T && nvcc $F tests/cuda/test_kernels.cu -o $DIR/test_planted_wg)
ls -la $DIR
