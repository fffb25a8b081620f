"""Probe: eager vs mx.compile'd calls of the CUDA and pure tiers on the small rows
(gpu_benchmark.py's bench_tier: what na1d/2d/3d call without return_lse).

    python3 benchmarks/cuda/compile_probe.py [--cases tag,...] [--rounds N]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

from gpu_benchmark import ANCHOR_JSON, bench_tier, make_case  # noqa: E402
from natten_mlx._core import cuda, pure  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="seed-1d-256,seed-1d-1024,seed-2d-32,seed-2d-64,seed-3d-16,3d-32-k3")
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tags, dts = args.cases.split(","), args.dtype.split(",")
    cases = [r for r in json.load(open(ANCHOR_JSON)) if r["tag"] in tags and r["dtype"] in dts]
    print("case | dtype | round | mode | cuda fwd | pure fwd | x fwd | cuda f+b | pure f+b | x f+b  (us)")
    for c in cases:
        for rnd in range(args.rounds):
            for compiled in (False, True):
                t = {}
                for name, mod in (("cuda", cuda), ("pure", pure)):
                    t[name] = tuple(x * 1e3 for x in bench_tier(mod, make_case(c), compiled))
                print(f"{c['tag']} | {c['dtype']} | {rnd} | {'compiled' if compiled else 'eager'} | "
                      f"{t['cuda'][0]:.1f} | {t['pure'][0]:.1f} | {t['pure'][0] / t['cuda'][0]:.1f}x | "
                      f"{t['cuda'][1]:.1f} | {t['pure'][1]:.1f} | {t['pure'][1] / t['cuda'][1]:.1f}x",
                      flush=True)


if __name__ == "__main__":
    main()
