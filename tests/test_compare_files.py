"""`quantdrift.compare` over files: .npy and safetensors dumps streamed in
chunks smaller than the file, shards, llama.cpp base files (llama.cpp's own
KL and NLL formulas, checked against a numpy oracle), top-k dumps, and the
`quantdrift compare` command."""

from __future__ import annotations

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd
from quantdrift import _core
from quantdrift.report import Report
from quantdrift.sources import write_npy

from oracle import divergence, log_probs


def logits(rows, vocab, seed, noise=0.3):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, vocab)).astype(np.float32) * 3
    other = base + rng.standard_normal((rows, vocab)).astype(np.float32) * noise
    return base, other


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_npy_files_larger_than_the_chunk_budget_equal_in_memory(tmp_path, dtype):
    base, other = logits(300, 1001, 1)
    base, other = base.astype(dtype), other.astype(dtype)
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "o.npy", other)
    tokens = np.random.default_rng(2).integers(0, 1001, 300)
    in_memory = qd.compare(base, other, tokens=tokens, progress=False)
    budget = 7 * 1001 * base.itemsize * 2 + 5  # 7 rows per step: 43 steps, ragged last
    streamed = qd.compare(str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), tokens=tokens,
                          progress=False, chunk_bytes=budget)
    np.testing.assert_array_equal(streamed.kl, in_memory.kl)
    np.testing.assert_array_equal(streamed.nll_other, in_memory.nll_other)
    a, b = streamed.to_dict(), in_memory.to_dict()
    for key in ("base", "other"):
        a.pop(key), b.pop(key)
    assert a == b


def test_shard_folder_and_merge(tmp_path):
    base, other = logits(250, 64, 3)
    (tmp_path / "b").mkdir()
    (tmp_path / "o").mkdir()
    cuts = [0, 90, 91, 250]
    for i, (a, z) in enumerate(zip(cuts, cuts[1:])):
        np.save(tmp_path / "b" / f"part{i}.npy", base[a:z])
        np.save(tmp_path / "o" / f"part{i}.npy", other[a:z])
    whole = qd.compare(base, other, progress=False)
    sharded = qd.compare(str(tmp_path / "b"), str(tmp_path / "o"), progress=False, chunk_bytes=4000)
    np.testing.assert_array_equal(sharded.kl, whole.kl)
    parts = [qd.compare(str(tmp_path / "b" / f"part{i}.npy"), str(tmp_path / "o" / f"part{i}.npy"), progress=False)
             for i in range(3)]
    merged = Report.merge(parts)
    assert merged.summary()["kl"] == whole.summary()["kl"]
    assert merged.summary()["js"] == whole.summary()["js"]


def llamacpp_case(tmp_path, vocab=50, n_ctx=16, n_chunk=4, seed=5):
    rng = np.random.default_rng(seed)
    full_base = (rng.standard_normal((n_chunk * n_ctx, vocab)) * 4).astype(np.float32)
    full_other = full_base + rng.standard_normal(full_base.shape).astype(np.float32) * 0.4
    text = rng.integers(0, vocab, n_chunk * n_ctx).astype(np.int32)
    # a model that has learnt the text: the next token scores high
    full_base[np.arange(text.size - 1), text[1:]] += 8
    full_other[np.arange(text.size - 1), text[1:]] += 8
    path = tmp_path / "base.kld"
    qd.write_llamacpp_base(path, full_base, text, n_ctx)
    first = n_ctx // 2
    rows = np.concatenate([np.arange(c * n_ctx + first, c * n_ctx + n_ctx - 1) for c in range(n_chunk)])
    return path, full_base[rows], full_other[rows], text[rows + 1]


