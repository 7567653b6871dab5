"""distill_loss: the loss against a float64 oracle and the gradient against
central finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

import quantdrift as qd


def loss_oracle(t, s, temperature, alpha, labels=None):
    lt = log_softmax(t / temperature, axis=-1)
    ls = log_softmax(s / temperature, axis=-1)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)
    loss = alpha * temperature**2 * kl
    if labels is not None:
        ls1 = log_softmax(s, axis=-1)
        loss = loss - (1 - alpha) * np.take_along_axis(ls1, labels[..., None], -1)[..., 0]
    return loss


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [1.0, 0.7, 0.0])
def test_loss_and_gradient(temperature, alpha):
    rng = np.random.default_rng(int(temperature * 10 + alpha * 100))
    t = rng.normal(size=(3, 11)) * 3
    s = rng.normal(size=(3, 11)) * 3
    labels = rng.integers(0, 11, size=3) if alpha < 1 else None
    loss, grad = qd.distill_loss(t, s, temperature=temperature, alpha=alpha, labels=labels, reduction="none")
    np.testing.assert_allclose(loss, loss_oracle(t, s, temperature, alpha, labels), rtol=1e-10)
    h = 1e-6
    numeric = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        up, down = s.copy(), s.copy()
        up[idx] += h
        down[idx] -= h
        row = idx[0]
        numeric[idx] = (loss_oracle(t, up, temperature, alpha, labels)[row] - loss_oracle(t, down, temperature, alpha, labels)[row]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-9)
    assert grad.dtype == np.float64


def test_mean_reduction_and_float32():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 2, 9)).astype(np.float32)
    s = rng.normal(size=(4, 2, 9)).astype(np.float32)
    loss, grad = qd.distill_loss(t, s, temperature=2.0)
    per_row, per_row_grad = qd.distill_loss(t, s, temperature=2.0, reduction="none")
    assert per_row.shape == (4, 2) and grad.shape == s.shape and grad.dtype == np.float32
    assert float(loss) == pytest.approx(per_row.mean(), rel=1e-12)
    np.testing.assert_allclose(grad, per_row_grad / 8, rtol=1e-6)


def test_distill_errors():
    t = np.zeros((2, 5))
    with pytest.raises(qd.InputError, match="labels are required"):
        qd.distill_loss(t, t, temperature=1.0, alpha=0.5)
    with pytest.raises(qd.InputError, match=r"labels\[1\] = 9 is outside the vocabulary \[0, 5\)"):
        qd.distill_loss(t, t, temperature=1.0, alpha=0.5, labels=np.array([0, 9]))
    with pytest.raises(qd.ShapeError, match=r"\(2, 5\) and \(2, 4\)"):
        qd.distill_loss(t, np.zeros((2, 4)), temperature=1.0)
    with pytest.raises(qd.InputError, match="temperature"):
        qd.distill_loss(t, t, temperature=0.0)
    with pytest.raises(qd.InputError, match="alpha must be in"):
        qd.distill_loss(t, t, temperature=1.0, alpha=1.5)
    bad = t.copy()
    bad[1, 2] = np.nan
    with pytest.raises(qd.InputError, match="student row 1"):
        qd.distill_loss(t, bad, temperature=1.0)


def test_alpha_zero_is_cross_entropy_even_where_kl_is_infinite():
    # The student gives a token the teacher likes probability 0: KL = +inf,
    # which weighs nothing at alpha = 0 (not 0·inf = NaN).
    t = np.array([[2.0, 1.0, 0.0, -1.0]])
    s = np.array([[-np.inf, 0.5, 1.5, 0.0]])
    labels = np.array([2])
    loss, grad = qd.distill_loss(t, s, temperature=2.0, alpha=0.0, labels=labels, reduction="none")
    ce = -log_softmax(s, axis=-1)[0, 2]
    assert loss[0] == pytest.approx(ce, rel=1e-12)
    p = np.exp(log_softmax(s, axis=-1)[0])
    np.testing.assert_allclose(grad[0], p - np.eye(4)[2], rtol=1e-12, atol=1e-15)
    loss, _ = qd.distill_loss(t, s, temperature=2.0, alpha=0.5, labels=labels, reduction="none")
    assert loss[0] == np.inf


def test_labels_past_int64_are_named_as_given():
    t = np.zeros((2, 5))
    with pytest.raises(qd.InputError, match=r"labels\[1\] = 18446744073709551615 is outside the vocabulary \[0, 5\)"):
        qd.distill_loss(t, t, temperature=1.0, alpha=0.5, labels=np.array([0, 2**64 - 1], dtype=np.uint64))
    with pytest.raises(qd.InputError, match=r"labels\[0\] = 9223372036854775808 is not a valid index into formats \[0, 2\)"):
        qd.round_mixed(np.ones(2, np.float32), np.array([2**63, 0], dtype=np.uint64), ["float16", "bfloat16"])
