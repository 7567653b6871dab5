"""quantdrift.divergence against float64 numpy/scipy oracles."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd

from oracle import divergence as oracle

KINDS = [
    ("kl", None),
    ("reverse_kl", None),
    ("js", None),
    ("tv", None),
    ("hellinger", None),
    ("chi2", None),
    ("renyi", 0.5),
    ("renyi", 2.0),
    ("cross_entropy", None),
    ("entropy", None),
]
DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.float64]
VOCABS = [1, 2, 7, 1000, 32000, 131072]
SCALES = [1e-3, 1.0, 30.0, 1e4]
RTOL, ATOL = 1e-5, 1e-7


def make_rows(vocab: int, scale: float, dtype, seed: int):
    """Rows of p and q: independent, near-identical, and with −inf entries."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(-2, 2, size=(3, vocab)) * scale
    q = rng.uniform(-2, 2, size=(3, vocab)) * scale
    q[1] = p[1] + rng.uniform(-1e-3, 1e-3, size=vocab) * max(scale, 1.0)
    if vocab > 1:
        holes = rng.random(vocab) < 0.1
        holes[0] = False  # keep one finite entry
        p[2, holes] = -np.inf
        q[2, holes & (rng.random(vocab) < 0.5)] = -np.inf
    return p.astype(dtype), q.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("scale", SCALES)
def test_every_kind_matches_the_float64_oracle(dtype, vocab, scale):
    p, q = make_rows(vocab, scale, dtype, seed=vocab + int(scale * 1000))
    p64, q64 = p.astype(np.float64), q.astype(np.float64)  # the values actually stored
    for kind, alpha in KINDS:
        got = qd.divergence(p, q, kind, alpha=alpha)
        want = oracle(p64, q64, kind, alpha)
        assert got.dtype == np.float64 and got.shape == (3,)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{kind} alpha={alpha}")


@pytest.mark.parametrize("kind,alpha", KINDS)
def test_mixed_dtypes_and_temperature(kind, alpha):
    p, q = make_rows(5000, 3.0, np.float32, seed=11)
    q16 = q.astype(ml_dtypes.bfloat16)
    for temperature in (0.5, 2.0):
        got = qd.divergence(p, q16, kind, alpha=alpha, temperature=temperature)
        want = oracle(p.astype(np.float64), q16.astype(np.float64), kind, alpha, temperature)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind,alpha", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_probs_and_logprobs_inputs(kind, alpha, dtype):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 300)) * 2
    logits[0, :7] = -np.inf
    lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    lq = lp[::-1].copy()
    lq[1] = lp[1] + rng.normal(size=300) * 1e-3
    lq[1] -= np.logaddexp.reduce(lq[1])
    for inputs, (a, b) in {
        "logprobs": (lp, lq),
        "probs": (np.exp(lp), np.exp(lq)),
    }.items():
        a, b = a.astype(dtype), b.astype(dtype)
        got = qd.divergence(a, b, kind, alpha=alpha, inputs=inputs)
        want = oracle(a.astype(np.float64), b.astype(np.float64), kind, alpha, inputs=inputs)
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=inputs)


def test_axis_and_batch_shapes():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(2, 50, 3)).astype(np.float32)
    q = rng.normal(size=(2, 50, 3)).astype(np.float32)
    got = qd.kl(p, q, axis=1)
    assert got.shape == (2, 3)
    want = oracle(np.moveaxis(p, 1, -1).astype(np.float64), np.moveaxis(q, 1, -1).astype(np.float64), "kl")
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # a single distribution gives a scalar
    single = qd.kl(p[0, :, 0], q[0, :, 0])
    assert isinstance(single, np.float64)
    np.testing.assert_allclose(single, want[0, 0], rtol=RTOL)


def test_reductions_and_bits():
    p, q = make_rows(100, 1.0, np.float32, seed=3)
    rows = qd.kl(p, q)
    assert qd.kl(p, q, reduction="mean") == pytest.approx(rows.mean(), rel=1e-12)
    assert qd.kl(p, q, reduction="sum") == pytest.approx(rows.sum(), rel=1e-12)
    np.testing.assert_allclose(qd.kl(p, q, base=2), rows / math.log(2), rtol=1e-12)
    np.testing.assert_allclose(qd.js(p, q, base=2), qd.js(p, q) / math.log(2), rtol=1e-12)
    # TV is not logarithmic: base does not apply
    np.testing.assert_array_equal(qd.divergence(p, q, "tv", base=2), qd.divergence(p, q, "tv"))