def test_llamacpp_base_uses_llamacpps_formulas(tmp_path):
    path, base_rows, other_rows, next_tokens = llamacpp_case(tmp_path)
    r = qd.compare(str(path), other_rows, progress=False)
    src = qd.open_source(str(path))
    np.testing.assert_array_equal(r.tokens, next_tokens)  # tokens come from the file
    lpb = _core.llamacpp_decode(src.block(0, src.n_rows), src.vocab).astype(np.float64)
    lq = log_probs(other_rows.astype(np.float64))
    # llama.cpp: Σ over decoded base log-probs above −16 of e^lpb (lpb − ln q), not renormalised
    want = np.where(lpb > -16, np.exp(lpb) * (lpb - lq), 0.0).sum(1)
    # float32 terms, like llama.cpp's expf(lpb)*(lpb - logit + (mx+lse)), summed in float64
    np.testing.assert_allclose(r.kl, want, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(r.nll_base, -lpb[np.arange(lpb.shape[0]), next_tokens], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r.nll_other, -lq[np.arange(lq.shape[0]), next_tokens], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(r.top1_base, np.argmax(lpb, 1))
    # sequences and positions come from the file: 7 scored rows per chunk at positions 8..14
    assert r.n_sequences == 4
    assert set(r.position.tolist()) == set(range(8, 15))


def test_llamacpp_base_statistics_match_the_arrays_within_quantisation(tmp_path):
    path, base_rows, other_rows, next_tokens = llamacpp_case(tmp_path, vocab=300, n_ctx=64, n_chunk=6, seed=8)
    from_file = qd.compare(str(path), other_rows, progress=False).summary()
    from_arrays = qd.compare(base_rows, other_rows, tokens=next_tokens, progress=False).summary()
    # 16/65535 nats steps: log-probs within ~1.2e-4, so KL and PPL agree closely
    assert from_file["kl"]["mean"] == pytest.approx(from_arrays["kl"]["mean"], abs=2e-4)
    assert from_file["ppl_base"]["value"] == pytest.approx(from_arrays["ppl_base"]["value"], rel=2e-4)
    assert from_file["ppl_other"]["value"] == pytest.approx(from_arrays["ppl_other"]["value"], rel=1e-6)
    assert from_file["same_top1"]["fraction"] == pytest.approx(from_arrays["same_top1"]["fraction"], abs=0.02)


def test_topk_base_is_the_coarsened_divergence(tmp_path):
    base, other = logits(40, 200, 9, noise=0.5)
    qd.write_topk(tmp_path / "top.safetensors", base, 16)
    r = qd.compare(str(tmp_path / "top.safetensors"), other, topk=(1, 5), progress=False)
    lp, lq = log_probs(base.astype(np.float64)), log_probs(other.astype(np.float64))
    want = []
    for i in range(40):
        idx = np.argsort(-lp[i], kind="stable")[:16]
        p = np.append(np.exp(lp[i, idx]), 1 - np.exp(lp[i, idx]).sum())
        q = np.append(np.exp(lq[i, idx]), 1 - np.exp(lq[i, idx]).sum())
        want.append(np.sum(p * np.log(p / q)))
    np.testing.assert_allclose(r.kl, want, rtol=1e-4, atol=1e-6)
    exact = divergence(base.astype(np.float64), other.astype(np.float64), "kl")
    assert np.all(r.kl <= exact + 1e-6)  # a lower bound
    np.testing.assert_array_equal(r.top1_base, np.argmax(lp, 1))


def test_errors_before_any_work(tmp_path):
    base, other = logits(20, 30, 4)
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "o.npy", other[:, :29])
    with pytest.raises(qd.InputError, match="b.npy.*o.npy|o.npy.*b.npy"):
        qd.compare(str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), progress=False)
    np.save(tmp_path / "o.npy", other[:19])
    with pytest.raises(qd.InputError, match="row"):
        qd.compare(str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), progress=False)
    raw = (tmp_path / "b.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-100])
    with pytest.raises(qd.FormatError):
        qd.compare(str(tmp_path / "t.npy"), str(tmp_path / "b.npy"), progress=False)
    (tmp_path / "bad.kld").write_bytes(b"_logitz_" + b"\0" * 64)
    with pytest.raises(qd.QuantdriftError):
        qd.compare(str(tmp_path / "bad.kld"), base, progress=False)
    qd.write_topk(tmp_path / "top.safetensors", base, 4)
    with pytest.raises(qd.InputError, match="only be the base"):
        qd.compare(base, str(tmp_path / "top.safetensors"), progress=False)
    with pytest.raises(qd.InputError, match="at least 5 entries"):
        qd.compare(str(tmp_path / "top.safetensors"), base, topk=(1, 5), progress=False)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "quantdrift", *args], capture_output=True, text=True)


