"""Where the time of a small NA call goes under MLX's CUDA backend (issue 5's
pure-tier ratio on the seed cases).  Run on the device machine (MLX CUDA
installed), from a checkout root:

    python3 benchmarks/cuda/small_calls.py [--cases tag,tag] [--ncu | --profile | --floor | --floor-variants]

Prints, in one process and the pipelined timing of benchmarks/gpu_benchmark.py:
- MLX's cost per call and per extra graph node: a chain of N elementwise ops,
  N no-op nodes (stop_gradient), N tiny custom kernels, in one async_eval each;
- per seed case: host time to build the graph (no eval) of the forward and of
  the forward+backward vjp, and their pipelined times; the same through the
  kernel call alone (no custom_function) and with an explicit contiguous lse
  cotangent (what the broadcast zeros MLX passes for an unused lse cost);
- the MLX graph of one forward and one forward+backward (node names).
--ncu: run each case's forward and forward+backward once after warm-up, for
`ncu --metrics gpu__time_duration.sum` to list the kernels each call launches
(--parse-ncu FILE prints them from ncu's --csv output).
--profile: cProfile of building forward+backward graphs (the Python side).
--floor: per case, the pure tier beside our op and beside the same graph with
empty kernels (a custom_function whose forward and backward launch kernels
that do nothing, with our outputs' shapes): the least any custom-kernel
implementation of this graph can take through MLX, so pure / floor is the
largest ratio over the pure tier that such an implementation can show.
--floor-variants: the empty-kernel graph with our kernels' inputs, with our
header, and precompiled, beside ours (where the rest of the gap goes).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

import mlx.core as mx  # noqa: E402

from gpu_benchmark import bench, make_case, tier_calls  # noqa: E402
from natten_mlx._core import cuda  # noqa: E402

SEEDS = "seed-1d-256,seed-1d-1024,seed-2d-32,seed-3d-16"


def host_us(fn, n=300):
    """Microseconds to build one call's graph (nothing evaluated)."""
    fn()
    keep = []
    t0 = time.perf_counter()
    for _ in range(n):
        keep.append(fn())
    t = (time.perf_counter() - t0) / n * 1e6
    del keep
    return t


def nodes(outs):
    """Primitive names of the graph under outs (MLX's dot export)."""
    path = "/tmp/_g.dot"
    mx.export_to_dot(path, *outs)
    txt = open(path).read()
    names = re.findall(r'label\s*=\s*"([A-Za-z_]+)', txt)
    return [n for n in names]


def per_node():
    tiny = mx.ones((16,))
    mx.eval(tiny)
    kern = mx.fast.cuda_kernel(name="tiny_add", input_names=["a"], output_names=["o"],
                               source="int i = threadIdx.x; if (i < 16) o[i] = a[i] + 1.0f;")

    def chain(op, n):
        def f():
            x = tiny
            for _ in range(n):
                x = op(x)
            return x
        return f

    def ck(x):
        return kern(inputs=[x], grid=(32, 1, 1), threadgroup=(32, 1, 1), output_shapes=[(16,)],
                    output_dtypes=[mx.float32])[0]

    rows = []
    for name, op in (("add", lambda x: x + 1), ("stop_gradient", mx.stop_gradient), ("custom_kernel", ck)):
        for n in (1, 2, 4, 8, 16):
            f = chain(op, n)
            rows.append((name, n, bench(f) * 1e3, host_us(f)))
    print("per-node cost (pipelined us per call, host build us):")
    for name, n, t, h in rows:
        print(f"  {name:14s} N={n:2d}  call {t:7.1f}  build {h:6.1f}")
    for name in ("add", "stop_gradient", "custom_kernel"):
        r = [x for x in rows if x[0] == name]
        print(f"  {name:14s} marginal per node (N 1->16): {(r[-1][2] - r[0][2]) / 15:.2f} us, "
              f"build {(r[-1][3] - r[0][3]) / 15:.2f} us")


def seed_cases(tags, dtypes):
    """(case, p, q, k, v, g, fwd, vg) per selected anchor case: fwd() builds one
    forward, vg() one forward+backward (gpu_benchmark.py's tier_calls)."""
    import json
    for c in json.load(open(os.path.join(HERE, "..", "anchors", "flex_na_h100_results.json"))):
        if c["tag"] not in tags or c["dtype"] not in dtypes:
            continue
        p, q, k, v, g = make_case(c)
        yield (c, p, q, k, v, g) + tier_calls(cuda, p, q, k, v, g)


