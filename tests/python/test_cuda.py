"""CUDA tier (natten_mlx._core.cuda) against float64 oracles.

Skipped cleanly unless MLX's CUDA backend is present.  Forward values are
checked against tests/python/oracle.py (dense masked softmax, written
independently of src/cuda).  Gradients are checked against an analytic
float64 backward written here from first principles over the oracle's own
neighbour tables (`_Dense` below); that backward is itself checked against
central differences of oracle.oracle_na in float64 (test_dense_backward_is_right).
Tolerances per dtype: f32 2e-4, f16 2e-2, bf16 6e-2 (absolute, on O(1) data).
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

import oracle

mx = pytest.importorskip("mlx.core")

from natten_mlx._core import cuda, cuda_jit  # noqa: E402
from natten_mlx._core.params import NAParams  # noqa: E402

gpu = pytest.mark.skipif(not cuda.is_available(), reason="MLX CUDA backend not available")

TOL = {"float32": 2e-4, "float16": 2e-2, "bfloat16": 6e-2}
DT = {"float32": None, "float16": None, "bfloat16": None}


def _dt(name):
    return getattr(mx, name)


def _tup(x, r):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * r


def make_params(rank, kernel, dilation=1, out_stride=1, gna=1, causal=False, D=16, scale=None):
    return NAParams(
        rank=rank,
        kernel=_tup(kernel, rank),
        dilation=_tup(dilation, rank),
        out_stride=_tup(out_stride, rank),
        gna_stride=_tup(gna, rank),
        causal=tuple(bool(c) for c in _tup(causal, rank)),
        scale=float(D ** -0.5 if scale is None else scale),
    )


def to_np(a):
    return np.asarray(a.astype(mx.float32), dtype=np.float64)


def rnd(rng, shape, dtype, s=1.0):
    """Random data rounded to the dtype, returned as (mx array, float64 copy)."""
    x = mx.array((rng.standard_normal(shape) * s).astype(np.float32)).astype(dtype)
    return x, to_np(x)


class _Dense:
    """Float64 NA forward + analytic backward over explicit neighbour tables
    (oracle.axis_slots), independent of the CUDA sources."""

    def __init__(self, extents, p: NAParams, varlen=None, B=1):
        self.p, self.extents, self.rank = p, tuple(extents), p.rank
        self.Osh = tuple(math.ceil(e / s) for e, s in zip(extents, p.out_stride))
        self.B = B
        self.tables = []  # per batch: list of (orow_flat, qtok, [(ktok, relflat)])
        for b in range(B):
            ext = tuple(extents) if varlen is None else tuple(int(x) for x in varlen[b])
            tabs = [oracle.axis_slots(ext[a], p.kernel[a], p.dilation[a], p.gna_stride[a], p.causal[a])
                    for a in range(self.rank)]
            rows = []
            for oidx in itertools.product(*[range(0, ext[a], p.out_stride[a]) for a in range(self.rank)]):
                o = tuple(i // s for i, s in zip(oidx, p.out_stride))
                orow = int(np.ravel_multi_index(o, self.Osh))
                qtok = int(np.ravel_multi_index(oidx, extents))
                slots = []
                for combo in itertools.product(*[tabs[a][oidx[a]] for a in range(self.rank)]):
                    ok = all(c[1] for c in combo)
                    key = tuple(c[0] for c in combo)
                    rel = tuple((c[0] - oidx[a]) // p.dilation[a] + p.kernel[a] - 1 for a, c in enumerate(combo))
                    if ok:
                        slots.append((int(np.ravel_multi_index(key, extents)),
                                      int(np.ravel_multi_index(rel, tuple(2 * k - 1 for k in p.kernel)))))
                    else:
                        slots.append((-1, -1))
                rows.append((orow, qtok, slots))
            self.tables.append(rows)

    def run(self, q, k, v, rpb=None, ek=None, ev=None, dout=None, dlse=None):
        p = self.p
        B, H, D = q.shape[0], q.shape[-2], q.shape[-1]
        Hkv, Dv = k.shape[-2], v.shape[-1]
        G = H // Hkv
        N = int(np.prod(self.extents))
        qf, kf, vf = q.reshape(B, N, H, D), k.reshape(B, N, Hkv, D), v.reshape(B, N, Hkv, Dv)
        O = int(np.prod(self.Osh))
        out = np.zeros((B, O, H, Dv))
        lse = np.full((B, O, H), -np.inf)
        grads = dout is not None
        if grads:
            dof = dout.reshape(B, O, H, Dv)
            dlf = dlse.reshape(B, O, H)
            dq, dk, dv = np.zeros_like(qf), np.zeros_like(kf), np.zeros_like(vf)
            drpb = None if rpb is None else np.zeros_like(rpb).reshape(H, -1)
            dek = None if ek is None else np.zeros_like(ek)
            dev = None if ev is None else np.zeros_like(ev)
        rpbf = None if rpb is None else rpb.reshape(H, -1)
        for b in range(B):
            for orow, qtok, slots in self.tables[b]:
                for h in range(H):
                    hk = h // G
                    keys = [kt for kt, _ in slots if kt >= 0]
                    rels = [rl for kt, rl in slots if kt >= 0]
                    kk = kf[b, keys, hk]
                    vv = vf[b, keys, hk]
                    s = kk @ qf[b, qtok, h] * p.scale
                    if rpbf is not None:
                        s = s + rpbf[h, rels]
                    if ek is not None:
                        s = np.concatenate([s, ek[b, :, hk] @ qf[b, qtok, h] * p.scale])
                        vv = np.concatenate([vv, ev[b, :, hk]])
                        kk = np.concatenate([kk, ek[b, :, hk]])
                    m = s.max()
                    l = np.log(np.exp(s - m).sum()) + m
                    pr = np.exp(s - l)
                    o = pr @ vv
                    out[b, orow, h] = o
                    lse[b, orow, h] = l
                    if not grads:
                        continue
                    do = dof[b, orow, h]
                    dp = vv @ do
                    ds = pr * (dp - do @ o + dlf[b, orow, h])
                    dq[b, qtok, h] += p.scale * ds @ kk
                    nk = len(keys)
                    np.add.at(dk[b, :, hk], keys, p.scale * ds[:nk, None] * qf[b, qtok, h][None])
                    np.add.at(dv[b, :, hk], keys, pr[:nk, None] * do[None])
                    if drpb is not None:
                        np.add.at(drpb[h], rels, ds[:nk])
                    if ek is not None:
                        dek[b, :, hk] += p.scale * ds[nk:, None] * qf[b, qtok, h][None]
                        dev[b, :, hk] += pr[nk:, None] * do[None]
        out = out.reshape((B,) + self.Osh + (H, Dv))
        lse = lse.reshape((B,) + self.Osh + (H,))
        if not grads:
            return out, lse
        g = dict(q=dq.reshape(q.shape), k=dk.reshape(k.shape), v=dv.reshape(v.shape))
        if drpb is not None:
            g["rpb"] = drpb.reshape(rpb.shape)
        if ek is not None:
            g["ek"], g["ev"] = dek, dev
        return out, lse, g


def test_import_never_fails_and_reports_availability():
    assert isinstance(cuda.is_available(), bool)
    p = make_params(1, 3)
    if not cuda.is_available():
        assert not cuda.supports("fused", p, mx.float32, mx.default_device())


def test_dense_backward_is_right():
    """The analytic float64 backward used below == central differences of oracle_na."""
    rng = np.random.default_rng(0)
    ext, B, H, Hkv, D = (5, 4), 1, 2, 1, 3
    p = make_params(2, (3, 2), dilation=(1, 2), causal=(True, False), D=D)
    q = rng.standard_normal((B,) + ext + (H, D))
    k = rng.standard_normal((B,) + ext + (Hkv, D))
    v = rng.standard_normal((B,) + ext + (Hkv, D))
    rpb = rng.standard_normal((H, 5, 3))
    do = rng.standard_normal((B,) + ext + (H, D))
    dl = rng.standard_normal((B,) + ext + (H,))
    dense = _Dense(ext, p, B=B)
    out, lse, g = dense.run(q, k, v, rpb, dout=do, dlse=dl)
    ro, rl = oracle.oracle_na(q, k, v, p.kernel, p.dilation, causal=p.causal, scale=p.scale, rpb=rpb)
    np.testing.assert_allclose(out, ro, atol=1e-12)
    np.testing.assert_allclose(lse, rl, atol=1e-12)

    def loss(qq, kk, vv, rr):
        o, l = oracle.oracle_na(qq, kk, vv, p.kernel, p.dilation, causal=p.causal, scale=p.scale, rpb=rr)
        return (o * do).sum() + (l * dl).sum()

    eps = 1e-6
    for name, arr in (("q", q), ("k", k), ("v", v), ("rpb", rpb)):
        fd = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            a0 = arr[idx]
            arr[idx] = a0 + eps
            lp = loss(q, k, v, rpb)
            arr[idx] = a0 - eps
            lm = loss(q, k, v, rpb)
            arr[idx] = a0
            fd[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(g[name], fd, atol=1e-6, err_msg=name)


# (extents, kernel, dilation, out_stride, gna, causal, H, Hkv, D, Dv)
FUSED_CASES = [
    ((13,), 5, 2, 1, 1, False, 2, 2, 16, 16),
    ((13,), 4, 1, 1, 1, True, 4, 2, 40, 24),
    ((17,), 5, 1, 2, 1, False, 2, 1, 16, 16),
    ((16,), 6, 1, 1, 3, False, 2, 2, 8, 8),
    ((16,), 6, 1, 1, 2, True, 2, 2, 8, 8),
    ((7, 9), (3, 5), (2, 1), 1, 1, (True, False), 4, 2, 16, 16),
    ((8, 8), (4, 3), 1, (2, 3), 1, False, 2, 2, 32, 32),
    ((9, 8), (3, 4), 1, 1, (2, 2), (False, True), 2, 1, 16, 16),
    ((5, 6, 4), (3, 3, 2), (1, 2, 1), 1, 1, (False, False, True), 2, 2, 16, 16),
    ((6, 5, 7), (2, 3, 3), 1, (1, 2, 2), 1, False, 3, 1, 8, 8),
]


def _run_fused_case(case, dtype, rpb=False, extra=0, varlen=False, seed=0, grads=True):
    ext, K, d, os_, gna, causal, H, Hkv, D, Dv = case
    rank = len(ext)
    rng = np.random.default_rng(seed)
    p = make_params(rank, K, d, os_, gna, causal, D=D)
    B = 2
    q, qn = rnd(rng, (B,) + ext + (H, D), dtype)
    k, kn = rnd(rng, (B,) + ext + (Hkv, D), dtype)
    v, vn = rnd(rng, (B,) + ext + (Hkv, Dv), dtype)
    args = dict()
    rn = ekn = evn = None
    if rpb:
        r, rn = rnd(rng, (H,) + tuple(2 * x - 1 for x in p.kernel), dtype)
        args["rpb"] = r
    if extra:
        ek, ekn = rnd(rng, (B, extra, Hkv, D), dtype)
        ev, evn = rnd(rng, (B, extra, Hkv, Dv), dtype)
        args["extra_k"], args["extra_v"] = ek, ev
    vl = None
    if varlen:
        vl = np.array([[max(p.kernel[a] * p.dilation[a], ext[a] - 1 - a) for a in range(rank)],
                       list(ext)], dtype=np.int32)
        args["varlen"] = mx.array(vl)
    dense = _Dense(ext, p, varlen=vl, B=B)
    out, lse = cuda.na_fused(q, k, v, p, **args)
    tol = TOL[str(dtype).split(".")[-1]]
    ro, rl = dense.run(qn, kn, vn, rn, ekn, evn)
    np.testing.assert_allclose(to_np(out), ro, atol=tol, rtol=tol)
    fin = np.isfinite(rl)
    np.testing.assert_array_equal(np.isfinite(np.asarray(lse)), fin)
    np.testing.assert_allclose(np.asarray(lse)[fin], rl[fin], atol=tol, rtol=tol)
    if varlen:  # the dense table must agree with the oracle's varlen semantics too
        oo, ol = oracle.oracle_na(qn, kn, vn, p.kernel, p.dilation, p.out_stride, p.gna_stride, p.causal,
                                  p.scale, rn, ekn, evn, varlen=vl)
        np.testing.assert_allclose(ro, oo, atol=1e-9)
    if not grads:
        return
    do, don = rnd(rng, out.shape, dtype)
    dl, dln = rnd(rng, lse.shape, mx.float32, 0.5)
    keys = ["q", "k", "v"] + (["rpb"] if rpb else []) + (["extra_k", "extra_v"] if extra else [])
    prim = [q, k, v] + [args[x] for x in keys[3:]]

    def f(*xs):
        kw = dict(zip(keys[3:], xs[3:]))
        if varlen:
            kw["varlen"] = args["varlen"]
        return list(cuda.na_fused(xs[0], xs[1], xs[2], p, **kw))

    _, vjps = mx.vjp(f, prim, [do, dl])
    _, _, g = dense.run(qn, kn, vn, rn, ekn, evn, dout=don, dlse=dln)
    names = {"extra_k": "ek", "extra_v": "ev"}
    for key, got in zip(keys, vjps):
        want = g[names.get(key, key)]
        gt = 4 * tol if key == "rpb" else 2 * tol
        np.testing.assert_allclose(to_np(got), want, atol=gt, rtol=gt, err_msg=key)


@gpu
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_fused_forward_backward(case, dtype):
    _run_fused_case(case, _dt(dtype))


@gpu
@pytest.mark.parametrize("case", FUSED_CASES[::2], ids=lambda c: "x".join(map(str, c[0])))
def test_fused_rpb(case):
    if case[4] != 1 and any(s != 1 for s in _tup(case[4], len(case[0]))):
        pytest.skip("RPB is not defined with GNA stride")
    _run_fused_case(case, mx.float32, rpb=True)


@gpu
@pytest.mark.parametrize("case", FUSED_CASES[1::2], ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_extra_kv(case, dtype):
    _run_fused_case(case, _dt(dtype), extra=3)


@gpu
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_fused_varlen(case):
    _run_fused_case(case, mx.float32, varlen=True, extra=2 if case[6] == 4 else 0)


# tensor-core forward and backward: f16/bf16, D == Dv in {32, 64, 128}, larger problems so
# that key tiles are partly full, partly masked and partly skipped
TC_CASES = [
    ((150,), 13, 2, 1, 1, False, 4, 2, 32, 32),
    ((200,), 33, 1, 1, 1, True, 2, 1, 64, 64),
    ((130,), 17, 1, 1, 4, False, 2, 2, 128, 128),
    ((20, 23), (7, 9), (1, 2), 1, 1, (False, True), 2, 1, 64, 64),
    ((33, 40), (13, 11), 1, 1, (2, 3), False, 2, 2, 32, 32),
    ((10, 9, 12), (3, 5, 7), (2, 1, 1), 1, 1, (True, False, False), 2, 2, 64, 64),
    ((8, 9, 10), (4, 3, 5), 1, 1, 1, False, 2, 1, 128, 128),
]


@gpu
@pytest.mark.parametrize("case", TC_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tensor_core_forward_backward(case, dtype):
    _run_fused_case(case, _dt(dtype), seed=3)


@pytest.fixture(autouse=True)
def _tiled_when_small(monkeypatch, request):
    """Test shapes are small, and NATTEN_CUDA_SMALL / cuda._small could send them
    to the warp-per-row kernels: keep the tiled paths they were written for
    (NATTEN_CUDA_SMALL=0), except in tests named *small_problems*."""
    if "small_problems" not in request.node.name:
        monkeypatch.setenv("NATTEN_CUDA_SMALL", "0")
    cuda.refresh_env()
    yield
    monkeypatch.undo()
    cuda.refresh_env()


@pytest.fixture
def cuda_env(monkeypatch):
    """Set NATTEN_CUDA_* switches for one test (cuda.py reads them once)."""

    def setenv(name, value):
        monkeypatch.setenv(name, value)
        cuda.refresh_env()

    yield setenv
    monkeypatch.undo()
    cuda.refresh_env()


@gpu
@pytest.mark.parametrize("mode", ["128", "128w"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tensor_core_forward_128_query_tiles(dtype, mode, cuda_env):
    """128-query forward tiles: 2 m-tiles per warp (NATTEN_CUDA_TQ=128; the default for
    head_dim 128 on big problems) and 8 warps of one m-tile (NATTEN_CUDA_TQ=128w)."""
    cuda_env("NATTEN_CUDA_TQ", mode)
    case = ((64, 80), (7, 9), (1, 2), 1, 1, (False, True), 8, 4, 32, 32)
    _run_fused_case(case, _dt(dtype), seed=4, grads=False)
    case = ((48, 50), (13, 9), (2, 1), 1, 1, (True, False), 8, 4, 128, 128)
    _run_fused_case(case, _dt(dtype), seed=6, grads=False)


@gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tensor_core_forward_64_query_tiles(dtype, cuda_env):
    """NATTEN_CUDA_TQ=64 on a head_dim-128 problem big enough for the 128-query default."""
    cuda_env("NATTEN_CUDA_TQ", "64")
    case = ((48, 50), (13, 9), (2, 1), 1, 1, (True, False), 8, 4, 128, 128)
    _run_fused_case(case, _dt(dtype), seed=7, grads=False)


def test_forward_tile_plan(cuda_env):
    """Which forward tile the tensor-core plan picks (pure Python, runs everywhere)."""
    cuda_env("NATTEN_CUDA_TQ", "")
    assert cuda._fwd_tc_shape(1, 24, 256 * 256, 128) == (128, 4)  # flux: 2 m-tiles per warp
    assert cuda._fwd_tc_shape(1, 1, 32768, 128) == (128, 4)
    assert cuda._fwd_tc_shape(1, 1, 4096, 128) == (64, 4)  # too few tiles to fill the GPU twice
    assert cuda._fwd_tc_shape(8, 8, 64 * 64, 64) == (64, 4)  # head_dim 64: 64-query tiles
    for mode, want in (("64", (64, 4)), ("128", (128, 4)), ("128w", (128, 8))):
        cuda_env("NATTEN_CUDA_TQ", mode)
        assert cuda._fwd_tc_shape(1, 1, 4096, 128) == want


_NVRTC = cuda_jit._nvrtc() is not None and bool(cuda_jit.include_dirs())


@pytest.mark.skipif(not _NVRTC, reason="no NVRTC library or CUDA headers on this machine")
def test_arch_specific_compile(monkeypatch, tmp_path):
    """cuda_jit builds the tiled forwards (mma.sync and wgmma) for sm_90a with NVRTC (no GPU needed: runs
    wherever a CUDA toolkit is installed, CI included), caches it on disk, and
    reports NVRTC's log for a source that does not compile."""
    monkeypatch.setenv("NATTEN_CUDA_CACHE", str(tmp_path))
    cuda._precompiled_fwd.cache_clear()
    monkeypatch.setattr(cuda_jit, "_cubins", {})
    launch = cuda._precompiled_fwd("fwd_tc", "bfloat16", (128, 128, 1, 1, 64, 1, 1, 4), 128,
                                   cuda._fwd_tc_smem(128, 128), "sm_90a")
    assert callable(launch)
    for dt, hd in (("bfloat16", 128), ("float16", 64)):  # the wgmma forward: NVRTC only, sm_90a only
        cuda._precompiled_fwd("fwd_wgmma", dt, (hd, 8, 16, 1, 8, 8, 1), cuda._WGMMA_THREADS,
                              cuda._fwd_wgmma_smem(hd), "sm_90a", min_blocks=1)
    files = list(tmp_path.glob("*.cubin"))
    assert len(files) == 3 and all(f.read_bytes()[:4] == b"\x7fELF" for f in files)
    src = "__global__ void natten_probe(float *x) { x[threadIdx.x] = INFINITY; }\n"
    first = cuda_jit.cubin(src)
    assert len(list(tmp_path.glob("*.cubin"))) == 4
    cuda_jit._cubins.clear()  # as in a second process: read back from disk, not recompiled
    with monkeypatch.context() as m:
        m.setattr(cuda_jit, "_nvrtc_compile", lambda *a: pytest.fail("compiled again"))
        assert cuda_jit.cubin(src) == first
    with pytest.raises(cuda_jit.CompileError, match="undefined"):
        cuda_jit.cubin("__device__ int f() { return not_declared_here; }")
    cuda._precompiled_fwd.cache_clear()


