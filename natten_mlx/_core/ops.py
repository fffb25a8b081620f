"""Backend registry and per-call dispatch.

Tiers, best first: ``nanobind`` (the compiled C core on MLX's CPU device,
``natten_mlx._core.compiled``), ``fast_metal`` (on Linux: CUDA C kernels run
through ``mx.fast.cuda_kernel``, ``natten_mlx._core.cuda``) and ``pure`` (MLX
ops, ``natten_mlx._core.pure``).  Every tier module exposes

    na_fused(q, k, v, p, rpb=None, extra_k=None, extra_v=None, varlen=None) -> (out, lse)
    na_qk(q, k, p, rpb=None) -> logits
    na_av(attn, v, p) -> out
    supports(op, p, dtype, device, **features) -> bool

and optionally ``is_available() -> bool``.  A call walks the chain of the
selected backend and runs the first tier whose ``supports`` says yes; ``pure``
supports everything, so an unsupported configuration falls to the next tier and
never to a wrong answer.

``NATTEN_BACKEND`` is read once, when this module is imported.  Any value other
than the four names silently becomes ``auto`` (natten-mlx behaviour).
"""

from __future__ import annotations

import importlib
import os
from typing import Dict, List, Optional

import mlx.core as mx

from natten_mlx._core.params import NAParams

BACKENDS = ("auto", "fast_metal", "nanobind", "pure")

_env_value = os.environ.get("NATTEN_BACKEND", "auto").strip().lower()
_selected = _env_value if _env_value in BACKENDS else "auto"

# Tier chains: the selected backend first, then the tiers it falls back to.
_CHAINS = {
    "auto": ("nanobind", "fast_metal", "pure"),
    "nanobind": ("nanobind", "fast_metal", "pure"),
    "fast_metal": ("fast_metal", "pure"),
    "pure": ("pure",),
}

_TIER_MODULES = {
    "pure": "natten_mlx._core.pure",
    "nanobind": "natten_mlx._core.compiled",
    "fast_metal": "natten_mlx._core.cuda",
}

_tier_cache: Dict[str, object] = {}
_nanobind_ext_ok: Optional[bool] = None


# --------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------


def has_nanobind() -> bool:
    """True iff the compiled extension ``natten_mlx._core._natten_ext`` imports."""
    global _nanobind_ext_ok
    if _nanobind_ext_ok is None:
        ok = False
        try:
            # The compiled tier loads the extension (honouring the
            # NATTEN_MLX_NANOBIND_MODULE override and its MLX-version check).
            ok = bool(importlib.import_module(_TIER_MODULES["nanobind"]).is_available())
        except Exception:
            try:
                importlib.import_module("natten_mlx._core._natten_ext")
                ok = True
            except Exception:  # ImportError, or a broken build (OSError, ...)
                ok = False
        _nanobind_ext_ok = ok
    return _nanobind_ext_ok


def has_metal() -> bool:
    """Metal kernels do not exist on Linux: always False here."""
    return False


def tier_module(name: str):
    """The tier module, or None when it cannot be imported or is unavailable."""
    if name not in _TIER_MODULES:
        return None
    if name not in _tier_cache:
        mod = None
        if name == "nanobind" and not has_nanobind():
            mod = None
        else:
            try:
                mod = importlib.import_module(_TIER_MODULES[name])
            except Exception:
                mod = None
        _tier_cache[name] = mod
    mod = _tier_cache[name]
    if mod is None:
        return None
    avail = getattr(mod, "is_available", None)
    if avail is not None:
        try:
            if not avail():
                return None
        except Exception:
            return None
    return mod


def tier_available(name: str) -> bool:
    if name == "pure":
        return True
    return tier_module(name) is not None


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------


def set_backend(name: str) -> None:
    """Select ``auto``, ``pure``, ``fast_metal`` or ``nanobind``.

    Availability is not checked (natten-mlx behaviour): an unavailable tier
    falls back per call to the next one in its chain.
    """
    global _selected
    if name not in BACKENDS:
        raise ValueError(f"Unknown backend '{name}'. Expected one of {sorted(BACKENDS)}")
    _selected = name


