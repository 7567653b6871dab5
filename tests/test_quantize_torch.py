"""Bit-exact agreement with torch's quantize_per_channel / per_tensor and
fake_quantize, and with torchao's choose_qparams_affine / quantize_affine /
dequantize_affine, in the compatibility modes (issue 4, acceptance 3).

Skipped where torch (or torchao) is not installed. The torchao formulas are
also checked against a line-by-line transcription of torchao's source in
torch ops (quant_primitives.py, INT zero-point domain, preserve_zero), so
that they are exercised wherever torch is.
"""

from __future__ import annotations

import numpy as np
import pytest

import quantdrift as qd

torch = pytest.importorskip("torch", reason="torch is not installed; compatibility checks need it")


def weights(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, size=shape) * 0.05).astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("dtype,qrange", [(torch.qint8, (-128, 127)), (torch.quint8, (0, 255))])
def test_quantize_per_channel(axis, dtype, qrange):
    x = weights((96, 200), seed=1)
    n = x.shape[axis]
    rng = np.random.default_rng(2)
    amax = np.abs(x).max(axis=1 - axis)
    scales = (amax / rng.uniform(60, 140, size=n)).astype(np.float64)  # awkward scales: ties and saturation
    zps = rng.integers(qrange[0] + 10, qrange[1] - 10, size=n) if dtype == torch.quint8 else rng.integers(-5, 6, size=n)
    # torch keeps float64 per-channel scales: it quantizes with fl32(1/fl32(s))
    # and dequantizes with the float64 s; compat="torch" does the same
    t = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(scales), torch.from_numpy(zps),
                                   axis, dtype)
    qt = qd.quantize(x, qrange=qrange, partition=qd.per_axis(axis), scale=scales, zero_point=zps,
                     compat="torch", symmetric=False)
    want = t.int_repr().numpy()
    assert qt.codes.dtype == want.dtype
    np.testing.assert_array_equal(qt.codes, want)
    np.testing.assert_array_equal(qt.dequantize(), t.dequantize().numpy())
    # fake_quantize_per_channel_affine takes float32 scales
    s32 = scales.astype(np.float32)
    fq = torch.fake_quantize_per_channel_affine(torch.from_numpy(x), torch.from_numpy(s32),
                                                torch.from_numpy(zps).int(), axis, *qrange)
    got = qd.fake_quantize(x, qrange=qrange, partition=qd.per_axis(axis), scale=s32, zero_point=zps,
                           compat="torch", symmetric=False)
    np.testing.assert_array_equal(got, fq.numpy())


def test_quantize_per_tensor_ties():
    # values at and around k + 1/2 quanta: the reciprocal multiply decides ties
    s = np.float32(0.1)
    k = np.arange(-100, 100, dtype=np.float32)
    x = np.concatenate([(k + 0.5) * s, np.nextafter((k + 0.5) * s, np.float32(10)), k * s]).astype(np.float32)
    t = torch.quantize_per_tensor(torch.from_numpy(x), float(s), 0, torch.qint8)
    qt = qd.quantize(x, bits=8, scale=s, zero_point=0, compat="torch")
    np.testing.assert_array_equal(qt.codes, t.int_repr().numpy())
    # and the default (division) mode is the float64 quotient instead
    exact = np.clip(np.rint(x.astype(np.float64) / np.float64(s)), -128, 127)
    np.testing.assert_array_equal(qd.quantize(x, bits=8, scale=s).codes, exact)


# ---------------------------------------------------------------------------
# torchao
# ---------------------------------------------------------------------------