def _mlx_like_source(name, header, tmpl, ctype):
    """A kernel of _SPECS as mx.fast.cuda_kernel assembles it (header, a signature
    of the inputs and outputs, the template arguments as constants, the body)."""
    ins, outs, body = cuda._SPECS[name]
    if name not in cuda._TC_NAMES:
        body = cuda._PRE + body
    sig = ["const %s *%s" % ("int" if i in ("params", "varlen") else "float" if i in ("lse", "dlse", "delta")
                             else ctype, i) for i in ins]
    sig += ["%s *%s" % ("float" if o in ("lse", "delta", "drpb") else ctype, o) for o in outs]
    consts = "".join("  constexpr int %s = %d;\n" % (n, v) if isinstance(v, int) else "  using %s = %s;\n" % (n, v)
                     for n, v in tmpl)
    return '%s\nextern "C" __global__ void k(%s) {\n%s%s\n}\n' % (header, ", ".join(sig), consts, body)


@pytest.mark.skipif(not _NVRTC, reason="no NVRTC library or CUDA headers on this machine")
@pytest.mark.parametrize("name, tmpl", [
    ("bwd_dkdv_f32", [("HD", 32), ("TQ0", 64), ("TQ1", 1), ("TQ2", 1), ("TK0", 64), ("TK1", 1), ("TK2", 1)]),
    ("fwd", [("T", "float"), ("NPL", 1), ("NVPL", 1)]),
])
def test_include_header_builds_the_pasted_code(name, tmpl):
    """The one-line #include header cuda_kernel gets compiles (NVRTC, no GPU) to
    the same cubin, byte for byte, as the pasted sources it stands for."""
    kind = cuda._header_kind(name)
    header, _ = cuda._kernel_header(kind)
    assert header.startswith("#include \"/") and len(header) < 300
    opts = ["-std=c++17"] + ["--include-path=%s" % d for d in cuda_jit.include_dirs()]
    built = [cuda_jit._nvrtc_compile(cuda_jit._PRELUDE + _mlx_like_source(name, h, tmpl, "float"), "sm_90", opts)
             for h in (header, cuda._header(kind))]
    assert built[0][:4] == b"\x7fELF" and built[0] == built[1]


