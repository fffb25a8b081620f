"""`python -m natten_mlx.profiler`: time one neighbourhood-attention problem on every tier.

The flags follow upstream NATTEN's profiler (`-i`, `-w`, `-s`, `--dilation`, `-c`, `-b`, `-n`,
`--heads-kv`, `-d`, `--dtype`, `--backprop`, `--add-kv`, `--backend`, `--dry-run`).  It builds
random Q/K/V for the problem, runs the public `na1d/na2d/na3d` under each selected tier
(`set_backend`), and prints the median forward (and backward) time over `--runs` timed calls, each
synchronised with `mx.eval`, with FLOPs, GFLOP/s and the speedup over the `pure` tier.

FLOPs: forward = 2*B*H*P*(D_qk + D_v) = 4*B*H*P*D, where P is the number of (query, key) pairs that
are actually attended: prod over axes of sum over output positions of the keys in the window
(K per query on a non-causal axis, min(K, i//d + 1) on a causal one), plus N_out*N_add for
`--add-kv`.  Without causal masking P = N_out * prod(K).  Backward = 2.5x forward (five GEMMs,
the FlashAttention convention).  Backward time is reported as median(fwd+bwd) - median(fwd).

Strides are natten-mlx's: the output is subsampled (`na1d(..., stride=s) == na1d(...)[:, ::s]`).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

TIERS: Tuple[str, ...] = ("pure", "nanobind", "fast_metal")
# Where each tier's kernels run on Linux (docs/architecture.md, "Backend names").
TIER_WHAT = {
    "pure": "MLX ops",
    "nanobind": "C core (MLX CPU device)",
    "fast_metal": "CUDA kernels (mx.fast.cuda_kernel)",
}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp64": "float64"}

DEFAULT_INPUT = (32, 32)
DEFAULT_WINDOW = 7


class ProblemError(ValueError):
    """A flag combination that cannot describe a problem (reported without a traceback)."""


# --------------------------------------------------------------------------------------------
# The problem and its FLOP count


@dataclass(frozen=True)
class Problem:
    input_size: Tuple[int, ...]
    window: Tuple[int, ...]
    stride: Tuple[int, ...]
    dilation: Tuple[int, ...]
    causal: Tuple[bool, ...]
    batch: int
    heads: int
    heads_kv: int
    dim: int
    dtype: str          # key of DTYPES
    add_kv: int
    backprop: bool

    @property
    def rank(self) -> int:
        return len(self.input_size)

    @property
    def out_size(self) -> Tuple[int, ...]:
        return tuple(-(-x // s) for x, s in zip(self.input_size, self.stride))

    def attended_pairs(self) -> int:
        """Number of (output query, key) pairs inside the neighbourhoods, summed over the lattice.

        The neighbour set is a product over axes, so the total is a product of per-axis sums.
        """
        total = 1
        for x, k, s, d, c in zip(self.input_size, self.window, self.stride, self.dilation,
                                 self.causal):
            positions = range(0, x, s)
            if c:
                total *= sum(min(k, i // d + 1) for i in positions)
            else:
                total *= k * len(positions)
        return total

    def pairs(self) -> int:
        n_out = math.prod(self.out_size)
        return self.attended_pairs() + n_out * self.add_kv

    def flops_forward(self) -> int:
        return 2 * self.batch * self.heads * self.pairs() * (self.dim + self.dim)

    def flops_backward(self) -> int:
        return self.flops_forward() * 5 // 2

    def input_bytes(self) -> int:
        """Bytes of q, k, v, the output gradient and the extra tokens."""
        item = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}[self.dtype]
        n_in = math.prod(self.input_size)
        elems = self.batch * self.dim * (n_in * (self.heads + 2 * self.heads_kv)
                                         + math.prod(self.out_size) * self.heads
                                         + 2 * self.add_kv * self.heads_kv)
        return elems * item

    def describe(self) -> str:
        def tup(t):
            return "x".join(str(int(v)) for v in t)

        parts = [f"{self.rank}-D input {tup(self.input_size)}", f"window {tup(self.window)}"]
        if any(s != 1 for s in self.stride):
            parts.append(f"stride {tup(self.stride)} (output {tup(self.out_size)})")
        if any(d != 1 for d in self.dilation):
            parts.append(f"dilation {tup(self.dilation)}")
        if any(self.causal):
            parts.append("causal " + "x".join("1" if c else "0" for c in self.causal))
        heads = f"H={self.heads}" + (f" H_kv={self.heads_kv}" if self.heads_kv != self.heads else "")
        parts.append(f"B={self.batch} {heads} D={self.dim} {self.dtype}")
        if self.add_kv:
            parts.append(f"+{self.add_kv} extra KV tokens")
        return ", ".join(parts)


def _per_axis(name: str, values: Optional[Sequence], rank: int, default) -> tuple:
    if values is None or len(values) == 0:
        return tuple(default for _ in range(rank)) if not isinstance(default, tuple) else default
    if len(values) == 1:
        return tuple(values[0] for _ in range(rank))
    if len(values) != rank:
        raise ProblemError(
            f"{name} takes 1 value or one per axis ({rank}, the length of --input-size); "
            f"got {len(values)}: {' '.join(str(int(v)) for v in values)}")
    return tuple(values)


def problem_from_args(args: argparse.Namespace) -> Problem:
    if args.input_size is None:
        input_size = DEFAULT_INPUT
        window_default = tuple(min(DEFAULT_WINDOW, x) for x in input_size)
    else:
        input_size = tuple(args.input_size)
        # As upstream: without -w the window covers the input (self-attention).
        window_default = input_size
    if not 1 <= len(input_size) <= 3:
        raise ProblemError(f"--input-size takes 1 to 3 extents (its length sets the rank); "
                           f"got {len(input_size)}")
    for x in input_size:
        if x <= 0:
            raise ProblemError(f"--input-size values must be positive, got {x}")
    rank = len(input_size)
    window = _per_axis("--window", args.window, rank, window_default)
    stride = _per_axis("--stride", args.stride, rank, 1)
    dilation = _per_axis("--dilation", args.dilation, rank, 1)
    causal = _per_axis("--causal", args.causal, rank, False)
    for name, v in (("--batch-size", args.batch_size), ("--heads", args.heads),
                    ("--dim", args.dim)):
        if v <= 0:
            raise ProblemError(f"{name} must be positive, got {v}")
    heads_kv = args.heads if args.heads_kv is None else args.heads_kv
    if heads_kv <= 0:
        raise ProblemError(f"--heads-kv must be positive, got {heads_kv}")
    if args.add_kv < 0:
        raise ProblemError(f"--add-kv must be >= 0, got {args.add_kv}")
    return Problem(input_size=input_size, window=window, stride=stride, dilation=dilation,
                   causal=tuple(bool(c) for c in causal), batch=args.batch_size,
                   heads=args.heads, heads_kv=heads_kv, dim=args.dim, dtype=args.dtype,
                   add_kv=args.add_kv, backprop=args.backprop)


# --------------------------------------------------------------------------------------------
# Talking to the library


def _natten():
    import natten_mlx

    return natten_mlx


def _mx():
    import mlx.core as mx

    return mx


def _na_fn(rank: int):
    return getattr(_natten(), f"na{rank}d")


def _device(name: str):
    mx = _mx()
    return mx.cpu if name == "cpu" else mx.gpu


def gpu_available() -> bool:
    mx = _mx()
    try:
        return bool(mx.is_available(mx.gpu))
    except Exception:  # older MLX without is_available
        return False


def make_inputs(p: Problem, seed: int = 0):
    mx = _mx()
    dtype = getattr(mx, DTYPES[p.dtype])
    key = mx.random.key(seed)
    ks = mx.random.split(key, 6)
    q_shape = (p.batch, *p.input_size, p.heads, p.dim)
    kv_shape = (p.batch, *p.input_size, p.heads_kv, p.dim)
    q = mx.random.normal(q_shape, key=ks[0]).astype(dtype)
    k = mx.random.normal(kv_shape, key=ks[1]).astype(dtype)
    v = mx.random.normal(kv_shape, key=ks[2]).astype(dtype)
    extra = None
    if p.add_kv:
        ek = mx.random.normal((p.batch, p.add_kv, p.heads_kv, p.dim), key=ks[3]).astype(dtype)
        ev = mx.random.normal((p.batch, p.add_kv, p.heads_kv, p.dim), key=ks[4]).astype(dtype)
        extra = (ek, ev)
    dout = mx.random.normal((p.batch, *p.out_size, p.heads, p.dim), key=ks[5]).astype(dtype)
    return q, k, v, extra, dout


def _kwargs(p: Problem, extra) -> dict:
    kw = dict(kernel_size=p.window, stride=p.stride, dilation=p.dilation, is_causal=p.causal)
    if extra is not None:
        kw.update(additional_keys=extra[0], additional_values=extra[1])
    return kw


def validate_with_library(p: Problem) -> None:
    """Let the public API check the problem (lazy: builds a graph, evaluates nothing)."""
    mx = _mx()
    dtype = getattr(mx, DTYPES[p.dtype])
    q = mx.zeros((p.batch, *p.input_size, p.heads, p.dim), dtype=dtype)
    kv = mx.zeros((p.batch, *p.input_size, p.heads_kv, p.dim), dtype=dtype)
    extra = None
    if p.add_kv:
        e = mx.zeros((p.batch, p.add_kv, p.heads_kv, p.dim), dtype=dtype)
        extra = (e, e)
    _na_fn(p.rank)(q, kv, kv, **_kwargs(p, extra))


def na_params(p: Problem):
    # The NAParams the public na*d op builds for this problem (default scale).
    from natten_mlx.functional import _params, _resolve_scale

    return _params(p.rank, p.window, p.stride, p.dilation, p.causal, _resolve_scale(None, p.dim))


def _ops():
    from natten_mlx._core import ops

    return ops


def _features(p: Problem) -> dict:
    # The feature keys natten_mlx._core.ops passes to a tier's supports() (extra_k only
    # needs to be non-None when there are extra tokens).
    return _ops()._features(p.heads, p.heads_kv, extra_k=p.add_kv or None)


def fmha_path(p: Problem) -> bool:
    """The public na*d ops hand a full-extent, stride-1, non-causal window to MLX's SDPA."""
    from natten_mlx.functional import _is_full_attention

    return _is_full_attention(p.input_size, p.window, p.stride, p.causal)