def choose_qparams_affine_transcribed(x, group, qmin, qmax, symmetric):
    """torchao _choose_qparams_affine for a 2-D x and block_size (1, group)
    (MappingType.SYMMETRIC / ASYMMETRIC, preserve_zero=True, INT domain),
    transcribed with torch ops: reduction over the last axis of
    x.view(rows, cols // group, group)."""
    eps = torch.finfo(x.dtype).eps
    v = x.view(x.shape[0], x.shape[1] // group, group)
    min_val = torch.amin(v, dim=[2], keepdim=False)
    max_val = torch.amax(v, dim=[2], keepdim=False)
    min_val_neg = torch.min(min_val, torch.zeros_like(min_val))
    max_val_pos = torch.max(max_val, torch.zeros_like(max_val))
    if symmetric:
        max_val_pos = torch.max(-min_val_neg, max_val_pos)
        scale = max_val_pos / (float(qmax - qmin) / 2)
        scale = torch.clamp(scale, min=eps)
        zero_point = torch.full_like(scale, int((qmax + qmin + 1) / 2))
    else:
        scale = (max_val_pos - min_val_neg) / float(qmax - qmin)
        scale = torch.clamp(scale, min=eps)
        zero_point = qmin - torch.round(min_val_neg / scale)
        zero_point = torch.clamp(zero_point, qmin, qmax)
    return scale, zero_point


def quantize_affine_transcribed(x, group, scale, zero_point, qmin, qmax):
    """torchao _quantize_affine_no_dtype_cast (INT domain)."""
    v = x.view(x.shape[0], x.shape[1] // group, group)
    s, z = scale.view(x.shape[0], -1, 1), zero_point.view(x.shape[0], -1, 1)
    return torch.clamp(torch.round(v * (1.0 / s)) + z, qmin, qmax).view(x.shape)


def dequantize_affine_transcribed(q, group, scale, zero_point):
    """torchao _dequantize_affine_no_dtype_check (INT domain, float32 out)."""
    v = q.view(q.shape[0], q.shape[1] // group, group).to(torch.int32)
    d = (v - zero_point.view(q.shape[0], -1, 1).to(torch.int32)).to(torch.float32)
    return (d * scale.view(q.shape[0], -1, 1)).view(q.shape)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits,group", [(8, None), (4, 32), (4, 128)])
def test_torchao_formulas(symmetric, bits, group):
    x = weights((64, 256), seed=3)
    x[3, 7] = 0.9  # an outlier
    if symmetric:
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        qmin, qmax = 0, (1 << bits) - 1
    g = group or x.shape[1]
    xt = torch.from_numpy(x)
    scale, zp = choose_qparams_affine_transcribed(xt, g, qmin, qmax, symmetric)
    q = quantize_affine_transcribed(xt, g, scale, zp, qmin, qmax)
    part = qd.per_axis(0) if group is None else qd.groups(-1, group)
    qt = qd.quantize(x, bits=bits, partition=part, symmetric=symmetric, compat="torchao")
    np.testing.assert_array_equal(qt.scale.reshape(-1), scale.numpy().reshape(-1))
    np.testing.assert_array_equal(qt.zero_point.reshape(-1), zp.numpy().reshape(-1).astype(np.int64))
    np.testing.assert_array_equal(qt.int_repr(), q.numpy().astype(np.int64))
    np.testing.assert_array_equal(qt.dequantize(), dequantize_affine_transcribed(q, g, scale, zp).numpy())
    # the default (lecture) formulas differ: s = amax / qmax, not amax / ((qmax − qmin)/2)
    if symmetric:
        assert not np.array_equal(qd.quantize(x, bits=bits, partition=part).scale, qt.scale)


def test_torchao_library():
    pytest.importorskip("torchao", reason="torchao is not installed")
    from torchao.quantization.quant_primitives import (
        MappingType,
        choose_qparams_affine,
        dequantize_affine,
        quantize_affine,
    )

    x = weights((64, 256), seed=4)
    xt = torch.from_numpy(x)
    for mapping, symmetric, dtype, (qmin, qmax) in [
        (MappingType.SYMMETRIC, True, torch.int8, (-128, 127)),
        (MappingType.ASYMMETRIC, False, torch.uint8, (0, 255)),
    ]:
        block = (1, 32)
        scale, zp = choose_qparams_affine(xt, mapping, block, dtype)
        q = quantize_affine(xt, block, scale, zp, dtype)
        y = dequantize_affine(q, block, scale, zp, dtype)
        qt = qd.quantize(x, qrange=(qmin, qmax), partition=qd.groups(-1, 32), symmetric=symmetric,
                         compat="torchao")
        np.testing.assert_array_equal(qt.int_repr(), q.numpy())
        np.testing.assert_array_equal(qt.dequantize(), y.numpy())