def get_backend() -> str:
    """The resolved backend name (``auto`` is re-resolved on every call)."""
    if _selected != "auto":
        return _selected
    if has_nanobind() and tier_available("nanobind"):
        return "nanobind"
    if tier_available("fast_metal"):
        return "fast_metal"
    return "pure"


def selected_backend() -> str:
    """The raw selection (may be ``auto``)."""
    return _selected


def _device():
    return mx.default_device()


def tier_chain() -> List[str]:
    return list(_CHAINS[_selected])


def select_tier(op: str, p: NAParams, dtype, **features) -> str:
    """Name of the tier that will run ``op`` for this problem."""
    feats = {"rpb": False, "extra_kv": False, "varlen": False, "gqa": False}
    feats.update(features)
    return _select(op, p, dtype, feats)[0]


def _select(op, p, dtype, feats):
    """(name, module) of select_tier's choice; every feature given (the per-call path:
    no keyword copies, no second module lookup)."""
    dev = _device()
    if feats["rpb"] and any(s != 1 for s in p.gna_stride):
        # Undefined (the C API rejects it too): the bias index of a slot would
        # depend on which query of the stride group is asking.
        raise ValueError("relative position bias (rpb) cannot be combined with "
                         f"gna_stride > 1; got gna_stride={tuple(p.gna_stride)}")
    for name in _CHAINS[_selected]:
        mod = tier_module(name)
        if mod is None:
            continue
        sup = getattr(mod, "supports", None)
        try:
            ok = True if sup is None else bool(sup(op, p, dtype, dev, **feats))
        except Exception:
            ok = False
        if ok:
            return name, mod
    # Every chain ends with pure; if even pure says no, the problem is invalid.
    pure = tier_module("pure")
    if not pure.supports(op, p, dtype, dev, **feats):
        raise ValueError(f"no tier supports op '{op}' for {p}")
    return "pure", pure


def _features(q_heads, kv_heads, rpb=None, extra_k=None, varlen=None):
    return {
        "rpb": rpb is not None,
        "extra_kv": extra_k is not None,
        "varlen": varlen is not None,
        "gqa": q_heads != kv_heads,
    }


# --------------------------------------------------------------------------
# Dispatch (the entry points the public API, compat and extras use)
# --------------------------------------------------------------------------


def _fused_tier(q, k, p, rpb, extra_k, varlen):
    return _select("fused", p, q.dtype,
                   _features(q.shape[-2], k.shape[-2], rpb, extra_k, varlen))[1]


def na_fused(q, k, v, p: NAParams, rpb=None, extra_k=None, extra_v=None, varlen=None):
    """Fused NA: returns (out [B,*O,H,D] in q.dtype, lse [B,*O,H] float32)."""
    mod = _fused_tier(q, k, p, rpb, extra_k, varlen)
    return mod.na_fused(q, k, v, p, rpb=rpb, extra_k=extra_k, extra_v=extra_v, varlen=varlen)


def tier_na_out(mod):
    """Tier module `mod`'s out-only fused function, fn(q, k, v, p, rpb=,
    extra_k=, extra_v=, varlen=) -> out: its ``na_out`` where it defines one
    (to skip building the lse and its gradient; compiled: ~5 us a call), else
    ``na_fused``'s out."""
    fn = getattr(mod, "na_out", None)
    if fn is not None:
        return fn
    return lambda q, k, v, p, **kw: mod.na_fused(q, k, v, p, **kw)[0]


def na_out(q, k, v, p: NAParams, rpb=None, extra_k=None, extra_v=None, varlen=None):
    """Fused NA for callers that drop the lse: out only (tier_na_out)."""
    mod = _fused_tier(q, k, p, rpb, extra_k, varlen)
    return tier_na_out(mod)(q, k, v, p, rpb=rpb, extra_k=extra_k, extra_v=extra_v, varlen=varlen)


