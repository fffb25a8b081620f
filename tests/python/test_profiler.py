"""`python -m natten_mlx.profiler`: FLOP counting, flag handling, dry run, a tiny timed run.

No timings are asserted; only that the tool runs, reports and fails cleanly.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from natten_mlx import profiler
from natten_mlx._core import ops

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _problem(argv):
    args = profiler.build_parser().parse_args(argv)
    if args.causal is not None and len(args.causal) == 0:
        args.causal = [True]
    return profiler.problem_from_args(args)


def _brute_force_pairs(extent, kernel, stride, dilation, causal):
    """Count attended (output query, key) pairs by enumerating every slot of every query.

    Written from the spec's definitions (non-causal: K valid slots; causal: slot k sits at
    i - (K-1-k)*d and is valid iff that is >= 0), independently of profiler.attended_pairs.
    """
    axes = []
    for x, k, s, d, c in zip(extent, kernel, stride, dilation, causal):
        per_query = []
        for i in range(0, x, s):
            if c:
                per_query.append([i - (k - 1 - j) * d >= 0 for j in range(k)])
            else:
                per_query.append([True] * k)
        axes.append(per_query)
    total = 0
    for queries in itertools.product(*axes):
        for slots in itertools.product(*queries):
            total += all(slots)
    return total


@pytest.mark.parametrize("extent,kernel,stride,dilation,causal", [
    ((13,), (5,), (1,), (1,), (False,)),
    ((13,), (5,), (1,), (1,), (True,)),
    ((16,), (5,), (2,), (2,), (True,)),
    ((9,), (3,), (3,), (3,), (True,)),
    ((7, 6), (3, 4), (2, 1), (2, 1), (True, False)),
    ((5, 6, 4), (3, 3, 2), (1, 2, 1), (1, 2, 2), (False, True, True)),
])
def test_attended_pairs_match_brute_force(extent, kernel, stride, dilation, causal):
    p = profiler.Problem(input_size=extent, window=kernel, stride=stride, dilation=dilation,
                         causal=causal, batch=1, heads=1, heads_kv=1, dim=1, dtype="fp32",
                         add_kv=0, backprop=False)
    assert p.attended_pairs() == _brute_force_pairs(extent, kernel, stride, dilation, causal)


def test_flop_formula():
    p = _problem(["-i", "32", "32", "-w", "7", "-b", "2", "-n", "4", "-d", "32", "--add-kv", "3"])
    n, kk = 32 * 32, 49
    assert p.flops_forward() == 4 * 2 * 4 * (n * kk + n * 3) * 32
    assert p.flops_backward() * 2 == 5 * p.flops_forward()


def test_defaults_and_broadcasting():
    p = _problem([])
    assert (p.input_size, p.window, p.dtype) == ((32, 32), (7, 7), "fp32")
    p = _problem(["-i", "10", "12", "-c", "-s", "2"])
    assert p.window == (10, 12)            # upstream default: window = input (self-attention)
    assert p.causal == (True, True) and p.stride == (2, 2)
    p = _problem(["-i", "10", "12", "-w", "3", "5", "-c", "1", "0", "--heads-kv", "2"])
    assert p.window == (3, 5) and p.causal == (True, False) and p.heads_kv == 2


def test_dry_run_lists_every_tier(capsys):
    prev = ops.selected_backend()
    assert profiler.main(["-i", "12", "12", "-w", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for tier in ("pure", "nanobind", "fast_metal"):
        assert tier in out
    assert "FLOPs" in out
    assert ops.selected_backend() == prev


def test_tiny_timed_run_with_backward(capsys):
    prev = ops.selected_backend()
    rc = profiler.main(["-i", "9", "-w", "3", "-c", "--add-kv", "2", "-n", "2", "--heads-kv", "1",
                        "-d", "8", "--backprop", "--runs", "1", "--warmup-steps", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| pure" in out and "Backward" in out and "Speedup vs pure" in out
    assert ops.selected_backend() == prev


@pytest.mark.parametrize("argv,needle", [
    (["-i", "8", "-w", "9"], "kernel_size"),                # the library's own ValueError
    (["-i", "8", "8", "-w", "3", "3", "3"], "--window"),
    (["-i", "8", "-w", "3", "-s", "4"], "stride"),
    (["-i", "5", "-w", "3", "--dilation", "2"], "dilation"),
    (["-i", "8", "-w", "3", "-n", "3", "--heads-kv", "2"], "divisible"),
    (["-i", "8", "-w", "3", "--runs", "0"], "--runs"),
    (["-i", "1", "2", "3", "4"], "--input-size"),
])
def test_bad_problems_exit_2_without_traceback(argv, needle, capsys):
    assert profiler.main(argv + ["--dry-run"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_bad_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        profiler.main(["--dtype", "fp8"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "natten_mlx.profiler", "-i", "16", "-w", "5",
                          "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Tiers on this machine" in res.stdout
    res = subprocess.run([sys.executable, "-m", "natten_mlx.profiler", "-i", "4", "-w", "5"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_fallback_is_labelled(monkeypatch, capsys):
    """A tier that declines the problem is shown as a fallback, never as its own timing."""
    if not ops.tier_available("nanobind"):
        pytest.skip("compiled extension not built")
    mod = ops.tier_module("nanobind")
    monkeypatch.setattr(mod, "supports", lambda *a, **k: False)
    assert profiler.main(["-i", "8", "-w", "3", "--backend", "nanobind", "--dry-run"]) == 0
    assert "fall back" in capsys.readouterr().out
    # Asking to time a tier that cannot run the problem is refused cleanly.
    assert profiler.main(["-i", "8", "-w", "3", "--backend", "nanobind", "--runs", "1"]) == 2
    assert "cannot run this problem" in capsys.readouterr().err


def test_auto_row_names_the_tier(capsys):
    assert profiler.main(["-i", "8", "-w", "3", "--backend", "auto", "--runs", "1",
                          "--warmup-steps", "0"]) == 0
    out = capsys.readouterr().out
    assert f"auto ({ops.get_backend()})" in out


def test_oversized_problem_is_refused(monkeypatch, capsys):
    """MLX would abort on the allocation; the profiler says so first."""
    monkeypatch.setattr(profiler, "memory_bytes", lambda device: 1 << 20)
    assert profiler.main(["-i", "256", "256", "-w", "3", "-d", "64"]) == 2
    assert "GiB" in capsys.readouterr().err
