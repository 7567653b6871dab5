"""quantdrift.divergence on the GPU against the float64 oracle and the CPU,
over the CPU tests' matrix (tests/test_divergence.py), with the CPU's errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd

from oracle import divergence as oracle
from test_divergence import (
    ATOL,
    DTYPES,
    EXTREME_KINDS,
    KINDS,
    OVERFLOWING,
    RTOL,
    SCALES,
    VOCABS,
    make_rows,
    renyi_exact,
    wide_rows,
)


def both(p, q, kind, **options):
    """(GPU values, CPU values) of one call."""
    return qd.divergence(p, q, kind, device="gpu", **options), qd.divergence(p, q, kind, **options)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("scale", SCALES)
def test_every_kind_matches_the_float64_oracle(gpu, dtype, vocab, scale):
    p, q = make_rows(vocab, scale, dtype, seed=vocab + int(scale * 1000))
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    for kind, alpha in KINDS:
        got, cpu = both(p, q, kind, alpha=alpha)
        want = oracle(p64, q64, kind, alpha)
        assert got.dtype == np.float64 and got.shape == (3,)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{kind} alpha={alpha} vs oracle")
        np.testing.assert_allclose(got, cpu, rtol=RTOL, atol=ATOL, err_msg=f"{kind} alpha={alpha} vs cpu")


@pytest.mark.parametrize("kind,alpha", KINDS)
def test_mixed_dtypes_and_temperature(gpu, kind, alpha):
    p, q = make_rows(5000, 3.0, np.float32, seed=11)
    for q_other in (q.astype(ml_dtypes.bfloat16), q.astype(np.float16)):
        for temperature in (0.5, 2.0):
            got, cpu = both(p, q_other, kind, alpha=alpha, temperature=temperature)
            want = oracle(p.astype(np.float64), q_other.astype(np.float64), kind, alpha, temperature)
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
            np.testing.assert_allclose(got, cpu, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind,alpha", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
def test_probs_and_logprobs_inputs(gpu, kind, alpha, dtype):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 300)) * 2
    logits[0, :7] = -np.inf
    lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    lq = lp[::-1].copy()
    lq[1] = lp[1] + rng.normal(size=300) * 1e-3
    lq[1] -= np.logaddexp.reduce(lq[1])
    for inputs, (a, b) in {"logprobs": (lp, lq), "probs": (np.exp(lp), np.exp(lq))}.items():
        a, b = a.astype(dtype), b.astype(dtype)
        for temperature in (1.0, 1.5):
            got, cpu = both(a, b, kind, alpha=alpha, inputs=inputs, temperature=temperature)
            want = oracle(a.astype(np.float64), b.astype(np.float64), kind, alpha, temperature, inputs=inputs)
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=inputs)
            np.testing.assert_allclose(got, cpu, rtol=RTOL, atol=ATOL, err_msg=inputs)


def test_conventions_and_extreme_logits(gpu):
    big = np.array([[1e4, -1e4, 0.0], [-np.inf, 0.0, 1.0]], dtype=np.float32)
    other = np.array([[-1e4, 1e4, 0.0], [0.0, -np.inf, 1.0]], dtype=np.float32)
    kl = qd.kl(big, other, device="gpu")
    assert kl[0] == pytest.approx(2e4, rel=1e-6)
    assert kl[1] == np.inf  # Q = 0 where P > 0
    js = qd.js(big, other, device="gpu")
    assert np.isfinite(js).all() and (js <= math.log(2)).all()
    with np.errstate(divide="ignore"):
        p = np.log(np.array([0.5, 0.5, 0.0], dtype=np.float32))
    q = np.log(np.array([0.25, 0.25, 0.5], dtype=np.float32))
    assert qd.kl(p, q, device="gpu") == pytest.approx(math.log(2), rel=1e-6)
    for kind, alpha in KINDS:
        got, cpu = both(q, p, kind, alpha=alpha)  # Q = 0 where P > 0
        assert got == cpu or got == pytest.approx(cpu, rel=RTOL, abs=ATOL), kind
    assert qd.divergence(q, p, "chi2", device="gpu") == np.inf
    assert qd.divergence(q, p, "renyi", alpha=2.0, device="gpu") == np.inf
    np.testing.assert_array_equal(qd.divergence(p, q, "renyi", alpha=1.0, device="gpu"), qd.kl(p, q, device="gpu"))


@pytest.mark.parametrize("alpha", [1e-3, 0.5, 1 - 1e-6, 1 + 1e-9, 5.0])
def test_renyi_keeps_its_digits_for_near_equal_models_and_orders_near_0_and_1(gpu, alpha):
    from test_divergence import renyi_exact

    rng = np.random.default_rng(int(alpha * 1000) + 3)
    p = (rng.standard_normal((4, 300)) * 2).astype(np.float32)
    q = (p + rng.standard_normal((4, 300)) * np.array([1e-3, 3e-2, 0.3, 2.0])[:, None]).astype(np.float32)
    got, cpu = both(p, q, "renyi", alpha=alpha)
    want = [renyi_exact(p[r].astype(np.float64), q[r].astype(np.float64), alpha) for r in range(4)]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-11)
    np.testing.assert_allclose(got, cpu, rtol=RTOL, atol=1e-11)


def test_vocab_one_empty_inputs_and_shapes(gpu):
    one = np.array([[3.0], [-1.0]], dtype=np.float32)
    for kind, alpha in KINDS:
        np.testing.assert_allclose(qd.divergence(one, one[::-1].copy(), kind, alpha=alpha, device="gpu"), 0.0, atol=ATOL)
    for shape in [(0, 10), (0, 3, 10)]:
        empty = np.zeros(shape, dtype=np.float32)
        out = qd.kl(empty, empty, device="gpu")
        assert out.shape == shape[:-1] and out.dtype == np.float64
    assert math.isnan(qd.kl(np.zeros((0, 4)), np.zeros((0, 4)), reduction="mean", device="gpu"))
    rng = np.random.default_rng(1)
    p = rng.normal(size=(2, 50, 3)).astype(np.float32)
    q = rng.normal(size=(2, 50, 3)).astype(ml_dtypes.bfloat16)
    got = qd.kl(p, q, axis=1, device="gpu")
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, qd.kl(p, q, axis=1), rtol=RTOL, atol=ATOL)
    assert isinstance(qd.kl(p[0, :, 0], q[0, :, 0], device="gpu"), np.float64)


def _same_error(p, q, kind="kl", **options):
    with pytest.raises(qd.QuantdriftError) as cpu:
        qd.divergence(p, q, kind, **options)
    with pytest.raises(type(cpu.value)) as got:
        qd.divergence(p, q, kind, device="gpu", **options)
    assert str(got.value) == str(cpu.value)
    return str(got.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
def test_invalid_rows_raise_the_cpu_error(gpu, dtype):
    p, q = make_rows(1000, 1.0, dtype, seed=2)
    for side, row, value in [("p", 2, np.nan), ("q", 1, np.inf), ("p", 0, np.inf), ("q", 2, np.nan)]:
        a, b = p.copy(), q.copy()
        (a if side == "p" else b)[row, 17] = value
        for kind, alpha in KINDS:
            if kind == "entropy" and side == "q":
                continue
            message = _same_error(a, b, kind, alpha=alpha)
            assert f"{side} row {row} contains NaN or +inf" in message
    a = p.copy()
    a[1] = -np.inf
    assert "p row 1 is all -inf" in _same_error(a, q, "js")
    _same_error(p, q[:, :10], "kl")  # shape mismatch
    _same_error(p, q, "renyi", alpha=-1.0)
    _same_error(p, q, "kl", temperature=0.0)


def test_invalid_probabilities_raise_the_cpu_error(gpu):
    rng = np.random.default_rng(3)
    good = rng.dirichlet(np.ones(500), size=4).astype(np.float32)
    cases = {
        "sums to": lambda x: x.__setitem__((2, 3), x[2, 3] + 0.01),
        "negative probability": lambda x: x.__setitem__((1, 7), -1e-3),
        "all zeros": lambda x: x.__setitem__(3, 0.0),
        "NaN or +inf": lambda x: x.__setitem__((0, 9), np.nan),
    }
    for text, spoil in cases.items():
        for side in ("p", "q"):
            a, b = good.copy(), good[::-1].copy()
            spoil(a if side == "p" else b)
            assert text in _same_error(a, b, "kl", inputs="probs"), text
    # float16 rows get the 1e-2 tolerance; a sum just inside it is fine
    a = good.astype(np.float16)
    a[0, 0] += np.float16(0.004)
    got, cpu = both(a, good[::-1].astype(np.float16), "js", inputs="probs")
    np.testing.assert_allclose(got, cpu, rtol=RTOL, atol=ATOL)


def test_device_names():
    p, q = make_rows(10, 1.0, np.float32, seed=1)
    np.testing.assert_array_equal(qd.kl(p, q, device="auto"), qd.kl(p, q))
    with pytest.raises(qd.InputError, match="device must be"):
        qd.kl(p, q, device="cuda")


def test_inputs_beyond_the_binding_limit_are_chunked(gpu):
    # A small binding limit makes a few MB take many chunks, and makes a
    # 32000-float32 row (128 kB) larger than a binding: such rows run on
    # the CPU kernel.
    script = r"""