def _unavailable_reason(name: str, device: str) -> str:
    if name == "nanobind":
        return "compiled extension not built (run `make ext`)"
    if name == "fast_metal":
        if device == "cpu":
            return "runs only on a CUDA GPU (use --device gpu on a GPU machine)"
        return "no CUDA GPU / CUDA kernels not available to MLX"
    return "not available"


def tier_support(p: Problem, device: str) -> Dict[str, Tuple[bool, str]]:
    """For each tier: (it runs this problem itself on this machine, reason / note).

    Uses the tiers' own supports() through natten_mlx._core.ops, on the current default device.
    """
    mx = _mx()
    ops = _ops()
    dtype = getattr(mx, DTYPES[p.dtype])
    params = na_params(p)
    feats = _features(p)
    dev = mx.default_device()
    out: Dict[str, Tuple[bool, str]] = {}
    for name in TIERS:
        if not ops.tier_available(name):
            out[name] = (False, _unavailable_reason(name, device))
            continue
        mod = ops.tier_module(name) if name != "pure" else (ops.tier_module(name) or None)
        sup = getattr(mod, "supports", None) if mod is not None else None
        if sup is None:
            out[name] = (True, "available")
            continue
        try:
            fwd = bool(sup("fused", params, dtype, dev, **feats))
        except Exception as e:  # a tier that cannot even answer is treated as "no"
            out[name] = (False, f"supports() failed: {e}")
            continue
        if not fwd:
            why = "this configuration is outside the tier's kernels (dtype, device, window or feature)"
            if name == "fast_metal" and device == "cpu":
                why = _unavailable_reason(name, device)
            elif name == "nanobind" and device == "gpu":
                why = "the C core runs on MLX's CPU device only (on a GPU, use fast_metal)"
            out[name] = (False, why + "; its calls fall back to the next tier")
            continue
        note = "supported"
        if fmha_path(p):
            note += " (window covers the input: the public op takes the SDPA fast path on every tier)"
        out[name] = (True, note)
    return out


