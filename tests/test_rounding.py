"""Rounding and overflow modes against an exact rational oracle.

The oracle knows each format only by its list of finite values (from
ml_dtypes/numpy) and rounds with Python ``fractions.Fraction``: it finds the
two neighbours of |x| (the value after max is max + one top-binade quantum,
the first value of the unbounded format beyond the range) and picks one by
the mode's definition. Overflow applies when the picked magnitude exceeds
max. Acceptance item 3.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import subprocess
import sys
from fractions import Fraction
from functools import lru_cache

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd
from quantdrift import formats

from test_formats import PEERS, NAMES

MODES = ["nearest_even", "nearest_away", "toward_zero", "down", "up"]


@lru_cache(maxsize=None)
def grid(name: str):
    """Ascending non-negative values as Fractions (index = positive code),
    and the virtual value after max."""
    fmt = formats.FORMATS[name]
    dtype = np.uint8 if fmt.bits <= 8 else np.uint16
    codes = np.arange(1 << (fmt.bits - (0 if name == "float8_e8m0fnu" else 1)), dtype=np.uint32).astype(dtype)
    vals = codes.view(PEERS[name]).astype(np.float64) if fmt.bits <= 8 else codes.view(PEERS[name]).astype(np.float64)
    vals = vals[np.isfinite(vals)]
    assert np.all(np.diff(vals) > 0)
    g = [Fraction(float(v)) for v in vals]
    top = g[-1]
    nxt = top + Fraction(2) ** (math.floor(math.log2(top)) - fmt.mantissa_bits)
    return g, nxt


def oracle(x: float, name: str, mode: str, overflow):
    """R(x) as a float (NaN for NaN)."""
    fmt = formats.FORMATS[name]
    if overflow is None:
        overflow = "inf" if fmt.has_inf else ("nan" if fmt.has_nan else "saturate")
    neg = math.copysign(1.0, x) < 0
    if math.isnan(x):
        # no NaN in float6/float4: ml_dtypes writes a zero of the opposite sign
        return math.nan if fmt.has_nan else (0.0 if neg else -0.0)
    g, nxt = grid(name)
    top = g[-1]
    if name == "float8_e8m0fnu" and (neg or x == 0):
        return math.nan

    def over():
        return {"saturate": float(top), "inf": math.inf, "nan": math.nan}[overflow]

    if math.isinf(x):
        mag = math.inf if fmt.has_inf else over()
        return -mag if neg else mag
    a = Fraction(abs(x))
    if a >= nxt:
        mag = over()
    else:
        if a > top:
            lo, hi, i_hi = top, nxt, len(g)
        else:
            i = bisect.bisect_left(g, a)
            if i < len(g) and g[i] == a:
                lo = hi = a
                i_hi = i
            elif i == 0:  # below the smallest (e8m0 only: no zero)
                lo = hi = g[0]
                i_hi = 0
            else:
                lo, hi, i_hi = g[i - 1], g[i], i
        if lo == hi:
            pick = lo
        else:
            below, above = a - lo, hi - a
            if mode in ("nearest_even", "nearest_away"):
                if below != above:
                    pick = lo if below < above else hi
                elif name == "float8_e8m0fnu" or mode == "nearest_away":
                    pick = hi  # e8m0: the only quantum multiple below is 1, odd
                else:
                    pick = hi if i_hi % 2 == 0 else lo
            elif mode == "toward_zero":
                pick = lo
            elif mode == "up":
                pick = lo if neg else hi
            else:  # down
                pick = hi if neg else lo
        mag = over() if pick > top else float(pick)
    if mag == 0 and fmt.special == "fnuz":
        return 0.0
    return -mag if neg else mag


def same(got: np.ndarray, want: list, fnuz: bool) -> np.ndarray:
    w = np.array(want, dtype=np.float64)
    g = got.astype(np.float64)
    eq = (g == w) | (np.isnan(g) & np.isnan(w))
    return eq & ((np.signbit(g) == np.signbit(w)) | np.isnan(w))


def inputs(name: str, seed: int) -> np.ndarray:
    """Random values across the format's range plus tie points and ±1 ulp."""
    fmt = formats.FORMATS[name]
    rng = np.random.default_rng(seed)
    lo = math.log2(fmt.min_subnormal or fmt.min_normal) - 3
    hi = math.log2(fmt.max) + 2
    r = np.exp2(rng.uniform(lo, hi, 300)) * rng.choice([-1.0, 1.0], 300)
    g, nxt = grid(name)
    vals = np.array([float(v) for v in g] + [float(nxt)])
    idx = rng.choice(len(vals) - 1, size=min(150, len(vals) - 1), replace=False)
    mids = (vals[idx] + vals[idx + 1]) / 2
    edges = np.concatenate([mids, vals[idx], [fmt.max, float(nxt), 2 * fmt.max, 0.0]])
    edges32 = edges.astype(np.float32)
    near = np.concatenate([edges32, np.nextafter(edges32, np.float32(np.inf)), np.nextafter(edges32, np.float32(-np.inf))])
    x = np.concatenate([r.astype(np.float32), near, -near, np.array([np.inf, -np.inf, np.nan, -0.0], np.float32)])
    return x


