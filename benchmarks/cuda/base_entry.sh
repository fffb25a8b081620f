#!/bin/sh
# Write the forward entry function of src/cuda/na_fwd_tc.cuh at git revision
# REV, renamed na_fwd_tc_entry_base, to FILE (for fwd_bench.cu -DNA_BENCH_BASE).
# The helpers it calls come from the current na_fwd_tc.cuh.
# Usage: benchmarks/cuda/base_entry.sh REV FILE
git show "$1:src/cuda/na_fwd_tc.cuh" |
  awk '/^\/\* NW warps; each owns/{on=1} /^#endif/{on=0} on' |
  sed 's/na_fwd_tc_entry(/na_fwd_tc_entry_base(/' > "$2"
