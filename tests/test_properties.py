"""Properties every divergence must have, on hypothesis-generated rows."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import quantdrift as qd

vocab = st.integers(min_value=1, max_value=300)
scale = st.sampled_from([1e-3, 0.1, 1.0, 10.0, 100.0, 1e4])


@st.composite
def pairs(draw):
    """Two logit matrices of one shape, with optional −inf holes in q."""
    rows = draw(st.integers(min_value=1, max_value=4))
    v = draw(vocab)
    s = draw(scale)
    elements = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32)
    p = draw(arrays(np.float32, (rows, v), elements=elements)) * np.float32(s)
    q = draw(arrays(np.float32, (rows, v), elements=elements)) * np.float32(s)
    return p, q


@given(pairs())
def test_kl_of_a_distribution_with_itself_is_zero(pq):
    p, _ = pq
    for kind in ("kl", "reverse_kl", "js", "tv", "hellinger", "chi2"):
        np.testing.assert_allclose(qd.divergence(p, p, kind), 0.0, atol=1e-7)
    np.testing.assert_allclose(qd.divergence(p, p, "renyi", alpha=3.0), 0.0, atol=1e-7)


@given(pairs())
def test_non_negative_and_bounded(pq):
    p, q = pq
    for kind in ("kl", "reverse_kl", "js", "tv", "hellinger", "chi2", "cross_entropy", "entropy"):
        assert (qd.divergence(p, q, kind) >= 0).all(), kind
    assert (qd.js(p, q) <= math.log(2)).all()
    assert (qd.divergence(p, q, "tv") <= 1).all()
    assert (qd.divergence(p, q, "hellinger") <= 2).all()


@given(pairs())
def test_symmetric_kinds_are_symmetric(pq):
    p, q = pq
    for kind in ("js", "tv", "hellinger"):
        np.testing.assert_allclose(qd.divergence(p, q, kind), qd.divergence(q, p, kind), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(qd.divergence(p, q, "reverse_kl"), qd.kl(q, p), rtol=1e-12)


@given(pairs())
def test_pinsker_inequality(pq):
    p, q = pq
    tv = qd.divergence(p, q, "tv")
    kl = qd.kl(p, q)
    assert (tv <= np.sqrt(kl / 2) + 1e-6).all()


@given(pairs())
def test_bits_are_nats_over_ln2(pq):
    p, q = pq
    for kind in ("kl", "js", "cross_entropy"):
        np.testing.assert_allclose(qd.divergence(p, q, kind, base=2), qd.divergence(p, q, kind) / math.log(2), rtol=1e-12)


@given(pairs())
def test_cross_entropy_is_entropy_plus_kl(pq):
    p, q = pq
    ce = qd.divergence(p, q, "cross_entropy")
    np.testing.assert_allclose(ce, qd.divergence(p, None, "entropy") + qd.kl(p, q), rtol=1e-5, atol=1e-6)