import numpy as np, ml_dtypes, quantdrift as qd
from test_divergence import make_rows
rng = np.random.default_rng(0)
p = rng.normal(size=(700, 999)).astype(np.float32) * 3
q = (p + rng.normal(size=p.shape) * 0.1).astype(ml_dtypes.bfloat16)
for kind, alpha in [("kl", None), ("js", None), ("renyi", 0.5), ("entropy", None), ("reverse_kl", None)]:
    np.testing.assert_allclose(qd.divergence(p, q, kind, alpha=alpha, device="gpu"),
                               qd.divergence(p, q, kind, alpha=alpha), rtol=1e-5, atol=1e-7)
p16 = p.astype(np.float16)
np.testing.assert_allclose(qd.js(p16, q, device="gpu"), qd.js(p16, q), rtol=1e-5, atol=1e-7)
bad = p.copy(); bad[650, 3] = np.nan
try:
    qd.kl(bad, q, device="gpu")
except qd.InputError as e:
    assert "p row 650 contains NaN" in str(e), e
else:
    raise SystemExit("no error")
big_p, big_q = make_rows(32000, 1.0, np.float32, seed=4)
for kind in ("kl", "tv", "cross_entropy"):
    np.testing.assert_allclose(qd.divergence(big_p, big_q, kind, device="gpu"),
                               qd.divergence(big_p, big_q, kind), rtol=1e-5, atol=1e-7)
