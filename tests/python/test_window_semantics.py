"""The window rule: spec §3.1-§3.5 and upstream §1.6 examples, the pure tier's
tables vs the oracle exhaustively on small axes, and the utils.window helpers."""

from __future__ import annotations

import numpy as np
import pytest

from natten_mlx._core import pure
from natten_mlx.utils import window as W
from oracle import axis_slots, neighbour_sets


def _pure_sets(L, K, d=1, gna=1, causal=False, out_stride=1):
    flat, valid, _ = pure._static_tables((L,), (K,), (d,), (gna,), (causal,), (out_stride,))
    return [sorted(int(x) for x, ok in zip(f, v) if ok) for f, v in zip(flat, valid)]


SPEC_EXAMPLES = [
    # (L, K, d, gna, causal) -> per-query key sets
    ((8, 3, 1, 1, False), [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6],
                           [5, 6, 7], [5, 6, 7]]),
    ((7, 3, 2, 1, False), [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [1, 3, 5],
                           [2, 4, 6]]),
    ((13, 3, 4, 1, False), [[0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11], [0, 4, 8], [1, 5, 9],
                            [2, 6, 10], [3, 7, 11], [4, 8, 12], [1, 5, 9], [2, 6, 10],
                            [3, 7, 11], [4, 8, 12]]),
    ((8, 3, 2, 1, False), [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7],
                           [2, 4, 6], [3, 5, 7]]),
    ((9, 3, 2, 1, False), [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7],
                           [4, 6, 8], [3, 5, 7], [4, 6, 8]]),
    ((8, 4, 1, 1, False), [[0, 1, 2, 3]] * 3 + [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6],
                                                [4, 5, 6, 7], [4, 5, 6, 7]]),
    ((8, 3, 1, 1, True), [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6],
                          [5, 6, 7]]),
    ((8, 3, 1, 3, False), [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3 + [[5, 6, 7]] * 2),
    ((8, 4, 1, 2, False), [[0, 1, 2, 3]] * 2 + [[1, 2, 3, 4]] * 2 + [[3, 4, 5, 6]] * 2
     + [[4, 5, 6, 7]] * 2),
    ((8, 4, 1, 4, False), [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7]] * 4),
    ((8, 3, 1, 2, True), [[0], [0, 1], [1, 2], [1, 2, 3], [3, 4], [3, 4, 5], [5, 6], [5, 6, 7]]),
    ((8, 3, 1, 3, True), [[0], [0, 1], [0, 1, 2], [3], [3, 4], [3, 4, 5], [5, 6], [5, 6, 7]]),
    ((8, 8, 1, 1, False), [list(range(8))] * 8),
]


@pytest.mark.parametrize("args,want", SPEC_EXAMPLES, ids=[str(a) for a, _ in SPEC_EXAMPLES])
def test_documented_examples(args, want):
    assert neighbour_sets(*args) == want
    assert _pure_sets(*args) == want


def test_causal_layout_masked_slots_lead():
    flat, valid, _ = pure._static_tables((5,), (3,), (1,), (1,), (True,), (1,))
    assert valid.tolist() == [[False, False, True], [False, True, True]] + [[True] * 3] * 3
    assert flat[4].tolist() == [2, 3, 4]          # slot K-1 is the query itself
    flat, valid, _ = pure._static_tables((9,), (3,), (2,), (1,), (True,), (1,))
    assert [int(f[-1]) for f in flat] == list(range(9))


def test_pure_tables_match_oracle_exhaustively():
    n = 0
    for L in range(1, 17):
        for K in range(1, L + 1):
            for d in range(1, L // K + 1):
                for gna in range(1, K + 1):
                    for causal in (False, True):
                        flat, valid, rel = pure._static_tables((L,), (K,), (d,), (gna,),
                                                               (causal,), (1,))
                        slots = axis_slots(L, K, d, gna, causal)
                        for i in range(L):
                            ok = [s[1] for s in slots[i]]
                            assert valid[i].tolist() == ok, (L, K, d, gna, causal, i)
                            pos = [s[0] for s in slots[i]]
                            assert [int(f) for f, o in zip(flat[i], ok) if o] == \
                                [p for p, o in zip(pos, ok) if o]
                            if gna == 1:
                                for kk in range(K):
                                    if ok[kk]:
                                        assert rel[i, kk] == (pos[kk] - i) // d + K - 1
                        n += 1
    assert n > 1000


def test_out_stride_is_row_selection():
    full, fv, _ = pure._static_tables((11,), (4,), (2,), (1,), (True,), (1,))
    sub, sv, _ = pure._static_tables((11,), (4,), (2,), (1,), (True,), (3,))
    assert (sub == full[::3]).all() and (sv == fv[::3]).all()


def test_multi_axis_flattening_order():
    flat, valid, _ = pure._static_tables((6, 6), (3, 3), (1, 1), (1, 1), (False, False),
                                         (1, 1))
    # query (0, 5): neighbours {0,1,2} x {3,4,5}, row-major over the kernel axes
    keys = [(int(f) // 6, int(f) % 6) for f in flat[0 * 6 + 5]]
    assert keys == [(a, b) for a in (0, 1, 2) for b in (3, 4, 5)]


# ---------------------------------------------------------------- utils.window


def test_window_helpers_examples():
    assert W.get_window_start(31, 32, 3, 1, 1) == 29
    assert W.get_pb_start(31, 32, 3, 1, 1) == 0
    assert W.get_window_start(0, 32, 3, 1, 1) == 0
    assert W.get_pb_start(0, 32, 3, 1, 1) == 2
    assert W.get_window_start(5, 7, 3, 1, 2) == 1        # L=7, d=2: query 5 -> [1,3,5]
    assert W.get_window_end(1, 7, 3, 2) == 7
    assert W.get_window_end(0, 10, 3, 1) == 3


def test_window_helpers_match_oracle():
    for L in range(1, 25):
        for K in range(1, L + 1, 1):
            for d in range(1, L // K + 1):
                qp = np.arange(L)
                starts, ends = W.compute_window_start_end(qp, L, K, d)
                pb = W.compute_pb_start(qp, L, K, d)
                assert starts.dtype == np.int32 and ends.dtype == np.int32
                assert pb.dtype == np.int32
                sets = neighbour_sets(L, K, d)
                for i in range(L):
                    assert sets[i] == list(range(int(starts[i]), int(ends[i]), d))[:K]
                    assert starts[i] % d == i % d                          # phase alignment
                    assert 0 <= starts[i] and ends[i] <= L
                    assert 0 <= pb[i] <= 2 * K - 2 - (K - 1)
                    assert W.get_window_start(i, L, K, K // 2, d) == starts[i]
                    assert W.get_pb_start(i, L, K, K // 2, d) == pb[i]
                    assert W.get_window_end(int(starts[i]), L, K, d) == ends[i]
