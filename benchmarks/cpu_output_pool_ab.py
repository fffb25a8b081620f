"""Interleaved A/B of the CPU output pool (natten_mlx/_core/ext/output_pool.h).

Each round runs one process with the pool off (NATTEN_CPU_OUTPUT_POOL_MB=0) and
one with it on (the default), in turn; each process times natten_mlx.na2d /
na3d through MLX on the CPU (the compiled tier) on the vision cases, f32,
forward and forward+backward (mx.vjp with a random output cotangent), and
prints the minimum and median of `--reps` calls after two warm-ups.

    python benchmarks/cpu_output_pool_ab.py [--rounds 4] [--reps 8]   (after `make ext`)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CASES = (("vision2d f32 B8 64x64 H8 D64 K7", (8, 64, 64, 8, 64), 7),
         ("vision3d f32 32^3 H4 D32 K3", (1, 32, 32, 32, 4, 32), 3))


def child(reps):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import mlx.core as mx
    import natten_mlx

    mx.set_default_device(mx.cpu)
    for name, shape, K in CASES:
        mx.random.seed(0)
        q, k, v, g = (mx.random.normal(shape) for _ in range(4))
        mx.eval(q, k, v, g)
        na = natten_mlx.na2d if len(shape) == 5 else natten_mlx.na3d

        def fwd():
            return na(q, k, v, K)

        def fwd_bwd():
            return mx.vjp(lambda a, b, c: na(a, b, c, K), [q, k, v], [g])[1]

        for label, f in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            mx.eval(f())
            mx.eval(f())
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                mx.eval(f())
                ts.append(time.perf_counter() - t0)
            ts.sort()
            print(f"{name} {label}: min {ts[0] * 1e3:.1f} med {ts[len(ts) // 2] * 1e3:.1f} ms", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.reps)
        return
    for r in range(args.rounds):
        for mb in ("0", "512"):
            print(f"== round {r + 1} pool_mb={mb}", flush=True)
            subprocess.run([sys.executable, __file__, "--child", "--reps", str(args.reps)], check=True,
                           env={**os.environ, "NATTEN_CPU_OUTPUT_POOL_MB": mb})


if __name__ == "__main__":
    main()
