"""Interleaved A/B of the CPU output pool (natten_mlx/_core/ext/output_pool.h).

Each round runs benchmarks/cpu_benchmark.py on the f32 vision cases (compiled
tier only, through MLX) twice, in turn: once with the pool off
(NATTEN_CPU_OUTPUT_POOL_MB=0) and once with it on (the default), and prints
its rows (min of `--reps` calls, forward and forward+backward).

    python benchmarks/cpu_output_pool_ab.py [--rounds 4] [--reps 8]   (after `make ext`)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = "vision 2d B8 64x64 H8 D64 K7,vision 3d 32^3 K3 H4 D32"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    cmd = [sys.executable, os.path.join(HERE, "cpu_benchmark.py"), "--cases-exact", CASES, "--dtype", "fp32",
           "--no-pure", "--no-upstream", "--reps", str(args.reps)]
    for r in range(args.rounds):
        for mb in ("0", "512"):
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env={**os.environ, "NATTEN_CPU_OUTPUT_POOL_MB": mb}).stdout
            print(f"== round {r + 1} pool_mb={mb}")
            print("\n".join(line for line in out.splitlines() if line.startswith("vision")), flush=True)


if __name__ == "__main__":
    main()