def running_tier(p: Problem) -> str:
    """The tier the dispatcher picks for the fused op under the current backend setting."""
    mx = _mx()
    return _ops().select_tier("fused", na_params(p), getattr(mx, DTYPES[p.dtype]), **_features(p))


# --------------------------------------------------------------------------------------------
# Timing


def _median_seconds(fn, warmup: int, runs: int) -> float:
    mx = _mx()
    for _ in range(warmup):
        mx.eval(fn())
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_tier(p: Problem, tier: str, warmup: int, runs: int, inputs) -> Tuple[float, Optional[float]]:
    """(forward seconds, backward seconds or None) for one tier; the backend is set here."""
    mx = _mx()
    nm = _natten()
    q, k, v, extra, dout = inputs
    na = _na_fn(p.rank)
    kw = _kwargs(p, extra)
    nm.set_backend(tier)

    def forward():
        return na(q, k, v, **kw)

    t_fwd = _median_seconds(forward, warmup, runs)
    if not p.backprop:
        return t_fwd, None

    primals = [q, k, v] + ([extra[0], extra[1]] if extra is not None else [])

    def f(q_, k_, v_, *ext):
        kw2 = dict(kw)
        if ext:
            kw2.update(additional_keys=ext[0], additional_values=ext[1])
        return na(q_, k_, v_, **kw2)

    def forward_backward():
        _, grads = mx.vjp(f, primals, [dout])
        return grads

    t_fb = _median_seconds(forward_backward, warmup, runs)
    return t_fwd, max(t_fb - t_fwd, 0.0)