@pytest.mark.skipif(not _NVRTC, reason="no NVRTC library or CUDA headers on this machine")
@pytest.mark.parametrize("name, ctype", [("bwd_tc_fd", "__nv_bfloat16"), ("bwd_tc_fd", "__half"),
                                         ("bwd_f32_fd", "float")])
def test_fused_delta_kernels_compile(name, ctype):
    """The one-launch backward kernels of small problems (delta computed where it is
    read) build with NVRTC as cuda_kernel assembles them (no GPU needed; asymmetric
    tiles, so the swapped dk/dv instantiation differs from the dq one)."""
    tmpl = ([("T", ctype)] if name == "bwd_tc_fd" else []) + [
        ("HD", 64), ("TQ0", 8), ("TQ1", 8), ("TQ2", 1), ("TK0", 4), ("TK1", 16), ("TK2", 1)]
    header, _ = cuda._kernel_header(cuda._header_kind(name))
    opts = ["-std=c++17"] + ["--include-path=%s" % d for d in cuda_jit.include_dirs()]
    cubin = cuda_jit._nvrtc_compile(cuda_jit._PRELUDE + _mlx_like_source(name, header, tmpl, ctype), "sm_90", opts)
    assert cubin[:4] == b"\x7fELF"


def test_kernel_names_follow_the_code(tmp_path, monkeypatch):
    """MLX keeps compiled modules (and its on-disk PTX cache) by kernel name
    alone: a change in any file a kernel includes gives it a new name, a
    comment-only change does not (pure Python)."""
    src = cuda.kernel_source_dir()
    for f in src.glob("*.cuh"):
        (tmp_path / f.name).write_text(f.read_text())
    monkeypatch.setattr(cuda, "kernel_source_dir", lambda: tmp_path)

    def tags():
        cuda._header.cache_clear()
        cuda._kernel_header.cache_clear()
        return {k: cuda._kernel_header(k)[1] for k in cuda._HEADER_TOP}

    try:
        before = tags()
        assert cuda._kernel_header("bwd_f32")[0] == '#include "%s"\n' % (tmp_path / "na_bwd_f32.cuh")
        f = tmp_path / "na_fwd_f32.cuh"  # included by fwd_f32 and bwd_f32 only
        f.write_text(f.read_text() + "\n/* a comment */\n// another\n")
        assert tags() == before
        f.write_text(f.read_text() + "\n#define NATTEN_PROBE 1\n")
        after = tags()
        assert {k for k in after if after[k] != before[k]} == {"fwd_f32", "bwd_f32"}
        odd = tmp_path / 'a "quoted" dir'  # cannot be written in an #include: pasted instead
        odd.mkdir()
        for f in src.glob("*.cuh"):
            (odd / f.name).write_text(f.read_text())
        monkeypatch.setattr(cuda, "kernel_source_dir", lambda: odd)
        assert tags()["simple"] == before["simple"]
        assert cuda._kernel_header("simple")[0] == cuda._header("simple")
    finally:
        cuda._header.cache_clear()
        cuda._kernel_header.cache_clear()


