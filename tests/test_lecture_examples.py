"""The lecture's numeric KL and JS examples (Examples 4.1-4.3, Exercises
4.1-4.3). Expected values are derived here in float64 from the definitions,
not copied from the text (whose worked answers contain slips)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import quantdrift as qd


def kl_by_hand(P, Q):
    return sum(p * math.log(p / q) for p, q in zip(P, Q) if p > 0)


def js_by_hand(P, Q):
    M = [(p + q) / 2 for p, q in zip(P, Q)]
    return 0.5 * kl_by_hand(P, M) + 0.5 * kl_by_hand(Q, M)


EXAMPLE_4_1 = ([0.5, 0.3, 0.2], [0.4, 0.4, 0.2])
EXERCISE_4_1 = ([0.2, 0.5, 0.3], [0.1, 0.7, 0.2])


@pytest.mark.parametrize("P,Q", [EXAMPLE_4_1, EXERCISE_4_1])
def test_kl_examples(P, Q):
    want = kl_by_hand(P, Q)
    assert qd.kl(np.array(P), np.array(Q), inputs="probs") == pytest.approx(want, rel=1e-12)
    assert qd.kl(np.log(P), np.log(Q)) == pytest.approx(want, rel=1e-12)
    assert qd.kl(np.array(P, dtype=np.float32), np.array(Q, dtype=np.float32), inputs="probs") == pytest.approx(
        kl_by_hand(np.float32(P).astype(float), np.float32(Q).astype(float)), rel=1e-5
    )
    assert qd.kl(np.array(P), np.array(Q), inputs="probs", base=2) == pytest.approx(want / math.log(2), rel=1e-12)


def test_example_4_1_in_closed_form():
    # 0.5 ln(5/4) + 0.3 ln(3/4) + 0.2 ln 1
    want = 0.5 * math.log(5 / 4) + 0.3 * math.log(3 / 4)
    assert qd.kl(np.array(EXAMPLE_4_1[0]), np.array(EXAMPLE_4_1[1]), inputs="probs") == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("P,Q", [EXAMPLE_4_1, EXERCISE_4_1])
def test_js_examples(P, Q):
    want = js_by_hand(P, Q)
    got = qd.js(np.array(P), np.array(Q), inputs="probs")
    assert got == pytest.approx(want, rel=1e-12)
    assert 0 <= got <= math.log(2)
    assert qd.js(np.array(Q), np.array(P), inputs="probs") == pytest.approx(want, rel=1e-12)


def sequential_kl(first_p, first_q, cond_p, cond_q):
    """KL of length-2 sequences by the chain rule (lecture eq. 42): the
    first-token KL plus the P-weighted conditional KLs."""
    rows_p = np.array([first_p] + cond_p)
    rows_q = np.array([first_q] + cond_q)
    per_row = qd.kl(rows_p, rows_q, inputs="probs")
    weights = np.array([1.0] + list(first_p))
    return float(per_row @ weights)


def test_example_4_2_sequential_kl():
    # vocabulary {A, B}; rows: first token, then conditionals given A and B
    got = sequential_kl([0.6, 0.4], [0.5, 0.5], [[0.7, 0.3], [0.2, 0.8]], [[0.6, 0.4], [0.3, 0.7]])
    # the same quantity from the joint distributions over the four sequences
    P = [0.6 * 0.7, 0.6 * 0.3, 0.4 * 0.2, 0.4 * 0.8]
    Q = [0.5 * 0.6, 0.5 * 0.4, 0.5 * 0.3, 0.5 * 0.7]
    assert got == pytest.approx(kl_by_hand(P, Q), rel=1e-12)
    assert qd.kl(np.array(P), np.array(Q), inputs="probs") == pytest.approx(got, rel=1e-12)


def test_exercise_4_2_sequential_kl():
    # vocabulary {0, 1}; P(1|()) = 0.3, P(1|1) = 0.6, P(1|0) = 0.2; Q: 0.4, 0.5, 0.3
    got = sequential_kl([0.7, 0.3], [0.6, 0.4], [[0.8, 0.2], [0.4, 0.6]], [[0.7, 0.3], [0.5, 0.5]])
    P = [0.7 * 0.8, 0.7 * 0.2, 0.3 * 0.4, 0.3 * 0.6]
    Q = [0.6 * 0.7, 0.6 * 0.3, 0.4 * 0.5, 0.4 * 0.5]
    assert got == pytest.approx(kl_by_hand(P, Q), rel=1e-12)
