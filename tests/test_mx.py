"""MX (OCP MX v1.0) against an independent numpy implementation of the spec's
algorithm with torchao's scale modes, and NVFP4 against torchao's formulas
(shared/reference/quant-formats.md). Acceptance item 4."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd

# element: (ml_dtypes type or None for int8, emax_elem, mantissa bits, max)
ELEMS = {
    "fp8_e4m3": (ml_dtypes.float8_e4m3fn, 8, 3, 448.0),
    "fp8_e5m2": (ml_dtypes.float8_e5m2, 15, 2, 57344.0),
    "fp6_e2m3": (ml_dtypes.float6_e2m3fn, 2, 3, 7.5),
    "fp6_e3m2": (ml_dtypes.float6_e3m2fn, 4, 2, 28.0),
    "fp4_e2m1": (ml_dtypes.float4_e2m1fn, 2, 1, 6.0),
    "int8": (None, 0, 6, 127 / 64),
}
MODES = ["floor", "ceil", "even", "rceil"]


def shared_exp(amax: float, elem: str, mode: str) -> int:
    """The spec's shared exponent (FLOOR) and torchao's CEIL/EVEN/RCEIL,
    from math.frexp (exact), clamped to [-127, 127]."""
    _, emax, mbits, emax_val = ELEMS[elem]
    if amax == 0:
        return -127
    mant, exp = math.frexp(amax)  # amax = mant·2^exp, mant in [0.5, 1)
    fl = exp - 1
    if mode == "floor":
        e = fl - emax
    elif mode == "ceil":
        e = fl + (mant != 0.5) - emax
    elif mode == "even":
        t = 2 * mant  # significand in [1, 2)
        e = fl + (t >= 2 - 2.0 ** -(mbits + 1)) - emax
    else:  # rceil: float32 division, then ceil(log2)
        q = float(np.float32(amax) / np.float32(emax_val))
        if q == 0:
            return -127
        qm, qe = math.frexp(q)
        e = (qe - 1) + (qm != 0.5)
    return max(-127, min(127, e))


def mx_reference(x: np.ndarray, elem: str, block: int, mode: str):
    """Rows of x (2-D float32) → (codes, scales) by the OCP MX v1.0 algorithm."""
    dtype, _, _, emax_val = ELEMS[elem]
    rows, n = x.shape
    nb = -(-n // block)
    codes = np.zeros((rows, n), np.uint8)
    scales = np.zeros((rows, nb), np.uint8)
    for r in range(rows):
        for j in range(nb):
            v = x[r, j * block : (j + 1) * block].astype(np.float64)
            amax = np.max(np.abs(v))
            if not np.isfinite(amax):
                scales[r, j] = 0xFF
                continue
            e = shared_exp(float(amax), elem, mode)
            scales[r, j] = e + 127
            p = v * 2.0 ** (-e)  # exact in float64
            p = np.clip(p, -emax_val, emax_val)  # normal values that overflow are clamped
            if dtype is None:
                q = np.clip(np.round(p * 64), -127, 127).astype(np.int8).view(np.uint8)
            else:
                q = p.astype(np.float32).astype(dtype).view(np.uint8)
            codes[r, j * block : j * block + v.size] = q
    return codes, scales


def make_data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((12, 75)).astype(np.float32)
    x *= np.exp2(rng.integers(-30, 30, (12, 1))).astype(np.float32)  # per-row magnitudes
    x[0, :40] = 0  # an all-zero block
    x[1, 5] = 7.0  # the FLOOR clip case for fp4: 7 → 6
    x[2, :] = np.float32(2.0**-140)  # float32 subnormals
    x[3, 3] = np.float32(3e38)
    x[4, 10] = 448.0 * 2**20
    return x


@pytest.mark.parametrize("elem", list(ELEMS))
@pytest.mark.parametrize("mode", MODES)
def test_mx_matches_independent_ocp_implementation(elem, mode):
    x = make_data(10 * list(ELEMS).index(elem) + MODES.index(mode))
    for block in (32, 16, 7):
        codes, scales = qd.mx_encode(x, elem, block=block, scale_mode=mode)
        want_codes, want_scales = mx_reference(x, elem, block, mode)
        np.testing.assert_array_equal(scales, want_scales, err_msg=f"{elem} {mode} {block}")
        np.testing.assert_array_equal(codes.view(np.uint8), want_codes, err_msg=f"{elem} {mode} {block}")
        # decode: element value · 2^(scale-127)
        y = qd.mx_decode(codes, scales, elem, block=block)
        dtype = ELEMS[elem][0]
        if dtype is None:
            elem_vals = codes.view(np.int8).astype(np.float64) / 64
        else:
            elem_vals = codes.view(dtype).astype(np.float64)
        factor = np.repeat(np.exp2(scales.astype(np.float64) - 127), block, axis=1)[:, : x.shape[1]]
        with np.errstate(over="ignore"):
            want_y = (elem_vals * factor).astype(np.float32)
        np.testing.assert_array_equal(y, want_y)


def test_mx_floor_clips_the_top_element_and_rceil_does_not():
    x = np.array([[7.0] + [0.5] * 31], np.float32)
    c, s = qd.mx_encode(x, "fp4_e2m1")
    assert s[0, 0] == 127 and qd.mx_decode(c, s, "fp4_e2m1")[0, 0] == 6.0
    c, s = qd.mx_encode(x, "fp4_e2m1", scale_mode="rceil")
    assert s[0, 0] == 128 and qd.mx_decode(c, s, "fp4_e2m1")[0, 0] == 8.0


def test_mx_ragged_last_block_equals_zero_padding_and_is_kept():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 70)).astype(np.float32)
    codes, scales = qd.mx_encode(x, "fp8_e4m3")
    assert codes.shape == (3, 70) and scales.shape == (3, 3)
    padded = np.concatenate([x, np.zeros((3, 26), np.float32)], axis=1)
    pc, ps = qd.mx_encode(padded, "fp8_e4m3")
    np.testing.assert_array_equal(scales, ps)
    np.testing.assert_array_equal(codes, pc[:, :70])


def test_mx_axis_packed_dtypes_and_nan_blocks():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    c0, s0 = qd.mx_encode(x, "fp4_e2m1", axis=0, block=32)
    ct, st = qd.mx_encode(np.ascontiguousarray(x.T), "fp4_e2m1", block=32)
    np.testing.assert_array_equal(c0, ct.T)
    np.testing.assert_array_equal(s0, st.T)
    assert s0.shape == (2, 5)
    packed, sp = qd.mx_encode(x, "fp4_e2m1", axis=0, packed=True)
    assert packed.shape == (20, 5)
    np.testing.assert_array_equal(qd.mx_decode(packed, sp, "fp4_e2m1", axis=0, packed=True), qd.mx_decode(c0, s0, "fp4_e2m1", axis=0))
    ci, si = qd.mx_encode(x, "int8", axis=0)
    assert ci.dtype == np.int8
    # bfloat16 and float16 inputs give the same as their float32 values
    xb = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(qd.mx_encode(xb, "fp8_e5m2")[0], qd.mx_encode(xb.astype(np.float32), "fp8_e5m2")[0])
    # float64 input: same codes when the values are float32s
    np.testing.assert_array_equal(qd.mx_encode(x.astype(np.float64), "fp6_e3m2", scale_mode="rceil")[0], qd.mx_encode(x, "fp6_e3m2", scale_mode="rceil")[0])
    # a NaN or Inf makes its block's scale NaN, and the block decodes to NaN
    y = x.copy()
    y[3, 0] = np.nan
    y[35, 1] = np.inf
    c, s = qd.mx_encode(y, "fp8_e4m3", axis=0)
    assert s[0, 0] == 0xFF and s[1, 1] == 0xFF and s[1, 0] != 0xFF
    d = qd.mx_decode(c, s, "fp8_e4m3", axis=0)
    assert np.isnan(d[:32, 0]).all() and np.isnan(d[32:, 1]).all() and np.isfinite(d[32:, 0]).all()


def test_mx_errors():
    x = np.ones((2, 40), np.float32)
    with pytest.raises(qd.InputError, match="elem must be one of"):
        qd.mx_encode(x, "fp8")
    with pytest.raises(qd.InputError, match="scale_mode must be one of"):
        qd.mx_encode(x, "fp8_e4m3", scale_mode="round")
    with pytest.raises(qd.InputError, match="block must be a positive int"):
        qd.mx_encode(x, "fp8_e4m3", block=0)
    c, s = qd.mx_encode(x, "fp6_e2m3")
    with pytest.raises(qd.ShapeError, match="scales has 1 blocks"):
        qd.mx_decode(c, s[:, :1], "fp6_e2m3")
    bad = c.copy()
    bad[1, 3] = 64
    with pytest.raises(qd.InputError, match="code 64 at flat index 43 is out of range"):
        qd.mx_decode(bad, s, "fp6_e2m3")
    p, sp = qd.mx_encode(x, "fp4_e2m1", packed=True)
    with pytest.raises(qd.ShapeError, match="cannot hold length 43"):
        qd.mx_decode(p, sp, "fp4_e2m1", packed=True, length=43)
    with pytest.raises(qd.ShapeError, match="axis 2 is out of range"):
        qd.mx_encode(x, "fp8_e4m3", axis=2)


# ---------------------------------------------------------------------------
# NVFP4
# ---------------------------------------------------------------------------

F32 = np.float32


def nvfp4_reference(x: np.ndarray, pts=None):
    """torchao's NVFP4 formulas in numpy float32, blocks of 16 along rows."""
    rows, n = x.shape
    nb = -(-n // 16)
    codes = np.zeros((rows, n), np.uint8)
    scales = np.zeros((rows, nb), np.uint8)
    with np.errstate(all="ignore"):
        for r in range(rows):
            for j in range(nb):
                v = x[r, j * 16 : (j + 1) * 16].astype(F32)
                amax = F32(np.max(np.abs(v)))
                bs = amax / F32(6.0)
                if pts is not None:
                    bs = bs / F32(pts)
                bs8 = np.array([np.clip(bs, F32(2.0**-6), F32(448.0))], F32).astype(ml_dtypes.float8_e4m3fn)
                scales[r, j] = bs8.view(np.uint8)[0]
                bsf = bs8.astype(F32)[0]
                mult = F32(1.0) / bsf if pts is None else (F32(1.0) / F32(pts)) / bsf
                y = np.clip(v * mult, F32(-6.0), F32(6.0))
                codes[r, j * 16 : j * 16 + v.size] = y.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    return codes, scales


@pytest.mark.parametrize("two_level", [False, True])
def test_nvfp4_matches_torchao_semantics(two_level):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((20, 64)) * np.exp2(rng.integers(-12, 12, (20, 1)))).astype(np.float32)
    x[0, :16] = 0
    x[1, :16] = 1e-9  # below 2^-6·6: the scale clamps at 2^-6
    x[2, 0] = 1e5  # the scale clamps at 448
    pts_arg = "auto" if two_level else None
    codes, scales, pts = qd.nvfp4_encode(x, per_tensor_scale=pts_arg)
    if two_level:
        assert pts == float(F32(np.max(np.abs(x))) / F32(448 * 6))
    else:
        assert pts is None
    want_codes, want_scales = nvfp4_reference(x, pts)
    np.testing.assert_array_equal(scales, want_scales)
    np.testing.assert_array_equal(codes, want_codes)
    y = qd.nvfp4_decode(codes, scales, per_tensor_scale=pts)
    total = scales.view(ml_dtypes.float8_e4m3fn).astype(F32)
    if pts is not None:
        total = total * F32(pts)
    want_y = codes.view(ml_dtypes.float4_e2m1fn).astype(F32) * np.repeat(total, 16, axis=1)
    np.testing.assert_array_equal(y, want_y)
    # an explicit scale behaves like the same value passed as "auto"
    if two_level:
        c2, s2, p2 = qd.nvfp4_encode(x, per_tensor_scale=pts)
        np.testing.assert_array_equal(c2, codes)
        assert p2 == pts


