"""Smoke checks for examples/: the quickstart runs; the digits trainer runs a few steps.

The full training run (accuracy >= 95%) takes minutes and is not part of the suite; see
docs/profiler.md for the measured result.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")


def _run(args, timeout=300):
    env = dict(os.environ)
    env.pop("NATTEN_BACKEND", None)
    return subprocess.run([sys.executable] + args, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_quickstart_runs():
    res = _run([os.path.join(EXAMPLES, "quickstart.py")])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "quickstart: all examples ran" in res.stdout
    assert "na2d_varlen out: (2, 32, 32, 4, 32)" in res.stdout


def test_train_digits_few_steps():
    pytest.importorskip("sklearn")
    res = _run([os.path.join(EXAMPLES, "train_digits.py"), "--epochs", "1", "--limit-steps", "3",
                "--no-progress", "--backend", "pure"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "final test accuracy" in res.stdout and "after 3 steps" in res.stdout


def test_train_digits_model_shapes():
    sys.path.insert(0, EXAMPLES)
    try:
        import train_digits
    finally:
        sys.path.remove(EXAMPLES)
    import mlx.core as mx

    model = train_digits.DigitsNAT()
    logits = model(mx.zeros((3, 8, 8, 1)))
    assert logits.shape == (3, 10)
