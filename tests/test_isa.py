"""Every build of the kernels computes the same bits.

The kernels are written once over 16-lane groups and compiled for AVX-512,
AVX2+FMA and the baseline; ``QUANTDRIFT_ISA`` caps the build a process uses.
Lane sums run in the same order in every build and float32 multiply-adds are
fused in all of them (in software where the CPU has no FMA), so results must
agree bit for bit. Each narrower build available on this machine runs the
same script in a child process and its results are compared with the
widest build's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quantdrift as qd

ORDER = ["sse2", "avx2+fma", "avx512"]

SCRIPT = r"""
import sys
import ml_dtypes
import numpy as np
import quantdrift as qd

rng = np.random.default_rng(7)
out = {"isa": np.array(qd.isa())}
# rows of logits: near-equal models (the fast blocks), far apart ones (the
# general forms), −inf entries, a ragged vocabulary, and 1e4-scale logits
p = (rng.standard_normal((24, 1000)) * 2.5).astype(np.float32)
q = p + (rng.standard_normal(p.shape) * 0.1).astype(np.float32)
q[1] = rng.standard_normal(1000).astype(np.float32) * 6
p[2, ::7] = -np.inf
q[2, ::7] = -np.inf
p[3] *= 4000
q[3] = p[3] + 3
for dtype in ("float32", "bfloat16", "float16"):
    pp = p if dtype == "float32" else p.astype(getattr(ml_dtypes, dtype, np.float16))
    qq = q if dtype == "float32" else q.astype(getattr(ml_dtypes, dtype, np.float16))
    for kind in qd.KINDS:
        alpha = 0.5 if kind == "renyi" else None
        out[f"{kind}-{dtype}"] = qd.divergence(pp, qq, kind, alpha=alpha)
    out[f"kl-t2-{dtype}"] = qd.kl(pp, qq, temperature=2.0)
x = (rng.standard_t(5, size=(96, 300)) * 0.02).astype(np.float32)
x[0, 0] = 0.5
for name, bits, part in (("int8", 8, qd.per_axis(0)), ("int4", 4, qd.groups(-1, 128))):
    qt = qd.quantize(x, bits=bits, partition=part)
    out[f"{name}-codes"] = qt.int_repr()
    out[f"{name}-scale"] = qt.scale
    out[f"{name}-deq"] = qt.dequantize()
    out[f"{name}-fake"] = qd.fake_quantize(x, bits=bits, partition=part)
qa = qd.quantize(x, bits=4, partition=qd.groups(-1, 64), symmetric=False, calibration="minmax")
out["asym-codes"] = qa.int_repr()
out["asym-deq"] = qa.dequantize()
# groups that fuse calibration and quantization (equal runs of float32):
# run lengths of 16 to 384, exact ties (s = 1 in the first rows), NaN,
# ±inf, zero, constant, subnormal and huge groups, every code container
g = (rng.standard_t(4, size=(48, 384)) * 0.05).astype(np.float32)
g[0, :16] = np.arange(-7.5, 8.5, 1.0)[:16]
g[0, 3] = 7.0
g[1, :32] = np.tile(np.arange(-3.5, 4.5, 1.0), 4)
g[1, 0] = 7.0
g[2, 5] = np.nan
g[3, 17] = np.inf
g[4, 40] = -np.inf
g[5, :] = 0.0
g[6, :] = 0.3
g[7, :] = 1e-41
g[8, :] *= 1e30
g[9, :64] = np.nan
for size in (16, 32, 48, 64, 128, 192, 384):
    for bits, sym in ((4, True), (4, False), (8, True), (8, False), (3, True)):
        qt = qd.quantize(g, bits=bits, partition=qd.groups(-1, size), symmetric=sym)
        key = f"groups-{size}-{bits}-{sym}"
        out[key + "-codes"] = qt.int_repr()
        out[key + "-scale"] = qt.scale
        out[key + "-zero"] = qt.zero_point
        out[key + "-clipped"] = np.array([qt.n_clipped])
for compat in ("torch", "torchao"):
    qt = qd.quantize(g[10:], bits=8, partition=qd.groups(-1, 128), compat=compat)
    out[f"groups-{compat}-codes"], out[f"groups-{compat}-scale"] = qt.int_repr(), qt.scale
    qt = qd.quantize(g[10:], bits=4, partition=qd.groups(-1, 64), symmetric=False, compat=compat)
    out[f"groups-{compat}-asym-codes"], out[f"groups-{compat}-asym-zero"] = qt.int_repr(), qt.zero_point
for fmt in ("bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"):
    out[f"round-{fmt}"] = np.asarray(qd.round_to(x, fmt)).astype(np.float32)
codes, scales = qd.mx_encode(x, "fp4_e2m1")
out["mx-codes"], out["mx-scales"] = codes, scales
rep = qd.compare(p, q, progress=False)
out["compare-kl"] = rep.kl
out["compare-js"] = rep.js
np.savez(sys.argv[1], **out)
"""


def builds_below(widest: str) -> list[str]:
    return ORDER[: ORDER.index(widest)] if widest in ORDER else []


def run_build(isa: str | None, path: Path) -> dict:
    env = dict(os.environ)
    env.pop("QUANTDRIFT_ISA", None)
    if isa is not None:
        env["QUANTDRIFT_ISA"] = isa
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, env=env, timeout=600)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.skipif(not builds_below(qd.isa()), reason=f"only one build runs on this CPU ({qd.isa()})")
def test_every_build_computes_the_same_bits(tmp_path):
    widest = run_build(None, tmp_path / "widest.npz")
    assert str(widest.pop("isa")) == qd.isa()
    for isa in builds_below(qd.isa()):
        narrower = run_build(isa, tmp_path / f"{isa}.npz")
        assert str(narrower.pop("isa")) == isa
        assert narrower.keys() == widest.keys()
        for key, want in widest.items():
            got = narrower[key]
            assert got.dtype == want.dtype, (isa, key)
            np.testing.assert_array_equal(
                got.view(np.uint8), want.view(np.uint8), err_msg=f"{key} differs between {isa} and {qd.isa()}"
            )


def test_an_unknown_isa_name_warns_and_changes_nothing(tmp_path):
    env = dict(os.environ, QUANTDRIFT_ISA="avx9000")
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import quantdrift as qd\n"
        "print(qd.isa()); print(len(w)); print(w[0].message if w else '')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    isa, n_warnings, message = res.stdout.splitlines()
    assert isa == qd.isa()
    assert n_warnings == "1"
    assert "QUANTDRIFT_ISA" in message and "avx9000" in message