def case_rows(tags, dtypes):
    print("case | dtype | fwd call | fwd build | fwd kernel-only call | fwd+bwd call | fwd+bwd build | "
          "fwd+bwd, contiguous dlse | bwd only call")
    for c, p, q, k, v, g, fwd, vg in seed_cases(tags, dtypes):
        lse0 = mx.zeros(q.shape[:-1], dtype=mx.float32)
        mx.eval(lse0)

        def vg2():
            return mx.vjp(lambda a, b, c_: list(cuda.na_fused(a, b, c_, p)), [q, k, v], [g, lse0])[1]

        flags = (False, False, False)
        d = cuda._dummy(q.dtype)
        kern, kw, tiled, prm = cuda._fwd_plan(p, flags, q.shape, k.shape, v.shape, d.shape, q.dtype)
        bwd_run = cuda._bwd_plan(p, flags, q.shape, k.shape, v.shape, d.shape, d.shape, q.dtype)

        def kern_only():
            return kern(inputs=[prm, q, k, v], **kw)[0]

        out, lse = cuda.na_fused(q, k, v, p)
        mx.eval(out, lse)

        def bwd_only():
            return bwd_run(q, k, v, d, d, d, cuda._dummy(mx.int32), out, lse, g, lse0)[:3]

        r = [bench(fwd), host_us(fwd), bench(kern_only) if tiled else float("nan"), bench(vg), host_us(vg),
             bench(vg2), bench(bwd_only)]
        print(f"{c['tag']} | {c['dtype']} | " + " | ".join(
            f"{x * 1e3:.1f}" if i not in (1, 4) else f"{x:.1f}" for i, x in enumerate(r)), flush=True)
        print("   fwd graph:", nodes([fwd()]))
        print("   fwd+bwd graph:", nodes(vg()))


def ncu_mode(tags, dtypes):
    for c, p, q, k, v, g, fwd, vg in seed_cases(tags, dtypes):
        for _ in range(2):
            mx.eval(fwd())
            mx.eval(vg())
        mx.synchronize()
        print("MARK", c["tag"], c["dtype"], flush=True)
        a = mx.ones((7,))
        mx.eval(a * 3)  # marker kernel
        mx.synchronize()
        mx.eval(fwd())
        mx.synchronize()
        mx.eval(a * 5)  # marker kernel
        mx.eval(vg())
        mx.synchronize()


def parse_ncu(path):
    """Kernel name, grid and GPU time (us) of each launch in an ncu --csv log,
    in launch order (the warm-up calls first, then per case: marker Multiply
    x3, the forward's kernels, marker Multiply x5, the vjp's kernels)."""
    import csv
    rows = [r for r in csv.reader(open(path)) if len(r) > 14 and r[0].isdigit()]
    for r in rows:
        name = re.sub(r"<.*", "", r[4])[:60]
        val = float(r[14].replace(",", ""))
        us = val / 1e3 if r[13] in ("nsecond", "ns") else val if r[13] in ("usecond", "us") else val * 1e3
        print(f"  {r[0]:>4} {name:60s} grid {r[8]:>16s} {us:8.2f} us")


def profile(tags, dtypes):
    """cProfile of building 300 forward+backward graphs (no eval): where the
    host time of a call goes on the Python side."""
    import cProfile
    import pstats
    for c, p, q, k, v, g, fwd, vg in seed_cases(tags, dtypes):
        mx.eval(vg())
        pr = cProfile.Profile()
        keep = []
        pr.enable()
        for _ in range(300):
            keep.append(vg())
        pr.disable()
        print("PROFILE", c["tag"], c["dtype"], "(300 vjp builds)")
        pstats.Stats(pr).sort_stats("tottime").print_stats(12)
        del keep


def empty_launcher(kind="plain"):
    """launch(inputs, shapes, dtypes) of kernels that do nothing.  kind:
    "plain" (cuda_kernel, no header), "header" (cuda_kernel carrying our
    tensor-core backward header, as our kernels do: MLX rebuilds the full
    source string on every call), "precompiled" (an NVRTC cubin through
    precompiled_cuda_kernel, as our wgmma kernels)."""
    from natten_mlx._core import cuda_jit
    kern = {}

    def launch(inputs, shapes, dtypes_):
        n_in, n_out = len(inputs), len(shapes)
        k = kern.get((n_in, n_out))
        if k is None:
            ins = [f"a{i}" for i in range(n_in)]
            outs = [f"o{i}" for i in range(n_out)]
            name = f"natten_floor_{kind}_{n_in}_{n_out}"
            if kind == "precompiled":
                sig = ", ".join([f"const float *{a}" for a in ins] + [f"float *{o}" for o in outs])
                data = cuda_jit.cubin(f'extern "C" __global__ void {name}({sig}) {{}}\n', cuda_jit.arch())
                k = cuda._precompiled_launch(name, data, 0)
            else:
                k = mx.fast.cuda_kernel(name=name, input_names=ins, output_names=outs, source="",
                                        header=cuda._header("bwd_tc") if kind == "header" else "")
            kern[(n_in, n_out)] = k
        return k(inputs=inputs, grid=(32, 1, 1), threadgroup=(32, 1, 1), output_shapes=shapes,
                 output_dtypes=dtypes_)
    return launch


