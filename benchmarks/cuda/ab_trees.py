"""Interleaved A/B of two checkouts of natten_mlx on the small rows (CUDA tier).

Small calls move by up to 40% between processes (H100), so each round runs one
process per tree, in turn, and the table reports every round.  Each process
times what natten_mlx.na1d/2d/3d call without return_lse (the tier's na_out,
else na_fused's out), forward and forward+backward, with gpu_benchmark.py's
pipelined bench(), in microseconds.

    python3 benchmarks/cuda/ab_trees.py --trees base=/path/a,new=. [--rounds 3] [--cases ...] [--dtype ...]
                                        [--env name:VAR=VALUE ...] [--pure]

Each tree must have natten_mlx._core.ops.tier_na_out (gpu_benchmark.tier_calls
uses the tree's own rule for what na1d/2d/3d call), i.e. be newer than 40d4aa5.
--env gives one tree's processes an environment variable (two names may share a
directory: an A/B of a switch); --pure also times the pure tier in each process
and reports pure / tree per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = "seed-1d-256,seed-1d-1024,seed-2d-32,seed-2d-64,seed-3d-16"


def child(tree, tags, dtypes, pure=False):
    sys.path.insert(0, os.path.abspath(tree))
    from natten_mlx._core import cuda  # from `tree`: imported before gpu_benchmark puts this checkout first
    from natten_mlx._core import pure as pure_tier

    sys.path.insert(0, os.path.dirname(HERE))
    from gpu_benchmark import ANCHOR_JSON, bench_tier, make_case

    for c in json.load(open(ANCHOR_JSON)):
        if c["tag"] not in tags or c["dtype"] not in dtypes:
            continue
        case = make_case(c)
        fwd, fb = bench_tier(cuda, case)
        row = {"tag": c["tag"], "dtype": c["dtype"], "fwd_us": fwd * 1e3, "fwdbwd_us": fb * 1e3}
        if pure:
            fwd, fb = bench_tier(pure_tier, case)
            row["pure_fwd_us"], row["pure_fwdbwd_us"] = fwd * 1e3, fb * 1e3
        print(json.dumps(row), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trees", required=True, help="name=dir,name=dir")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default=SEEDS)
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--env", action="append", default=[], help="name:VAR=VALUE")
    ap.add_argument("--pure", action="store_true")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tags, dtypes = args.cases.split(","), args.dtype.split(",")
    if args.child:
        child(args.child, tags, dtypes, args.pure)
        return
    envs = {}
    for e in args.env:
        name, kv = e.split(":", 1)
        envs.setdefault(name, {}).update([kv.split("=", 1)])
    trees = [t.split("=", 1) for t in args.trees.split(",")]
    res = {}  # (tag, dtype) -> name -> [(fwd, fb), ...]
    for r in range(args.rounds):
        for name, d in trees:
            out = subprocess.run([sys.executable, __file__, "--trees", args.trees, "--child", d,
                                  "--cases", args.cases, "--dtype", args.dtype] + ["--pure"] * args.pure,
                                 capture_output=True, text=True, env={**os.environ, **envs.get(name, {})})
            if out.returncode:
                sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    x = json.loads(line)
                    res.setdefault((x["tag"], x["dtype"]), {}).setdefault(name, []).append(
                        (x["fwd_us"], x["fwdbwd_us"], x.get("pure_fwd_us"), x.get("pure_fwdbwd_us")))
            print(f"round {r + 1}: {name} done", file=sys.stderr, flush=True)
    names = [n for n, _ in trees]
    print("| case | dtype | " + " | ".join(f"{n} fwd us (rounds)" for n in names) + " | "
          + " | ".join(f"{n} f+b us (rounds)" for n in names) + " | min f+b " + " / ".join(names) + " |")
    print("|---|---|" + "---|" * (2 * len(names) + 1))
    for (tag, dt), by in res.items():
        cols = [", ".join(f"{r[0]:.1f}" for r in by.get(n, [])) for n in names]
        cols += [", ".join(f"{r[1]:.1f}" for r in by.get(n, [])) for n in names]
        mins = " / ".join(f"{min(r[1] for r in by[n]):.1f}" for n in names if n in by)
        print(f"| {tag} | {dt} | " + " | ".join(cols) + f" | {mins} |")
    if args.pure:
        print("\npure / tree, per round (fwd ; fwd+bwd), the pure tier timed in the same process")
        for (tag, dt), by in res.items():
            print(f"{tag} {dt}: " + " | ".join(
                n + " " + ", ".join(f"{r[2] / r[0]:.1f}x" for r in by[n]) + " ; "
                + ", ".join(f"{r[3] / r[1]:.1f}x" for r in by[n]) for n in names if n in by))


if __name__ == "__main__":
    main()
