"""`quantdrift.compare(..., device="gpu")` against `device="cpu"` over the
CPU compare tests' inputs: per-token columns and every report statistic
within 1e-5 relative (top-1 tokens and top-k overlaps equal), files through
the sources, the chunked path under a small binding limit, the CLI, and the
CPU's errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd
from quantdrift.sources import write_safetensors

from test_compare import pair
from test_compare_files import llamacpp_case, logits, run_cli

RTOL = 1e-5
DIFFERENCES = (".delta_p", ".ln_ppl_ratio", ".ppl_ratio", ".ppl_diff")


def assert_close(got, want, path="report", ppl=1.0):
    """Nested report data: floats within RTOL (a tiny absolute floor for
    values near 0), ints, bools and strings equal."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}", ppl)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]", ppl)
    elif isinstance(want, float) and not isinstance(want, bool):
        if math.isnan(want) or math.isinf(want):
            assert got == want or (math.isnan(got) and math.isnan(want)), path
        else:
            # Δp, ln(PPL ratio) and the PPL difference are differences of
            # per-token probabilities or NLLs (each within RTOL of the CPU's,
            # about 1e-8 absolute): they are held to an absolute bound, on
            # the scale of the perplexities for the PPL difference.
            floor = 1e-7 if any(k in path for k in DIFFERENCES) else 1e-9
            if ".ppl_diff" in path:
                floor *= max(1.0, ppl)
            assert got == pytest.approx(want, rel=RTOL, abs=floor), path
    else:
        assert got == want, path


def assert_reports_equal(gpu, cpu):
    np.testing.assert_array_equal(gpu.rows, cpu.rows)
    np.testing.assert_array_equal(gpu.top1_base, cpu.top1_base)
    np.testing.assert_array_equal(gpu.top1_other, cpu.top1_other)
    assert gpu.overlap.keys() == cpu.overlap.keys()
    for k in cpu.overlap:
        np.testing.assert_array_equal(gpu.overlap[k], cpu.overlap[k], err_msg=f"top{k}")
    for name in ("kl", "reverse_kl", "js"):
        np.testing.assert_allclose(getattr(gpu, name), getattr(cpu, name), rtol=RTOL, atol=1e-8, err_msg=name)
    if cpu.nll_base is not None:
        np.testing.assert_allclose(gpu.nll_base, cpu.nll_base, rtol=RTOL, atol=1e-6)
        np.testing.assert_allclose(gpu.nll_other, cpu.nll_other, rtol=RTOL, atol=1e-6)
    a, b = gpu.to_dict(), cpu.to_dict()
    # The worst tokens are ranked by KL: compare them by row.
    wa = sorted(a.pop("worst"), key=lambda w: w["row"])
    wb = sorted(b.pop("worst"), key=lambda w: w["row"])
    ppl = b.get("ppl_base", {}).get("value", 1.0)
    assert_close(a, b, ppl=ppl if math.isfinite(ppl) else 1.0)
    if [w["row"] for w in wa] == [w["row"] for w in wb]:
        assert_close(wa, wb, "worst")


def both(base, other, **kw):
    kw.setdefault("progress", False)
    cpu = qd.compare(base, other, **kw)
    gpu = qd.compare(base, other, device="gpu", **kw)
    assert_reports_equal(gpu, cpu)
    return gpu, cpu


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
def test_columns_and_statistics_equal_the_cpu(gpu, dtype):
    base, other = pair(dtype=dtype, rows=120, vocab=257)
    tokens = np.random.default_rng(1).integers(0, 257, size=120)
    both(base, other, tokens=tokens, topk=(1, 5, 10), metrics=("kl", "reverse_kl", "js"))


def test_llamacpp_statistics_inputs(gpu):
    base, other = pair(rows=1000, vocab=64, seed=3, noise=0.5)
    tokens = np.random.default_rng(4).integers(0, 64, size=1000)
    both(base, other, tokens=tokens)


def test_tiny_divergences_identical_models_and_temperature(gpu):
    base, other = pair(rows=60, vocab=300, seed=2, noise=1e-3)
    both(base, other, tokens=np.zeros(60, int))
    g, _ = both(base, base, tokens=np.zeros(60, int))
    assert np.all(g.kl == 0) and np.all(g.js == 0)
    base, other = pair(rows=30, vocab=25, seed=5)
    both(base, other, temperature=2.0)
    both(base, other, temperature=0.5, topk=(2, 3, 24, 25, 40))


def test_extremes_ties_and_negative_infinity(gpu):
    rng = np.random.default_rng(7)
    base = (rng.standard_normal((40, 1000)) * 1e4).astype(np.float32)
    other = base + rng.standard_normal((40, 1000)).astype(np.float32) * 100
    base[3, :500] = -np.inf
    other[3, :500] = -np.inf
    other[5, 10:20] = -np.inf
    both(base, other)
    # Ties everywhere: rounded scores, and bfloat16's coarse grid.
    b, o = pair(rows=50, vocab=40, seed=8, noise=0.7)
    b, o = np.round(b), np.round(o)
    o[7] = 0.0
    o[8, :3] = -0.0
    both(b, o, topk=(1, 2, 3, 5, 10, 39))
    b, o = pair(rows=50, vocab=1000, seed=9, dtype=ml_dtypes.bfloat16)
    both(b, o, topk=(1, 5, 50))


