"""Integer quantization on the GPU equals the CPU bit for bit: codes, packed
bytes, scales, zero-points, clip counts, dequantized and fake-quantized
values, and errors (same class, same message). The matrix is the CPU
tests' (tests/test_quantize.py): every partition kind with ragged groups
and blocks, labels, every rounding mode, compat modes, every container and
packed width, float32/float16/bfloat16/float64 inputs, empty inputs and
non-finite values; plus the chunked path under a small binding limit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd

PARTITIONS = [
    ("per_tensor", {}),
    ("per_axis", {"axis": 0}),
    ("per_axis", {"axis": -1}),
    ("per_axis", {"axis": 1}),
    ("groups", {"axis": -1, "size": 8}),
    ("groups", {"axis": 0, "size": 3}),
    ("groups", {"axis": 1, "size": 5}),
    ("blocks", {"size": (4, 6)}),
]
DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
MODES = ["nearest_even", "nearest_away", "toward_zero", "down", "up", "stochastic"]


def make_partition(kind, kw):
    if kind == "per_tensor":
        return qd.per_tensor()
    if kind == "per_axis":
        return qd.per_axis(kw["axis"])
    if kind == "groups":
        return qd.groups(kw["axis"], kw["size"])
    return qd.blocks(kw["size"])


def data(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, size=shape) * 0.05).astype(dtype)


def bits(a):
    """An array's bytes as unsigned integers of its width (bit-exact compare)."""
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else a


def same(a, b, what=""):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, what
    np.testing.assert_array_equal(bits(a), bits(b), err_msg=what)


def same_qt(g, c, what=""):
    for name in ("codes", "scale", "zero_point", "qmin", "qmax"):
        same(getattr(g, name), getattr(c, name), f"{what} {name}")
    assert (g.packed_bits, g.signed, g.n_clipped, g.shape, g.dtype) == (
        c.packed_bits, c.signed, c.n_clipped, c.shape, c.dtype
    ), what


def check(x, what="", **kw):
    """quantize / dequantize / fake_quantize on the GPU against the CPU."""
    c = qd.quantize(x, **kw)
    g = qd.quantize(x, device="gpu", **kw)
    same_qt(g, c, what)
    same(c.dequantize(device="gpu"), c.dequantize(), f"{what} dequantize")
    same(qd.dequantize(c, np.float64, device="gpu"), qd.dequantize(c, np.float64), f"{what} dequantize f64")
    kw.pop("pack", None)
    same(qd.fake_quantize(x, device="gpu", **kw), qd.fake_quantize(x, **kw), f"{what} fake")
    return c