def overflow_modes(name):
    fmt = formats.FORMATS[name]
    return [None, "saturate"] + (["inf"] if fmt.has_inf else []) + (["nan"] if fmt.has_nan else [])


@pytest.mark.parametrize("name", NAMES)
def test_every_mode_and_overflow_against_fraction_oracle_float32(name):
    x = inputs(name, NAMES.index(name))
    fnuz = formats.FORMATS[name].special == "fnuz"
    for mode in MODES:
        for overflow in overflow_modes(name):
            got = qd.round_to(x, name, rounding=mode, overflow=overflow)
            want = [oracle(float(v), name, mode, overflow) for v in x]
            ok = same(got, want, fnuz)
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                pytest.fail(f"{name} {mode}/{overflow}: x={x[i]!r} got {got[i]!r} want {want[i]!r}")


@pytest.mark.parametrize("name", NAMES)
def test_float64_inputs_rounded_once_against_fraction_oracle(name):
    rng = np.random.default_rng(100 + NAMES.index(name))
    g, nxt = grid(name)
    vals = np.array([float(v) for v in g] + [float(nxt)])
    idx = rng.choice(len(vals) - 1, size=min(120, len(vals) - 1), replace=False)
    mids = (vals[idx] + vals[idx + 1]) / 2
    # a hair (2^-40 relative) off each tie: invisible to float32, decisive here
    x = np.concatenate([mids * (1 + 2.0**-40), mids * (1 - 2.0**-40), mids])
    x = np.concatenate([x, -x])
    fnuz = formats.FORMATS[name].special == "fnuz"
    for mode in MODES:
        got = qd.round_to(x, name, rounding=mode)
        assert got.dtype == np.float64
        want = [oracle(float(v), name, mode, None) for v in x]
        ok = same(got, want, fnuz)
        assert ok.all(), (name, mode, x[~ok][:3], got[~ok][:3], np.array(want)[~ok][:3])


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "bfloat16", "float8_e8m0fnu"])
def test_stochastic_picks_a_neighbour(name):
    x = inputs(name, 7)
    x = x[np.isfinite(x)]
    got = qd.round_to(x, name, rounding="stochastic", seed=5, overflow="saturate")
    for v, r in zip(x, got):
        lo = oracle(float(v), name, "toward_zero", "saturate")
        hi = oracle(float(v), name, "up" if v > 0 else "down", "saturate")
        assert r in (lo, hi) or (math.isnan(lo) and math.isnan(r)), (v, r, lo, hi)


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "bfloat16", "float8_e8m0fnu"])
def test_stochastic_rounding_is_unbiased(name):
    g, _ = grid(name)
    n = 1 << 20
    k = len(g) // 2
    lo, hi = float(g[k]), float(g[k + 1])
    for p in (0.1, 1 / 3, 0.5, 0.9):
        v = np.float32(lo + p * (hi - lo))
        p_exact = (float(v) - lo) / (hi - lo)
        for sign in ((1,) if name == "float8_e8m0fnu" else (1, -1)):
            x = np.full(n, sign * v, np.float32)
            r = qd.round_to(x, name, rounding="stochastic", seed=int(p * 1000) + sign)
            frac_up = float(np.mean(np.abs(r) == hi))
            assert set(np.unique(np.abs(r))) <= {lo, hi}
            sigma = math.sqrt(p_exact * (1 - p_exact) / n)
            assert abs(frac_up - p_exact) < 5 * sigma + 2.0**-32, (name, p, frac_up, p_exact)
    # a spread of values: the mean error is zero within its standard error
    rng = np.random.default_rng(3)
    x = rng.standard_normal(n).astype(np.float32) * np.float32(min(4.0, float(g[-1]) / 8))
    if name == "float8_e8m0fnu":
        x = np.abs(x) + np.float32(0.01)
    r = qd.round_to(x, name, rounding="stochastic", seed=11).astype(np.float64)
    err = r - x
    assert abs(err.mean()) < 5 * err.std() / math.sqrt(n) + 1e-12