@gpu
@pytest.mark.skipif(not cuda.is_available() or cuda_jit.arch() is None, reason="needs a Hopper GPU")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_precompiled_route_matches_jit(dtype):
    """The mma.sync tiled forward built by cuda_jit for the arch-specific target and
    launched through precompiled_cuda_kernel gives MLX's JIT build's results bit for
    bit (same source): the launch path (argument order, shared memory above 48 KiB,
    grid in threads) is right."""
    p = make_params(2, (13, 9), dilation=(2, 1), causal=(True, False), D=128)
    rng = np.random.default_rng(11)
    shape = (2, 48, 50, 4, 128)
    q, k, v = (rnd(rng, shape, _dt(dtype))[0] for _ in range(3))
    flags = (False, False, False)
    kern, kw, tiled, prm = cuda._fwd_plan(p, flags, q.shape, k.shape, v.shape, (1,), q.dtype)
    t = dict(kw["template"])
    assert tiled and "NW" in t
    targs = (t["HD"], t["TQ0"], t["TQ1"], t["TQ2"], t["TK0"], t["TK1"], t["TK2"], t["NW"])
    tq = t["TQ0"] * t["TQ1"] * t["TQ2"]
    launch = cuda._precompiled_fwd("fwd_tc", dtype, targs, 32 * t["NW"], cuda._fwd_tc_smem(tq, 128),
                                   cuda_jit.arch())
    want = kern(inputs=[prm, q, k, v], **kw)
    got = launch(inputs=[prm, q, k, v], grid=kw["grid"], threadgroup=kw["threadgroup"],
                 output_shapes=kw["output_shapes"], output_dtypes=kw["output_dtypes"])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(to_np(a), to_np(b))


def _smem_macro(header, macro):
    """A shared-memory size macro of a src/cuda header as a Python function of its
    arguments (the plan must ask MLX for what the kernel uses)."""
    txt = (cuda.kernel_source_dir() / header).read_text()
    m = re.search(r"#define %s\((\w+)(?:, *(\w+))?\) +(.+)" % macro, txt)
    names = [n for n in m.groups()[:2] if n]
    return lambda *a: eval(m.group(3), {}, dict(zip(names, a)))  # noqa: S307 (our own header)


def test_shared_memory_sizes_match_the_kernels():
    """cuda.py's shared-memory sizes equal the headers' macros (pure Python)."""
    tc = _smem_macro("na_fwd_tc.cuh", "NA_FWD_TC_SMEM")
    for tq, hd in ((64, 32), (64, 128), (128, 64), (128, 128)):
        assert cuda._fwd_tc_smem(tq, hd) == tc(tq, hd)
    wg = _smem_macro("na_fwd_wgmma.cuh", "NA_FWD_WGMMA_SMEM")
    wg128 = _smem_macro("na_fwd_wgmma.cuh", "NA_FWD_WGMMA128_SMEM")
    for hd in cuda._WGMMA_HD:
        assert cuda._fwd_wgmma_smem(hd) == wg(hd)
        assert cuda._fwd_wgmma128_smem(hd) == wg128(hd)
    assert wg128(128) == 169056 <= 227 * 1024  # the H100's per-block limit


@pytest.mark.parametrize("use, env, failed", [("_use_wgmma", "NATTEN_CUDA_WGMMA", "_wgmma_failed"),
                                               ("_use_wgmma_bwd", "NATTEN_CUDA_WGMMA_BWD", "_wgmma_bwd_failed")],
                         ids=["forward", "backward"])