@pytest.mark.parametrize("kind,kw", PARTITIONS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_partitions_dtypes_and_calibration(gpu, kind, kw, dtype):
    x = data((13, 22), seed=1, dtype=dtype)
    part = make_partition(kind, kw)
    for symmetric in (True, False):
        for b in (4, 8):
            check(x, f"{kind}{kw} {dtype} sym={symmetric} bits={b}", bits=b, partition=part, symmetric=symmetric)


def test_labels_and_batched_blocks(gpu):
    rng = np.random.default_rng(2)
    x = data((9, 31), seed=2)
    ids = rng.integers(-5, 40, size=x.shape)
    for symmetric in (True, False):
        check(x, "labels", bits=4, partition=qd.labels(ids), symmetric=symmetric)
    x = data((3, 7, 9), seed=3)
    check(x, "batched blocks", bits=8, partition=qd.blocks((3, 4)))
    check(x, "3-d groups", bits=3, partition=qd.groups(1, 2), symmetric=False)


@pytest.mark.parametrize("mode", MODES)
def test_rounding_modes_and_compat(gpu, mode):
    x = data((16, 40), seed=4) * 7
    for seed in (0, 12345):
        check(x, mode, bits=4, partition=qd.groups(-1, 16), rounding=mode, seed=seed)
        check(x.astype(ml_dtypes.bfloat16), mode, bits=8, rounding=mode, seed=seed, symmetric=False)
    if mode == "nearest_even":
        for compat in ("torch", "torchao"):
            for symmetric in (True, False):
                check(x, compat, bits=8, partition=qd.per_axis(0), compat=compat, symmetric=symmetric)
                check(x.astype(np.float16), compat, bits=4, partition=qd.groups(-1, 8), compat=compat)
        check(x, "torch scale", bits=8, partition=qd.per_axis(0), compat="torch", scale=0.01)


@pytest.mark.parametrize("mode", MODES)
def test_near_ties_and_exact_multiples(gpu, mode):
    # float32 inputs at and one ulp beside (k + 1/2)·s and k·s for awkward scales
    rng = np.random.default_rng(21)
    n_parts, per = 32, 512
    scale = rng.uniform(0.001, 3.0, size=n_parts).astype(np.float32)
    scale[:4] = [0.5, 1.0, 0.1, 2.0 ** -20]
    k = rng.integers(-120, 120, size=(n_parts, per)).astype(np.float64)
    half = rng.integers(0, 2, size=(n_parts, per)) * 0.5
    x = ((k + half) * scale[:, None].astype(np.float64)).astype(np.float32)
    x = np.nextafter(x, x + rng.choice([-1.0, 0.0, 1.0], size=x.shape).astype(np.float32))
    for compat in (None, "torch"):
        if compat and mode != "nearest_even":
            continue
        check(x, f"{mode} {compat}", bits=8, partition=qd.per_axis(0), scale=scale, rounding=mode,
              compat=compat, seed=5, pack=False)


def test_containers_and_ranges(gpu):
    x = data((5, 37), seed=11) * 3
    for w in (2, 3, 4):
        for symmetric in (True, False):
            check(x, f"packed {w}", bits=w, symmetric=symmetric, partition=qd.per_axis(0))
    check(x, "int16", bits=12)
    check(x, "uint16", bits=16, symmetric=False)
    check(x, "max_int", max_int=[3, 5, 7, 9, 11], partition=qd.per_axis(0), pack=False)
    check(x, "qrange", qrange=(-2, 5), symmetric=False, partition=qd.per_axis(0))
    check(x, "restricted", bits=8, restricted=True)
    check(x, "int32 codes", qrange=(-100000, 100000), scale=1e-5, zero_point=17)
    # huge ranges and float64 scales take the CPU path inside device="gpu"
    check(x, "beyond 2^23", qrange=(-(2**30), 2**30), scale=1e-9)
    check(x.astype(np.float64), "float64 scale", bits=8, scale=0.0123)


def test_odd_shapes_empty_and_non_finite(gpu):
    for shape in [(0,), (0, 5), (3, 0)]:
        x = np.zeros(shape, np.float32)
        check(x, f"empty {shape}", bits=4, partition=qd.groups(-1, 2) if shape[-1] else qd.per_tensor())
    check(np.float32(0.7), "scalar", bits=8)
    check(np.arange(1, dtype=np.float32), "one", bits=8)
    x = np.array([np.nan, np.inf, -np.inf, 1.0, -0.5, 0.0, -0.0, 1e-45, -1e-40, 3e38], np.float32)
    for dtype in DTYPES:
        with np.errstate(over="ignore"):
            xd = x.astype(dtype)
        for symmetric in (True, False):
            check(xd, f"non-finite {dtype}", bits=8, symmetric=symmetric)
            check(xd, f"non-finite {dtype} given", bits=4, scale=0.25, symmetric=symmetric)
    z = np.zeros((2, 4), np.float32)
    z[1] = [1, 2, 3, 4]
    check(z, "zero part", bits=8, partition=qd.per_axis(0))
    allnan = np.full((3, 5), np.nan, np.float32)
    check(allnan, "all NaN", bits=8, partition=qd.per_axis(0), symmetric=False)
    tiny = np.array([1e-45, 2e-45, -3e-45, 1e-39, -1e-38], np.float32)
    check(tiny, "subnormal range", bits=8)
    for mode in MODES:
        check(tiny, f"subnormal {mode}", bits=8, scale=2.0 ** -126, rounding=mode, seed=3)
        check(tiny * 1e30, f"tiny quotients {mode}", bits=8, scale=7.0, rounding=mode, seed=3)
        check(tiny * 1e30, f"tiny products {mode}", bits=8, scale=1e20, compat="torch")


def test_percentile_and_mse_calibration(gpu):
    x = data((6, 50), seed=7)
    w = np.abs(data((6, 50), seed=8))
    for symmetric in (True, False):
        check(x, "percentile", bits=4, partition=qd.per_axis(0), calibration="percentile", percentile=99.0,
              symmetric=symmetric)
        check(x, "mse", bits=4, partition=qd.groups(-1, 16), calibration="mse", importance=w, symmetric=symmetric)


def errors(fn):
    try:
        fn()
    except qd.QuantdriftError as e:
        return type(e), str(e)
    raise AssertionError("no error")


def test_errors_match_the_cpu(gpu):
    x = data((4, 6), seed=14)
    cases = [
        dict(partition=qd.per_axis(0), scale=[1.0, 2.0]),
        dict(partition=qd.per_axis(0), scale=[1.0, 0.0, 1.0, 1.0]),
        dict(partition=qd.per_axis(2)),
        dict(partition=qd.labels(np.zeros(5, int))),
        dict(importance=np.ones_like(x)),
        dict(calibration="mse", importance=-np.ones_like(x)),
        dict(zero_point=0),
        dict(calibration="kl"),
        dict(bits=1, qrange=(0, 1)),
        dict(qrange=(0, 1), symmetric=True),
        dict(calibration="percentile", percentile=101.0),
        dict(compat="torchao", calibration="mse"),
    ]
    for kw in cases:
        cpu = errors(lambda: qd.quantize(x, **kw))
        assert errors(lambda: qd.quantize(x, device="gpu", **kw)) == cpu, kw
        kw.pop("pack", None)
        assert errors(lambda: qd.fake_quantize(x, device="gpu", **kw)) == errors(lambda: qd.fake_quantize(x, **kw))
    with pytest.raises(qd.InputError, match="device"):
        qd.quantize(x, device="tpu")
    # bad packed bytes: the core's check and message
    from quantdrift import _core

    qt = qd.quantize(x, bits=4)
    flat, sc, zp = x.reshape(-1), np.ones(1), np.zeros(1, np.int32)
    got = []
    for device in ("cpu", "gpu"):
        with pytest.raises(qd.InputError, match="do not fit the code type") as e:
            _core.quant_quantize(flat, ((24,), (24,), None, 1), sc, zp, np.array([-5], np.int32),
                                 np.array([200], np.int32), code_type="int8", rounding="nearest_even", seed=0,
                                 arith="divide", x16="float32", device=device)
        got.append(str(e.value))
        with pytest.raises(qd.InputError, match="packed codes need"):
            _core.quant_quantize(flat, ((24,), (24,), None, 1), sc, zp, np.array([0], np.int32),
                                 np.array([1], np.int32), code_type="packed_s1", rounding="nearest_even", seed=0,
                                 arith="divide", x16="float32", device=device)
    assert got[0] == got[1]
    for device in ("cpu", "gpu"):
        with pytest.raises(qd.ShapeError, match="packed codes"):
            _core.quant_dequantize(qt.codes[:-1], qt._spec, qt.scale.reshape(-1).astype(np.float64),
                                   qt.zero_point.reshape(-1).astype(np.int32), packed_bits=4, signed=True,
                                   length=qt.size, f64_out=False, device=device)


def test_dequantize_arbitrary_codes(gpu):
    from quantdrift import _core

    rng = np.random.default_rng(9)
    n = 999
    spec = ((27, 37), (4, 8), None, 7 * 5)
    scale = rng.uniform(1e-3, 1e3, 35).astype(np.float32).astype(np.float64)
    zp = rng.integers(-300, 300, 35).astype(np.int32)
    for codes in (rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np.int32),
                  rng.integers(-(2**15), 2**15, n).astype(np.int16), rng.integers(0, 256, n).astype(np.uint8)):
        for f64 in (False, True):
            kw = dict(packed_bits=None, signed=True, length=n, f64_out=f64)
            same(_core.quant_dequantize(codes, spec, scale, zp, device="gpu", **kw),
                 _core.quant_dequantize(codes, spec, scale, zp, **kw), f"{codes.dtype} {f64}")