def test_cli_compare(tmp_path):
    base, other = logits(120, 40, 6)
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "o.npy", other)
    np.save(tmp_path / "t.npy", np.random.default_rng(0).integers(0, 40, 120))
    out = run_cli("compare", str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), "--tokens", str(tmp_path / "t.npy"),
                  "--json", str(tmp_path / "r.json"), "--columns", str(tmp_path / "c.npz"), "--sequences", "40",
                  "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "Mean    KLD" in out.stdout and "Mean PPL(Q)" in out.stdout
    d = json.loads((tmp_path / "r.json").read_text())
    want = qd.compare(base, other, progress=False).summary()["kl"]["mean"]
    assert d["kl"]["mean"] == pytest.approx(want)
    cols = np.load(tmp_path / "c.npz")
    assert cols["kl"].shape == (120,)
    # bad input: exit 2, one line, no traceback
    out = run_cli("compare", str(tmp_path / "b.npy"), str(tmp_path / "missing.npy"), "--no-progress")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    np.save(tmp_path / "o2.npy", other[:, :39])
    out = run_cli("compare", str(tmp_path / "b.npy"), str(tmp_path / "o2.npy"), "--no-progress")
    assert out.returncode == 2 and "vocab" in out.stderr.lower()
    assert len(out.stderr.strip().splitlines()) == 1


def test_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the optional matplotlib extra")
    base, other = logits(100, 20, 7)
    r = qd.compare(base, other, sequences=25, progress=False)
    r.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_topk_dump_of_the_whole_vocabulary_equals_the_dense_comparison(tmp_path):
    # k = vocab: the dump is the whole distribution, no rest bucket on either side
    rng = np.random.default_rng(16)
    base = (2.5 * rng.standard_normal((20, 100))).astype(np.float32)
    other = base + (0.3 * rng.standard_normal((20, 100))).astype(np.float32)
    tokens = rng.integers(0, 100, 20)
    for rest in (True, False):
        path = tmp_path / f"full{rest}.safetensors"
        qd.write_topk(path, base, k=100, rest=rest)
        r = qd.compare(str(path), other, tokens=tokens, topk=(1, 5), progress=False)
        b64, o64 = base.astype(np.float64), other.astype(np.float64)
        for kind in ("kl", "reverse_kl", "js"):
            np.testing.assert_allclose(getattr(r, kind), divergence(b64, o64, kind), rtol=1e-4, atol=1e-7,
                                       err_msg=f"{kind}, rest={rest}")
        lp = log_probs(b64)
        np.testing.assert_array_equal(r.top1_base, np.argmax(lp, 1))
        np.testing.assert_allclose(r.nll_base, -lp[np.arange(20), tokens], rtol=1e-5, atol=1e-6)
        assert r.base_layout == "topk"
    with pytest.raises(qd.InputError, match="re-tempered"):
        qd.compare(str(tmp_path / "fullTrue.safetensors"), other, temperature=2.0, progress=False)