def test_wgmma_rule(use, env, failed, cuda_env, monkeypatch):
    """When the Hopper wgmma forward and the wgmma backward passes are chosen:
    one rule, each with its own switch (pure Python, runs everywhere)."""
    monkeypatch.setattr(cuda_jit, "arch", lambda: "sm_90a")
    monkeypatch.setattr(cuda, failed, False)
    rule = getattr(cuda, use)
    cuda_env(env, "")
    assert rule(1, 24, 256 * 256, 128)  # flux
    assert rule(1, 1, 32768, 128)  # 1d-32k-w2k
    assert not rule(1, 1, 32768, 32)  # head_dim outside its scope
    assert not rule(8, 8, 64 * 64, 64)  # vision-2d-64-k7: head_dim 64 stays mma.sync
    assert not rule(1, 1, 4096, 128)  # 32 boxes: too few for the GPU
    cuda_env(env, "1")
    assert rule(1, 1, 64, 64) and not rule(1, 1, 64, 32)
    cuda_env(env, "0")
    assert not rule(1, 24, 256 * 256, 128)
    monkeypatch.setattr(cuda_jit, "arch", lambda: None)  # not Hopper
    cuda_env(env, "1")
    assert not rule(1, 24, 256 * 256, 128)


def test_wgmma_key_tiles(cuda_env, monkeypatch):
    """1-D boxes with head_dim 128 run the wgmma forward with 128-key tiles
    (na_fwd_wgmma_k128) when the windows' union needs no more key work than
    in 64-key tiles; the plan passes TK0 = 128 and NA_FWD_WGMMA128_SMEM (pure
    Python, runs everywhere)."""
    monkeypatch.setattr(cuda_jit, "arch", lambda: "sm_90a")
    cuda_env("NATTEN_CUDA_WGMMA", "")
    key_tile = cuda._wgmma_key_tile
    q1, k64 = (128, 1, 1), (64, 1, 1)
    X = (32768,)
    assert key_tile(make_params(1, 2048, D=128), X, 128, q1, k64) == (128, 1, 1)  # 2175 keys: 17 or 34 tiles
    assert key_tile(make_params(1, 7, D=128), X, 128, q1, k64) == k64  # 134 keys: 2 x 128 > 3 x 64
    assert key_tile(make_params(1, 2048, D=64), X, 64, q1, k64) == k64  # head_dim 64: not measured
    assert key_tile(make_params(1, 257, D=128), X, 128, q1, k64) == (128, 1, 1)  # 384 keys: 3 x 128 = 6 x 64
    assert key_tile(make_params(1, 193, D=128), X, 128, q1, k64) == k64  # 320 keys: 3 x 128 > 5 x 64
    assert key_tile(make_params(1, 255, 2, causal=True, D=128), (700,), 128, q1, k64) == (128, 1, 1)  # 350 keys
    assert key_tile(make_params(1, 255, 4, D=128), (700,), 128, q1, k64) == k64  # groups of 175: 2 x 128 > 3 x 64
    assert key_tile(make_params(2, 33, D=128), (256, 256), 128, (8, 16, 1), (8, 8, 1)) == (8, 8, 1)
    seen = []
    monkeypatch.setattr(cuda, "_precompiled_fwd", lambda *a, **kw: seen.append(a) or "wgmma")
    for kernel, tk, smem in ((2048, (128, 1, 1), cuda._fwd_wgmma128_smem(128)), (7, k64, cuda._fwd_wgmma_smem(128))):
        shape = (1, 32768, 1, 128)
        kern, kw, tiled, _ = cuda._fwd_plan(make_params(1, kernel, D=128), (False,) * 3, shape, shape, shape, (1,),
                                            mx.bfloat16)
        entry, _, targs, threads, plan_smem = seen[-1][:5]
        assert kern == "wgmma" and tiled and entry == "fwd_wgmma" and threads == cuda._WGMMA_THREADS
        assert targs == (128, 128, 1, 1) + tk and plan_smem == smem and kw["grid"][0] == 256 * threads


def test_wgmma_build_failure_falls_back(cuda_env, monkeypatch):
    """An NVRTC that cannot build the wgmma forward (too old for sm_90a, say) costs a
    warning and the mma.sync plan, not a failed call (pure Python, runs everywhere)."""
    monkeypatch.setattr(cuda_jit, "arch", lambda: "sm_90a")
    monkeypatch.setattr(cuda, "_wgmma_failed", False)
    cuda._precompiled_fwd.cache_clear()

    def broken(source, target="sm_90a"):
        raise cuda_jit.CompileError("natten_mlx CUDA tier: NVRTC compile for sm_90a failed: test")

    monkeypatch.setattr(cuda_jit, "cubin", broken)
    monkeypatch.setattr(cuda, "_kernel", lambda name, smem=0: name)  # no cuda_kernel objects off the GPU
    cuda_env("NATTEN_CUDA_WGMMA", "1")
    p = make_params(1, 9, D=128)
    shape = (1, 4096, 2, 128)
    with pytest.warns(UserWarning, match="wgmma forward did not build"):
        kern, kw, tiled, _ = cuda._fwd_plan(p, (False,) * 3, shape, shape, shape, (1,), mx.bfloat16)
    assert tiled and kern == "fwd_tc" and dict(kw["template"])["NW"] == 4  # the mma.sync kernel
    assert not cuda._use_wgmma(1, 2, 4096, 128)  # and it is not retried
    cuda._precompiled_fwd.cache_clear()


WGMMA_CASES = [c for c in TC_CASES if c[8] in (64, 128)] + [
    ((48, 50), (13, 9), (2, 1), 1, 1, (True, False), 8, 4, 128, 128),
    ((300,), 129, 1, 1, 1, False, 2, 1, 128, 128),  # 128-key tiles (na_fwd_wgmma_k128), as next
    ((700,), 255, 2, 1, 3, True, 2, 1, 128, 128),
    ((9, 33), (5, 31), 1, 1, (1, 4), (False, True), 4, 4, 64, 64),
]


@gpu
@pytest.mark.skipif(not cuda.is_available() or cuda_jit.arch() != "sm_90a", reason="needs a Hopper GPU")
@pytest.mark.parametrize("case", WGMMA_CASES, ids=lambda c: "x".join(map(str, c[0])) + "-d%d" % c[8])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_wgmma_forward(case, dtype, cuda_env):
    """The Hopper wgmma forward (NATTEN_CUDA_WGMMA=1 sends these small problems to
    it) against the float64 oracle, and the backward run from its out and lse."""
    cuda_env("NATTEN_CUDA_WGMMA", "1")
    ext, D = case[0], case[8]
    p = make_params(len(ext), case[1], case[2], case[3], case[4], case[5], D=D)
    shape = (2,) + ext + (case[6], D)
    kv = (2,) + ext + (case[7], D)
    _, kw, tiled, _ = cuda._fwd_plan(p, (False,) * 3, shape, kv, kv, (1,), _dt(dtype))
    assert tiled and "template" not in kw and kw["threadgroup"] == (cuda._WGMMA_THREADS, 1, 1)
    _run_fused_case(case, _dt(dtype), seed=8)


