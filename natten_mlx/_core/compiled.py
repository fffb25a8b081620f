"""Compiled tier: the natten C core on MLX's CPU device.

The extension ``natten_mlx._core._natten_ext`` exposes one lazy MLX primitive
per C operation (na_forward, na_backward, qk_forward, qk_backward, av_forward,
av_backward).  Their ``eval_cpu`` hands the C call to MLX's CPU stream with
views of the MLX buffers (strides and offsets as they are: no copies).  The forward
primitives carry their own VJPs (the C backwards, see natten_ext.cpp), so the
calls here build one graph node each and no Python runs during autodiff:

* ``na_fused``: forward -> (out, lse); the backward is the fused C backward,
  which recomputes probabilities from the lse (kept in float64 for float64
  problems, returned to callers as float32).  The gradient that reaches q/k
  through the *returned lse* (``return_lse=True``, ``merge_attentions``) is a
  custom function over the raw lse, built only when the caller wants the lse
  (``need_lse``): d lse / d logit_n = P_n, pushed through the split QK
  backward (and by hand through the extra tokens).
* ``na_qk`` / ``na_av``: split ops with their C backwards.

Nothing here evaluates arrays, so everything works inside ``mx.compile``,
``mx.grad`` and ``nn.value_and_grad``.  ``mx.vmap`` works too (forward and
backward): the primitives' vmap rule runs one primitive per mapped instance.  The primitives run on the CPU only;
``supports`` says no for other devices and the dispatcher falls through.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Optional

import mlx.core as mx

from natten_mlx._core.params import NAParams

_FLOAT_DTYPES = frozenset((mx.float32, mx.float16, mx.bfloat16, mx.float64))

_ext_mod = None
_ext_error: Optional[str] = None

# Which C kernels run: "auto" (fast where it can, else reference),
# "reference" or "fast" (UNSUPPORTED -> error).  Tests and benchmarks switch it.
_IMPLS = {"auto": 0, "reference": 1, "fast": 2}
_impl = _IMPLS.get(os.environ.get("NATTEN_MLX_C_IMPL", "auto").strip().lower(), 0)


def extension():
    """The loaded extension module, or None (see ``load_error()``)."""
    global _ext_mod, _ext_error
    if _ext_mod is None and _ext_error is None:
        name = os.environ.get("NATTEN_MLX_NANOBIND_MODULE") or "natten_mlx._core._natten_ext"
        try:
            mod = importlib.import_module(name)
            built = getattr(mod, "built_with_mlx", "")
            if built and built != mx.__version__:
                raise ImportError(
                    f"{name} was built against mlx {built} but mlx {mx.__version__} is "
                    "installed; rebuild it (`make ext` or `pip install .`)")
            _ext_mod = mod
        except Exception as exc:  # ImportError, OSError from a broken build
            _ext_error = f"{type(exc).__name__}: {exc}"
    return _ext_mod


def load_error() -> Optional[str]:
    extension()
    return _ext_error


def is_available() -> bool:
    return extension() is not None


def set_impl(name: str) -> str:
    """Select the C kernels ("auto", "reference", "fast"); returns the previous name."""
    global _impl
    if name not in _IMPLS:
        raise ValueError(f"Unknown C implementation '{name}'. Expected one of {sorted(_IMPLS)}")
    prev = get_impl()
    _impl = _IMPLS[name]
    _PRIMS.clear()
    _make_lse_grad.cache_clear()
    return prev


def get_impl() -> str:
    return {v: k for k, v in _IMPLS.items()}[_impl]


def _is_cpu(device) -> bool:
    if device is None:
        device = mx.default_device()
    try:
        return device.type is mx.cpu  # enum members are singletons; `==` costs 0.5 us
    except Exception:
        return False


def supports(op, p: NAParams, dtype, device=None, **features) -> bool:
    """The C core covers every valid problem on the CPU, in the four float dtypes."""
    if op not in ("fused", "qk", "av"):
        return False
    if not _is_cpu(device) or dtype not in _FLOAT_DTYPES:
        return False
    if not 1 <= p.rank <= 3:
        return False
    if features.get("rpb") and any(s != 1 for s in p.gna_stride):
        return False  # RPB is defined for plain NA only (the C core rejects it)
    if features.get("extra_kv") and op != "fused":
        return False
    return is_available()


def _kw(p: NAParams) -> dict:
    return dict(
        rank=int(p.rank),
        kernel=[int(x) for x in p.kernel],
        dilation=[int(x) for x in p.dilation],
        out_stride=[int(x) for x in p.out_stride],
        gna_stride=[int(x) for x in p.gna_stride],
        causal=[bool(x) for x in p.causal],
        scale=float(p.scale),
        impl=_impl,
    )


def _acc(dtype):
    return mx.float64 if dtype == mx.float64 else mx.float32


# --------------------------------------------------------------------------
# Fused NA
# --------------------------------------------------------------------------


_PRIMS: dict = {}


def _prims(p: NAParams):
    """(na_forward, qk_forward, av_forward) of the extension bound to p's parameters.
    A plain dict, not lru_cache: its bookkeeping cost ~1 us of a ~10 us call."""
    r = _PRIMS.get(p)
    if r is None:
        ext = extension()
        prm = ext.Params(**_kw(p))
        r = (functools.partial(ext.na_forward_p, prm), functools.partial(ext.qk_forward_p, prm),
             functools.partial(ext.av_forward_p, prm))
        if len(_PRIMS) >= 256:
            _PRIMS.clear()
        _PRIMS[p] = r
    return r


def _rows(x, p: NAParams):
    """The full-resolution rows that produce outputs (every out_stride-th)."""
    if all(s == 1 for s in p.out_stride):
        return x
    idx = (slice(None),) + tuple(slice(None, None, int(s)) for s in p.out_stride)
    return x[idx]


@functools.lru_cache(maxsize=256)
def _make_lse_grad(p: NAParams, has_rpb: bool, has_extra: bool, has_varlen: bool):
    """lse -> float32 lse, with d lse / d(q, k, rpb, extra_k) as its VJP."""
    ext = extension()
    kw = _kw(p)

    def split(opt):
        it = iter(opt)
        rpb = next(it) if has_rpb else None
        ek = next(it) if has_extra else None
        vl = next(it) if has_varlen else None
        return rpb, ek, vl

    @mx.custom_function
    def lse_fn(lse_raw, q, k, *opt):
        return lse_raw.astype(mx.float32)

    @lse_fn.vjp
    def lse_vjp(primals, cotangents, outputs):
        lse_raw, q, k, *opt = primals
        rpb, ek, vl = split(opt)
        g = cotangents
        if isinstance(g, (list, tuple)):
            g = g[0]
        acc = _acc(q.dtype)
        g = g.astype(acc)
        lse = lse_raw.astype(acc)
        dead = mx.isinf(lse)                   # varlen rows outside a sample
        lse_safe = mx.where(dead, mx.zeros_like(lse), lse)
        g = mx.where(dead, mx.zeros_like(g), g)

        logits = ext.qk_forward(q, k, rpb, vl, **kw).astype(acc)  # masked: -inf
        prob = mx.exp(logits - lse_safe[..., None])
        dlogits = (g[..., None] * prob).astype(q.dtype)
        gr = ext.qk_backward(q, k, dlogits, has_rpb, vl, **kw)
        dq, dk = gr[0], gr[1]
        res_tail = []
        if has_rpb:
            res_tail.append(gr[2])
        if has_extra:
            # The extra tokens are attended by every output row, unmasked.
            B = q.shape[0]
            H, D = q.shape[-2], q.shape[-1]
            Hkv, N = ek.shape[-2], ek.shape[1]
            G = H // Hkv
            qs = _rows(q, p).astype(acc)              # [B,O..,H,D]
            osp = qs.shape[1:-2]
            qf = qs.reshape(B, -1, Hkv, G, D)         # [B,O,Hkv,G,D]
            ekf = ek.astype(acc)                      # [B,N,Hkv,D]
            sc = float(p.scale)
            le = sc * mx.einsum("bohgd,bnhd->bohgn", qf, ekf)
            ls = lse_safe.reshape(B, -1, Hkv, G, 1)
            w = g.reshape(B, -1, Hkv, G, 1) * mx.exp(le - ls)   # [B,O,Hkv,G,N]
            dqs = sc * mx.einsum("bohgn,bnhd->bohgd", w, ekf)
            dek = sc * mx.einsum("bohgn,bohgd->bnhd", w, qf)
            dqs = dqs.reshape((B,) + tuple(osp) + (H, D)).astype(q.dtype)
            if all(s == 1 for s in p.out_stride):
                dq = dq + dqs
            else:
                idx = (slice(None),) + tuple(slice(None, None, int(s)) for s in p.out_stride)
                full = mx.zeros(q.shape, dtype=q.dtype)
                full[idx] = dqs
                dq = dq + full
            res_tail.append(dek.astype(ek.dtype))
            del N
        if has_varlen:
            res_tail.append(mx.zeros_like(vl))
        return (mx.zeros_like(lse_raw), dq, dk, *res_tail)

    return lse_fn


def na_fused(q, k, v, p: NAParams, rpb=None, extra_k=None, extra_v=None, varlen=None,
             need_lse=True):
    """Fused NA on the C core: (out [B,*O,H,Dv] in q.dtype, lse [B,*O,H] float32).

    ``need_lse=False`` returns (out, None) and skips building the lse's
    gradient function (ops.na_out: callers that drop the lse)."""
    if extension() is None:
        raise RuntimeError(f"natten_mlx compiled tier unavailable: {load_error()}")
    if (extra_k is None) != (extra_v is None):
        raise ValueError("extra_k and extra_v must be given together")
    dt = q.dtype
    k = k.astype(dt)
    v = v.astype(dt)
    if rpb is not None:
        rpb = rpb.astype(dt)
    if extra_k is not None:
        extra_k = extra_k.astype(dt)
        extra_v = extra_v.astype(dt)
    if varlen is not None:
        varlen = mx.array(varlen) if not isinstance(varlen, mx.array) else varlen
        varlen = varlen.astype(mx.int32)
    out, lse_raw = _prims(p)[0](q, k, v, rpb, extra_k, extra_v, varlen)
    if not need_lse:
        return out, None
    lopt = [a for a in (rpb, extra_k, varlen) if a is not None]
    lse = _make_lse_grad(p, rpb is not None, extra_k is not None, varlen is not None)(
        lse_raw, q, k, *lopt)
    return out, lse


def na_out(q, k, v, p: NAParams, rpb=None, extra_k=None, extra_v=None, varlen=None):
    """``na_fused`` without the lse (see ops.na_out)."""
    return na_fused(q, k, v, p, rpb, extra_k, extra_v, varlen, need_lse=False)[0]


# --------------------------------------------------------------------------
# Split QK / AV
# --------------------------------------------------------------------------


def na_qk(q, k, p: NAParams, rpb=None):
    """Split QK: logits [B,*O,H,KK] in q.dtype; masked slots -inf."""
    if extension() is None:
        raise RuntimeError(f"natten_mlx compiled tier unavailable: {load_error()}")
    return _prims(p)[1](q, k.astype(q.dtype), None if rpb is None else rpb.astype(q.dtype), None)


def na_av(attn, v, p: NAParams):
    """Split AV: out [B,*O,H,Dv] in v.dtype; weights at masked slots ignored."""
    if extension() is None:
        raise RuntimeError(f"natten_mlx compiled tier unavailable: {load_error()}")
    return _prims(p)[2](attn.astype(v.dtype), v, None)


__all__ = [
    "extension",
    "load_error",
    "is_available",
    "supports",
    "set_impl",
    "get_impl",
    "na_fused",
    "na_out",
    "na_qk",
    "na_av",
]
