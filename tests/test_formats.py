"""Low-precision formats against ml_dtypes (numpy for float16), bit for bit.

Acceptance item 1: with default options, ``encode`` equals
``x.astype(<dtype>).view(uint)`` on every float16 and bfloat16 input, on 2^24
random float32 bit patterns, on every tie point and every overflow boundary;
``decode`` equals ml_dtypes for every code. The exhaustive 2^32 check is
marked slow.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd
from quantdrift import formats

PEERS = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e4m3b11fnuz": ml_dtypes.float8_e4m3b11fnuz,
    "float8_e4m3": ml_dtypes.float8_e4m3,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e3m4": ml_dtypes.float8_e3m4,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
    "float6_e2m3fn": ml_dtypes.float6_e2m3fn,
    "float6_e3m2fn": ml_dtypes.float6_e3m2fn,
    "float4_e2m1fn": ml_dtypes.float4_e2m1fn,
}
NAMES = list(PEERS)


# ml_dtypes before 0.7 rounded every float32 in (2^-127, 2^-126) up to
# 2^-126 in float8_e8m0fnu, whatever its distance; 0.7 rounds to nearest,
# as quantdrift does. With an older peer those inputs are left out.
OLD_E8M0 = tuple(int(v) for v in ml_dtypes.__version__.split(".")[:2]) < (0, 7)


def peer_codes(x: np.ndarray, name: str) -> np.ndarray:
    fmt = formats.FORMATS[name]
    with np.errstate(all="ignore"):
        return x.astype(PEERS[name]).view(np.uint8 if fmt.bits <= 8 else np.uint16)


def comparable(x: np.ndarray, name: str) -> np.ndarray:
    """Where the installed ml_dtypes is a valid peer for `name`."""
    if not (OLD_E8M0 and name == "float8_e8m0fnu"):
        return np.ones(x.shape, dtype=bool)
    with np.errstate(all="ignore"):
        a = np.abs(x.astype(np.float32))
    return ~((a > np.float32(2.0**-127)) & (a < np.float32(2.0**-126)))


def assert_codes_equal(x: np.ndarray, name: str, **kw) -> None:
    got = qd.encode(x, name, **kw)
    want = peer_codes(x, name)
    assert got.dtype == want.dtype
    bad = np.flatnonzero((got != want) & comparable(x, name))
    if bad.size:
        i = bad[0]
        raw = x.reshape(-1)[i]
        raise AssertionError(
            f"{name}: {bad.size} mismatches; first x={raw!r} (bits {x.view(np.uint32 if x.itemsize == 4 else np.uint16).reshape(-1)[i]:#x}) "
            f"got {got.reshape(-1)[i]:#x} want {want.reshape(-1)[i]:#x}"
        )


def test_thirteen_predefined_formats_with_their_properties():
    assert set(formats.FORMATS) == set(NAMES)
    for name in NAMES:
        fmt = formats.FORMATS[name]
        if name == "float16":
            info = np.finfo(np.float16)
        else:
            info = ml_dtypes.finfo(PEERS[name])
        assert fmt.max == float(info.max), name
        assert fmt.min_normal == float(info.smallest_normal), name
        if fmt.min_subnormal is not None:
            assert fmt.min_subnormal == float(info.smallest_subnormal), name
        assert fmt.bits == (8 if name == "float8_e8m0fnu" else 1 + fmt.exponent_bits + fmt.mantissa_bits)
        assert fmt.mantissa_bits == info.nmant, name
        if fmt.nan_code is not None:
            peer = np.array([fmt.nan_code], np.uint8 if fmt.bits <= 8 else np.uint16).view(PEERS[name])
            assert np.isnan(peer.astype(np.float32))[0], name
        if fmt.inf_code is not None:
            peer = np.array([fmt.inf_code], np.uint8 if fmt.bits <= 8 else np.uint16).view(PEERS[name])
            assert peer.astype(np.float32)[0] == np.inf, name
        assert fmt.has_inf == (fmt.inf_code is not None)
    assert getattr(qd.formats, "float8_e4m3fn") is formats.FORMATS["float8_e4m3fn"]


@pytest.mark.parametrize("name", [n for n in NAMES if formats.FORMATS[n].bits <= 8])
def test_values_lists_every_finite_value(name):
    fmt = formats.FORMATS[name]
    codes = np.arange(1 << fmt.bits, dtype=np.uint8)
    peer = codes.view(PEERS[name]).astype(np.float64)
    want = np.unique(peer[np.isfinite(peer)]) + 0.0
    np.testing.assert_array_equal(fmt.values, want)


@pytest.mark.parametrize("name", NAMES)
def test_decode_every_code_matches_peer(name):
    fmt = formats.FORMATS[name]
    dtype = np.uint8 if fmt.bits <= 8 else np.uint16
    codes = np.arange(1 << fmt.bits, dtype=np.uint32).astype(dtype)
    got = qd.decode(codes, name)
    want = codes.view(PEERS[name]).astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("src", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_encode_every_16_bit_input(src, name):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = bits.view(np.float16 if src == "float16" else ml_dtypes.bfloat16)
    assert_codes_equal(x, name)
    # round_to is the value of those codes
    got = qd.round_to(x, name)
    with np.errstate(all="ignore"):
        want = x.astype(PEERS[name]).astype(np.float32)
    keep = comparable(x, name)
    np.testing.assert_array_equal(got[keep], want[keep])


def random_f32_patterns(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    # Half the patterns get exponents 96..160, where every format's normals,
    # subnormals and overflow boundary live; the rest stay uniform (NaNs, Infs,
    # float32 subnormals, huge values).
    half = n // 2
    exp = (96 + (bits[:half] >> 26) % 64).astype(np.uint32)
    bits[:half] = (bits[:half] & np.uint32(0x807FFFFF)) | (exp << np.uint32(23))
    specials = np.array(
        [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF, 1, 0x807FFFFF],
        dtype=np.uint32,
    )
    bits[: specials.size] = specials
    return bits.view(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_encode_random_f32_bit_patterns(name):
    # 2^24 patterns per format, in chunks to bound memory.
    for chunk in range(4):
        x = random_f32_patterns(1 << 22, seed=1000 * chunk + NAMES.index(name))
        assert_codes_equal(x, name)


def tie_points(name: str) -> np.ndarray:
    """Midpoints between adjacent values (exact in float32), one float32 ulp
    either side, both signs, and the overflow boundary region."""
    fmt = formats.FORMATS[name]
    if fmt.bits <= 8:
        v = fmt.values
    else:
        dtype = np.float16 if name == "float16" else ml_dtypes.bfloat16
        v = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype).astype(np.float64)
        v = np.unique(v[np.isfinite(v)])
    v = v[v >= 0]
    top = np.float64(fmt.max)
    # the next value the format would have above max (same quantum)
    nxt = top + 2.0 ** (np.floor(np.log2(top)) - fmt.mantissa_bits)
    grid = np.concatenate([v, [nxt]])
    mids = (grid[1:] + grid[:-1]) / 2
    if name == "float8_e8m0fnu":
        mids = np.concatenate([mids, 1.5 * grid])  # the linear-domain ties
    pts = np.concatenate([mids, grid, [2 * top, 4 * top, 1e38, 3.4e38]]).astype(np.float32)
    assert np.all(pts[: mids.size].astype(np.float64) == mids[: pts[: mids.size].size]) or name in ("float8_e8m0fnu",)
    with np.errstate(over="ignore"):
        around = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(0))])
    return np.concatenate([around, -around])


@pytest.mark.parametrize("name", NAMES)
def test_encode_every_tie_point_and_overflow_boundary(name):
    x = tie_points(name)
    assert_codes_equal(x, name)
    assert_codes_equal(x.astype(ml_dtypes.bfloat16), name)


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"])
def test_known_overflow_boundaries(name):
    # derived from the reference table: e4m3fn 464 is the tie to 448, above is NaN;
    # e5m2 overflows to Inf above the tie 61440/2 + 57344/2; fp4 saturates.
    fmt = formats.FORMATS[name]
    nxt = fmt.max + 2.0 ** (np.floor(np.log2(fmt.max)) - fmt.mantissa_bits)
    tie = np.float32((fmt.max + nxt) / 2)
    above = np.nextafter(tie, np.float32(np.inf))
    r = qd.round_to(np.array([tie, above, -above], np.float32), name)
    if name == "float8_e5m2":
        # 57344 = 1.11b·2^15 has an odd mantissa: the tie goes up, to Inf
        assert r[0] == np.inf
    else:
        # 448 = 1.110b·2^8 is even; float4 saturates anyway
        assert r[0] == fmt.max
    if name == "float8_e4m3fn":
        assert np.isnan(r[1]) and np.isnan(r[2])
    elif name == "float8_e5m2":
        assert r[1] == np.inf and r[2] == -np.inf
    else:
        assert r[1] == fmt.max and r[2] == -fmt.max


# Formats with no mantissa bit: every nonzero value a power of two.
ZERO_MANTISSA = {
    "e2m0_none": qd.FloatFormat(2, 0, special="none"),
    "e3m0_none": qd.FloatFormat(3, 0, special="none"),
    "e3m0_fn": qd.FloatFormat(3, 0, special="fn"),
    "e3m0_fnuz": qd.FloatFormat(3, 0, special="fnuz"),
    "e4m0_fnuz": qd.FloatFormat(4, 0, special="fnuz"),
    "e5m0_fn": qd.FloatFormat(5, 0, special="fn"),
}


def nearest_even_oracle(x: Fraction, grid: list[Fraction]) -> Fraction:
    """R(|x|) by the definition of round-half-even, in exact fractions: the
    nearest of the format's non-negative values; on a tie between neighbours
    lo < hi, the one that is an even multiple of their spacing hi − lo (the
    quantum there). Between 2^k and 2^(k+1) that is 2^(k+1) = 2·2^k; between
    0 and the smallest value, 0."""
    hi_at = next(i for i, v in enumerate(grid) if v >= x)
    if grid[hi_at] == x:
        return x
    lo, hi = grid[hi_at - 1], grid[hi_at]
    if x - lo != hi - x:
        return lo if x - lo < hi - x else hi
    return lo if (lo / (hi - lo)).numerator % 2 == 0 else hi


def zero_mantissa_ties(f) -> np.ndarray:
    v = np.asarray(f.values, np.float64)
    v = v[v >= 0]
    mids = (v[1:] + v[:-1]) / 2  # every midpoint below max: no overflow rule involved
    pts = np.concatenate([mids, v]).astype(np.float32)
    around = np.concatenate([pts, np.nextafter(pts, np.float32(np.inf)), np.nextafter(pts, np.float32(0))])
    around = around[around <= f.max]
    return np.concatenate([around, -around])


@pytest.mark.parametrize("key", list(ZERO_MANTISSA))
def test_zero_mantissa_formats_round_ties_to_the_even_significand(key):
    f = ZERO_MANTISSA[key]
    grid = [Fraction(float(v)) for v in f.values if v >= 0]
    x = zero_mantissa_ties(f)
    want = np.array(
        [math.copysign(float(nearest_even_oracle(Fraction(float(abs(v))), grid)), v) for v in x], np.float64
    )
    if f.nan_code == 0x80 >> (8 - f.bits):  # fnuz: the negative zero's code is NaN; −tiny is +0
        want[want == 0] = 0.0
    # float32, float16 and bfloat16 take the fast lanes, float64 the reference codec
    for dtype in (np.float32, np.float16, ml_dtypes.bfloat16, np.float64):
        xs = x.astype(dtype)
        exact = xs.astype(np.float64) == x.astype(np.float64)
        got = qd.round_to(xs, f).astype(np.float64)
        np.testing.assert_array_equal(got[exact], want[exact], err_msg=f"{key} {dtype.__name__}")
        np.testing.assert_array_equal(np.signbit(got[exact]), np.signbit(want[exact]))
        codes = qd.encode(xs, f)
        np.testing.assert_array_equal(qd.decode(codes, f)[exact], want[exact].astype(np.float32))
    # 0.75, 3.0 → 1.0, 4.0 (not the even codes of 0.5, 2.0)
    if key == "e3m0_none":
        np.testing.assert_array_equal(qd.round_to(np.array([0.75, 3.0, -0.75], np.float32), f), [1.0, 4.0, -1.0])


def test_the_zero_mantissa_tie_rule_is_ml_dtypes_float8_e8m0fnu():
    # float8_e8m0fnu, ml_dtypes' zero-mantissa format, follows the same
    # oracle: every tie 1.5·2^k goes up to 2^(k+1), whatever the code's parity.
    grid = [Fraction(2) ** k for k in range(-20, 21)]
    x = np.array([1.5 * 2.0**k for k in range(-19, 20)], np.float32)
    want = np.array([float(nearest_even_oracle(Fraction(float(v)), grid)) for v in x])
    np.testing.assert_array_equal(x.astype(ml_dtypes.float8_e8m0fnu).astype(np.float64), want)
    np.testing.assert_array_equal(qd.round_to(x, "float8_e8m0fnu").astype(np.float64), want)


def test_round_to_keeps_shape_and_dtype():
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    assert qd.round_to(x, "float8_e4m3fn").shape == (2, 3, 4)
    assert qd.round_to(x, "float8_e4m3fn").dtype == np.float32
    assert qd.round_to(x.astype(np.float64), "float8_e4m3fn").dtype == np.float64
    assert qd.round_to(x.astype(np.float16), "bfloat16").dtype == np.float32
    assert qd.encode(x, "bfloat16").dtype == np.uint16
    assert qd.encode(np.float32(1.0), "float8_e5m2").shape == ()


def test_float64_is_rounded_once_not_through_float32():
    # 1 + 2^-4 + 2^-40 is just above the e4m3 tie between 1 and 1.125; through
    # float32 it would become the tie itself and round (to even) to 1.
    x = np.array([1 + 2.0**-4 + 2.0**-40, -(1 + 2.0**-8 + 2.0**-30)])
    r = qd.round_to(x, "float8_e4m3fn")
    assert r.dtype == np.float64
    assert r[0] == 1.125
    assert qd.round_to(x[1:], "bfloat16")[0] == -(1 + 2.0**-7)


# ---------------------------------------------------------------------------
# Packed 4-bit codes
# ---------------------------------------------------------------------------


def test_packed_nibble_order_and_odd_rows():
    x = np.array([[0.5, 1.0, 1.5], [2.0, 3.0, -6.0]], np.float32)
    codes = qd.encode(x, "float4_e2m1fn")
    packed = qd.encode(x, "float4_e2m1fn", packed=True)
    assert packed.shape == (2, 2)
    # element 2j in the low nibble, 2j+1 in the high nibble, zero pad
    want = np.stack([codes[:, 0] | (codes[:, 1] << 4), codes[:, 2]], axis=1).astype(np.uint8)
    np.testing.assert_array_equal(packed, want)
    back = qd.decode(packed, "float4_e2m1fn", packed=True, shape=(2, 3))
    np.testing.assert_array_equal(back, x)
    assert qd.decode(packed, "float4_e2m1fn", packed=True).shape == (2, 4)


# ---------------------------------------------------------------------------
# Custom formats and errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["float8_e4m3fn", "bfloat16"])
def test_recycled_output_buffers_never_alias_a_live_array(name):
    # Outputs of 1 MiB and more come from a cache of freed buffers: a live
    # array (or a view of one) must keep its memory, and a recycled buffer's
    # stale codes must be overwritten.
    import gc

    rng = np.random.default_rng(5)
    xs = [(rng.standard_normal(1 << 20) * 4 * (k + 1)).astype(np.float32) for k in range(4)]
    expected = [peer_codes(x, name) for x in xs]
    a = qd.encode(xs[0], name)
    b = qd.encode(xs[1], name)
    assert a.ctypes.data != b.ctypes.data
    np.testing.assert_array_equal(a, expected[0])
    tail = a[17:]
    del a
    gc.collect()
    c = qd.encode(xs[2], name)  # must not take the memory `tail` still views
    np.testing.assert_array_equal(tail, expected[0][17:])
    np.testing.assert_array_equal(c, expected[2])
    freed = b.ctypes.data
    del b
    gc.collect()
    d = qd.encode(xs[3], name)  # the freed buffer, full of xs[1]'s codes
    assert d.ctypes.data == freed
    np.testing.assert_array_equal(d, expected[3])
    assert d.flags.writeable and d.flags.c_contiguous
    d[0] = 1  # the caller owns the array
    assert d[0] == 1


def test_custom_format_equal_to_predefined_encodes_the_same():
    custom = qd.FloatFormat(4, 3, special="fn")
    assert custom.bias == 7 and custom.max == 448.0
    x = random_f32_patterns(1 << 16, 3)
    np.testing.assert_array_equal(qd.encode(x, custom), qd.encode(x, "float8_e4m3fn"))
    fnuz = qd.FloatFormat(5, 2, special="fnuz")
    assert fnuz.bias == 16 and fnuz.nan_code == 0x80
    np.testing.assert_array_equal(qd.encode(x, fnuz), qd.encode(x, "float8_e5m2fnuz"))


def test_custom_wide_and_narrow_formats():
    # e6m9 (16 bits, IEEE): values between float16 and bfloat16
    f = qd.FloatFormat(6, 9)
    assert f.bits == 16 and f.bias == 31 and f.max == (2 - 2.0**-9) * 2.0**31
    x = np.array([1 + 2.0**-10, 1 + 3 * 2.0**-10, 5.0e9, 5e-13], np.float32)
    r = qd.round_to(x, f)
    assert r[0] == 1.0 and r[1] == 1 + 2 * 2.0**-9 and r[2] == np.inf
    # e2m0 "none": values 0, 1, 2, 4 (bias 1; exponent field 0 is zero)
    g = qd.FloatFormat(2, 0, special="none")
    np.testing.assert_array_equal(g.values, [-4, -2, -1, 0, 1, 2, 4])
    # a bias that reaches below float32's normal range takes the exact path
    h = qd.FloatFormat(8, 3, bias=140, special="fn")
    assert h.min_subnormal == 2.0**-142
    y = np.array([2.0**-142, 1.5 * 2.0**-142, 2.0**-130 * 1.0625], np.float32)
    np.testing.assert_array_equal(qd.round_to(y, h), np.array([2.0**-142, 2.0**-141, 2.0**-130], np.float32))


@pytest.mark.parametrize(
    "args, kwargs, words",
    [
        ((9, 7), {}, "16 bits"),
        ((0, 3), {}, "exponent_bits must be at least 1"),
        ((4, 3), {"bias": -200}, "float32's range"),
        ((8, 7), {"bias": 300}, "2^-149"),
        ((4, 0), {"special": "ieee"}, "mantissa_bits >= 1"),
        ((4, 3), {"special": "fnu"}, "special must be"),
        ((-1, 3), {}, "non-negative int"),
        ((4.0, 3), {}, "non-negative int"),
    ],
)
def test_invalid_custom_formats_raise_precise_errors(args, kwargs, words):
    with pytest.raises(qd.InputError, match="invalid FloatFormat") as e:
        qd.FloatFormat(*args, **kwargs)
    assert words in str(e.value)


def test_unknown_format_name_lists_valid_names():
    with pytest.raises(qd.InputError) as e:
        qd.encode(np.ones(3, np.float32), "float8_e4m3fnx")
    msg = str(e.value)
    assert "float8_e4m3fnx" in msg and "float8_e4m3fn" in msg and "float4_e2m1fn" in msg
    with pytest.raises(ValueError):  # InputError is a ValueError
        qd.round_to(np.ones(3, np.float32), "fp8")


def test_codes_out_of_range_raise():
    with pytest.raises(qd.InputError, match=r"code 64 at flat index 2 is out of range for float6_e2m3fn \(6-bit codes are 0..63\)"):
        qd.decode(np.array([0, 1, 64], np.uint8), "float6_e2m3fn")
    with pytest.raises(qd.InputError, match="out of range"):
        qd.decode(np.array([16], np.int64), "float4_e2m1fn")
    with pytest.raises(qd.InputError, match="out of range"):
        qd.decode(np.array([-1], np.int32), "float8_e4m3fn")
    with pytest.raises(qd.DtypeError, match="uint16"):
        qd._core.lowp_decode(np.array([1], np.uint8), formats.bfloat16._spec())
    np.testing.assert_array_equal(qd.decode(np.array([56], np.int64), "float8_e4m3fn"), [1.0])


def test_packed_arrays_of_wrong_length_raise():
    packed = np.zeros((2, 3), np.uint8)
    with pytest.raises(qd.ShapeError, match=r"do not hold shape \(2, 7\).*\(2, 4\)"):
        qd.decode(packed, "float4_e2m1fn", packed=True, shape=(2, 7))
    with pytest.raises(qd.ShapeError):
        qd.decode(packed, "float4_e2m1fn", packed=True, shape=(3, 6))
    with pytest.raises(qd.InputError, match="at most 4 bits"):
        qd.encode(np.ones(4, np.float32), "float8_e4m3fn", packed=True)
    with pytest.raises(qd.InputError, match="at most 4 bits"):
        qd.decode(packed, "float6_e2m3fn", packed=True)


def test_option_errors():
    x = np.ones(3, np.float32)
    with pytest.raises(qd.InputError, match='overflow="inf" is impossible for float8_e4m3fn'):
        qd.round_to(x, "float8_e4m3fn", overflow="inf")
    with pytest.raises(qd.InputError, match='overflow="nan" is impossible for float4_e2m1fn'):
        qd.round_to(x, "float4_e2m1fn", overflow="nan")
    with pytest.raises(qd.InputError, match="rounding must be one of"):
        qd.round_to(x, "float8_e4m3fn", rounding="nearest")
    with pytest.raises(qd.InputError, match="overflow must be"):
        qd.round_to(x, "float8_e4m3fn", overflow="clip")
    with pytest.raises(qd.InputError, match="seed"):
        qd.round_to(x, "float8_e4m3fn", rounding="stochastic", seed=-1)
    with pytest.raises(qd.DtypeError, match="float32, float64, float16 or bfloat16"):
        qd.round_to(np.ones(3, np.int32), "float8_e4m3fn")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn", "float8_e8m0fnu"])
def test_exhaustive_every_float32_pattern(name):
    """Acceptance item 2: all 2^32 float32 bit patterns against ml_dtypes."""
    start = time.perf_counter()
    step = 1 << 24
    for lo in range(0, 1 << 32, step):
        x = np.arange(lo, lo + step, dtype=np.uint64).astype(np.uint32).view(np.float32)
        assert_codes_equal(x, name)
    print(f"{name}: 2^32 patterns bit-exact in {time.perf_counter() - start:.0f} s")