CHUNKED = r"""
import numpy as np, ml_dtypes, quantdrift as qd
rng = np.random.default_rng(0)
x = (rng.standard_normal((1024, 1000)) * 0.1).astype(np.float32)
x[5, :7] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3e38]
ids = rng.integers(0, 50, size=(64, 1000))
cases = [
    (x, dict(bits=4, partition=qd.groups(-1, 128), symmetric=False)),
    (x, dict(bits=8, partition=qd.per_axis(1), rounding="stochastic", seed=3)),
    (x.astype(ml_dtypes.bfloat16), dict(bits=3, partition=qd.blocks((64, 96)))),
    (x.astype(np.float16), dict(bits=8, compat="torch", partition=qd.per_axis(0))),
    (x[:64], dict(bits=4, partition=qd.labels(ids))),
]
for xi, kw in cases:
    c = qd.quantize(xi, **kw)
    g = qd.quantize(xi, device="gpu", **kw)
    for name in ("codes", "scale", "zero_point"):
        a, b = getattr(g, name), getattr(c, name)
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), (kw, name)
    assert g.n_clipped == c.n_clipped
    assert np.array_equal(c.dequantize(device="gpu").view(np.uint8), c.dequantize().view(np.uint8)), kw
    f = qd.fake_quantize(xi, device="gpu", **kw)
    assert np.array_equal(f.view(np.uint8), qd.fake_quantize(xi, **kw).view(np.uint8)), kw
print("ok")
"""


def test_chunked_under_a_small_binding_limit(gpu):
    env = dict(os.environ, QUANTDRIFT_GPU_MAX_BINDING="65536")
    r = subprocess.run([sys.executable, "-c", CHUNKED], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