def test_entropy_needs_no_q_and_renyi_order_one_is_kl():
    p, q = make_rows(64, 1.0, np.float32, seed=4)
    np.testing.assert_allclose(qd.divergence(p, None, "entropy"), oracle(p, None, "entropy"), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(qd.divergence(p, q, "renyi", alpha=1.0), qd.kl(p, q))
    # Rényi orders around 1 approach KL
    near = qd.divergence(p, q, "renyi", alpha=1.0 + 1e-4)
    np.testing.assert_allclose(near, qd.kl(p, q), rtol=1e-3)


def renyi_exact(p: np.ndarray, q: np.ndarray, alpha: float) -> float:
    """Rényi of order alpha between softmax(p) and softmax(q), with 40
    significant digits (decimal): float64 loses ln Σ P^α Q^(1−α) / (α − 1)
    to cancellation as α → 1."""
    import decimal

    with decimal.localcontext() as ctx:
        ctx.prec = 40
        D = decimal.Decimal
        a = [D(float(x)) for x in p if np.isfinite(x)]
        b = [D(float(x)) for x in q if np.isfinite(x)]
        lse_p = sum((x.exp() for x in a), D(0)).ln()
        lse_q = sum((x.exp() for x in b), D(0)).ln()
        al = D(float(alpha))
        s = D(0)
        for x, y in zip(p, q):
            if np.isfinite(x) and np.isfinite(y):
                s += (al * (D(float(x)) - lse_p) + (1 - al) * (D(float(y)) - lse_q)).exp()
        return float(s.ln() / (al - 1))


@pytest.mark.parametrize("alpha", [1e-3, 0.1, 0.5, 0.9, 1 - 1e-6, 1 + 1e-9, 1 + 1e-6, 1.1, 2.0, 5.0])
def test_renyi_keeps_its_digits_for_near_equal_models_and_orders_near_0_and_1(alpha):
    rng = np.random.default_rng(int(alpha * 1000) + 3)
    vocab = 300
    p = rng.standard_normal((4, vocab)) * 2
    spread = np.array([1e-3, 3e-2, 0.3, 2.0])[:, None]  # near-equal to far apart
    q = p + rng.standard_normal((4, vocab)) * spread
    p, q = p.astype(np.float32), q.astype(np.float32)
    got = qd.divergence(p, q, "renyi", alpha=alpha)
    want = np.array([renyi_exact(p[r].astype(np.float64), q[r].astype(np.float64), alpha) for r in range(4)])
    # The nearest rows (values ~1e-7) meet the bar's absolute part, far
    # inside it: float32 logits carry ~2e-7 of rounding into ln(Q/P) ~ 1e-3.
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-11)


def wide_rows():
    """8 × 4096 logits of std 30 on both sides: much of Q's mass lies where
    P underflows float32 (an audit's rows, drawn as it drew them)."""
    rng = np.random.default_rng(1)
    p = rng.standard_normal((64, 4096)).astype(np.float32) * 3
    rng.standard_normal(p.shape)
    rng.standard_normal(p.shape)
    p = (p * 10)[:8]
    q = (rng.standard_normal((64, 4096)).astype(np.float32) * 30)[:8]
    return p, q


@pytest.mark.parametrize("alpha", [1e-6, 1e-5, 1e-4])
def test_renyi_of_a_tiny_order_keeps_its_digits_where_p_underflows(alpha):
    p, q = wide_rows()
    got = qd.divergence(p, q, "renyi", alpha=alpha)
    want = np.array([renyi_exact(p[r].astype(np.float64), q[r].astype(np.float64), alpha) for r in range(len(p))])
    # values ~α·KL(Q‖P) ~ 1e-4 at α = 1e-6: the relative bar alone
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)


