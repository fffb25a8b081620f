"""Per-call overhead of the compiled tier through MLX on the CPU, broken down.

    python benchmarks/call_overhead.py [--reps N] [--cases L256,L1024,tiny]

For each case and dtype it prints (min over reps, microseconds):
  build   na1d(...) without eval (Python validation, params, custom_function)
  fwd     na1d(...) + mx.eval (what cpu_benchmark.py times)
  ext     ext.na_forward(...) + mx.eval (no Python layer)
  triv    a trivial MLX op of the same size (q + k) + mx.eval
  f+b     mx.grad of sum(na1d(...) * g) + mx.eval (as cpu_benchmark.py)
  f+b bld the same graph built without eval
Threads: NATTEN_NUM_THREADS (default all cores).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mlx.core as mx  # noqa: E402

import natten_mlx as nm  # noqa: E402
from natten_mlx._core import compiled  # noqa: E402

CASES = {"tiny": (1, 16, 1, 8, 3), "L256": (1, 256, 4, 32, 7), "L1024": (1, 1024, 4, 32, 7)}


def tmin(fn, reps, ev=True):
    r = fn()
    if ev:
        mx.eval(r)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        r = fn()
        if ev:
            mx.eval(r)
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--cases", default="tiny,L256,L1024")
    ap.add_argument("--dtype", default="fp32,bf16")
    a = ap.parse_args()
    mx.set_default_device(mx.cpu)
    nm.set_backend("nanobind")
    ext = compiled.extension()
    print(f"threads={ext.num_threads()} isa={ext.cpu_isa()} load={os.getloadavg()[0]:.2f}")
    print(f"{'case':6s} {'dt':4s} | {'build':>7s} {'fwd':>7s} {'ext':>7s} {'triv':>7s} | "
          f"{'f+b bld':>7s} {'f+b':>7s}   (us, min of {a.reps})")
    for cname in a.cases.split(","):
        B, L, H, D, K = CASES[cname]
        for dn in a.dtype.split(","):
            dt = {"fp32": mx.float32, "bf16": mx.bfloat16}[dn]
            mx.random.seed(0)
            q, k, v, g = (mx.random.normal((B, L, H, D)).astype(dt) for _ in range(4))
            mx.eval(q, k, v, g)
            kw = dict(kernel_size=K)
            sc = D ** -0.5
            ekw = dict(rank=1, kernel=[K], dilation=[1], out_stride=[1], gna_stride=[1],
                       causal=[False], scale=sc)
            grad = mx.grad(lambda q_, k_, v_: (nm.na1d(q_, k_, v_, **kw) * g).sum(), argnums=(0, 1, 2))
            r = dict(
                build=tmin(lambda: nm.na1d(q, k, v, **kw), a.reps, ev=False),
                fwd=tmin(lambda: nm.na1d(q, k, v, **kw), a.reps),
                ext=tmin(lambda: ext.na_forward(q, k, v, **ekw)[0], a.reps),
                triv=tmin(lambda: q + k, a.reps),
                fbb=tmin(lambda: grad(q, k, v), a.reps, ev=False),
                fb=tmin(lambda: grad(q, k, v), a.reps),
            )
            print(f"{cname:6s} {dn:4s} | {r['build']:7.1f} {r['fwd']:7.1f} {r['ext']:7.1f} "
                  f"{r['triv']:7.1f} | {r['fbb']:7.1f} {r['fb']:7.1f}", flush=True)


if __name__ == "__main__":
    main()
