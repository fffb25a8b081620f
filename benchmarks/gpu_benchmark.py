"""GPU benchmark: the CUDA tier vs the pure tier (both MLX, CUDA device) vs
PyTorch FlexAttention NA, on the anchor cases of
../shared/anchors/flex_na_h100_results.md (copied to benchmarks/anchors/).

One run measures all three.  FlexAttention runs in a subprocess
(benchmarks/anchors/flex_na_h100.py, the anchor script itself) so that torch
and MLX do not share a process; pass --no-flex to reuse the stored anchor
numbers instead (marked "anchor" in the table).

    python benchmarks/gpu_benchmark.py [--cases tag,tag] [--dtype fp32,bf16]
                                       [--no-flex] [--no-pure] [--fwd-only] [--out DIR]
    python benchmarks/gpu_benchmark.py --summarise results/gpu_benchmark_X.json   (no GPU needed)

Timing: wall clock per call in steady state, median of 5 batches after
warm-up, garbage collection off inside the batches (as timeit does).  Main columns: pipelined (each call's graph is built while the GPU
runs the previous one, mx.async_eval), the counterpart of triton's do_bench
on the Flex side.  The "built" columns build a batch's graphs first and then
evaluate them together, so they add the host's per-call graph cost.  FLOPs: forward
4*B*H*N*K*D, forward+backward 3.5x that (the anchor's convention).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import mlx.core as mx  # noqa: E402

from natten_mlx._core import cuda  # noqa: E402
from natten_mlx._core.ops import tier_na_out  # noqa: E402
from natten_mlx._core.params import NAParams  # noqa: E402

ANCHOR_JSON = os.path.join(HERE, "anchors", "flex_na_h100_results.json")
FLEX_SCRIPT = os.path.join(HERE, "anchors", "flex_na_h100.py")


def _calls_per_batch(fn, min_time):
    mx.eval(fn())
    mx.eval(fn())
    mx.synchronize()
    t0 = time.perf_counter()
    mx.eval(fn())
    mx.synchronize()
    one = max(time.perf_counter() - t0, 1e-6)
    return max(1, min(50, int(min_time / one)))


@contextlib.contextmanager
def _no_gc():
    """As timeit: no garbage collection inside timed batches (a collection pass
    lands in whichever call allocates the 700th object, and small calls are
    tens of microseconds), for every tier alike."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def bench(fn, min_time=0.15, batches=5):
    """ms per call, pipelined: call i+1's graph is built while the GPU runs
    call i (mx.async_eval), as a training loop does and as triton's do_bench
    (the Flex side) overlaps host launches with GPU work.  Median of batches."""
    n = _calls_per_batch(fn, min_time)
    res = []
    with _no_gc():
        for _ in range(batches):
            t0 = time.perf_counter()
            live = []
            for _ in range(n):
                out = fn()
                mx.async_eval(out)
                live = live[-1:] + [out]  # keep two in flight at most (flux outputs are 400 MB)
            mx.eval(live)
            mx.synchronize()
            res.append((time.perf_counter() - t0) / n)
    res.sort()
    return res[len(res) // 2] * 1e3


def bench_built(fn, min_time=0.15, batches=5):
    """ms per call with every graph built first and then evaluated together (one
    sync): host graph building is not overlapped with the GPU, so this adds the
    per-call Python/MLX cost to the GPU time.  Reported beside bench()."""
    n = _calls_per_batch(fn, min_time)
    res = []
    with _no_gc():
        for _ in range(batches):
            t0 = time.perf_counter()
            mx.eval([fn() for _ in range(n)])
            mx.synchronize()
            res.append((time.perf_counter() - t0) / n)
    res.sort()
    return res[len(res) // 2] * 1e3


def make_case(c):
    dt = {"fp32": mx.float32, "bf16": mx.bfloat16, "fp16": mx.float16}[c["dtype"]]
    rank = len(c["spatial"])
    p = NAParams(rank=rank, kernel=tuple(c["kernel"]), dilation=tuple(c["dilation"]),
                 out_stride=(1,) * rank, gna_stride=(1,) * rank, causal=(False,) * rank,
                 scale=c["D"] ** -0.5)
    shape = (c["B"],) + tuple(c["spatial"]) + (c["H"], c["D"])
    mx.random.seed(0)
    q = mx.random.normal(shape).astype(dt)
    k = mx.random.normal(shape).astype(dt)
    v = mx.random.normal(shape).astype(dt)
    g = mx.random.normal(shape).astype(dt)
    mx.eval(q, k, v, g)
    return p, q, k, v, g


def tier_calls(mod, p, q, k, v, g, compiled=False):
    """(fwd, vg): each builds one call's graph of tier `mod` as na1d/2d/3d call
    it without return_lse (ops.tier_na_out): the forward, and the forward+backward
    with g as the output's cotangent -- what the Flex side times with
    torch.autograd.grad(out, (q, k, v), g).  compiled: both through
    mx.compile."""
    na_out = tier_na_out(mod)

    def out(q, k, v):
        return na_out(q, k, v, p)

    def vg(q, k, v):
        return mx.vjp(out, [q, k, v], [g])[1]
    if compiled:
        out, vg = mx.compile(out), mx.compile(vg)
    return (lambda: out(q, k, v)), (lambda: vg(q, k, v))


def bench_tier(mod, case, compiled=False):
    """(forward, forward+backward) ms of tier `mod` on make_case's tuple `case`,
    pipelined (bench)."""
    fwd, vg = tier_calls(mod, *case, compiled=compiled)
    return bench(fwd), bench(vg)


def time_tier(mod, c, fwd_only=False):
    fwd, vg = tier_calls(mod, *make_case(c))
    r = {"fwd_ms": bench(fwd), "fwd_built_ms": bench_built(fwd)}
    if not fwd_only:
        r["fwdbwd_ms"] = bench(vg)
        r["fwdbwd_built_ms"] = bench_built(vg)
    return r


def pure_feasible(c, limit_gb=6.0):
    # the pure tier gathers K and V per query: B*N*KK*H*D elements each
    n = c["B"] * math.prod(c["spatial"]) * math.prod(c["kernel"]) * c["H"] * c["D"]
    return 2 * n * 4 / 1e9 * 3 < limit_gb


def run_flex(tags, dtypes):
    """Run the anchor script in a subprocess on the selected cases."""
    code = (
        "import runpy, json, sys\n"
        f"sys.argv=['flex']\n"
        f"src=open({FLEX_SCRIPT!r}).read()\n"
        "head, tail = src.split('\\nout = []\\nfor c in CASES', 1)\n"
        "g = {}\n"
        "exec(compile(head, 'flex_na_h100.py', 'exec'), g)\n"
        f"tags={tags!r}; dts={dtypes!r}\n"
        "for c in g['CASES']:\n"
        "    if (tags and c['tag'] not in tags) or c['dtype'] not in dts: continue\n"
        "    try: r = g['run'](c)\n"
        "    except Exception as e: r = dict(c, error=repr(e)[:200])\n"
        "    print('FLEX ' + json.dumps(r), flush=True)\n"
        "    import torch; torch.cuda.empty_cache()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("FLEX "):
            r = json.loads(line[5:])
            out[(r["tag"], r["dtype"])] = r
    if proc.returncode != 0:
        print("flex subprocess failed:", proc.stderr[-2000:], file=sys.stderr)
    return out


# issue 5's targets: faster than FlexAttention everywhere, >= 10x over the pure
# tier, flux-2d-256-w80 bf16 forward <= 24 ms and forward+backward <= 100 ms
FLUX_TARGET_MS = {"fwd": 24.0, "fwdbwd": 100.0}


def summarise(rows):
    """Lines saying how a run stands against the targets."""
    won, lost, pure_ok, pure_low = 0, [], 0, []
    for r in rows:
        for k, name in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd")):
            c, f, pu = r.get("cuda_%s_ms" % k), r.get("flex_%s_ms" % k), r.get("pure_%s_ms" % k)
            if c is None:
                continue
            if f is not None:
                if f > c:
                    won += 1
                else:
                    lost.append("%s %s %s %.2fx" % (r["tag"], r["dtype"], name, f / c))
            if pu is not None:
                if pu >= 10 * c:
                    pure_ok += 1
                else:
                    pure_low.append("%s %s %s %.1fx" % (r["tag"], r["dtype"], name, pu / c))
    out = ["Against FlexAttention: %d of %d comparisons won%s" % (
        won, won + len(lost), "; lost: " + ", ".join(lost) if lost else "")]
    out.append("Against the pure tier (>= 10x): %d of %d%s" % (
        pure_ok, pure_ok + len(pure_low), "; below: " + ", ".join(pure_low) if pure_low else ""))
    for r in rows:
        if r["tag"] == "flux-2d-256-w80" and r["dtype"] == "bf16":
            for k, name in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
                c = r.get("cuda_%s_ms" % k)
                if c is not None:
                    out.append("flux-2d-256-w80 bf16 %s: %.1f ms (target %.0f ms: %s)" % (
                        name, c, FLUX_TARGET_MS[k], "met" if c <= FLUX_TARGET_MS[k] else "not met"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="")
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-pure", action="store_true")
    ap.add_argument("--fwd-only", action="store_true", help="forward timings only (tuning runs)")
    ap.add_argument("--out", default=os.environ.get("OUT", os.path.join(HERE, "results")))
    ap.add_argument("--summarise", default="", help="print the targets summary of a results JSON and exit")
    args = ap.parse_args()
    if args.summarise:
        print("\n".join(summarise(json.load(open(args.summarise))["rows"])))
        return
    tags = [t for t in args.cases.split(",") if t]
    dtypes = args.dtype.split(",")
    anchors = {(r["tag"], r["dtype"]): r for r in json.load(open(ANCHOR_JSON))}
    cases = [r for r in json.load(open(ANCHOR_JSON))
             if (not tags or r["tag"] in tags) and r["dtype"] in dtypes]
    if not cuda.is_available():
        sys.exit("MLX CUDA backend not available")
    try:
        from natten_mlx._core import pure
    except Exception:
        pure = None
    flex = {} if args.no_flex else run_flex(tags, dtypes)
    dev = "unknown GPU"
    try:
        dev = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except Exception:
        pass
    # MLX's own per-op cost on this device in the same timing regime: the
    # least any tier can take per call, so no ratio between two MLX tiers on a
    # tiny problem can exceed (slower tier's time / this)
    tiny = mx.ones((16,))
    mx.eval(tiny)
    floor_ms = bench(lambda: tiny + 1)
    print(f"per-op floor (one elementwise op on 16 floats): {floor_ms * 1e3:.1f} us", flush=True)
    rows = []
    for c in cases:
        key = (c["tag"], c["dtype"])
        r = {k: c[k] for k in ("tag", "dtype", "B", "spatial", "H", "D", "kernel", "dilation")}
        try:
            r.update({"cuda_" + k: v for k, v in time_tier(cuda, c, args.fwd_only).items()})
        except Exception as e:
            r["cuda_error"] = repr(e)[:200]
        if pure is not None and not args.no_pure and pure_feasible(c):
            try:
                r.update({"pure_" + k: v for k, v in time_tier(pure, c, args.fwd_only).items()})
            except Exception as e:
                r["pure_error"] = repr(e)[:200]
        f = flex.get(key)
        if f and "flex_fwd_ms" in f:
            r["flex_fwd_ms"], r["flex_fwdbwd_ms"], r["flex_src"] = f["flex_fwd_ms"], f["flex_fwdbwd_ms"], "this run"
        else:
            a = anchors[key]
            r["flex_fwd_ms"], r["flex_fwdbwd_ms"], r["flex_src"] = a["flex_fwd_ms"], a["flex_fwdbwd_ms"], "anchor"
        fl = 4.0 * c["B"] * c["H"] * math.prod(c["spatial"]) * math.prod(c["kernel"]) * c["D"]
        if "cuda_fwd_ms" in r:
            r["cuda_fwd_tflops"] = fl / (r["cuda_fwd_ms"] * 1e-3) / 1e12
            if "cuda_fwdbwd_ms" in r:
                r["cuda_fwdbwd_tflops"] = 3.5 * fl / (r["cuda_fwdbwd_ms"] * 1e-3) / 1e12
        print(json.dumps(r), flush=True)
        rows.append(r)
        mx.clear_cache()
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_benchmark_partial.json"), "w") as f:
            json.dump({"device": dev, "rows": rows, "flex": [flex[k] for k in flex]}, f)

    def fmt(x):
        return "—" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")

    def ratio(a, b):
        return "—" if a is None or b is None else f"{a / b:.2f}x"

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# natten-mlx CUDA tier benchmark ({stamp})",
        "",
        f"Device: {dev}; mlx {mx.__version__}; python {platform.python_version()}.",
        f"MLX per-op floor in this timing (one elementwise op on 16 floats): {floor_ms * 1e3:.1f} us.",
        "Times in ms (median, pipelined: see the script's docstring; 'built' = graphs built before the eval, "
        "host cost not overlapped). speedup = other / cuda (>1: the CUDA tier is faster).",
        "",
        "| case | dtype | cuda fwd | cuda fwd+bwd | flex fwd | flex fwd+bwd | vs flex fwd | vs flex fwd+bwd "
        "| pure fwd | pure fwd+bwd | vs pure fwd | vs pure fwd+bwd | cuda fwd TFLOP/s | cuda fwd built "
        "| cuda fwd+bwd built | flex from |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        g = r.get
        lines.append(
            f"| {r['tag']} | {r['dtype']} | {fmt(g('cuda_fwd_ms'))} | {fmt(g('cuda_fwdbwd_ms'))} | "
            f"{fmt(g('flex_fwd_ms'))} | {fmt(g('flex_fwdbwd_ms'))} | "
            f"{ratio(g('flex_fwd_ms'), g('cuda_fwd_ms'))} | {ratio(g('flex_fwdbwd_ms'), g('cuda_fwdbwd_ms'))} | "
            f"{fmt(g('pure_fwd_ms'))} | {fmt(g('pure_fwdbwd_ms'))} | "
            f"{ratio(g('pure_fwd_ms'), g('cuda_fwd_ms'))} | {ratio(g('pure_fwdbwd_ms'), g('cuda_fwdbwd_ms'))} | "
            f"{fmt(g('cuda_fwd_tflops'))} | {fmt(g('cuda_fwd_built_ms'))} | {fmt(g('cuda_fwdbwd_built_ms'))} | "
            f"{r['flex_src']} |"
        )
    lines += [""] + ["- " + x for x in summarise(rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    base = "gpu_benchmark_" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M")
    with open(os.path.join(args.out, base + ".md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, base + ".json"), "w") as f:
        json.dump({"device": dev, "mlx": mx.__version__, "op_floor_ms": floor_ms, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