# --------------------------------------------------------------------------------------------
# Output


def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds:.3f} s"


def _fmt_rate(flops: int, seconds: Optional[float]) -> str:
    if seconds is None or seconds <= 0:
        return "-"
    rate = flops / seconds
    if rate >= 1e12:
        return f"{rate / 1e12:.2f} TFLOP/s"
    return f"{rate / 1e9:.2f} GFLOP/s"


def _fmt_flops(flops: int) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3f} {unit}"
    return f"{flops} FLOP"


def render_table(header: List[str], rows: List[List[str]], right: Sequence[int] = ()) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            c = str(c)
            out.append(c.rjust(widths[i]) if i in right else c.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def memory_bytes(device: str) -> Optional[int]:
    """Memory of the device the arrays live on (physical RAM for the CPU), if known."""
    if device == "gpu":
        try:
            return int(_mx().device_info()["memory_size"])
        except Exception:
            return None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_line(device: str) -> str:
    mx = _mx()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = f"{device}"
    if device == "gpu":
        try:
            dev = f"gpu ({mx.device_info().get('device_name', 'GPU')})"
        except Exception:
            dev = "gpu"
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores; "
            f"MLX {mx.__version__}; device {dev}")


# --------------------------------------------------------------------------------------------
# CLI


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "t", "yes", "y"):
        return True
    if t in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (1/0/true/false), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m natten_mlx.profiler",
        description="Time natten-mlx neighbourhood attention (na1d/na2d/na3d) on each tier. "
                    "Without -i it profiles a 2-D 32x32 problem with a 7x7 window.",
        epilog="Example: python -m natten_mlx.profiler -i 64 64 -w 7 -n 4 -d 32 --backprop")
    ap.add_argument("-i", "--input-size", type=int, nargs="+", metavar="X",
                    help="spatial extent per axis; its length (1-3) sets the rank "
                         f"(default {' '.join(map(str, DEFAULT_INPUT))})")
    ap.add_argument("-w", "--window", type=int, nargs="+", metavar="K",
                    help="kernel (window) size, one value or one per axis "
                         "(default: the input size, i.e. self-attention; 7 for the default problem)")
    ap.add_argument("-s", "--stride", type=int, nargs="+", metavar="S",
                    help="natten-mlx output stride per axis (default 1)")
    ap.add_argument("--dilation", type=int, nargs="+", metavar="DIL", help="dilation per axis (default 1)")
    ap.add_argument("-c", "--causal", type=_bool, nargs="*", metavar="0|1",
                    help="causal masking: `-c` alone makes every axis causal; or one 0/1 per axis")
    ap.add_argument("-b", "--batch-size", type=int, default=1, help="batch size (default 1)")
    ap.add_argument("-n", "--heads", type=int, default=4, help="query heads (default 4)")
    ap.add_argument("--heads-kv", type=int, default=None,
                    help="key/value heads for GQA/MQA (default: --heads)")
    ap.add_argument("-d", "--dim", type=int, default=32, help="head dim (default 32)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="element type (default fp32)")
    ap.add_argument("--backprop", action="store_true", help="also time the backward pass")
    ap.add_argument("--add-kv", type=int, default=0, metavar="N",
                    help="N additional global KV tokens every query attends to (default 0)")
    ap.add_argument("--backend", choices=("auto", "all") + TIERS, default="all",
                    help="tier(s) to time: one tier, `auto` (what the dispatcher picks), or `all` "
                         "(every tier that supports the problem here; default)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default=None,
                    help="MLX device (default: gpu if MLX has one, else cpu)")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed calls first (default 3)")
    ap.add_argument("--runs", type=int, default=10, help="timed calls; the median is shown (default 10)")
    ap.add_argument("--dry-run", action="store_true",
                    help="only list which tiers support the problem on this machine, and why not")
    return ap


def _fail(msg: str) -> int:
    print(f"natten_mlx.profiler: error: {msg}", file=sys.stderr)
    return 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)   # argparse prints usage and exits 2 on malformed flags

    if args.causal is not None and len(args.causal) == 0:
        args.causal = [True]
    if args.warmup_steps < 0:
        return _fail(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if args.runs < 1:
        return _fail(f"--runs must be >= 1, got {args.runs}")
    try:
        problem = problem_from_args(args)
    except ProblemError as e:
        return _fail(str(e))

    try:
        import mlx.core as mx
    except ImportError as e:
        return _fail(f"MLX is not installed ({e})")
    try:
        nm = _natten()
    except ImportError as e:
        return _fail(f"cannot import natten_mlx ({e})")

    device = args.device or ("gpu" if gpu_available() else "cpu")
    if device == "gpu" and not gpu_available():
        return _fail("--device gpu: MLX sees no GPU on this machine")
    if problem.dtype == "fp64" and device == "gpu":
        return _fail("--dtype fp64 runs only on the CPU (MLX has no float64 on GPUs)")
    mx.set_default_device(_device(device))

    try:
        validate_with_library(problem)
    except ValueError as e:
        return _fail(str(e))
    # MLX aborts the process on a failed allocation, so refuse problems whose inputs alone
    # would take more than half the device's memory (the tiers need several times that).
    mem = memory_bytes(device)
    if mem is not None and not args.dry_run and problem.input_bytes() > mem // 2:
        return _fail(f"the problem's inputs alone need {problem.input_bytes() / 2**30:.1f} GiB; "
                     f"this {device} has {mem / 2**30:.1f} GiB")

    support = tier_support(problem, device)
    fwd_flops = problem.flops_forward()
    bwd_flops = problem.flops_backward()

    print(f"natten_mlx.profiler: {problem.describe()}")
    print(f"  machine: {machine_line(device)}")
    causal_note = " (causal: only attended keys counted)" if any(problem.causal) else ""
    print(f"  FLOPs: forward {_fmt_flops(fwd_flops)} = 4*B*H*pairs*D with "
          f"{problem.pairs():,} (query, key) pairs{causal_note}"
          + (f"; backward {_fmt_flops(bwd_flops)} (2.5x forward)" if problem.backprop else ""))

    if args.dry_run:
        print("\nTiers on this machine:")
        rows = []
        for name in TIERS:
            ok, why = support[name]
            rows.append([name, TIER_WHAT.get(name, ""), "yes" if ok else "no", why])
        print(render_table(["Tier", "Kernels", "Runs it here", "Why / note"], rows))
        previous = _current_backend(nm)
        try:
            nm.set_backend("auto")
            if fmha_path(problem):
                print(f"\n`auto` resolves to {nm.get_backend()!r}, but the window covers the whole "
                      "input, so na*d takes the SDPA fast path (mx.fast.scaled_dot_product_"
                      "attention) on every tier; give -w smaller than -i to time NA kernels.")
            else:
                print(f"\n`auto` resolves to {nm.get_backend()!r}; for this problem the fused op "
                      f"runs on {running_tier(problem)!r}.")
        finally:
            _restore_backend(nm, previous)
        return 0

    if args.backend == "all":
        tiers = [t for t in TIERS if support[t][0]]
        if "pure" not in tiers:
            tiers.insert(0, "pure")
    elif args.backend == "auto":
        tiers = ["auto"]
    else:
        tiers = [args.backend]
        ok, why = support[args.backend]
        if not ok:
            return _fail(f"backend {args.backend!r} cannot run this problem here: {why}")

    inputs = make_inputs(problem)
    mx.eval(*[a for a in inputs if a is not None and not isinstance(a, tuple)])
    previous = _current_backend(nm)

    results = []
    try:
        for name in tiers:
            nm.set_backend(name)
            ran = running_tier(problem)
            label = name
            if name == "auto":
                label = f"auto ({ran})"
            elif ran != name:
                label = f"{name} (fell back to {ran})"
            if fmha_path(problem):
                label = f"{name} (SDPA fast path)"
            try:
                t_f, t_b = time_tier(problem, name, args.warmup_steps, args.runs, inputs)
            except ValueError as e:
                return _fail(str(e))
            except (RuntimeError, MemoryError) as e:  # e.g. MLX cannot allocate the problem
                print(f"natten_mlx.profiler: {name} failed: {e}", file=sys.stderr)
                return 1
            results.append((name, label, t_f, t_b))
    finally:
        _restore_backend(nm, previous)

    base = next((r for r in results if r[0] == "pure"), None)
    header = ["Tier", "Forward", "Fwd rate"]
    if problem.backprop:
        header += ["Backward", "Bwd rate"]
    header += ["Speedup vs pure"]
    rows = []
    for name, label, t_f, t_b in results:
        row = [label, _fmt_time(t_f), _fmt_rate(fwd_flops, t_f)]
        if problem.backprop:
            row += [_fmt_time(t_b), _fmt_rate(bwd_flops, t_b)]
        if base is None:
            speed = "-"
        else:
            sp = [f"fwd {base[2] / t_f:.2f}x"]
            if problem.backprop and t_b and base[3]:
                sp.append(f"bwd {base[3] / t_b:.2f}x")
            speed = ", ".join(sp)
        row.append(speed)
        rows.append(row)
    print()
    print(render_table(header, rows, right=tuple(range(1, len(header) - 1))))
    print(f"\n  median of {args.runs} runs after {args.warmup_steps} warm-up calls, each synced "
          f"with mx.eval" + ("; backward = median(fwd+bwd) - median(fwd)" if problem.backprop else ""))
    skipped = [(t, support[t][1]) for t in TIERS if t not in tiers and args.backend == "all"]
    for t, why in skipped:
        print(f"  {t}: not timed: {why}")
    return 0


def _current_backend(nm) -> Optional[str]:
    try:
        return str(_ops().selected_backend())
    except Exception:
        return None


def _restore_backend(nm, previous: Optional[str]) -> None:
    """Put the backend selection back (matters when main() runs inside another program)."""
    try:
        nm.set_backend(previous or "auto")
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