def test_vocab_of_one_empty_and_large(gpu):
    both(np.zeros((5, 1), np.float32), np.ones((5, 1), np.float32), tokens=np.zeros(5, int))
    g = qd.compare(np.zeros((0, 8), np.float32), np.zeros((0, 8), np.float32), progress=False, device="gpu")
    assert g.n_tokens == 0
    base, other = pair(rows=6, vocab=262144, seed=9, noise=0.1)
    tokens = np.array([0, 1, 262143, 5, 77, 100000])
    both(base, other, tokens=tokens, topk=(1, 5, 100))


def test_chunks_masks_and_sequences(gpu):
    base, other = pair(rows=4 * 25, vocab=40, seed=13)
    tokens = np.random.default_rng(2).integers(0, 40, size=100)
    both(base, other, sequences=25, tokens=tokens)
    both(base, other, sequences=[25, 25, 25, 25], prompt_lengths=10, tokens=tokens)
    mask = np.zeros(100, bool)
    mask[::3] = True
    both(base, other, mask=mask, tokens=tokens, chunk_bytes=7 * 40 * 4 * 2)
    both(base.reshape(4, 25, 40), other.reshape(4, 25, 40))


def test_errors_are_the_cpus(gpu):
    base, other = pair(rows=10, vocab=20)
    bad = other.copy()
    bad[4, 3] = np.nan
    bad[7, 1] = np.inf
    for args, kw in [
        ((base, other[:, :19]), {}),
        ((base, other[:9]), {}),
        ((base, bad), {}),
        ((np.full((3, 20), -np.inf, np.float32), base[:3]), {}),
        ((base, other), {"tokens": np.full(10, 20)}),
        ((base, other), {"temperature": 0}),
    ]:
        with pytest.raises(qd.QuantdriftError) as cpu:
            qd.compare(*args, progress=False, **kw)
        with pytest.raises(type(cpu.value)) as got:
            qd.compare(*args, progress=False, device="gpu", **kw)
        assert str(got.value) == str(cpu.value)
    with pytest.raises(qd.InputError, match="device"):
        qd.compare(base, other, progress=False, device="tpu")


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_npy_and_safetensors_files(gpu, tmp_path, dtype):
    base, other = logits(300, 1001, 1)
    base, other = base.astype(dtype), other.astype(dtype)
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "o.npy", other)
    tokens = np.random.default_rng(2).integers(0, 1001, 300)
    budget = 7 * 1001 * base.itemsize * 2 + 5
    both(str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), tokens=tokens, chunk_bytes=budget)
    write_safetensors(tmp_path / "b.safetensors", base)
    write_safetensors(tmp_path / "o.safetensors", other)
    both(str(tmp_path / "b.safetensors"), str(tmp_path / "o.safetensors"), tokens=tokens)


def test_llamacpp_and_topk_bases(gpu, tmp_path):
    # These bases are computed on the CPU; device="gpu" must still agree.
    path, _, other_rows, _ = llamacpp_case(tmp_path)
    both(str(path), other_rows)
    base, other = logits(40, 200, 9, noise=0.5)
    qd.write_topk(tmp_path / "top.safetensors", base, 16)
    both(str(tmp_path / "top.safetensors"), other, topk=(1, 5))


def test_cli_device_gpu(gpu, tmp_path):
    base, other = logits(120, 40, 6)
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "o.npy", other)
    out = run_cli("compare", str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), "--device", "gpu",
                  "--json", str(tmp_path / "r.json"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "Mean    KLD" in out.stdout
    d = json.loads((tmp_path / "r.json").read_text())
    want = qd.compare(base, other, progress=False).summary()["kl"]["mean"]
    assert d["kl"]["mean"] == pytest.approx(want, rel=RTOL)
    out = run_cli("compare", str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), "--device", "cuda", "--no-progress")
    assert out.returncode == 2


def test_small_binding_limit_streams_in_many_chunks(gpu):
    # The GPU context is created once per process: a fresh one with a 64 KiB
    # binding limit. 300 rows × 1000 float32 per side (1.2 MB) take ~20 chunks;
    # rows of 20000 float32 (80 KB) exceed one binding and go to the CPU.
    script = r"""
import numpy as np, quantdrift as qd, ml_dtypes
from test_gpu_compare import assert_reports_equal
from test_compare import pair
for dtype, rows, vocab in [(np.float32, 300, 1000), (np.float16, 301, 999), (ml_dtypes.bfloat16, 64, 4097), (np.float32, 4, 20000)]:
    b, o = pair(rows=rows, vocab=vocab, seed=rows, dtype=dtype)
    t = np.random.default_rng(0).integers(0, vocab, rows)
    kw = dict(tokens=t, topk=(1, 5), progress=False)
    assert_reports_equal(qd.compare(b, o, device="gpu", **kw), qd.compare(b, o, **kw))
print("ok")
"""
    env = dict(os.environ, QUANTDRIFT_GPU_MAX_BINDING="65536")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