def test_stochastic_same_seed_same_output_other_seed_differs():
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
    a = qd.encode(x, "float8_e4m3fn", rounding="stochastic", seed=1)
    b = qd.encode(x, "float8_e4m3fn", rounding="stochastic", seed=1)
    c = qd.encode(x, "float8_e4m3fn", rounding="stochastic", seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


SCRIPT = r"""
import hashlib, numpy as np, quantdrift as qd
x = np.random.default_rng(0).standard_normal(3_000_017).astype(np.float32)
h = hashlib.sha256()
h.update(qd.encode(x, "float8_e4m3fn", rounding="stochastic", seed=123).tobytes())
h.update(qd.round_to(x.astype(np.float64), "float4_e2m1fn", rounding="stochastic", seed=9).tobytes())
h.update(qd.round_mixed(x, np.arange(x.size) % 3, ["bfloat16", "float8_e5m2", "float6_e2m3fn"], rounding="stochastic", seed=4).tobytes())
print(qd.num_threads(), h.hexdigest())
"""


def test_stochastic_rounding_is_the_same_for_any_thread_count():
    digests = set()
    counts = []
    for threads in ("1", "2", "3"):
        env = dict(os.environ, QUANTDRIFT_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
        n, digest = out.stdout.split()
        counts.append(int(n))
        digests.add(digest)
    assert counts == [1, 2, 3]
    assert len(digests) == 1


def test_round_mixed_equals_per_format_rounding():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 33)) * 10).astype(np.float32)
    fmts = ["float8_e4m3fn", "bfloat16", formats.float4_e2m1fn, qd.FloatFormat(3, 2, special="none")]
    labels = rng.integers(0, len(fmts), x.shape)
    for rounding in ("nearest_even", "up", "stochastic"):
        got = qd.round_mixed(x, labels, fmts, rounding=rounding, seed=8)
        assert got.shape == x.shape and got.dtype == np.float32
        for k, f in enumerate(fmts):
            want = qd.round_to(x, f, rounding=rounding, seed=8)
            np.testing.assert_array_equal(got[labels == k], want[labels == k])
    got64 = qd.round_mixed(x.astype(np.float64), labels, fmts)
    assert got64.dtype == np.float64
    np.testing.assert_array_equal(got64, qd.round_mixed(x, labels, fmts))


def test_round_mixed_errors():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(qd.InputError, match=r"labels\[4\] = 2 is not a valid index into formats \[0, 2\)"):
        qd.round_mixed(x, np.array([[0, 1, 0], [1, 2, 0]]), ["bfloat16", "float16"])
    with pytest.raises(qd.ShapeError, match="labels has shape"):
        qd.round_mixed(x, np.zeros(6, np.int64), ["bfloat16"])
    with pytest.raises(qd.InputError, match=r"formats\[1\]: unknown format"):
        qd.round_mixed(x, np.zeros((2, 3), np.int64), ["bfloat16", "float7"])
    with pytest.raises(qd.InputError, match="impossible for float8_e4m3fn"):
        qd.round_mixed(x, np.zeros((2, 3), np.int64), ["float8_e4m3fn"], overflow="inf")


def test_gil_is_released_during_a_kernel():
    import threading
    import time

    x = np.random.default_rng(0).standard_normal(1 << 24).astype(np.float32)
    ticks = []
    stop = threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    time.sleep(0.01)
    before = len(ticks)
    for _ in range(3):
        qd.encode(x, "float8_e4m3fn", rounding="stochastic", seed=1)
    stop.set()
    t.join()
    assert len(ticks) > before + 3
