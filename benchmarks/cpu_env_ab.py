"""Interleaved A/B of a CPU runtime switch, through MLX.

Each round runs benchmarks/cpu_benchmark.py on the given cases (compiled tier
only) once per value of one environment variable, in turn, and prints its rows
(min of `--reps` calls, forward and forward+backward).  Interleaving keeps a
noisy machine's drift out of the comparison.

    python benchmarks/cpu_env_ab.py --var NATTEN_CPU_OUTPUT_POOL_MB --values 0,512
    python benchmarks/cpu_env_ab.py --var NATTEN_CPU_OUTPUT_ALIGN --values 0,1
        [--rounds 4] [--reps 8] [--cases "vision 2d B8 64x64 H8 D64 K7,..."]   (after `make ext`)
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
    ap.add_argument("--var", required=True, help="environment variable to switch")
    ap.add_argument("--values", required=True, help="comma-separated values, run in this order each round")
    ap.add_argument("--cases", default=CASES, help="exact case names, comma-separated")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--fwd-only", action="store_true", help="skip forward+backward")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args()
    cmd = [sys.executable, os.path.join(HERE, "cpu_benchmark.py"), "--cases-exact", args.cases, "--dtype",
           args.dtype, "--no-pure", "--no-upstream", "--reps", str(args.reps)] + (["--fwd-only"] if args.fwd_only else [])
    names = tuple(c.strip() for c in args.cases.split(","))
    for r in range(args.rounds):
        for val in args.values.split(","):
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env={**os.environ, args.var: val}).stdout
            print(f"== round {r + 1} {args.var}={val}")
            print("\n".join(line for line in out.splitlines() if line.startswith(names)), flush=True)


if __name__ == "__main__":
    main()