@pytest.mark.parametrize("argument", ["tokens", "mask"])
def test_bad_tokens_and_mask_files_name_the_argument_and_file(tmp_path, argument):
    base, other = logits(4, 5, 3)
    good = np.zeros(4, np.int64) if argument == "tokens" else np.ones(4, bool)
    np.save(tmp_path / "good.npy", good)
    raw = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-2])
    (tmp_path / "junk.npy").write_bytes(b"junk")
    (tmp_path / "header.npy").write_bytes(raw[:10] + b"{'descr': oops" + raw[24:])
    np.save(tmp_path / "objects.npy", np.array([1, "a", None, 2.0], dtype=object), allow_pickle=True)
    cases = [("cut.npy", qd.FormatError, "truncated"), ("junk.npy", qd.FormatError, "bad magic"),
             ("header.npy", qd.FormatError, "corrupt .npy header"), ("objects.npy", qd.DtypeError, "holds pickled")]
    for name, error, what in cases:
        with pytest.raises(error, match=f"{argument} file .*{name}: {what}"):
            qd.compare(base, other, progress=False, **{argument: str(tmp_path / name)})
    with pytest.raises(FileNotFoundError, match=f"{argument} file .*missing.npy"):
        qd.compare(base, other, progress=False, **{argument: str(tmp_path / "missing.npy")})
    r = qd.compare(base, other, progress=False, **{argument: tmp_path / "good.npy"})
    assert r.n_tokens == 4
    # the command: exit 2, one line naming the file
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "o.npy", other)
    for name in ("cut.npy", "junk.npy", "objects.npy"):
        out = run_cli("compare", str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), f"--{argument}",
                      str(tmp_path / name), "--no-progress")
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and f"{argument} file" in out.stderr and name in out.stderr


def test_cli_output_to_a_missing_folder_fails_first_naming_it(tmp_path):
    base, other = logits(30, 8, 5)
    np.save(tmp_path / "b.npy", base)
    np.save(tmp_path / "o.npy", other)
    for flag in ("--json", "--columns"):
        target = tmp_path / "missing" / "out.x"
        out = run_cli("compare", str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), flag, str(target), "--no-progress")
        assert out.returncode == 2
        assert out.stdout == ""  # found before the comparison
        assert len(out.stderr.strip().splitlines()) == 1 and str(target) in out.stderr and ".tmp" not in out.stderr


def test_cli_reports_an_infinite_perplexity(tmp_path):
    np.save(tmp_path / "b.npy", np.array([[0.0, 1.0, 2.0]] * 4, np.float32))
    np.save(tmp_path / "o.npy", np.array([[0.0, 2.0, 1.0]] * 4, np.float32))
    np.save(tmp_path / "t.npy", np.zeros(4, np.int64))
    out = run_cli("compare", str(tmp_path / "b.npy"), str(tmp_path / "o.npy"), "--tokens", str(tmp_path / "t.npy"),
                  "--temperature", "1e-3", "--json", str(tmp_path / "r.json"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "Mean PPL(Q)                   :        inf" in out.stdout
    assert json.loads((tmp_path / "r.json").read_text())["ppl_other"]["value"] is None


def test_ppl_against_a_topk_base_leaves_out_unlisted_tokens_and_says_so(tmp_path):
    base, other = logits(30, 50, 10)
    tokens = np.random.default_rng(11).integers(0, 50, 30)
    qd.write_topk(tmp_path / "top.safetensors", base, 5)
    r = qd.compare(str(tmp_path / "top.safetensors"), other, tokens=tokens, progress=False)
    lp, lq = log_probs(base.astype(np.float64)), log_probs(other.astype(np.float64))
    listed = np.array([t in np.argsort(-lp[i], kind="stable")[:5] for i, t in enumerate(tokens)])
    assert 0 < listed.sum() < 30
    s = r.summary()
    assert s["tokens_with_both_nll"] == listed.sum()
    rows = np.flatnonzero(listed)
    assert s["ppl_base"]["value"] == pytest.approx(np.exp(-lp[rows, tokens[rows]].mean()), rel=1e-5)
    assert s["ppl_other"]["value"] == pytest.approx(np.exp(-lq[rows, tokens[rows]].mean()), rel=1e-5)
    assert f"PPL and Δp over {listed.sum()} of 30 tokens" in str(r)