def test_bwd_wgmma_shared_memory_sizes_match_the_kernels():
    """cuda.py's shared memory for the wgmma backward passes equals NA_BWD_DKDV_WGMMA_SMEM
    and NA_BWD_DQ_WGMMA_SMEM of na_bwd_wgmma.cuh (pure Python), within an H100's 227 KiB."""
    for macro, fn in (("NA_BWD_DKDV_WGMMA_SMEM", cuda._bwd_dkdv_wgmma_smem),
                      ("NA_BWD_DQ_WGMMA_SMEM", cuda._bwd_dq_wgmma_smem)):
        wg = _smem_macro("na_bwd_wgmma.cuh", macro)
        for hd in cuda._WGMMA_HD:
            for st in (3, 4):
                assert fn(hd, st) == wg(hd, st)
        assert fn(128) == wg(128, cuda._WGMMA_BWD_ST) <= 227 * 1024


def test_wgmma_bwd_build_failure_falls_back(cuda_env, monkeypatch):
    """An NVRTC that cannot build the wgmma backward costs a warning and the mma.sync
    backward (no plan), not a failed call, and is not retried (pure Python)."""
    monkeypatch.setattr(cuda_jit, "arch", lambda: "sm_90a")
    monkeypatch.setattr(cuda, "_wgmma_bwd_failed", False)
    cuda._precompiled_bwd.cache_clear()

    def broken(source, target="sm_90a"):
        assert "na_bwd_dkdv_wgmma_entry<__nv_bfloat16, 128, 64, 1, 1, 128, 1, 1, 3>" in source  # the plan
        raise cuda_jit.CompileError("natten_mlx CUDA tier: NVRTC compile for sm_90a failed: test")

    monkeypatch.setattr(cuda_jit, "cubin", broken)
    cuda_env("NATTEN_CUDA_WGMMA_BWD", "1")
    p = make_params(1, 9, D=128)
    q = mx.zeros((1, 4096, 2, 128), dtype=mx.bfloat16)
    with pytest.warns(UserWarning, match="wgmma backward did not build"):
        assert cuda._bwd_wgmma_plan(p, 1, (4096,), 2, 2, 128, mx.bfloat16, q.shape, q.shape) is None
    assert not cuda._use_wgmma_bwd(1, 2, 4096, 128)  # not retried
    cuda._precompiled_bwd.cache_clear()


@gpu
@pytest.mark.skipif(not cuda.is_available() or cuda_jit.arch() != "sm_90a", reason="needs a Hopper GPU")
@pytest.mark.parametrize("case", WGMMA_CASES, ids=lambda c: "x".join(map(str, c[0])) + "-d%d" % c[8])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_wgmma_backward(case, dtype, cuda_env, monkeypatch):
    """The Hopper wgmma backward passes (NATTEN_CUDA_WGMMA_BWD=1 sends these small
    problems to them; GQA, causal, dilation, GNA stride, ranks 1-3, head_dim 64 and 128):
    gradients through MLX against the float64 analytic backward."""
    cuda_env("NATTEN_CUDA_WGMMA_BWD", "1")
    used = []
    orig = cuda._precompiled_bwd
    monkeypatch.setattr(cuda, "_precompiled_bwd", lambda *a: (used.append(a[0]), orig(*a))[1])
    _run_fused_case(case, _dt(dtype), seed=12)
    assert "dkdv" in used and ("dq" in used) == cuda._WGMMA_BWD_DQ, used


