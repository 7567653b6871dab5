"""Log-likelihood vectors: centring and the KL matrix against float64 numpy,
loaders, the model map, and the estimate against exactly computable KL of
small Markov-chain language models."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

import quantdrift as qd
from quantdrift import llv
from quantdrift._errors import InputError, ShapeError


def numpy_centre(L):
    Xi = L - L.mean(axis=1, keepdims=True)
    return Xi - Xi.mean(axis=0, keepdims=True)


def numpy_kl(L):
    K = L.shape[0]
    out = np.zeros((K, K))
    for i in range(K):
        for j in range(K):
            out[i, j] = np.var(L[i] - L[j]) / 2.0  # ddof=0, as the original
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 1), (3, 5), (17, 1025), (40, 2051)])
def test_centring_and_kl_equal_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    L = rng.normal(-300.0, 40.0, size=shape)
    Q = llv.double_centre(L)
    np.testing.assert_allclose(Q, numpy_centre(L), rtol=0, atol=1e-10)
    # H_K L H_N as an explicit matrix product, too.
    K, N = shape
    HK, HN = np.eye(K) - 1.0 / K, np.eye(N) - 1.0 / N
    if N <= 1100:
        np.testing.assert_allclose(Q, HK @ L @ HN, rtol=0, atol=1e-9)
    D = llv.kl_matrix(Q)
    assert D.shape == (K, K) and D.dtype == np.float64
    assert np.array_equal(D, D.T)
    assert np.all(np.diag(D) == 0.0)
    want = numpy_kl(L)
    np.testing.assert_allclose(D, want, rtol=1e-10, atol=1e-12)
    # ‖q_i − q_j‖² / 2N form.
    sq = ((Q[:, None, :] - Q[None, :, :]) ** 2).sum(-1) / (2 * N) if K * K * N < 2e7 else want
    np.testing.assert_allclose(D, sq, rtol=1e-10, atol=1e-12)


def test_errors():
    with pytest.raises(ShapeError):
        llv.double_centre(np.zeros(5))
    with pytest.raises(ShapeError):
        llv.double_centre(np.zeros((0, 5)))
    L = np.zeros((2, 3))
    L[1, 2] = np.nan
    with pytest.raises(InputError, match=r"L\[1, 2\]"):
        llv.double_centre(L)
    with pytest.raises(ShapeError, match="names"):
        qd.ModelMap(np.zeros((2, 3)), names=["a"])
    with pytest.raises(InputError, match="text_bytes"):
        qd.ModelMap(np.zeros((2, 3))).kl_matrix("bpb")
    with pytest.raises(InputError, match="unit"):
        qd.ModelMap(np.zeros((2, 3))).kl_matrix("bits")


def test_token_logprobs_are_summed_per_text():
    rng = np.random.default_rng(1)
    lengths = np.array([3, 0, 1, 5])
    lp = -rng.random((2, lengths.sum()))
    got = llv.loglik_from_token_logprobs(lp, lengths)
    want = np.stack([[row[a:b].sum() for a, b in zip(np.r_[0, np.cumsum(lengths)[:-1]], np.cumsum(lengths))] for row in lp])
    np.testing.assert_allclose(got, want, rtol=1e-14)
    assert got[0, 1] == 0.0
    np.testing.assert_allclose(llv.loglik_from_token_logprobs(lp[0], lengths), want[0])
    with pytest.raises(ShapeError):
        llv.loglik_from_token_logprobs(lp[:, 1:], lengths)


def test_loaders(tmp_path):
    rng = np.random.default_rng(2)
    L = rng.normal(size=(3, 4))
    names = ["a", "b", "c"]
    np.save(tmp_path / "L.npy", L)
    got, n = llv.load_loglik(tmp_path / "L.npy")
    assert n is None and np.array_equal(got, L)
    (tmp_path / "L.csv").write_text("\n".join(f"{m}," + ",".join(repr(float(v)) for v in row) for m, row in zip(names, L)))
    got, n = llv.load_loglik(tmp_path / "L.csv")
    assert n == names and np.array_equal(got, L)
    (tmp_path / "plain.csv").write_text("\n".join(",".join(repr(float(v)) for v in row) for row in L))
    got, n = llv.load_loglik(tmp_path / "plain.csv")
    assert n is None and np.array_equal(got, L)
    (tmp_path / "L.json").write_text(json.dumps({m: row.tolist() for m, row in zip(names, L)}))
    got, n = llv.load_loglik(tmp_path / "L.json")
    assert n == names and np.array_equal(got, L)
    with open(tmp_path / "L.pkl", "wb") as fh:
        pickle.dump({m: row for m, row in zip(names, L)}, fh)
    got, n = llv.load_loglik(tmp_path / "L.pkl")
    assert n == names and np.array_equal(got, L)
    (tmp_path / "ragged.json").write_text(json.dumps({"a": [1, 2], "b": [1]}))
    with pytest.raises(ShapeError):
        llv.load_loglik(tmp_path / "ragged.json")


def test_model_map_units_nearest_coords_and_plot(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(-500, 50, size=400)
    shift_cd, shift_e = rng.normal(0, 3.0, size=400), rng.normal(0, 10.0, size=400)
    tweak = [rng.normal(0, 0.1, size=400) for _ in range(5)]
    L = np.stack([base + tweak[0], base + tweak[1], base + shift_cd + tweak[2], base + shift_cd + tweak[3], base + shift_e + tweak[4]])
    names = ["a", "b", "c", "d", "e"]
    nbytes = rng.integers(300, 1000, size=400)
    m = qd.ModelMap(L, names=names, text_bytes=nbytes)
    nats = m.kl_matrix()
    np.testing.assert_allclose(nats, numpy_kl(L), rtol=1e-10)
    np.testing.assert_allclose(m.kl_matrix("bpb"), numpy_kl(L) / (nbytes.mean() * math.log(2)), rtol=1e-10)
    near = m.nearest("a", 4)
    assert near[0][0] == "b" and {near[1][0], near[2][0]} == {"c", "d"} and near[3][0] == "e"
    assert near[0][1] == nats[0, 1]
    assert m.nearest("c", 1)[0][0] == "d"
    with pytest.raises(InputError, match="unknown model"):
        m.nearest("zz")
    # PCA coordinates in full dimension reproduce the KL matrix as squared distances.
    X = m.coords("pca", dims=5)
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    np.testing.assert_allclose(D, nats, rtol=1e-8, atol=1e-10)
    Y = m.coords("mds", dims=5)
    np.testing.assert_allclose(((Y[:, None] - Y[None]) ** 2).sum(-1), nats, rtol=1e-6, atol=1e-8)
    assert m.coords("pca").shape == (5, 2)
    # Clipping at a global quantile.
    c = qd.ModelMap(L, clip=0.02)
    np.testing.assert_array_equal(c.L, np.maximum(L, np.quantile(L, 0.02)))
    d = m.to_dict()
    json.dumps(d)
    assert d["names"] == names and len(d["kl_bpb"]) == 5
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    m.plot(tmp_path / "map.png", groups=["x", "x", "y", "y", "z"])
    assert (tmp_path / "map.png").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_tsne_is_optional():
    m = qd.ModelMap(np.random.default_rng(4).normal(size=(6, 50)))
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(qd.QuantdriftError, match="quantdrift\\[tsne\\]"):
            m.coords("tsne")
    else:
        assert m.coords("tsne").shape == (6, 2)