# Rows whose shifted scores (x − max x)/T overflow float32 while x is finite.
OVERFLOWING = [
    (np.array([[3e38, -3e38, 0.0]]), np.array([[-3e38, 3e38, 1.0]]), 1.0),
    (np.array([[3e38, -3e38, 0.0]]), np.array([[-3e38, 3e38, 1.0]]), 0.01),
    (np.array([[1e37, 0.0, -1e37]]), np.array([[-3e36, 1e37, 0.0]]), 0.01),
    (np.array([[1e37, 0.0, -1e37, -np.inf]]), np.array([[-3e36, 1e37, 0.0, -np.inf]]), 0.05),
]
EXTREME_KINDS = KINDS + [("renyi", a) for a in (1e-6, 1e-3, 0.3, 0.999, 1.001, 3.0, 50.0)]


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", range(len(OVERFLOWING)))
def test_scores_whose_shift_overflows_float32_match_float64(dtype, case):
    p, q, t = OVERFLOWING[case]
    p, q = p.astype(dtype), q.astype(dtype)
    for kind, alpha in EXTREME_KINDS:
        for a, b in ((p, q), (q, p)):
            got = qd.divergence(a, b, kind, alpha=alpha, temperature=t)
            want = oracle(a.astype(np.float64), b.astype(np.float64), kind, alpha, temperature=t)
            f64 = qd.divergence(a.astype(np.float64), b.astype(np.float64), kind, alpha=alpha, temperature=t)
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{kind} {alpha} T={t}")
            np.testing.assert_array_equal(got, f64, err_msg=f"{kind} {alpha} T={t}: the float64 path's row")
    # By hand for the first case: P = (1, 0, 0), Q = (e^(−6e38), 1, e^(1−3e38)):
    # H(P, Q) = −ln Q₀ = 6e38, and χ² ≥ P₀²/Q₀ − 1 = +inf.
    if case == 0 and dtype == np.float32:
        six = 2 * float(np.float32(3e38))
        assert qd.divergence(p, q, "cross_entropy")[0] == pytest.approx(six, rel=1e-12)
        assert qd.divergence(p, q, "chi2")[0] == np.inf


def test_empty_inputs_give_empty_results():
    for shape in [(0, 10), (0, 3, 10)]:
        empty = np.zeros(shape, dtype=np.float32)
        out = qd.kl(empty, empty)
        assert out.shape == shape[:-1] and out.dtype == np.float64
    assert math.isnan(qd.kl(np.zeros((0, 4)), np.zeros((0, 4)), reduction="mean"))
    assert qd.kl(np.zeros((0, 4)), np.zeros((0, 4)), reduction="sum") == 0.0


def test_extreme_logits_and_conventions():
    big = np.array([[1e4, -1e4, 0.0], [-np.inf, 0.0, 1.0]], dtype=np.float32)
    other = np.array([[-1e4, 1e4, 0.0], [0.0, -np.inf, 1.0]], dtype=np.float32)
    kl = qd.kl(big, other)
    assert kl[0] == pytest.approx(2e4, rel=1e-6)
    assert kl[1] == np.inf  # Q = 0 where P > 0
    assert np.isfinite(qd.js(big, other)).all() and (qd.js(big, other) <= math.log(2)).all()
    # 0·log 0 = 0: a zero of P where Q is positive costs nothing extra
    with np.errstate(divide="ignore"):
        p = np.log(np.array([0.5, 0.5, 0.0]))
    q = np.log(np.array([0.25, 0.25, 0.5]))
    assert qd.kl(p, q) == pytest.approx(math.log(2), rel=1e-12)
    assert qd.divergence(q, p, "chi2") == np.inf
    assert qd.divergence(p, q, "renyi", alpha=0.5) == pytest.approx(-2 * math.log(2 * math.sqrt(0.125)), rel=1e-12)


def test_big_endian_inputs_equal_native_ones():
    """Arrays read from files written on big-endian machines are byte-swapped,
    not refused (divergences, quantization and float formats share the check)."""
    p, q = make_rows(100, 3.0, np.float32, seed=9)
    pb, qb = p.astype(">f4"), q.astype(">f4")
    for kind, alpha in KINDS:
        np.testing.assert_array_equal(qd.divergence(pb, qb, kind, alpha=alpha), qd.divergence(p, q, kind, alpha=alpha))
    x = p[0][np.isfinite(p[0])]
    for dt in (">f4", ">f8", ">f2"):
        native = x.astype(dt[1:])
        got = qd.quantize(x.astype(dt), bits=4, partition=qd.groups(-1, 16))
        want = qd.quantize(native, bits=4, partition=qd.groups(-1, 16))
        np.testing.assert_array_equal(got.codes, want.codes)
        np.testing.assert_array_equal(qd.encode(x.astype(dt), "float8_e4m3fn"), qd.encode(native, "float8_e4m3fn"))