"""
    env = dict(os.environ, QUANTDRIFT_GPU_MAX_BINDING="65536")
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", script], check=True, env=env)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
def test_scores_whose_shift_overflows_float32_take_the_reference_as_on_the_cpu(gpu, dtype):
    for p, q, t in OVERFLOWING:
        p, q = p.astype(dtype), q.astype(dtype)
        for kind, alpha in EXTREME_KINDS:
            got, cpu = both(p, q, kind, alpha=alpha, temperature=t)
            want = qd.divergence(p.astype(np.float64), q.astype(np.float64), kind, alpha=alpha, temperature=t)
            np.testing.assert_array_equal(got, cpu, err_msg=f"{kind} {alpha} T={t}")
            np.testing.assert_array_equal(got, want, err_msg=f"{kind} {alpha} T={t}")


def test_renyi_of_a_tiny_order_on_wide_logits(gpu):
    p, q = wide_rows()
    for alpha in (1e-6, 1e-4):
        got, cpu = both(p, q, "renyi", alpha=alpha)
        want = np.array([renyi_exact(p[r].astype(np.float64), q[r].astype(np.float64), alpha) for r in range(len(p))])
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=0, err_msg=f"alpha={alpha}")
        np.testing.assert_allclose(got, cpu, rtol=RTOL, atol=0, err_msg=f"alpha={alpha}")