def test_nvfp4_ragged_packed_nan_and_errors():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 37)).astype(np.float32)
    c, s, _ = qd.nvfp4_encode(x)
    assert c.shape == (3, 37) and s.shape == (3, 3)
    wc, ws = nvfp4_reference(x)
    np.testing.assert_array_equal(c, wc)
    np.testing.assert_array_equal(s, ws)
    p, sp, _ = qd.nvfp4_encode(x, packed=True)
    assert p.shape == (3, 19)
    np.testing.assert_array_equal(qd.nvfp4_decode(p, sp, packed=True, length=37), qd.nvfp4_decode(c, s))
    y = x.copy()
    y[0, 0] = np.nan
    c, s, _ = qd.nvfp4_encode(y)
    assert s[0, 0] == 0x7F and np.isnan(qd.nvfp4_decode(c, s)[0, :16]).all()
    with pytest.raises(qd.InputError, match="NaN or Inf"):
        qd.nvfp4_encode(y, per_tensor_scale="auto")
    with pytest.raises(qd.InputError, match="positive finite"):
        qd.nvfp4_encode(x, per_tensor_scale=-1.0)
    with pytest.raises(qd.InputError, match="positive finite"):
        qd.nvfp4_encode(x, per_tensor_scale=float("nan"))
    with pytest.raises(qd.ShapeError, match="scales has 2 blocks"):
        qd.nvfp4_decode(c, s[:, :2])
    bad = c.copy()
    bad[0, 1] = 16
    with pytest.raises(qd.InputError, match="code 16 at flat index 1 is out of range"):
        qd.nvfp4_decode(bad, s)
    assert qd.nvfp4_encode(np.zeros((1, 16), np.float32), per_tensor_scale="auto")[2] == 1.0


def test_an_empty_block_axis_is_named_as_such():
    x = np.ones((4, 0), np.float32)
    for encode in (lambda: qd.mx_encode(x, "fp8_e4m3"), lambda: qd.nvfp4_encode(x)):
        with pytest.raises(qd.ShapeError, match=r"the block axis has length 0 in x of shape \(4, 0\)"):
            encode()
    codes, scales = qd.mx_encode(np.ones((0, 4), np.float32), "fp8_e4m3")  # no rows: empty results
    assert codes.shape == (0, 4) and scales.shape == (0, 1)