@gpu
@pytest.mark.parametrize("case", TC_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_tiled_f32_forward_backward(case):
    """The tiled f32 forward (na_fwd_f32.cuh; D in {32, 64}, else the simple kernels)
    on the tensor-core shapes: key tiles full, partial and skipped."""
    _run_fused_case(case, mx.float32, seed=3)


@gpu
def test_tiled_f32_forward_big():
    """The tiled f32 forward on a larger 2-D problem (many CTAs, 4 key tiles each)."""
    case = ((40, 36), (7, 7), (1, 1), 1, 1, (False, False), 4, 2, 32, 32)
    _run_fused_case(case, mx.float32, seed=7, grads=False)


@gpu
def test_tiled_f32_backward_uses_tiled_dkdv(monkeypatch, cuda_env):
    """f32 gradients run the tiled dk/dv pass (na_bwd_f32.cuh), not the warp-per-row one,
    on a problem with asymmetric tiles (8x8 query boxes, 4x16 key tiles: the dk/dv pass
    swaps them), GQA, and many CTAs; gradients against the float64 reference.  As two
    launches (NATTEN_CUDA_FUSED_DELTA=0, big problems) and as one (small problems)."""
    used = []
    orig = cuda._kernel
    monkeypatch.setattr(cuda, "_kernel", lambda name, smem=0: (used.append(name), orig(name, smem))[1])
    case = ((40, 36), (7, 7), (1, 1), 1, 1, (False, False), 4, 2, 64, 64)
    for fused, kern in (("0", "bwd_dkdv_f32"), ("1", "bwd_f32_fd")):
        cuda_env("NATTEN_CUDA_FUSED_DELTA", fused)
        used.clear()
        _run_fused_case(case, mx.float32, seed=9)
        assert kern in used and "bwd_dkdv" not in used, (fused, used)


@gpu
@pytest.mark.parametrize("case", [TC_CASES[i] for i in (0, 3, 4, 5)], ids=lambda c: "x".join(map(str, c[0])))
def test_tensor_core_backward_split_launch(case, cuda_env):
    """NATTEN_CUDA_SPLIT_BWD=1: the dq and dk/dv passes as two launches (the dk/dv one
    with the tile roles swapped, as in the fused launch): same gradients."""
    cuda_env("NATTEN_CUDA_SPLIT_BWD", "1")
    _run_fused_case(case, mx.bfloat16, seed=5)


@gpu
@pytest.mark.parametrize("case", TC_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fused", ["0", "1"])
def test_tiled_backward_fused_delta_switch(case, dtype, fused, cuda_env, monkeypatch):
    """NATTEN_CUDA_FUSED_DELTA=1: the tiled backward as one launch that computes delta
    in its passes (the default for small problems, so the other tests run it on
    their small shapes); =0: a delta launch (tensor cores) or the dq pass' delta
    (f32), then the passes (the default for big problems).  Gradients against the
    float64 reference either way, and the kernels each one launches."""
    cuda_env("NATTEN_CUDA_FUSED_DELTA", fused)
    used = []
    orig = cuda._kernel
    monkeypatch.setattr(cuda, "_kernel", lambda name, smem=0: (used.append(name), orig(name, smem))[1])
    _run_fused_case(case, _dt(dtype), seed=13)
    one = "bwd_f32_fd" if dtype == "float32" else "bwd_tc_fd"
    if dtype == "bfloat16" or case[8] in (32, 64):  # else f32 runs the warp-per-row kernels
        assert (one in used) == (fused == "1"), used
        assert ("delta" in used or "bwd_dq_f32" in used) == (fused == "0"), used


SPLIT_CASES = [
    ((13,), 5, 2, 1, 1, False, 2, 2, 16),
    ((12,), 4, 1, 2, 1, True, 4, 2, 40),
    ((16,), 6, 1, 1, 3, False, 2, 1, 8),
    ((7, 9), (3, 5), (2, 1), (1, 2), 1, (True, False), 4, 2, 16),
    ((9, 8), (3, 4), 1, 1, (2, 2), (False, True), 2, 1, 16),
    ((5, 6, 4), (3, 3, 2), (1, 2, 1), 1, 1, (False, False, True), 2, 2, 16),
]


@gpu
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("use_rpb", [False, True])
def test_split_qk_av(case, dtype, use_rpb):
    ext, K, d, os_, gna, causal, H, Hkv, D = case
    rank = len(ext)
    p = make_params(rank, K, d, os_, gna, causal, D=D)
    if use_rpb and any(s != 1 for s in p.gna_stride):
        pytest.skip("RPB is not defined with GNA stride")
    dtype = _dt(dtype)
    tol = TOL[str(dtype).split(".")[-1]]
    rng = np.random.default_rng(1)
    B = 2
    q, qn = rnd(rng, (B,) + ext + (H, D), dtype)
    k, kn = rnd(rng, (B,) + ext + (Hkv, D), dtype)
    v, vn = rnd(rng, (B,) + ext + (Hkv, D), dtype)
    rpb = rn = None
    if use_rpb:
        rpb, rn = rnd(rng, (H,) + tuple(2 * x - 1 for x in p.kernel), dtype)
    lg = cuda.na_qk(q, k, p, rpb=rpb)
    want = oracle.oracle_qk(qn, kn, p.kernel, p.dilation, p.out_stride, p.gna_stride, p.causal, p.scale, rn)
    got = to_np(lg)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], atol=tol * 4, rtol=tol)
    attn, an = rnd(rng, lg.shape, dtype)
    out = cuda.na_av(attn, v, p)
    wo = oracle.oracle_av(an, vn, p.kernel, p.dilation, p.out_stride, p.gna_stride, p.causal)
    np.testing.assert_allclose(to_np(out), wo, atol=tol * 2, rtol=tol)
    # gradients: analytic over the oracle's tables
    dense = _Dense(ext, p, B=B)
    G = H // Hkv
    g, gn = rnd(rng, lg.shape, dtype)
    prim = [q, k] + ([rpb] if use_rpb else [])
    _, vj = mx.vjp(lambda *xs: [cuda.na_qk(xs[0], xs[1], p, rpb=xs[2] if use_rpb else None)], prim, [g])
    dq = np.zeros_like(qn).reshape(B, -1, H, D)
    dk = np.zeros_like(kn).reshape(B, -1, Hkv, D)
    drpb = np.zeros((H, int(np.prod([2 * x - 1 for x in p.kernel]))))
    dv = np.zeros_like(vn).reshape(B, -1, Hkv, D)
    dattn = np.zeros_like(an).reshape(B, -1, H, p.kernel_volume)
    gnf = gn.reshape(B, -1, H, p.kernel_volume)
    anf = an.reshape(B, -1, H, p.kernel_volume)
    dof, do = None, None
    do, dof = rnd(rng, out.shape, dtype)
    dofl = dof.reshape(B, -1, H, D)
    qf, kf, vf = qn.reshape(B, -1, H, D), kn.reshape(B, -1, Hkv, D), vn.reshape(B, -1, Hkv, D)
    for b in range(B):
        for orow, qtok, slots in dense.tables[b]:
            for h in range(H):
                for n, (kt, rl) in enumerate(slots):
                    if kt < 0:
                        continue
                    dq[b, qtok, h] += p.scale * gnf[b, orow, h, n] * kf[b, kt, h // G]
                    dk[b, kt, h // G] += p.scale * gnf[b, orow, h, n] * qf[b, qtok, h]
                    drpb[h, rl] += gnf[b, orow, h, n]
                    dattn[b, orow, h, n] = dofl[b, orow, h] @ vf[b, kt, h // G]
                    dv[b, kt, h // G] += anf[b, orow, h, n] * dofl[b, orow, h]
    np.testing.assert_allclose(to_np(vj[0]), dq.reshape(qn.shape), atol=tol * 4, rtol=tol, err_msg="dq")
    np.testing.assert_allclose(to_np(vj[1]), dk.reshape(kn.shape), atol=tol * 4, rtol=tol, err_msg="dk")
    if use_rpb:
        np.testing.assert_allclose(to_np(vj[2]), drpb.reshape(rn.shape), atol=tol * 8, rtol=tol, err_msg="drpb")
    _, vj = mx.vjp(lambda a, vv: [cuda.na_av(a, vv, p)], [attn, v], [do])
    np.testing.assert_allclose(to_np(vj[0]), dattn.reshape(an.shape), atol=tol * 4, rtol=tol, err_msg="dattn")
    np.testing.assert_allclose(to_np(vj[1]), dv.reshape(vn.shape), atol=tol * 4, rtol=tol, err_msg="dv")


def test_zero_lse_cotangent_cache(monkeypatch):
    """na_out's stand-in lse cotangent (pure MLX, runs everywhere): zeros of the
    lse's shape, made once, also when first made under mx.compile and then used
    eagerly; the real cotangent where the lse is returned or the problem is big."""
    monkeypatch.setattr(cuda, "_zero_lses", {})
    x = mx.ones((3, 5))
    f = lambda a: a + cuda._lse_cotangent(mx.full(a.shape, 7.0), False)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(mx.compile(f)(x)), np.ones((3, 5)))
    z = cuda._zero_lses[(3, 5)]
    np.testing.assert_array_equal(np.asarray(f(2 * x)), 2 * np.ones((3, 5)))
    assert cuda._lse_cotangent(mx.zeros((3, 5)), False) is z
    d = mx.full((3, 5), 7.0)
    assert cuda._lse_cotangent(d, True) is d
    big = mx.zeros((cuda._ZERO_LSE_CACHE_MAX + 1,))
    assert cuda._lse_cotangent(big, False) is big and len(cuda._zero_lses) == 1


@gpu
@pytest.mark.parametrize("ext, K, dtype, extra", [
    ((64,), (7,), "float32", None),           # warp-per-row kernels (small 1-D f32)
    ((12, 10), (3, 5), "float32", None),      # tiled f32
    ((12, 10), (3, 5), "bfloat16", None),     # tensor cores
    ((20,), (5,), "float32", "rpb"),          # the custom function with placeholders
], ids=["simple", "tiled-f32", "tc-bf16", "rpb"])
def test_na_out_backward_equals_na_fused(ext, K, dtype, extra):
    """na_out ignores the lse cotangent (a cached zero stands in for MLX's zero
    fill): its gradients are na_fused's with a zero lse cotangent, bit for bit,
    eagerly, on a second call (cache hit) and under mx.compile."""
    dt = _dt(dtype)
    rng = np.random.default_rng(7)
    p = make_params(len(ext), K, D=32)
    q, k, v, do = (rnd(rng, (2,) + ext + (2, 32), dt)[0] for _ in range(4))
    kw = {"rpb": rnd(rng, (2,) + tuple(2 * x - 1 for x in K), dt)[0]} if extra == "rpb" else {}
    want = mx.vjp(lambda a, b, c: [cuda.na_fused(a, b, c, p, **kw)[0]], [q, k, v], [do])
    vg = lambda a, b, c: mx.vjp(lambda x, y, z: [cuda.na_out(x, y, z, p, **kw)], [a, b, c], [do])  # noqa: E731
    for got in (vg(q, k, v), vg(q, k, v), mx.compile(vg)(q, k, v)):
        for w, g in zip(want[0] + want[1], got[0] + got[1]):
            np.testing.assert_array_equal(to_np(g), to_np(w))


@gpu
def test_compile_and_grad_compose():
    """Works under mx.compile and mx.value_and_grad, same numbers as eager."""
    rng = np.random.default_rng(5)
    p = make_params(2, (3, 3), D=32)
    q, _ = rnd(rng, (1, 8, 8, 2, 32), mx.bfloat16)
    k, _ = rnd(rng, (1, 8, 8, 2, 32), mx.bfloat16)
    v, _ = rnd(rng, (1, 8, 8, 2, 32), mx.bfloat16)

    def loss(q, k, v):
        o, _ = cuda.na_fused(q, k, v, p)
        return (o.astype(mx.float32) ** 2).sum()

    vg = mx.value_and_grad(loss, argnums=(0, 1, 2))
    l0, g0 = vg(q, k, v)
    l1, g1 = mx.compile(vg)(q, k, v)
    mx.eval(l0, g0, l1, g1)
    assert abs(l0.item() - l1.item()) < 1e-3 * max(1.0, abs(l0.item()))
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(to_np(a), to_np(b), atol=1e-2)


SMALL_CASES = [
    ((256,), 7, 1, 1, 1, False, 4, 4, 32, 32),  # the benchmark's seed-1d-256 (B 2 here)
    ((32, 32), (7, 7), 1, 1, 1, (False, True), 4, 2, 32, 32),
    ((12, 10, 9), (3, 3, 3), (2, 1, 1), 1, 1, False, 2, 1, 64, 64),
]


@gpu
@pytest.mark.parametrize("case", SMALL_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_small_problems_run_warp_per_row_kernels(case, dtype, monkeypatch):
    """NATTEN_CUDA_SMALL=16384: problems of at most 16384 query rows and 64 window keys
    run the warp-per-row forward and backward (no tiled kernel is built), with right
    values and gradients; the tiled-path tests run with NATTEN_CUDA_SMALL=0 instead."""
    monkeypatch.setenv("NATTEN_CUDA_SMALL", "16384")
    cuda.refresh_env()
    used = []
    orig = cuda._kernel
    monkeypatch.setattr(cuda, "_kernel", lambda name, smem=0: (used.append(name), orig(name, smem))[1])
    cuda.clear_plans()
    _run_fused_case(case, _dt(dtype), seed=11)
    assert "fwd" in used and "bwd_dq" in used and "bwd_dkdv" in used, used
    assert not [n for n in used if n in cuda._TC_NAMES], used


class _RecordingKernel:
    """Stands in for mx.fast.cuda_kernel off the GPU: records each launch and
    returns zeros of the output shapes."""

    log: list = []

    def __init__(self, name, **kw):
        self.name = name

    def __call__(self, inputs, output_shapes, output_dtypes, **kw):
        self.log.append((self.name, [(tuple(a.shape), a.dtype) for a in inputs], output_shapes, output_dtypes,
                         sorted((k, str(v)) for k, v in kw.items())))
        return [mx.zeros(s, dtype=d) for s, d in zip(output_shapes, output_dtypes)]


@pytest.mark.parametrize("rank,dtype,rpb", [(2, "float32", False), (2, "bfloat16", False), (1, "float32", False),
                                            (1, "float16", True), (3, "bfloat16", False)])
def test_launch_plans_are_built_once(rank, dtype, rpb, monkeypatch):
    """The fused op's custom functions build their launch plans once per shapes and
    dtype and replay them: a second call builds none and launches the same kernels
    with the same arguments; another shape builds new ones (pure Python: cuda_kernel
    is faked, runs everywhere)."""
    monkeypatch.setattr(mx.fast, "cuda_kernel", _RecordingKernel, raising=False)
    monkeypatch.setattr(cuda, "_kernels", {})
    builds = []
    for name in ("_fwd_plan", "_bwd_plan"):
        orig = getattr(cuda, name)
        monkeypatch.setattr(cuda, name, lambda *a, _o=orig, _n=name: (builds.append(_n), _o(*a))[1])
    cuda.clear_plans()
    dt = _dt(dtype)
    p = make_params(rank, 3, D=32)
    bias = mx.zeros((2,) + (5,) * rank, dtype=dt) if rpb else None

    def call(extent):
        q = mx.ones((1,) + (extent,) * rank + (2, 32), dtype=dt)
        prim = [q, q, q] + ([bias] if rpb else [])
        _RecordingKernel.log = []
        mx.vjp(lambda a, b, c, *r: [cuda.na_out(a, b, c, p, rpb=r[0] if r else None)], prim, [q])
        return _RecordingKernel.log

    first = call(8)
    assert builds == ["_fwd_plan", "_bwd_plan"] and len(first) >= 2, (builds, first)
    assert call(8) == first and builds == ["_fwd_plan", "_bwd_plan"]
    call(9)
    assert builds == ["_fwd_plan", "_bwd_plan"] * 2
    cuda.clear_plans()


def test_small_problems_rule(monkeypatch):
    """Which problems count as small (pure Python, runs everywhere): by default none
    (the tiled paths, whose small backward is one launch); NATTEN_CUDA_SMALL=R: any
    rank and dtype up to R rows and 64 keys; 0: none."""
    monkeypatch.delenv("NATTEN_CUDA_SMALL", raising=False)
    cuda.refresh_env()
    p7, p49 = make_params(1, 7), make_params(2, 7)
    f32, bf16 = mx.float32, mx.bfloat16
    assert not cuda._small(p7, 1024, f32) and not cuda._small(p49, 1024, bf16)
    monkeypatch.setenv("NATTEN_CUDA_SMALL", "16384")
    cuda.refresh_env()
    assert cuda._small(p7, 1024, f32) and cuda._small(p49, 16384, bf16) and not cuda._small(p49, 16385, bf16)
    assert not cuda._small(make_params(2, 9), 1024, f32)  # 81 keys
    monkeypatch.setenv("NATTEN_CUDA_SMALL", "0")
    cuda.refresh_env()
    assert not cuda._small(p7, 1, f32)


def test_fused_delta_rule(monkeypatch):
    """Which tiled backwards run as one launch (pure Python): problems of <= 16384
    query rows, except f32 3-D ones (measured slower); NATTEN_CUDA_FUSED_DELTA=0/1
    forces either way."""
    monkeypatch.delenv("NATTEN_CUDA_FUSED_DELTA", raising=False)
    cuda.refresh_env()
    f32, bf16 = mx.float32, mx.bfloat16
    p1, p2, p3 = make_params(1, 7), make_params(2, 7), make_params(3, 3)
    assert cuda._fused_delta(p1, 1024, f32) and cuda._fused_delta(p2, 16384, f32)
    assert cuda._fused_delta(p3, 16384, bf16) and not cuda._fused_delta(p3, 16384, f32)
    assert not cuda._fused_delta(p2, 16385, bf16)
    for mode, want in (("0", False), ("1", True)):
        monkeypatch.setenv("NATTEN_CUDA_FUSED_DELTA", mode)
        cuda.refresh_env()
        assert all(cuda._fused_delta(p, r, f32) == want for p in (p1, p3) for r in (1, 1 << 20))


@gpu
def test_supports_and_dispatch():
    p = make_params(2, 3)
    dev = mx.default_device()
    assert cuda.supports("fused", p, mx.bfloat16, dev, rpb=True, extra_kv=True, varlen=True, gqa=True)
    assert not cuda.supports("fused", p, mx.float64, dev)
    assert not cuda.supports("fused", p, mx.float32, mx.cpu)
    assert not cuda.supports("qk", p, mx.float32, dev, varlen=True)