def na_qk(q, k, p: NAParams, rpb=None):
    """Split QK: logits [B,*O,H,KK] in q.dtype, masked slots -inf."""
    feats = _features(q.shape[-2], k.shape[-2], rpb)
    name = select_tier("qk", p, q.dtype, **feats)
    mod = tier_module(name) or tier_module("pure")
    return mod.na_qk(q, k, p, rpb=rpb)


def na_av(attn, v, p: NAParams):
    """Split AV: out [B,*O,H,D] in v.dtype; weights at masked slots ignored."""
    feats = _features(attn.shape[-2], v.shape[-2])
    name = select_tier("av", p, v.dtype, **feats)
    mod = tier_module(name) or tier_module("pure")
    return mod.na_av(attn, v, p)


__all__ = [
    "BACKENDS",
    "has_nanobind",
    "has_metal",
    "tier_module",
    "tier_available",
    "set_backend",
    "get_backend",
    "selected_backend",
    "tier_chain",
    "select_tier",
    "na_fused",
    "na_out",
    "na_qk",
    "na_av",
]


# --------------------------------------------------------------------------
# natten-mlx's per-rank entry points (``ops.na1d_forward``, ``ops.na1d_qk_backward``
# ...).  Code written against natten-mlx calls these directly; they take
# normalised tuples and go through the same dispatch.  Backwards are VJPs of
# the dispatched forward (the tier's own VJP, or MLX autodiff for pure).
# --------------------------------------------------------------------------


def _np_params(rank, kernel_size, stride, dilation, is_causal, scale, head_dim):
    def tup(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x,) * rank
    sc = float(head_dim) ** -0.5 if scale is None else float(scale)
    return NAParams(rank, tuple(int(k) for k in tup(kernel_size)),
                    tuple(int(d) for d in tup(dilation)), tuple(int(s) for s in tup(stride)),
                    (1,) * rank, tuple(bool(c) for c in tup(is_causal)), sc)


def _make_rank_ops(rank):
    def forward(q, k, v, kernel_size, stride, dilation, is_causal, scale=None):
        p = _np_params(rank, kernel_size, stride, dilation, is_causal, scale, q.shape[-1])
        return na_out(q, k, v, p)

    def qk_forward(q, k, kernel_size, stride, dilation, is_causal, scale=None):
        p = _np_params(rank, kernel_size, stride, dilation, is_causal, scale, q.shape[-1])
        return na_qk(q, k, p)

    def av_forward(attn, v, kernel_size, stride, dilation, is_causal):
        p = _np_params(rank, kernel_size, stride, dilation, is_causal, 1.0, v.shape[-1])
        return na_av(attn, v, p)

    def backward(q, k, v, grad_out, kernel_size, stride, dilation, is_causal, scale=None):
        fn = lambda a, b, c: forward(a, b, c, kernel_size, stride, dilation, is_causal, scale)  # noqa: E731
        _, grads = mx.vjp(fn, [q, k, v], [grad_out])
        return tuple(grads)

    def qk_backward(q, k, grad_attn, kernel_size, stride, dilation, is_causal, scale=None):
        fn = lambda a, b: qk_forward(a, b, kernel_size, stride, dilation, is_causal, scale)  # noqa: E731
        _, grads = mx.vjp(fn, [q, k], [grad_attn])
        return tuple(grads)

    def av_backward(attn, v, grad_out, kernel_size, stride, dilation, is_causal):
        fn = lambda a, b: av_forward(a, b, kernel_size, stride, dilation, is_causal)  # noqa: E731
        _, grads = mx.vjp(fn, [attn, v], [grad_out])
        return tuple(grads)

    names = {"forward": forward, "qk_forward": qk_forward, "av_forward": av_forward,
             "backward": backward, "qk_backward": qk_backward, "av_backward": av_backward}
    out = {}
    for suffix, fn in names.items():
        fn.__name__ = f"na{rank}d_{suffix}"
        out[fn.__name__] = fn
    return out


for _r in (1, 2, 3):
    for _name, _fn in _make_rank_ops(_r).items():
        globals()[_name] = _fn
        __all__.append(_name)
del _r, _name, _fn
