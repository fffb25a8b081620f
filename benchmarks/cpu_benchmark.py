"""CPU benchmark: our compiled tier (C kernels through the nanobind extension)
vs our pure tier (MLX ops) vs natten-mlx 0.3.3's own pure backend, all on
MLX's CPU device, on the cases of issue 4, in float32 and bfloat16.

    python benchmarks/cpu_benchmark.py [--cases substr,substr] [--dtype fp32,bf16]
                                       [--no-upstream] [--reps N] [--json FILE]

For each case it prints forward and forward+backward wall time of the three
tiers (min over repetitions, after warm-up, around mx.eval of the result),
the speedups of the compiled tier over the other two, its GFLOP/s and its
share of this machine's f32 FMA peak, and its backward/forward ratio.

Forward+backward is mx.vjp of the op with a random cotangent for its output.
FLOPs: forward 4*B*H*N*KK*D (QK and AV, one multiply-add = 2 FLOPs);
backward 2.5x that, so forward+backward = 3.5x.

Peak: benchmarks/c/cpu_fma_peak.c is compiled here (cc -O2 -march=native
-pthread) and run: 12 independent FMA chains per thread on the widest vector
the compiler targets, one thread per online core; peak = the all-cores
GFLOP/s it measures (best of 3), or cores x its one-core GFLOP/s where that is
higher (a disturbed all-cores run must not lower the bar).  "% peak" = our
GFLOP/s / that.
For the f32 vision rows, benchmarks/c/cpu_mem_floor.c measures the least
time to stream the forward's bytes (read q, k, v, write out) on all cores:
the memory floor under any forward, whatever its FLOP rate.

natten-mlx 0.3.3 refuses to import outside macOS and has the same package
name as ours, so it runs in a child process of this script whose sys.path
starts at a private install (pip install --target, made on first use in
.venv-natten-mlx-0.3.3/ at the repository root, git-ignored like the venv);
the child patches sys.platform to "darwin" around that import only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
UPSTREAM_DIR = os.path.join(ROOT, ".venv-natten-mlx-0.3.3")  # ignored by /.venv*/
# MLX's CPU buffer cache keeps 32 MiB by default, so outputs larger than that are
# fresh mappings (page faults) on every call.  NATTEN_BENCH_CACHE_LIMIT_GB raises
# it for every tier; unset, MLX's default is measured.
CACHE_LIMIT_GB = float(os.environ.get("NATTEN_BENCH_CACHE_LIMIT_GB", "0") or 0)

CASES = [
    # name, B, spatial, H, D, K, dilation, causal
    ("1d L256 K7", 1, (256,), 4, 32, 7, 1, False),
    ("1d L1024 K7", 1, (1024,), 4, 32, 7, 1, False),
    ("1d L1024 K7 causal", 1, (1024,), 4, 32, 7, 1, True),
    ("2d 32x32 K7", 1, (32, 32), 4, 32, 7, 1, False),
    ("2d 64x64 K7", 1, (64, 64), 4, 32, 7, 1, False),
    ("2d 32x32 K7 causal", 1, (32, 32), 4, 32, 7, 1, True),
    ("3d 16^3 K3", 1, (16, 16, 16), 4, 32, 3, 1, False),
    ("3d 16^3 K3 causal", 1, (16, 16, 16), 4, 32, 3, 1, True),
    ("vision 2d B8 64x64 H8 D64 K7", 8, (64, 64), 8, 64, 7, 1, False),
    ("vision 2d B8 64x64 H8 D64 K7 dil4", 8, (64, 64), 8, 64, 7, 4, False),
    ("vision 3d 32^3 K3 H4 D32", 1, (32, 32, 32), 4, 32, 3, 1, False),
]


def flops_fwd(case):
    _, B, spatial, H, D, K, _, _ = case
    n = 1
    for s in spatial:
        n *= s
    return 4.0 * B * H * n * (K ** len(spatial)) * D


# --------------------------------------------------------------------------
# timing (shared by the parent and the upstream child)
# --------------------------------------------------------------------------


def _time(fn, reps, budget_s=8.0, short_s=0.25, max_reps=400):
    """Min over at least `reps` calls (fewer once budget_s is spent); calls
    that take well under a millisecond repeat until short_s has passed (at
    most max_reps): on this shared VM the min of 5 sub-ms calls varied 2x
    between runs.  Every tier is timed the same way."""
    import mlx.core as mx

    mx.eval(fn())  # warm-up (compiles, allocates)
    best = float("inf")
    t_start = time.perf_counter()
    i = 0
    while True:
        t0 = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - t0)
        i += 1
        spent = time.perf_counter() - t_start
        if i >= reps and (spent > short_s or i >= max_reps):
            break
        if i >= 2 and spent > budget_s:
            break
    return best * 1e3


def pure_bytes(case, dt_name):
    """Rough peak memory of an MLX-ops implementation: gathered K and V windows
    [B, N, H, KK, D] plus their gradients."""
    _, B, spatial, H, D, K, _, _ = case
    n = 1
    for s_ in spatial:
        n *= s_
    return 4 * B * n * H * (K ** len(spatial)) * D * (4 if dt_name == "fp32" else 2)


def _run_cases(na_fns, cases, dtypes, reps, mem_limit=None, fwd_only=False):
    """na_fns: {rank: na function (q, k, v, kernel_size, dilation=, is_causal=)}."""
    import mlx.core as mx

    mx.set_default_device(mx.cpu)
    if CACHE_LIMIT_GB:  # every tier, the 0.3.3 child too (it inherits the environment)
        mx.set_cache_limit(int(CACHE_LIMIT_GB * 2**30))
    out = {}
    for case in cases:
        name, B, spatial, H, D, K, dil, causal = case
        rank = len(spatial)
        fn = na_fns[rank]
        for dt_name in dtypes:
            dt = {"fp32": mx.float32, "bf16": mx.bfloat16}[dt_name]
            mx.random.seed(0)
            shape = (B,) + tuple(spatial) + (H, D)
            q, k, v, g = (mx.random.normal(shape).astype(dt) for _ in range(4))
            mx.eval(q, k, v, g)
            kw = dict(kernel_size=K, dilation=dil, is_causal=causal)

            def fwd():
                return fn(q, k, v, **kw)

            def attend(q_, k_, v_):
                return fn(q_, k_, v_, **kw)

            # forward + backward with g as the output's cotangent (no loss
            # reduction, whose elementwise passes would be timed too)
            def fwd_bwd():
                return mx.vjp(attend, [q, k, v], [g])[1]

            key = f"{name}|{dt_name}"
            if mem_limit is not None and pure_bytes(case, dt_name) > mem_limit:
                out[key] = {"error": f"skipped: needs about {pure_bytes(case, dt_name) / 2**30:.0f} GiB "
                                     f"(over --pure-mem-gb)"}
                continue
            try:
                out[key] = {"fwd": _time(fwd, reps), "fb": None if fwd_only else _time(fwd_bwd, reps)}
            except Exception as e:  # a tier that cannot run a case reports why
                out[key] = {"error": f"{type(e).__name__}: {e}"}
    return out


# --------------------------------------------------------------------------
# natten-mlx 0.3.3 in a child process
# --------------------------------------------------------------------------


def upstream_worker(cases, dtypes, reps, mem_limit):
    sys.path.insert(0, UPSTREAM_DIR)
    real = sys.platform
    sys.platform = "darwin"  # its __init__ refuses other platforms; nothing else is patched
    try:
        import natten_mlx as up
    finally:
        sys.platform = real
    up.set_backend("pure")
    fns = {1: up.na1d, 2: up.na2d, 3: up.na3d}
    res = _run_cases(fns, cases, dtypes, reps, mem_limit)
    res["_version"] = getattr(up, "__version__", "?")
    res["_backend"] = up.get_backend()
    print("UPSTREAM_JSON " + json.dumps(res))


def ensure_upstream():
    if os.path.isdir(os.path.join(UPSTREAM_DIR, "natten_mlx")):
        return True
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", UPSTREAM_DIR,
           "natten-mlx==0.3.3"]
    print("installing natten-mlx 0.3.3:", " ".join(cmd), flush=True)
    return subprocess.call(cmd) == 0


def run_upstream(cases, dtypes, reps, mem_gb):
    if not ensure_upstream():
        return None
    names = ",".join(c[0] for c in cases)
    cmd = [sys.executable, os.path.abspath(__file__), "--upstream-worker", "--cases-exact", names,
           "--dtype", ",".join(dtypes), "--reps", str(reps), "--pure-mem-gb", str(mem_gb)]
    env = dict(os.environ)
    env["PYTHONPATH"] = UPSTREAM_DIR  # our repo must not be importable there
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    for line in p.stdout.splitlines():
        if line.startswith("UPSTREAM_JSON "):
            return json.loads(line[len("UPSTREAM_JSON "):])
    print("natten-mlx 0.3.3 worker failed:\n" + p.stdout[-2000:] + p.stderr[-4000:], file=sys.stderr)
    return None


# --------------------------------------------------------------------------
# FMA peak
# --------------------------------------------------------------------------


def _run_c_tool(name, *args):
    """Compile benchmarks/c/<name>.c here (cc -O2 -march=native -pthread), run
    it, return its key=value fields and its whole output line."""
    src = os.path.join(HERE, "c", name + ".c")
    cc = os.environ.get("CC", "cc")
    if not shutil.which(cc):
        return None, "no C compiler"
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, name)
        if subprocess.call([cc, "-O2", "-march=native", "-pthread", src, "-o", exe]) != 0:
            return None, "compile failed"
        out = subprocess.run([exe, *map(str, args)], capture_output=True, text=True).stdout.strip()
    return dict(f.split("=", 1) for f in out.split() if "=" in f), out


def fma_peak():
    """The higher of the all-cores rate and cores x the one-core rate: another
    process busy on one core while all cores run cannot lower the bar (seen:
    all_cores=163 against one_core=157 on 2 cores, one of them busy)."""
    fields, line = _run_c_tool("cpu_fma_peak")
    if not fields:
        return None, line
    return max(float(fields["all_cores"]), float(fields["cores"]) * float(fields["one_core"])), line


def mem_floor_ms(case):
    """Least time to read q, k, v and write out once for this f32 case
    (benchmarks/c/cpu_mem_floor.c, all cores, non-temporal stores)."""
    _, B, spatial, H, D, *_ = case
    n = B * H * D * 4
    for s in spatial:
        n *= s
    fields, line = _run_c_tool("cpu_mem_floor", n)
    return (float(fields["ms"]) if fields else None), line


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names")
    ap.add_argument("--cases-exact", default="", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32,bf16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-upstream", action="store_true")
    ap.add_argument("--no-pure", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("--fwd-only", action="store_true", help="time forwards only (A/B runs)")
    ap.add_argument("--pure-mem-gb", type=float, default=6.0,
                    help="skip a pure-tier case whose gathered windows would need more memory")
    ap.add_argument("--upstream-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    dtypes = [d for d in a.dtype.split(",") if d]
    if a.cases_exact:
        want = set(a.cases_exact.split(","))
        cases = [c for c in CASES if c[0] in want]
    else:
        subs = [s for s in a.cases.split(",") if s]
        cases = [c for c in CASES if not subs or any(s in c[0] for s in subs)]

    if a.upstream_worker:
        upstream_worker(cases, dtypes, a.reps, a.pure_mem_gb * 2**30)
        return

    sys.path.insert(0, ROOT)
    import mlx.core as mx
    import natten_mlx as nm

    peak, peak_line = fma_peak()
    print(f"machine: {os.cpu_count()} cores; mlx {mx.__version__}; "
          f"NATTEN_NUM_THREADS={os.environ.get('NATTEN_NUM_THREADS', '(default: all cores)')}; "
          f"NATTEN_CPU_ISA={os.environ.get('NATTEN_CPU_ISA', '(best detected)')}")
    print(f"f32 FMA peak: {peak_line}  -> peak = max(all_cores, cores x one_core) GFLOP/s "
          "(benchmarks/c/cpu_fma_peak.c: 12 independent FMA chains per thread, widest vectors, "
          "one thread per core, best of 3)")
    print(f"MLX buffer cache limit: "
          f"{f'{CACHE_LIMIT_GB:g} GiB (NATTEN_BENCH_CACHE_LIMIT_GB)' if CACHE_LIMIT_GB else 'MLX default'}; "
          f"forward+backward = mx.vjp with a random output cotangent")
    print(f"load average at start: {os.getloadavg()}")

    fns = {1: nm.na1d, 2: nm.na2d, 3: nm.na3d}
    mem_limit = a.pure_mem_gb * 2**30

    def g(d, key, f):
        return (d or {}).get(key, {}).get(f)

    def ms(x):
        return f"{x:9.2f}" if x is not None else "      n/a"

    def ratio(a_, b_):
        return f"{b_ / a_:6.1f}x" if a_ and b_ else "    n/a"

    print()
    print("times in ms (min of reps); speedup = other tier's time / compiled time")
    hdr = (f"{'case':36s} {'dtype':5s} | {'fwd C':>9s} {'fwd pure':>9s} {'fwd 0.3.3':>9s} "
           f"{'xpure':>7s} {'x0.3.3':>7s} {'GFLOP/s':>8s} {'%peak':>6s} | {'f+b C':>9s} {'f+b pure':>9s} "
           f"{'f+b 0.3.3':>9s} {'xpure':>7s} {'x0.3.3':>7s} {'GFLOP/s':>8s} {'%peak':>6s} | {'bwd/fwd':>7s}")
    print(hdr)
    print("-" * len(hdr), flush=True)
    rows = []
    rows_floor = {}
    up_meta = None
    for case in cases:
        nm.set_backend("nanobind")
        ours = _run_cases(fns, [case], dtypes, a.reps, fwd_only=a.fwd_only)
        pure = {}
        if not a.no_pure:
            nm.set_backend("pure")
            pure = _run_cases(fns, [case], dtypes, max(2, a.reps // 2), mem_limit, a.fwd_only)
        nm.set_backend("auto")
        up = None if a.no_upstream else run_upstream([case], dtypes, max(2, a.reps // 2), a.pure_mem_gb)
        if up:
            up_meta = up
        for dt in dtypes:
            key = f"{case[0]}|{dt}"
            f_c, fb_c = g(ours, key, "fwd"), g(ours, key, "fb")
            f_p, fb_p = g(pure, key, "fwd"), g(pure, key, "fb")
            f_u, fb_u = g(up, key, "fwd"), g(up, key, "fb")
            fl = flops_fwd(case)
            gf = fl / (f_c * 1e-3) / 1e9 if f_c else None
            gfb = 3.5 * fl / (fb_c * 1e-3) / 1e9 if fb_c else None
            bwd_ratio = (fb_c - f_c) / f_c if f_c and fb_c else None
            pk = (lambda x: f"{100 * x / peak:5.1f}%" if x and peak else "   n/a")
            print(f"{case[0]:36s} {dt:5s} | {ms(f_c)} {ms(f_p)} {ms(f_u)} {ratio(f_c, f_p)} {ratio(f_c, f_u)} "
                  f"{(gf or 0):8.1f} {pk(gf)} | {ms(fb_c)} {ms(fb_p)} {ms(fb_u)} {ratio(fb_c, fb_p)} "
                  f"{ratio(fb_c, fb_u)} {(gfb or 0):8.1f} {pk(gfb)} | "
                  f"{(bwd_ratio if bwd_ratio is not None else float('nan')):7.2f}")
            if dt == "fp32" and case[0].startswith("vision") and f_c:
                floor, floor_line = mem_floor_ms(case)
                if floor and peak:
                    print(f"    memory floor (read q,k,v + write out once, all cores): {floor:.1f} ms "
                          f"-> no forward can pass {100 * fl / (floor * 1e-3) / 1e9 / peak:.0f}% of peak here; "
                          f"compiled fwd = {f_c / floor:.1f}x the floor  [{floor_line}]")
                rows_floor[key] = floor
            for tier, d in (("compiled", ours), ("pure", pure), ("0.3.3", up)):
                if d and "error" in d.get(key, {}):
                    print(f"    {tier}: {d[key]['error']}")
            sys.stdout.flush()
            rows.append(dict(case=case[0], dtype=dt, fwd_ms=f_c, fwd_pure_ms=f_p, fwd_upstream_ms=f_u,
                             fb_ms=fb_c, fb_pure_ms=fb_p, fb_upstream_ms=fb_u, fwd_gflops=gf,
                             fb_gflops=gfb, bwd_over_fwd=bwd_ratio,
                             mem_floor_ms=rows_floor.get(key)))
    up = up_meta
    print()
    print("bwd/fwd = (forward+backward - forward) / forward of the compiled tier.")
    if up:
        print(f"natten-mlx {up.get('_version')} backend: {up.get('_backend')}")
    print(f"load average at end: {os.getloadavg()} (other work on the machine inflates every column)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(peak_gflops=peak, peak_line=peak_line, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
