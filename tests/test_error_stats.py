"""error_stats against float64 numpy formulas."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd


def test_moments_match_numpy_float64():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(100_003).astype(np.float32)
    y = qd.round_to(x, "float8_e4m3fn")
    s = qd.error_stats(x, y)
    a, b = x.astype(np.float64), y.astype(np.float64)
    d = a - b
    assert s.n == s.n_finite == x.size
    assert s.mse == pytest.approx(np.mean(d * d), rel=1e-12)
    assert s.rmse == pytest.approx(np.sqrt(np.mean(d * d)), rel=1e-12)
    assert s.max_abs == np.max(np.abs(d))
    assert s.sqnr_db == pytest.approx(10 * np.log10(np.sum(a * a) / np.sum(d * d)), rel=1e-12)
    assert s.cosine == pytest.approx(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-12)
    # every dtype pairing reads the same numbers
    s16 = qd.error_stats(x.astype(np.float64), y.astype(ml_dtypes.bfloat16))
    assert s16.mse == pytest.approx(s.mse, rel=1e-12)
    assert qd.error_stats(x[:70].reshape(7, 10)[:, ::2], y[:70].reshape(7, 10)[:, ::2]).n == 35


def test_counts_saturated_flushed_nan_inf():
    x = np.array([1000.0, -500.0, 1e-5, -1e-6, 3.0, 0.0, 1e6, np.nan], np.float32)
    y4 = qd.round_to(x, "float4_e2m1fn")  # saturates at ±6, flushes tiny values
    s = qd.error_stats(x, y4, clip="float4_e2m1fn")
    assert s.n_saturated == 3  # 1000, -500, 1e6
    assert s.n_flushed == 2  # 1e-5, -1e-6
    assert s.n_nan == 0 and s.n_inf == 0  # float4 has no NaN: the NaN became a zero
    s_default = qd.error_stats(x, y4)  # clip = largest finite |y| = 6
    assert s_default.n_saturated == 3
    y8 = qd.round_to(x, "float8_e4m3fn")  # 1000, -500 and 1e6 overflow to NaN
    s8 = qd.error_stats(x, y8, clip=qd.formats.float8_e4m3fn)
    assert s8.n_nan == 4 and s8.n_finite == 4 and s8.n_saturated == 3
    y5 = qd.round_to(x, "float8_e5m2")
    s5 = qd.error_stats(x, y5, clip=57344.0)
    assert s5.n_inf == 1 and s5.n_saturated == 1
    assert set(s.as_dict()) >= {"mse", "rmse", "max_abs", "sqnr_db", "cosine", "n_saturated", "n_flushed", "n_nan"}


def test_edge_values_and_errors():
    x = np.array([1.0, 2.0], np.float32)
    s = qd.error_stats(x, x)
    assert s.mse == 0 and s.sqnr_db == np.inf and s.cosine == pytest.approx(1.0)
    z = qd.error_stats(np.zeros(3, np.float32), np.zeros(3, np.float32))
    assert np.isnan(z.cosine) and z.sqnr_db == np.inf
    with pytest.raises(qd.ShapeError, match=r"x has shape \(2,\) but y has shape \(3,\)"):
        qd.error_stats(x, np.ones(3, np.float32))
    with pytest.raises(qd.InputError, match="clip must be a non-negative number"):
        qd.error_stats(x, x, clip=float("nan"))
    with pytest.raises(qd.InputError, match="unknown format"):
        qd.error_stats(x, x, clip="float9")
    with pytest.raises(qd.DtypeError):
        qd.error_stats(np.ones(2, np.int32), x)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
def test_everything_matches_numpy_across_chunks_with_special_values(dtype):
    # 70_001 elements span several of the kernel's chunks and end in a
    # partial block; NaN, ±inf and zeros sit on both sides.
    rng = np.random.default_rng(1)
    n = 70_001
    x = (rng.standard_normal(n) * 4).astype(dtype)
    y = (x.astype(np.float64) + rng.standard_normal(n) * 0.1).astype(dtype)
    for arr, k in ((x, 0), (y, 1)):
        idx = rng.choice(n, 600, replace=False)
        arr[idx[:150]] = np.nan
        arr[idx[150:300]] = np.inf
        arr[idx[300:450]] = -np.inf
        arr[idx[450:]] = 0.0
    a, b = x.astype(np.float64), y.astype(np.float64)
    for clip in (None, 3.0):
        s = qd.error_stats(x, y, clip=clip)
        ok = np.isfinite(a) & np.isfinite(b)
        d = a[ok] - b[ok]
        bound = np.max(np.abs(b[np.isfinite(b)])) if clip is None else clip
        assert s.n == n and s.n_finite == ok.sum()
        assert s.mse == pytest.approx(np.mean(d * d), rel=1e-12)
        assert s.max_abs == np.max(np.abs(d))
        assert s.sqnr_db == pytest.approx(10 * np.log10(np.sum(a[ok] ** 2) / np.sum(d * d)), rel=1e-12)
        assert s.cosine == pytest.approx(np.dot(a[ok], b[ok]) / np.linalg.norm(a[ok]) / np.linalg.norm(b[ok]), rel=1e-12)
        assert s.n_saturated == (np.isfinite(a) & (np.abs(a) > bound)).sum()
        assert s.n_flushed == (np.isfinite(a) & (a != 0) & (b == 0)).sum()
        assert s.n_nan == np.isnan(b).sum() and s.n_inf == np.isinf(b).sum()
