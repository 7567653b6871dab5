"""Float-format, MX and NVFP4 kernels on the GPU against the CPU kernels, bit
for bit (``.view(uint)``, NaN payloads and signed zeros included), over the
CPU tests' matrix: every float16/bfloat16 input, random float32 bit patterns,
tie points and overflow boundaries of every format, every rounding ×
overflow mode, stochastic rounding with fixed seeds, custom formats, mixed
formats, packed codes, MX/NVFP4 with ragged blocks along different axes,
and the CPU's errors. The CPU kernels are themselves tested against
ml_dtypes and exact oracles (test_formats.py, test_rounding.py, test_mx.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd
from quantdrift import formats

from test_formats import NAMES, random_f32_patterns, tie_points
from test_mx import ELEMS, MODES as MX_MODES, make_data
from test_rounding import inputs as rounding_inputs, overflow_modes

ROUNDINGS = ["nearest_even", "nearest_away", "toward_zero", "down", "up", "stochastic"]

CUSTOM = {
    "e6m9": qd.FloatFormat(6, 9),
    "e2m0_none": qd.FloatFormat(2, 0, special="none"),
    "e8m3_bias140_fn": qd.FloatFormat(8, 3, bias=140, special="fn"),  # below float32's normals
    "e3m4_bias10": qd.FloatFormat(3, 4, bias=10),
    "e5m2_fnuz": qd.FloatFormat(5, 2, special="fnuz"),
    "e1m2_none": qd.FloatFormat(1, 2, special="none"),
    "e4m11_fn": qd.FloatFormat(4, 11, special="fn"),
}


def bits(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    g, w = bits(got).reshape(-1), bits(want).reshape(-1)
    bad = np.flatnonzero(g != w)
    if bad.size:
        i = bad[0]
        pytest.fail(f"{what}: {bad.size} mismatches; first at {i}: gpu {g[i]:#x} cpu {w[i]:#x}")


def both(fn, *args, **kw):
    return fn(*args, device="gpu", **kw), fn(*args, device="cpu", **kw)


def check(fn, what, *args, **kw):
    got, want = both(fn, *args, **kw)
    if isinstance(want, tuple):
        for k, (g, w) in enumerate(zip(got, want)):
            if isinstance(w, np.ndarray):
                assert_same(g, w, f"{what} [{k}]")
            else:
                assert g == w, what
    else:
        assert_same(got, want, what)


# ---------------------------------------------------------------------------
# Float formats
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_16_bit_input_and_random_float32_patterns(gpu, name):
    codes16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        x = codes16.view(dtype)
        check(qd.encode, f"{name} {dtype}", x, name)
        check(qd.round_to, f"{name} {dtype} round", x, name)
    x = random_f32_patterns(1 << 18, seed=NAMES.index(name))
    check(qd.encode, f"{name} f32", x, name)
    check(qd.round_to, f"{name} f32 round", x[: 1 << 16], name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_every_mode_and_overflow_on_tie_points(gpu, name):
    x = np.concatenate([tie_points(name), rounding_inputs(name, NAMES.index(name))])
    for rounding in ROUNDINGS:
        for overflow in overflow_modes(name):
            kw = dict(rounding=rounding, overflow=overflow, seed=1234)
            check(qd.encode, f"{name} {rounding}/{overflow}", x, name, **kw)
            check(qd.round_to, f"{name} {rounding}/{overflow} round", x, name, **kw)
            check(qd.encode, f"{name} {rounding}/{overflow} bf16", x.astype(ml_dtypes.bfloat16), name, **kw)
    # float64: a hair off each float32 tie, which only a direct rounding sees
    x64 = x.astype(np.float64)
    x64 = np.concatenate([x64, x64 * (1 + 2.0**-40), x64 * (1 - 2.0**-40), [1e300, -1e-300, 5e-324]])
    for rounding in ROUNDINGS:
        check(qd.round_to, f"{name} {rounding} f64", x64, name, rounding=rounding, seed=9)
        check(qd.encode, f"{name} {rounding} f64 codes", x64, name, rounding=rounding, seed=9)


def test_float64_nan_payloads_and_signs(gpu):
    raw = np.array(
        [0x7FF8000000000000, 0xFFF0000000000001, 0x7FF00000DEADBEEF, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 1],
        dtype=np.uint64,
    ).view(np.float64)
    for name in NAMES:
        check(qd.encode, name, raw, name)
        check(qd.round_to, name, raw, name)


@pytest.mark.parametrize("key", list(CUSTOM))
def test_custom_formats_in_every_mode(gpu, key):
    f = CUSTOM[key]
    x = random_f32_patterns(1 << 15, seed=len(key))
    x = np.concatenate([x, np.float32(f.max) * np.array([1, 1.01, 1.5, 2, -1.5], np.float32)])
    if f.min_subnormal:
        x = np.concatenate([x, np.float32(f.min_subnormal) * np.array([0.5, 1.5, 2.5, -0.5, 0.25], np.float32)])
    for rounding in ROUNDINGS:
        for overflow in [None, "saturate"] + (["inf"] if f.has_inf else []) + (["nan"] if f.has_nan else []):
            kw = dict(rounding=rounding, overflow=overflow, seed=5)
            check(qd.encode, f"{key} {rounding}/{overflow}", x, f, **kw)
            check(qd.round_to, f"{key} {rounding}/{overflow} round", x, f, **kw)
    with np.errstate(invalid="ignore"):
        x64 = x.astype(np.float64) * (1 + 2.0**-35)
    check(qd.round_to, f"{key} f64", x64, f, rounding="nearest_even")


def test_stochastic_seeds_give_the_cpu_codes(gpu):
    x = np.random.default_rng(0).standard_normal(100_003).astype(np.float32)
    for seed in (0, 1, 2**63 + 5, 2**64 - 1):
        for name in ("float8_e4m3fn", "bfloat16", "float4_e2m1fn", "float8_e8m0fnu"):
            check(qd.encode, f"{name} seed {seed}", np.abs(x), name, rounding="stochastic", seed=seed)
    a = qd.encode(x, "float8_e4m3fn", rounding="stochastic", seed=1, device="gpu")
    c = qd.encode(x, "float8_e4m3fn", rounding="stochastic", seed=2, device="gpu")
    assert (a != c).any()


def test_packed_codes(gpu):
    rng = np.random.default_rng(4)
    for shape in [(7, 33), (4, 16), (1, 1), (3, 2, 5)]:
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        for fmt in ("float4_e2m1fn", CUSTOM["e1m2_none"], qd.FloatFormat(2, 1, special="fn")):
            for rounding in ("nearest_even", "stochastic", "up"):
                check(qd.encode, f"{shape} {fmt} {rounding}", x, fmt, packed=True, rounding=rounding, seed=3)
        check(qd.encode, f"{shape} f64", x.astype(np.float64), "float4_e2m1fn", packed=True)
        check(qd.encode, f"{shape} bf16", x.astype(ml_dtypes.bfloat16), "float4_e2m1fn", packed=True)
    packed = qd.encode(np.ones((3, 5), np.float32), "float4_e2m1fn", packed=True, device="gpu")
    assert packed.shape == (3, 3)
    np.testing.assert_array_equal(qd.decode(packed, "float4_e2m1fn", packed=True, shape=(3, 5), device="gpu"), 1.0)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_round_mixed(gpu):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 33)) * 10).astype(np.float32)
    x[0, :4] = [np.nan, -np.inf, 1e30, -0.0]
    fmts = ["float8_e4m3fn", "bfloat16", formats.float4_e2m1fn, CUSTOM["e8m3_bias140_fn"], "float8_e8m0fnu"]
    labels = rng.integers(0, len(fmts), x.shape)
    for rounding in ROUNDINGS:
        check(qd.round_mixed, rounding, x, labels, fmts, rounding=rounding, seed=8)
    check(qd.round_mixed, "f64", x.astype(np.float64), labels, fmts)
    check(qd.round_mixed, "f16", x.astype(np.float16), labels, fmts, overflow="saturate")


def test_empty_and_scalar_inputs(gpu):
    for x in (np.zeros((0,), np.float32), np.zeros((3, 0), np.float64), np.float32(2.5)):
        check(qd.encode, "empty", x, "float8_e4m3fn")
        check(qd.round_to, "empty", x, "bfloat16")
    check(qd.encode, "empty packed", np.zeros((2, 0), np.float32), "float4_e2m1fn", packed=True)


def errors_of(fn, *args, **kw):
    out = []
    for device in ("cpu", "gpu"):
        with pytest.raises(qd.QuantdriftError) as info:
            fn(*args, device=device, **kw)
        out.append((type(info.value), str(info.value)))
    assert out[0] == out[1], out
    return out[0]


def test_errors_are_the_cpus(gpu):
    x = np.ones((2, 3), np.float32)
    errors_of(qd.encode, x, "float8_e4m3fn", overflow="inf")
    errors_of(qd.round_to, x, "float4_e2m1fn", overflow="nan")
    errors_of(qd.round_mixed, x, np.array([[0, 1, 0], [1, 2, 0]]), ["bfloat16", "float16"])
    errors_of(qd.round_mixed, x, np.zeros((2, 3), np.int64), ["float8_e4m3fn"], overflow="inf")
    errors_of(qd.decode, np.array([3, 70], np.uint8), "float6_e2m3fn")
    c, s = qd.mx_encode(np.ones((2, 40), np.float32), "fp6_e2m3")
    bad = c.copy()
    bad[1, 3] = 64
    t, msg = errors_of(qd.mx_decode, bad, s, "fp6_e2m3")
    assert "code 64 at flat index 43" in msg
    errors_of(qd.mx_decode, c, s[:, :1], "fp6_e2m3")
    c, s, _ = qd.nvfp4_encode(np.ones((3, 37), np.float32))
    bad = c.copy()
    bad[0, 1] = 16
    errors_of(qd.nvfp4_decode, bad, s)
    errors_of(qd.nvfp4_decode, c, s[:, :2])
    errors_of(qd.nvfp4_encode, x, per_tensor_scale=-1.0)
    with pytest.raises(qd.InputError, match="device must be"):
        qd.encode(x, "bfloat16", device="cuda")


# ---------------------------------------------------------------------------
# MX and NVFP4
# ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("elem", list(ELEMS))
def test_mx_every_scale_mode_and_block(gpu, elem):
    for mode in MX_MODES:
        x = make_data(10 * list(ELEMS).index(elem) + MX_MODES.index(mode))
        x[5, 7] = np.float32(1e-45)  # a float32 subnormal beside normal values
        for block in (32, 16, 7, 75, 1):
            codes, scales = qd.mx_encode(x, elem, block=block, scale_mode=mode, device="gpu")
            want_c, want_s = qd.mx_encode(x, elem, block=block, scale_mode=mode)
            assert_same(codes, want_c, f"{elem} {mode} {block} codes")
            assert_same(scales, want_s, f"{elem} {mode} {block} scales")
            check(qd.mx_decode, f"{elem} {mode} {block} decode", codes, scales, elem, block=block)
        for axis in (0, 1):
            for dtype in (np.float16, ml_dtypes.bfloat16, np.float64):
                check(qd.mx_encode, f"{elem} {mode} {axis} {dtype}", x.astype(dtype), elem, axis=axis, scale_mode=mode)


def test_mx_nan_blocks_packed_and_every_scale(gpu):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    x[3, 0] = np.nan
    x[35, 1] = np.inf
    x[36, 2] = -np.inf
    for elem in ELEMS:
        check(qd.mx_encode, elem, x, elem, axis=0)
    check(qd.mx_encode, "packed", x, "fp4_e2m1", axis=0, packed=True)
    p, sp = qd.mx_encode(x, "fp4_e2m1", axis=0, packed=True)
    check(qd.mx_decode, "packed decode", p, sp, "fp4_e2m1", axis=0, packed=True, length=40)
    # every element code with every scale code, NaN codes and the NaN scale included
    for elem in ELEMS:
        n = 1 << (8 if elem in ("fp8_e4m3", "fp8_e5m2", "int8") else 6 if "fp6" in elem else 4)
        codes = np.tile(np.arange(n, dtype=np.uint8), 256).reshape(256, n)
        scales = np.arange(256, dtype=np.uint8).reshape(256, 1)
        if elem == "int8":
            codes = codes.view(np.int8)
        check(qd.mx_decode, f"{elem} all codes", codes, scales, elem, block=n)


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("pts", [None, "auto", 0.5, 1e-30, 3e-39, 1e-45, 1e30])
def test_nvfp4_matches_the_cpu(gpu, pts):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((20, 67)) * np.exp2(rng.integers(-40, 40, (20, 1)))).astype(np.float32)
    x[0, :16] = 0
    x[1, :16] = 1e-9
    x[2, 0] = 1e5
    x[3, 3] = np.float32(1e-45)
    x[4, 5] = np.float32(3e38)
    if pts != "auto":  # "auto" needs a finite amax
        x[5, 2] = -np.inf
    for axis in (-1, 0):
        for dtype in (np.float32, np.float16, ml_dtypes.bfloat16, np.float64):
            if pts == "auto" and dtype == np.float16:
                continue  # values overflow float16 to Inf, which "auto" refuses
            xd = x.astype(dtype)
            got = qd.nvfp4_encode(xd, per_tensor_scale=pts, axis=axis, device="gpu")
            want = qd.nvfp4_encode(xd, per_tensor_scale=pts, axis=axis)
            assert_same(got[0], want[0], f"{pts} {axis} {dtype} codes")
            assert_same(got[1], want[1], f"{pts} {axis} {dtype} scales")
            assert got[2] == want[2]
            check(qd.nvfp4_decode, f"{pts} {axis} decode", got[0], got[1], per_tensor_scale=got[2], axis=axis)
    check(qd.nvfp4_encode, "packed", x, packed=True, per_tensor_scale=pts)
    y = x.copy()
    y[0, 0] = np.nan
    y[6, 17] = -np.nan
    if pts != "auto":
        check(qd.nvfp4_encode, "nan", y, per_tensor_scale=pts)
    # every element code with every scale code
    codes = np.tile(np.arange(16, dtype=np.uint8), 256).reshape(256, 16)
    scales = np.arange(256, dtype=np.uint8).reshape(256, 1)
    check(qd.nvfp4_decode, "all codes", codes, scales, per_tensor_scale=None if pts == "auto" else pts)


# ---------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------

CHUNKED = r"""
import hashlib, numpy as np, ml_dtypes, quantdrift as qd
rng = np.random.default_rng(0)
x = rng.standard_normal((301, 2003)).astype(np.float32)  # 2.4 MB
x[::7, ::11] *= np.float32(1e30)
digests = {}
for device in ("cpu", "gpu"):
    h = hashlib.sha256()
    h.update(qd.encode(x, "float8_e4m3fn", rounding="stochastic", seed=123, device=device).tobytes())
    h.update(qd.round_to(x, "bfloat16", rounding="stochastic", seed=7, device=device).tobytes())
    h.update(qd.encode(x.astype(np.float64), "float16", rounding="up", device=device).tobytes())
    h.update(qd.encode(x.astype(ml_dtypes.bfloat16), "float6_e2m3fn", device=device).tobytes())
    h.update(qd.encode(x, "float4_e2m1fn", packed=True, rounding="stochastic", seed=3, device=device).tobytes())
    h.update(qd.round_mixed(x, np.arange(x.size).reshape(x.shape) % 3, ["bfloat16", "float8_e5m2", "float6_e2m3fn"], rounding="stochastic", seed=4, device=device).tobytes())
    h.update(qd.decode(np.arange(x.size, dtype=np.uint16), "float16", device=device).tobytes())
    for elem in ("fp8_e4m3", "int8"):
        c, s = qd.mx_encode(x, elem, block=32, device=device)
        h.update(c.tobytes() + s.tobytes())
        h.update(qd.mx_decode(c, s, elem, device=device).tobytes())
    c, s = qd.mx_encode(x, "fp4_e2m1", axis=0, block=7, device=device)
    h.update(c.tobytes() + s.tobytes())
    c, s, p = qd.nvfp4_encode(x, per_tensor_scale="auto", device=device)
    h.update(c.tobytes() + s.tobytes())
    h.update(qd.nvfp4_decode(c, s, per_tensor_scale=p, device=device).tobytes())
    digests[device] = h.hexdigest()
assert digests["cpu"] == digests["gpu"], digests
print("ok")
"""


def test_chunked_inputs_give_the_same_results(gpu):
    env = dict(os.environ, QUANTDRIFT_GPU_MAX_BINDING="65536")
    out = subprocess.run([sys.executable, "-c", CHUNKED], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
