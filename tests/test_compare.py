"""`quantdrift.compare` on in-memory arrays against float64 numpy oracles:
per-token columns, every report statistic (llama.cpp's formulas, written
out independently here), merging of shards, masks and sequences."""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd
from quantdrift.report import Report

from oracle import divergence, log_probs


def pair(rows=300, vocab=97, seed=0, scale=3.0, noise=0.3, dtype=np.float32):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, vocab)) * scale
    other = base + rng.standard_normal((rows, vocab)) * noise
    return base.astype(dtype), other.astype(dtype)


def topk_set(lp_row, k):
    order = np.argsort(-lp_row, kind="stable")  # ties: lower index first
    return set(order[:k].tolist())


# ---------------------------------------------------------------- oracles
def mu(values):
    """llama.cpp's MU(s, s2, n), in plain Python float64."""
    n = len(values)
    s = math.fsum(values)
    s2 = math.fsum(v * v for v in values)
    f = s / n
    var = s2 / n - f * f
    return f, (math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0)


def cov(a, b):
    n = len(a)
    if n < 10:
        return 0.0
    return (math.fsum(x * y for x, y in zip(a, b)) / n - (math.fsum(a) / n) * (math.fsum(b) / n)) / (n - 1)


def pct(values, f):
    """llama.cpp: sort, p = f·(n−1), interpolate linearly."""
    v = sorted(values)
    p = f * (len(v) - 1)
    i = int(p)
    if i >= len(v) - 1:
        return v[-1]
    frac = p - i
    return (1 - frac) * v[i] + frac * v[i + 1]


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
def test_columns_match_float64_oracle(dtype):
    base, other = pair(dtype=dtype, rows=120, vocab=257)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 257, size=120)
    r = qd.compare(base, other, tokens=tokens, topk=(1, 5, 10), progress=False)
    lp = log_probs(base.astype(np.float64))
    lq = log_probs(other.astype(np.float64))
    np.testing.assert_allclose(r.kl, divergence(base.astype(np.float64), other.astype(np.float64), "kl"), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(r.reverse_kl, divergence(base.astype(np.float64), other.astype(np.float64), "reverse_kl"), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(r.js, divergence(base.astype(np.float64), other.astype(np.float64), "js"), rtol=2e-5, atol=1e-7)
    np.testing.assert_array_equal(r.top1_base, np.argmax(lp, axis=1))
    np.testing.assert_array_equal(r.top1_other, np.argmax(lq, axis=1))
    for k in (5, 10):
        want = [len(topk_set(lp[i], k) & topk_set(lq[i], k)) / k for i in range(120)]
        np.testing.assert_allclose(r.overlap[k], want)
    np.testing.assert_allclose(r.overlap[1], (np.argmax(lp, 1) == np.argmax(lq, 1)).astype(float))
    rows = np.arange(120)
    np.testing.assert_allclose(r.nll_base, -lp[rows, tokens], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.nll_other, -lq[rows, tokens], rtol=1e-5, atol=1e-5)
    for col in (r.kl, r.reverse_kl, r.js, r.nll_base, r.nll_other):
        assert col.dtype == np.float32


def test_statistics_match_llamacpp_formulas():
    base, other = pair(rows=1000, vocab=64, seed=3, noise=0.5)
    tokens = np.random.default_rng(4).integers(0, 64, size=1000)
    r = qd.compare(base, other, tokens=tokens, progress=False)
    s = r.summary()
    kl = [float(x) for x in r.kl]
    m, se = mu(kl)
    assert s["kl"]["mean"] == pytest.approx(m, rel=1e-12)
    assert s["kl"]["se"] == pytest.approx(se, rel=1e-9)
    for name, f in [("max", 1.0), ("p99.9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.9),
                    ("p10", 0.1), ("p5", 0.05), ("p1", 0.01), ("p0.1", 0.001), ("min", 0.0)]:
        assert s["kl"][name] == pytest.approx(pct(kl, f), rel=1e-12), name
    assert s["kl"]["median"] == pytest.approx(median(kl), rel=1e-12)
    js = [float(x) for x in r.js]
    assert s["js"]["mean"] == pytest.approx(mu(js)[0], rel=1e-12)
    assert s["js"]["p99"] == pytest.approx(pct(js, 0.99), rel=1e-12)

    nq = [float(x) for x in r.nll_other]
    nb = [float(x) for x in r.nll_base]
    mq, sq = mu(nq)
    mb, sb = mu(nb)
    c = cov(nq, nb)
    assert s["ppl_other"]["value"] == pytest.approx(math.exp(mq), rel=1e-12)
    assert s["ppl_other"]["se"] == pytest.approx(math.exp(mq) * sq, rel=1e-9)
    assert s["ppl_base"]["value"] == pytest.approx(math.exp(mb), rel=1e-12)
    assert s["nll_correlation"] == pytest.approx(c / (sq * sb), rel=1e-9)
    assert s["ln_ppl_ratio"]["mean"] == pytest.approx(mq - mb, rel=1e-9)
    assert s["ln_ppl_ratio"]["se"] == pytest.approx(math.sqrt(sq * sq + sb * sb - 2 * c), rel=1e-6)
    ratio = math.exp(mq - mb)
    assert s["ppl_ratio"]["value"] == pytest.approx(ratio, rel=1e-9)
    uq, ub = math.exp(mq) * sq, math.exp(mb) * sb
    assert s["ppl_diff"]["se"] == pytest.approx(
        math.sqrt(uq * uq + ub * ub - 2 * math.exp(mq) * math.exp(mb) * c), rel=1e-6)

    # Δp = p_Q − p_base of the actual token, float32 like llama.cpp
    dp = [float(np.exp(np.float32(-a)) - np.exp(np.float32(-b))) for a, b in zip(r.nll_other, r.nll_base)]
    assert s["delta_p"]["mean"] == pytest.approx(mu(dp)[0], rel=1e-6, abs=1e-9)
    assert s["delta_p"]["p75"] == pytest.approx(pct(dp, 0.75), rel=1e-6, abs=1e-9)
    rms = math.sqrt(math.fsum(d * d for d in dp) / len(dp))
    assert s["delta_p"]["rms"] == pytest.approx(rms, rel=1e-6)
    _, se2 = mu([d * d for d in dp])
    assert s["delta_p"]["rms_se"] == pytest.approx(0.5 / rms * se2, rel=1e-5)
    same = sum(int(a == b) for a, b in zip(r.top1_base, r.top1_other)) / 1000
    assert s["same_top1"]["fraction"] == pytest.approx(same)
    assert s["same_top1"]["se"] == pytest.approx(math.sqrt(same * (1 - same) / 999))


def test_identical_models():
    base, _ = pair(rows=50, vocab=33)
    r = qd.compare(base, base, tokens=np.zeros(50, int), progress=False)
    assert np.all(r.kl == 0) and np.all(r.js == 0) and np.all(r.reverse_kl == 0)
    assert r.summary()["same_top1"]["fraction"] == 1.0
    assert r.summary()["ppl_ratio"]["value"] == pytest.approx(1.0)
    assert all(np.all(v == 1.0) for v in r.overlap.values())


def test_extremes():
    rng = np.random.default_rng(7)
    base = (rng.standard_normal((40, 1000)) * 1e4).astype(np.float32)
    other = base + rng.standard_normal((40, 1000)).astype(np.float32) * 100
    base[3, :500] = -np.inf
    other[5, 10:20] = -np.inf
    r = qd.compare(base, other, progress=False)
    b64, o64 = base.astype(np.float64), other.astype(np.float64)
    want = divergence(b64, o64, "kl")
    np.testing.assert_allclose(r.kl[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-5, atol=1e-6)
    assert np.array_equal(np.isinf(r.kl), np.isinf(want))
    np.testing.assert_allclose(r.js, divergence(b64, o64, "js"), rtol=1e-5, atol=1e-7)


def test_vocab_of_one_and_empty():
    r = qd.compare(np.zeros((5, 1), np.float32), np.ones((5, 1), np.float32), progress=False)
    assert np.all(r.kl == 0) and r.n_tokens == 5
    r = qd.compare(np.zeros((0, 8), np.float32), np.zeros((0, 8), np.float32), progress=False)
    assert r.n_tokens == 0
    assert math.isnan(r.summary()["kl"]["mean"])
    str(r)  # renders without error


def test_large_vocab_streams_in_chunks_like_one_pass():
    base, other = pair(rows=24, vocab=262144, seed=9, noise=0.1)
    whole = qd.compare(base, other, progress=False)
    chunked = qd.compare(base, other, progress=False, chunk_bytes=3 * 262144 * 8)
    np.testing.assert_array_equal(whole.kl, chunked.kl)
    assert whole.summary() == chunked.summary()
    np.testing.assert_allclose(whole.kl, divergence(base.astype(np.float64), other.astype(np.float64), "kl"), rtol=2e-5, atol=1e-7)


def test_shards_merge_to_one_run_exactly():
    base, other = pair(rows=503, vocab=50, seed=11)
    tokens = np.random.default_rng(12).integers(0, 50, size=503)
    one = qd.compare(base, other, tokens=tokens, progress=False)
    cuts = [0, 100, 101, 350, 503]
    parts = [qd.compare(base[a:b], other[a:b], tokens=tokens[a:b], progress=False) for a, b in zip(cuts, cuts[1:])]
    merged = Report.merge(parts)
    a, b = one.to_dict(), merged.to_dict()
    for key in ("base", "other"):
        a.pop(key), b.pop(key)
    assert a == b
    np.testing.assert_array_equal(merged.rows, one.rows)


def test_mask_sequences_and_prompt_lengths():
    base, other = pair(rows=4 * 25, vocab=40, seed=13)
    full = qd.compare(base, other, progress=False, sequences=25)
    assert full.n_sequences == 4
    np.testing.assert_allclose(full.per_sequence(), full.kl.astype(np.float64).reshape(4, 25).sum(1), rtol=1e-6)
    np.testing.assert_allclose(full.per_position(), full.kl.astype(np.float64).reshape(4, 25).mean(0), rtol=1e-6)
    # prompt of 10 tokens: rows at positions >= 9 predict tokens 10.. and are scored
    r = qd.compare(base, other, progress=False, sequences=[25, 25, 25, 25], prompt_lengths=10)
    assert r.n_tokens == 4 * 16
    assert set(r.position.tolist()) == set(range(9, 25))
    np.testing.assert_array_equal(r.kl, full.kl.reshape(4, 25)[:, 9:].reshape(-1))
    mask = np.zeros(100, bool)
    mask[::3] = True
    m = qd.compare(base, other, progress=False, mask=mask)
    np.testing.assert_array_equal(m.rows, np.flatnonzero(mask))
    np.testing.assert_array_equal(m.kl, full.kl[mask])
    # 3-D input brings its own sequences
    r3 = qd.compare(base.reshape(4, 25, 40), other.reshape(4, 25, 40), progress=False)
    assert r3.n_sequences == 4
    np.testing.assert_array_equal(r3.per_sequence(), full.per_sequence())


def test_worst_tokens_and_rendering(tmp_path):
    base, other = pair(rows=200, vocab=30, seed=21)
    other[17] += np.linspace(0, 30, 30, dtype=np.float32)  # one very different row
    tokens = np.random.default_rng(2).integers(0, 30, size=200)
    r = qd.compare(base, other, tokens=tokens, progress=False, worst=5, metrics=("kl", "reverse_kl", "js"))
    worst = r.worst()
    assert len(worst) == 5 and worst[0]["row"] == 17
    assert [w["kl"] for w in worst] == sorted((w["kl"] for w in worst), reverse=True)
    text = str(r)
    for needle in ("Mean PPL(Q)", "Mean    KLD", "99.9%", "Median  KLD", "Same top p", "RMS Δp", "JSD", "RKL"):
        assert needle in text, needle
    d = json.loads(r.to_json(tmp_path / "r.json"))
    assert d["tokens"] == 200 and len(d["worst"]) == 5
    assert json.loads((tmp_path / "r.json").read_text()) == d
    full = r.to_dict(arrays=True)
    assert len(full["columns"]["kl"]) == 200


def test_errors():
    base, other = pair(rows=10, vocab=20)
    with pytest.raises(qd.InputError, match="vocab"):
        qd.compare(base, other[:, :19], progress=False)
    with pytest.raises(qd.InputError, match="row"):
        qd.compare(base, other[:9], progress=False)
    bad = other.copy()
    bad[4, 3] = np.nan
    with pytest.raises(qd.InputError, match="row 4"):
        qd.compare(base, bad, progress=False)
    with pytest.raises(qd.InputError, match="outside the vocabulary"):
        qd.compare(base, other, tokens=np.full(10, 20), progress=False)
    with pytest.raises(qd.ShapeError, match="one token id per row"):
        qd.compare(base, other, tokens=np.zeros(9, int), progress=False)
    with pytest.raises(qd.InputError, match="metric"):
        qd.compare(base, other, metrics=("kl", "bogus"), progress=False)
    with pytest.raises(qd.InputError, match="sequences"):
        qd.compare(base, other, sequences=[3, 3], progress=False)
    with pytest.raises(qd.InputError, match="prompt_lengths needs"):
        qd.compare(base, other, prompt_lengths=2, progress=False)
    with pytest.raises(qd.InputError, match="temperature"):
        qd.compare(base, other, temperature=0, progress=False)


def test_temperature():
    base, other = pair(rows=30, vocab=25, seed=5)
    r = qd.compare(base, other, temperature=2.0, progress=False)
    np.testing.assert_allclose(r.kl, divergence(base.astype(np.float64), other.astype(np.float64), "kl", temperature=2.0), rtol=2e-5, atol=1e-7)


def test_percentile_on_a_sample_next_to_infinity_is_that_sample():
    from quantdrift.report import percentiles

    # p = 0.5·(3−1) = 1 exactly: the median is x[1], untouched by the +inf after it.
    values = np.array([0.5, 1.0, math.inf])
    got = percentiles(values, [("median", 0.5), ("max", 1.0), ("q75", 0.75)])
    assert got["median"] == 1.0
    assert got["max"] == math.inf
    assert got["q75"] == math.inf  # halfway between 1.0 and +inf


# ------------------------------------------------------- infinite perplexity
def test_ppl_beyond_float64_range_is_inf_not_an_error(tmp_path):
    # token 0 at temperature 1e-3: NLL = 2/T = 2000 nats on both sides, far past exp's range
    base = np.array([[0.0, 1.0, 2.0]] * 4, np.float32)
    other = np.array([[0.0, 2.0, 1.0]] * 4, np.float32)
    r = qd.compare(base, other, tokens=np.zeros(4, int), temperature=1e-3, progress=False)
    s = r.summary()
    assert s["ppl_other"]["value"] == math.inf and s["ppl_base"]["value"] == math.inf
    # the means agree exactly: ln ratio 0, ratio 1, difference 0 (inf − inf would be NaN)
    assert s["ln_ppl_ratio"]["mean"] == 0.0
    assert s["ppl_ratio"]["value"] == 1.0
    assert s["ppl_diff"]["value"] == 0.0
    assert "inf" in str(r)
    d = json.loads(r.to_json(tmp_path / "r.json"))  # valid JSON: non-finite numbers are null
    assert d["ppl_other"]["value"] is None and d["ppl_ratio"]["value"] == 1.0

    # 30 tokens, mean NLLs of ~800 (other) and ~2 (base): PPL(Q) overflows, PPL(base) does not
    rng = np.random.default_rng(31)
    base = rng.standard_normal((30, 6))
    other = base.copy()
    other[:, 0] -= 800 + rng.standard_normal(30)
    tokens = np.zeros(30, int)
    r = qd.compare(base, other, tokens=tokens, progress=False)
    s = r.summary()
    nq = -log_probs(other)[:, 0]
    nb = -log_probs(base)[:, 0]
    mq, mb = math.fsum(nq) / 30, math.fsum(nb) / 30
    assert s["ppl_other"]["value"] == math.inf
    assert s["ppl_base"]["value"] == pytest.approx(math.exp(mb), rel=1e-5)
    assert s["ln_ppl_ratio"]["mean"] == pytest.approx(mq - mb, rel=1e-6)
    assert math.isfinite(s["ln_ppl_ratio"]["se"]) and math.isfinite(s["nll_correlation"])
    assert s["ppl_ratio"]["value"] == math.inf and s["ppl_diff"]["value"] == math.inf
    str(r)
    r.to_json()


def test_a_token_the_other_model_rules_out_makes_ppl_infinite():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20, 8))
    other = base + 0.1 * rng.standard_normal((20, 8))
    other[0, 3] = -np.inf  # the other model gives row 0's actual token probability 0
    tokens = np.full(20, 3)
    r = qd.compare(base, other, tokens=tokens, progress=False)
    s = r.summary()
    assert r.nll_other[0] == np.inf
    assert "tokens_with_both_nll" not in s  # every token has both NLLs: none is left out
    assert s["ppl_other"]["value"] == math.inf  # llama.cpp: exp(mean NLL)
    nb = -log_probs(base)[:, 3]
    assert s["ppl_base"]["value"] == pytest.approx(math.exp(math.fsum(nb) / 20), rel=1e-6)
    assert s["ln_ppl_ratio"]["mean"] == math.inf and s["ppl_ratio"]["value"] == math.inf
    # Δp of the ruled-out token is 0 − p_base: finite, and counted
    p = np.exp(log_probs(other)[:, 3])
    dp = p - np.exp(-nb)
    assert dp[0] == pytest.approx(-math.exp(-nb[0]))
    assert s["delta_p"]["mean"] == pytest.approx(math.fsum(dp) / 20, rel=1e-5)
    assert s["delta_p"]["min"] == pytest.approx(dp.min(), rel=1e-5)
    # shards merge to the same report, the infinite token included
    parts = [qd.compare(base[a:b], other[a:b], tokens=tokens[a:b], progress=False) for a, b in ((0, 7), (7, 20))]
    one, merged = json.loads(r.to_json()), json.loads(Report.merge(parts).to_json())
    for key in ("base", "other"):
        one.pop(key), merged.pop(key)
    assert one == merged


# ------------------------------------------------------ argument validation
def test_sequences_of_a_3d_array_must_agree_with_its_shape():
    base, other = pair(rows=8, vocab=10, seed=17)
    b3, o3 = base.reshape(2, 4, 10), other.reshape(2, 4, 10)
    with pytest.raises(qd.InputError, match=r"sequences=2 .* brings its own .*3-D shape: 2 sequences of 4 rows"):
        qd.compare(b3, o3, sequences=2, progress=False)
    with pytest.raises(qd.InputError, match="brings its own"):
        qd.compare(b3, other, sequences=[3, 5], prompt_lengths=2, progress=False)
    # the same split, said twice, is fine; ids and positions follow it
    r = qd.compare(b3, o3, sequences=[4, 4], prompt_lengths=2, progress=False)
    np.testing.assert_array_equal(r.rows, [1, 2, 3, 5, 6, 7])
    np.testing.assert_array_equal(r.sequence, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(r.position, [1, 2, 3, 1, 2, 3])
    # 2-D data split by sequences=: positions count from each sequence's start
    r = qd.compare(base, other, sequences=2, prompt_lengths=2, progress=False)
    np.testing.assert_array_equal(r.rows, [1, 3, 5, 7])
    np.testing.assert_array_equal(r.position, [1, 1, 1, 1])
    with pytest.raises(qd.InputError, match="sequence mismatch"):
        qd.compare(b3, other.reshape(4, 2, 10), progress=False)


def test_sequences_and_prompt_lengths_must_be_whole_numbers():
    base, other = pair(rows=8, vocab=10, seed=18)
    for bad in (2.5, 4.0, True, [4.0, 4.0], [[4, 4]]):
        with pytest.raises(qd.InputError, match="sequences must be one int"):
            qd.compare(base, other, sequences=bad, progress=False)
    with pytest.raises(qd.InputError, match="prompt_lengths must be >= 0.*-1"):
        qd.compare(base, other, sequences=4, prompt_lengths=-1, progress=False)
    with pytest.raises(qd.InputError, match="got -3 for sequence 1"):
        qd.compare(base, other, sequences=4, prompt_lengths=[1, -3], progress=False)
    with pytest.raises(qd.InputError, match="prompt_lengths must be one int"):
        qd.compare(base, other, sequences=4, prompt_lengths=1.5, progress=False)
    # 0 context tokens: every row is scored
    assert qd.compare(base, other, sequences=4, prompt_lengths=0, progress=False).n_tokens == 8


def test_merge_refuses_reports_of_different_settings():
    base, other = pair(rows=30, vocab=12, seed=19)
    a = qd.compare(base[:15], other[:15], progress=False)
    for kwargs, what in ((dict(temperature=2.0), "temperature"), (dict(topk=(1, 3)), "top-k overlap sizes"),
                         (dict(metrics=("kl",)), "metrics"), (dict(tokens=np.zeros(15, int)), "token ids")):
        b = qd.compare(base[15:], other[15:], progress=False, **kwargs)
        with pytest.raises(qd.InputError, match=f"different settings: {what}.*report 1"):
            Report.merge([a, b])
    with pytest.raises(qd.InputError, match="vocab"):
        Report.merge([a, qd.compare(base[:, :11], other[:, :11], progress=False)])


def test_json_to_a_missing_folder_names_that_path(tmp_path):
    base, other = pair(rows=20, vocab=10, seed=20)
    r = qd.compare(base, other, progress=False)
    target = tmp_path / "missing" / "r.json"
    with pytest.raises(FileNotFoundError) as e:
        r.to_json(target)
    assert e.value.filename == str(target) and ".tmp" not in str(e.value)
    assert "missing" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_one_metric_or_one_topk_size_may_be_given_alone():
    b = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    o = b + 0.1
    one = qd.compare(b, o, metrics="kl", topk=2, progress=False)
    many = qd.compare(b, o, metrics=("kl",), topk=(2,), progress=False)
    assert one.to_dict() == many.to_dict()
    with pytest.raises(qd.InputError, match=r"topk sizes must be integers, got \[1.5\]"):
        qd.compare(b, o, topk=(1.5,), progress=False)
    with pytest.raises(qd.InputError, match="sequences=0: a sequence length must be >= 1"):
        qd.compare(b, o, sequences=0, progress=False)