def empty_op(launch, n_bwd, wide=False):
    """(q, k, v) -> (out, lse) launching one empty forward kernel and n_bwd
    empty backward kernels (2: dq + delta, then dk + dv, as our f32 and
    mma.sync backward; 1: everything in one launch).  wide: the kernels take
    our inputs (q, k, v, out, lse, dout, dlse) instead of one array."""
    @mx.custom_function
    def f(q, k, v):
        return launch([q, k, v] if wide else [q], [q.shape, q.shape[:-1]], [q.dtype, mx.float32])

    @f.vjp
    def f_vjp(primals, cotangents, outputs):
        q, k, v = primals
        ins = [q, k, v, outputs[0], outputs[1], cotangents[0], cotangents[1]] if wide else [q]
        if n_bwd == 1:
            return launch(ins, [q.shape, k.shape, v.shape], [q.dtype] * 3)
        dq, _ = launch(ins, [q.shape, q.shape[:-1]], [q.dtype, mx.float32])
        dk, dv = launch(ins, [k.shape, v.shape], [q.dtype] * 2)
        return dq, dk, dv
    return f


def floor_rows(tags, dtypes):
    from gpu_benchmark import time_tier
    from natten_mlx._core import pure
    launch = empty_launcher()
    print("case | dtype | pure fwd | pure fwd+bwd | ours fwd | ours fwd+bwd | empty fwd | empty fwd+bwd (2 bwd "
          "launches) | (1 bwd launch) | most pure/ours a custom kernel can show: fwd, fwd+bwd")
    for c, p, q, k, v, g, fwd, vg in seed_cases(tags, dtypes):
        pt = time_tier(pure, c)
        f2, f1 = empty_op(launch, 2), empty_op(launch, 1)
        e_fwd = bench(lambda: f2(q, k, v)[0])
        e_vg2 = bench(lambda: mx.vjp(lambda a, b, c_: f2(a, b, c_)[0], [q, k, v], [g])[1])
        e_vg1 = bench(lambda: mx.vjp(lambda a, b, c_: f1(a, b, c_)[0], [q, k, v], [g])[1])
        r = [pt["fwd_ms"], pt["fwdbwd_ms"], bench(fwd), bench(vg), e_fwd, e_vg2, e_vg1]
        print(f"{c['tag']} | {c['dtype']} | " + " | ".join(f"{x * 1e3:.1f}" for x in r)
              + f" | {pt['fwd_ms'] / e_fwd:.1f}x, {pt['fwdbwd_ms'] / min(e_vg1, e_vg2):.1f}x", flush=True)


def floor_variants(tags, dtypes):
    """Which part of the gap between our forward+backward and the empty-kernel
    graph each property of our kernels explains: the header MLX pastes into
    every call's source, our inputs, the precompiled path.  Pipelined us per
    call and host build us (nothing evaluated)."""
    variants = [("empty, 1 input", empty_launcher(), False), ("empty, our inputs", empty_launcher(), True),
                ("empty, our inputs + header", empty_launcher("header"), True),
                ("empty precompiled, our inputs", empty_launcher("precompiled"), True)]
    for c, p, q, k, v, g, fwd, vg in seed_cases(tags, dtypes):
        print(f"{c['tag']} {c['dtype']}: ours fwd {bench(fwd) * 1e3:.1f} (build {host_us(fwd):.1f}), "
              f"fwd+bwd {bench(vg) * 1e3:.1f} (build {host_us(vg):.1f})", flush=True)
        for name, launch, wide in variants:
            f2 = empty_op(launch, 2, wide)

            def evg(f2=f2):
                return mx.vjp(lambda a, b, c_: f2(a, b, c_)[0], [q, k, v], [g])[1]

            def ef(f2=f2):
                return f2(q, k, v)[0]
            print(f"   {name:32s} fwd {bench(ef) * 1e3:6.1f} (build {host_us(ef):5.1f}), fwd+bwd "
                  f"{bench(evg) * 1e3:6.1f} (build {host_us(evg):5.1f})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--parse-ncu", default="")
    ap.add_argument("--cases", default=SEEDS)
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--ncu", action="store_true")
    ap.add_argument("--floor", action="store_true")
    ap.add_argument("--floor-variants", action="store_true")
    ap.add_argument("--no-per-node", action="store_true")
    a = ap.parse_args()
    tags, dtypes = a.cases.split(","), a.dtype.split(",")
    if a.parse_ncu:
        parse_ncu(a.parse_ncu)
        return
    for wanted, mode in ((a.ncu, ncu_mode), (a.profile, profile), (a.floor, floor_rows),
                         (a.floor_variants, floor_variants)):
        if wanted:
            mode(tags, dtypes)
            return
    if not a.no_per_node:
        per_node()
    case_rows(tags, dtypes)


if __name__ == "__main__":
    main()
