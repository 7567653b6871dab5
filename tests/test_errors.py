"""Every documented error of quantdrift.divergence: its type and a message
that names the problem."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd


def rows(n=3, v=5, dtype=np.float32):
    return np.zeros((n, v), dtype=dtype)


def test_hierarchy():
    assert issubclass(qd.ShapeError, qd.QuantdriftError) and issubclass(qd.ShapeError, ValueError)
    assert issubclass(qd.InputError, ValueError)
    assert issubclass(qd.DtypeError, TypeError) and issubclass(qd.DtypeError, ValueError)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(qd.ShapeError, match=r"p \(3, 5\) and q \(3, 6\)"):
        qd.kl(rows(), rows(v=6))
    with pytest.raises(qd.ShapeError, match=r"p \(3, 5\) and q \(2, 5\)"):
        qd.kl(rows(), rows(n=2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("side", ["p", "q"])
def test_nan_and_plus_inf_name_the_row(dtype, bad, side):
    p, q = rows(dtype=dtype), rows(dtype=dtype)
    (p if side == "p" else q)[2, 3] = bad
    with pytest.raises(qd.InputError, match=f"{side} row 2 contains NaN or \\+inf"):
        qd.kl(p, q)


def test_all_minus_inf_row_is_no_distribution():
    p = rows()
    p[1] = -np.inf
    with pytest.raises(qd.InputError, match="p row 1 is all -inf"):
        qd.js(p, rows())


def test_probs_must_be_distributions():
    p = np.full((2, 4), 0.25)
    q = p.copy()
    q[1] = [0.5, 0.5, 0.5, 0.0]
    with pytest.raises(qd.InputError, match=r"q row 1 sums to 1.5.*not 1 \(tolerance 1e-4\)"):
        qd.kl(p, q, inputs="probs")
    q[1] = [0.75, 0.5, -0.25, 0.0]
    with pytest.raises(qd.InputError, match="q row 1 has a negative probability"):
        qd.kl(p, q, inputs="probs")
    q[1] = 0.0
    with pytest.raises(qd.InputError, match="q row 1 is all zeros"):
        qd.kl(p, q, inputs="probs")
    # float32 rows too, which take the vectorised path
    with pytest.raises(qd.InputError, match="q row 1"):
        qd.kl(p.astype(np.float32), q.astype(np.float32), inputs="probs")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kind="kld"), "unknown divergence kind 'kld'"),
        (dict(inputs="probabilities"), "unknown inputs 'probabilities'"),
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number > 0"),
        (dict(kind="renyi"), "needs alpha"),
        (dict(kind="renyi", alpha=-1.0), "alpha must be a finite number > 0"),
        (dict(kind="kl", alpha=0.5), "alpha is only used by kind='renyi'"),
        (dict(base=10), "base must be 'e'"),
        (dict(reduction="max"), "reduction must be"),
        (dict(axis=3), "axis 3 is out of range"),
    ],
)
def test_bad_options(kwargs, message):
    with pytest.raises(qd.InputError, match=message):
        qd.divergence(rows(), rows(), **kwargs)


def test_bad_dtypes_and_shapes():
    with pytest.raises(qd.DtypeError, match="p must be float32, float64, float16 or bfloat16, got dtype int32"):
        qd.kl(np.zeros((2, 3), dtype=np.int32), rows(2, 3))
    with pytest.raises(qd.DtypeError, match="complex128"):
        qd.kl(rows(2, 3), np.zeros((2, 3), dtype=complex))
    with pytest.raises(qd.ShapeError, match="at least one axis"):
        qd.kl(np.float32(1.0), np.float32(1.0))
    with pytest.raises(qd.ShapeError, match="vocabulary axis has length 0"):
        qd.kl(np.zeros((2, 0)), np.zeros((2, 0)))
    with pytest.raises(qd.InputError, match="q is required"):
        qd.kl(rows(), None)


def test_inputs_are_not_modified():
    p = np.random.default_rng(0).normal(size=(8, 100)).astype(np.float32)
    q = p[::-1].copy()
    before = (p.copy(), q.copy())
    qd.kl(p, q)
    qd.divergence(p, q, "js", temperature=2.0)
    np.testing.assert_array_equal(p, before[0])
    np.testing.assert_array_equal(q, before[1])


def test_non_contiguous_inputs_are_read_correctly():
    base = np.random.default_rng(1).normal(size=(6, 40)).astype(np.float32)
    p, q = base[::2, ::2], base[1::2, ::2]
    np.testing.assert_array_equal(qd.kl(p, q), qd.kl(p.copy(), q.copy()))
