"""Log-likelihood vectors: centring and the KL matrix against float64 numpy,
loaders, the model map, and the estimate against exactly computable KL of
small Markov-chain language models."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys

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


# ---------------------------------------------------------------------------
# Markov-chain language models with exactly computable KL
# ---------------------------------------------------------------------------
#
# A model is (π, P): the first token from π, each next one from P[previous].
# Texts are sampled from a reference chain p0; models p_i perturb p0's logits.
# log p_i(x) = log π_i(x_1) + Σ_t log P_i[x_{t−1}, x_t], and by the chain rule
#   KL(p_i‖p_j) = KL(π_i‖π_j) + Σ_{t=2..T} Σ_a μ_{i,t−1}(a) KL(P_i[a]‖P_j[a])
# with μ_{i,t} the state marginals under p_i. The ModelMap estimate
# Var_s(ℓ_is − ℓ_js)/2 converges (N → ∞) to Var_{p0}(log p_i − log p_j)/2,
# which is also computed exactly (by a forward recursion over states) and
# equals the KL up to third order in the perturbation.

V, T = 5, 16


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def make_models(k, eps, seed=0):
    rng = np.random.default_rng(seed)
    z0, Z0 = rng.normal(size=V), rng.normal(size=(V, V))
    ref = (_softmax(z0), _softmax(Z0))
    models = [(_softmax(z0 + eps * rng.normal(size=V)), _softmax(Z0 + eps * rng.normal(size=(V, V)))) for _ in range(k)]
    return ref, models


def sample(chain, n, rng):
    pi, P = chain
    x = np.empty((n, T), dtype=np.int64)
    x[:, 0] = rng.choice(V, size=n, p=pi)
    cum = np.cumsum(P, axis=1)
    for t in range(1, T):
        u = rng.random(n)[:, None]
        x[:, t] = np.minimum((u > cum[x[:, t - 1]]).sum(1), V - 1)
    return x


def loglik(chain, x):
    pi, P = chain
    return np.log(pi)[x[:, 0]] + np.log(P)[x[:, :-1], x[:, 1:]].sum(1)


def _kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def exact_kl(a, b, marginal_chain=None):
    """KL(a‖b) per text of length T; the state marginals are a's own unless
    ``marginal_chain`` is given (then it is the expected per-token KL summed
    over positions on texts from that chain)."""
    m_pi, m_P = marginal_chain or a
    total = _kl(a[0], b[0])
    mu = m_pi.copy()
    row_kl = np.array([_kl(a[1][r], b[1][r]) for r in range(V)])
    for _ in range(1, T):
        total += float(mu @ row_kl)
        mu = mu @ m_P
    return total


def exact_half_var(a, b, ref):
    """Var_{x~ref}(log a(x) − log b(x)) / 2, exactly, by a forward recursion
    on (P(x_t=s), E[S·1{x_t=s}], E[S²·1{x_t=s}])."""
    f = np.log(a[0]) - np.log(b[0])
    g = np.log(a[1]) - np.log(b[1])
    p = ref[0].copy()
    m1, m2 = p * f, p * f * f
    P = ref[1]
    for _ in range(1, T):
        p, m1, m2 = (
            p @ P,
            ((m1[:, None] + p[:, None] * g) * P).sum(0),
            ((m2[:, None] + 2 * g * m1[:, None] + g * g * p[:, None]) * P).sum(0),
        )
    mean, second = m1.sum(), m2.sum()
    return (second - mean * mean) / 2.0


def logits_of(chain, x):
    """Rows of logits for compare: row 0 of each text predicts x_1 from π,
    row t predicts x_{t+1} from P[x_t]; T rows per text."""
    pi, P = chain
    n = x.shape[0]
    rows = np.empty((n, T, V))
    rows[:, 0] = np.log(pi)
    rows[:, 1:] = np.log(P)[x[:, :-1]]
    return rows.reshape(n * T, V)


def test_markov_exact_formulas_agree_with_monte_carlo():
    ref, (a, b) = make_models(2, 0.3, seed=5)
    x = sample(a, 100_000, np.random.default_rng(0))
    mc = np.mean(loglik(a, x) - loglik(b, x))
    se = np.std(loglik(a, x) - loglik(b, x)) / math.sqrt(x.shape[0])
    assert abs(mc - exact_kl(a, b)) < 4 * se
    y = sample(ref, 100_000, np.random.default_rng(1))
    d = loglik(a, y) - loglik(b, y)
    se = np.std((d - d.mean()) ** 2) / 2 / math.sqrt(y.shape[0])
    assert abs(np.var(d) / 2 - exact_half_var(a, b, ref)) < 4 * se


def test_model_map_estimate_converges_to_exact_kl():
    K, eps = 5, 0.15
    ref, models = make_models(K, eps, seed=11)
    pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
    kl_exact = np.array([exact_kl(models[i], models[j]) for i, j in pairs])
    target = np.array([exact_half_var(models[i], models[j], ref) for i, j in pairs])
    # The limit of the estimator is the KL to within third order in eps.
    assert np.max(np.abs(target - kl_exact) / kl_exact) < 0.1
    errors = {}
    for n in (250, 4000):
        errs = []
        for rep in range(8):
            x = sample(ref, n, np.random.default_rng(1000 * n + rep))
            L = np.stack([loglik(m, x) for m in models])
            D = qd.ModelMap(L).kl_matrix()
            est = np.array([D[i, j] for i, j in pairs])
            errs.append(np.abs(est - kl_exact) / kl_exact)
            if rep == 0:
                # Within a few standard errors of the estimator's limit.
                for (i, j), e, t in zip(pairs, est, target):
                    d = L[i] - L[j]
                    se = np.std((d - d.mean()) ** 2) / 2 / math.sqrt(n)
                    assert abs(e - t) < 5 * se, (n, i, j, e, t, se)
        errors[n] = float(np.mean(errs))
    # 16× the texts: the error shrinks (like 1/sqrt(N): about 4×; allow slack).
    assert errors[4000] < errors[250] / 2, errors
    assert errors[4000] < 0.15, errors


def test_estimate_agrees_with_streamed_per_token_kl():
    K, eps, n = 3, 0.15, 3000
    ref, models = make_models(K, eps, seed=21)
    x = sample(ref, n, np.random.default_rng(7))
    tokens = x.reshape(-1)
    logits = [logits_of(m, x).astype(np.float32) for m in models]
    # Log-likelihood vectors from logit dumps equal the chains' exact values.
    L = np.stack([llv.loglik_from_logits(lg, tokens, T) for lg in logits])
    np.testing.assert_allclose(L, np.stack([loglik(m, x) for m in models]), rtol=1e-5, atol=1e-4)
    D = qd.ModelMap(L).kl_matrix()
    for i in range(K):
        for j in range(i + 1, K):
            per_seq = qd.compare(logits[i], logits[j], tokens=tokens, sequences=T, progress=False).per_sequence()
            assert per_seq.shape == (n,)
            # compare's per-text sum of per-token KL estimates the KL with the
            # texts' own (reference) state marginals, exactly computable:
            want = exact_kl(models[i], models[j], marginal_chain=ref)
            se = per_seq.std() / math.sqrt(n)
            assert abs(per_seq.mean() - want) < 4 * se + 1e-5 * want
            # and the Var/2 estimate agrees with it up to the estimator's noise
            # plus the third-order gap between the two quantities.
            d = L[i] - L[j]
            se_var = np.std((d - d.mean()) ** 2) / 2 / math.sqrt(n)
            assert abs(D[i, j] - per_seq.mean()) < 4 * se_var + 4 * se + 0.1 * want


# ---------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("c,n,noise", [(0.2, 12, 0.05), (1.0, 30, 0.1), (-0.5, 8, 0.02), (2.3, 200, 0.3)])
def test_power_law_exponent_is_recovered_within_its_ci(c, n, noise):
    hits = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        t = np.geomspace(1000, 10000, n)
        y = 3e-2 * t**c * np.exp(noise * rng.normal(size=n))
        f = llv.fit_power_law(t, y)
        assert f.ci[0] < f.exponent < f.ci[1]
        hits += f.ci[0] <= c <= f.ci[1]
    # A 95% interval covers the truth in about 38 of 40 draws.
    assert hits >= 34, hits
    # Noise-free: exact.
    f = llv.fit_power_law(t, 5.0 * t**c)
    assert f.exponent == pytest.approx(c, abs=1e-12) and f.prefactor == pytest.approx(5.0, rel=1e-9)
    assert f.r2 == pytest.approx(1.0)


def test_power_law_errors():
    with pytest.raises(InputError):
        llv.fit_power_law([1, 2], [1, 2])
    with pytest.raises(InputError):
        llv.fit_power_law([1, 2, 3], [1, 0, 2])
    with pytest.raises(ShapeError):
        llv.fit_power_law([1, 2, 3], [1, 2])


def write_safetensors(path, tensors):
    """A minimal independent safetensors writer: {name: (dtype, ndarray)}."""
    header, blobs, off = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def test_weight_distance_equals_numpy(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays")
    rng = np.random.default_rng(9)
    kinds = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}
    shapes = {"embed": (37, 16), "layer.w": (16, 16), "layer.b": (16,), "scalar": ()}
    a, b = {}, {}
    want = 0.0
    for i, (name, shape) in enumerate(shapes.items()):
        da, db = list(kinds)[i % 3], list(kinds)[(i + 1) % 3]
        xa = rng.normal(size=shape).astype(kinds[da])
        xb = (xa.astype(np.float64) + 0.01 * rng.normal(size=shape)).astype(kinds[db])
        a[name], b[name] = (da, xa), (db, xb)
        want += float(np.sum((xa.astype(np.float64) - xb.astype(np.float64)) ** 2))
    a["ids"] = b["ids"] = ("I64", np.arange(4, dtype=np.int64))  # not a float tensor: skipped
    write_safetensors(tmp_path / "a.safetensors", a)
    write_safetensors(tmp_path / "b.safetensors", b)
    got = llv.weight_distance(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert got == pytest.approx(want, rel=1e-12)
    assert llv.weight_distance(tmp_path / "a.safetensors", tmp_path / "a.safetensors") == 0.0
    del b["scalar"]
    write_safetensors(tmp_path / "c.safetensors", b)
    with pytest.raises(ShapeError, match="scalar"):
        llv.weight_distance(tmp_path / "a.safetensors", tmp_path / "c.safetensors")


PEAK_CHILD = """
import sys
from quantdrift import llv
d = llv.weight_distance(sys.argv[1], sys.argv[2])
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(int(hwm) * 1024, d)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_weight_distance_memory_does_not_grow_with_the_checkpoint(tmp_path):
    # Checkpoints of 4 and 32 tensors of 8 MB each (bf16 and f32): the peak
    # resident memory of the streamed distance stays near one tensor pair.
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 arrays")
    rng = np.random.default_rng(3)
    peaks, want = {}, {}
    for count in (4, 32):
        a, b = {}, {}
        total = 0.0
        for i in range(count):
            x = rng.standard_normal(1 << 21).astype(np.float32)  # 8 MB
            y = (x + 0.01).astype(ml_dtypes.bfloat16)
            a[f"w{i}"], b[f"w{i}"] = ("F32", x), ("BF16", y)
            total += float(np.sum((x.astype(np.float64) - y.astype(np.float64)) ** 2))
        write_safetensors(tmp_path / f"a{count}.safetensors", a)
        write_safetensors(tmp_path / f"b{count}.safetensors", b)
        del a, b
        out = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(tmp_path / f"a{count}.safetensors"),
                              str(tmp_path / f"b{count}.safetensors")], capture_output=True, text=True, check=True)
        hwm, got = out.stdout.split()
        peaks[count] = int(hwm)
        assert float(got) == pytest.approx(total, rel=1e-12)
    # 8× the checkpoint (96 MB → 384 MB more input) moves the peak by well under one extra tensor
    assert peaks[32] - peaks[4] < 24 * 2**20, peaks


def test_trajectory_recovers_exponents_and_alpha(tmp_path):
    # Weights diffuse as W_t = W_0 + sqrt(t)·u (‖ΔW‖² ∝ t, c_w = 1); log-likelihood
    # vectors drift as ℓ_t = ℓ_0 + t^0.1·v (KL ∝ t^0.2, c_q = 0.2): α = 0.2.
    rng = np.random.default_rng(12)
    steps = np.array([0, 1000, 2000, 4000, 8000, 16000, 32000], dtype=float)
    u, v = rng.normal(size=(64, 8)), rng.normal(size=500)
    base = rng.normal(-400, 30, size=500)
    L = np.stack([base + (s**0.1) * v for s in steps])
    paths = []
    for s in steps:
        p = tmp_path / f"step{int(s)}.safetensors"
        write_safetensors(p, {"w": ("F32", (np.sqrt(s) * 1e-3 * u).astype(np.float32))})
        paths.append(p)
    tr = llv.Trajectory(steps, L, weights=paths)
    lag = steps[1:]
    np.testing.assert_allclose(tr.kl_from_start()[1:], np.var(np.outer(lag**0.1, v), axis=1) / 2, rtol=1e-9)
    fits = tr.fit()
    assert fits["c_q"].exponent == pytest.approx(0.2, abs=1e-9)
    assert fits["c_w"].exponent == pytest.approx(1.0, abs=1e-5)
    assert fits["alpha"] == pytest.approx(0.2, abs=1e-5)
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    tr.plot(tmp_path / "traj.png")
    assert (tmp_path / "traj.png").stat().st_size > 0


def test_cli_map(tmp_path, capsys):
    from quantdrift.cli import main

    rng = np.random.default_rng(13)
    L = rng.normal(-300, 20, size=(4, 200))
    np.save(tmp_path / "L.npy", L)
    (tmp_path / "names.txt").write_text("a\nb\nc\nd\n")
    rc = main(["map", str(tmp_path / "L.npy"), "--names", str(tmp_path / "names.txt"),
               "--json", str(tmp_path / "m.json"), "--nearest", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "4 models x 200 texts" in out and out.count("\n") == 5
    d = json.loads((tmp_path / "m.json").read_text())
    np.testing.assert_allclose(d["kl_nats"], numpy_kl(L), rtol=1e-10)
    assert main(["map", str(tmp_path / "missing.npy")]) == 2


def test_cli_trajectory(tmp_path):
    # ℓ_t = ℓ_0 + t^0.25·v: KL ∝ t^0.5; weights W_t = W_0 + t·u: ‖ΔW‖² ∝ t^2; α = 0.25
    rng = np.random.default_rng(21)
    steps = np.array([0, 10, 20, 40, 80, 160, 320], dtype=float)
    v, base = rng.normal(size=400), rng.normal(-300, 20, size=400)
    L = np.array([base + (s ** 0.25) * v for s in steps])
    np.save(tmp_path / "L.npy", L)
    w0, u = rng.normal(size=64).astype(np.float32), rng.normal(size=64)
    paths = []
    for i, s in enumerate(steps):
        write_safetensors(tmp_path / f"w{i}.safetensors", {"w": ("F64", w0 + s * u)})
        paths.append(str(tmp_path / f"w{i}.safetensors"))
    out = subprocess.run([sys.executable, "-m", "quantdrift", "trajectory", str(tmp_path / "L.npy"),
                          "--steps", ",".join(f"{s:g}" for s in steps), "--weights", *paths,
                          "--json", str(tmp_path / "t.json")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads((tmp_path / "t.json").read_text())
    assert got["c_q"]["exponent"] == pytest.approx(0.5, abs=1e-6)
    assert got["c_w"]["exponent"] == pytest.approx(2.0, abs=1e-6)
    assert got["alpha"] == pytest.approx(0.25, abs=1e-6)
    assert "Hölder" in out.stdout


# ---------------------------------------------------------------------------
# Edge cases and errors found in review
# ---------------------------------------------------------------------------


def test_weight_distance_widens_float8_tensors(tmp_path, monkeypatch):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="float8 arrays")
    from quantdrift import checkpoint

    # Chunks of 64 elements: the widened path's chunk loop runs several times.
    monkeypatch.setattr(checkpoint, "CHUNK_ELEMENTS", 64)
    rng = np.random.default_rng(12)
    e4 = rng.normal(size=(9, 31)).astype(ml_dtypes.float8_e4m3fn)
    e5 = rng.normal(size=(9, 31)).astype(ml_dtypes.float8_e5m2)
    bf = rng.normal(size=(9, 31)).astype(ml_dtypes.bfloat16)
    f64 = rng.normal(size=(200,))
    write_safetensors(tmp_path / "a.safetensors", {"w": ("F8_E4M3", e4), "v": ("F8_E5M2", e5), "u": ("F64", f64)})
    u_b = np.resize(e5, 200)
    write_safetensors(tmp_path / "b.safetensors", {"w": ("BF16", bf), "v": ("F8_E4M3", e4), "u": ("F8_E5M2", u_b)})
    u_b = u_b.astype(np.float64)
    want = (
        np.sum((e4.astype(np.float64) - bf.astype(np.float64)) ** 2)
        + np.sum((e5.astype(np.float64) - e4.astype(np.float64)) ** 2)
        + np.sum((f64 - u_b) ** 2)
    )
    got = llv.weight_distance(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert got == pytest.approx(float(want), rel=1e-12)


def test_token_logprobs_take_unsigned_lengths():
    lp = np.array([-1.0, -2.0, -0.5, -0.25])
    for dtype in (np.uint8, np.uint32, np.uint64, np.int16):
        out = llv.loglik_from_token_logprobs(lp, np.array([1, 0, 3], dtype=dtype))
        np.testing.assert_array_equal(out, [-1.0, 0.0, -2.75])


def test_loglik_from_logits_needs_sequences():
    logits = np.zeros((4, 3), np.float32)
    with pytest.raises(InputError, match="sequences="):
        llv.loglik_from_logits(logits, np.zeros(4, np.int64), None)


def test_clip_names_nan_and_an_infinite_quantile():
    L = np.random.default_rng(2).normal(-100.0, 5.0, size=(10, 100))
    L[0, :50] = -np.inf  # 5% of the entries
    clipped = llv.clip_quantile(L, 0.2)
    assert np.all(np.isfinite(clipped)) and clipped.min() == np.quantile(L, 0.2)
    for q in (0.02, 0.05, 0.0495):  # the quantile is −inf, or interpolates between −inf entries
        with pytest.raises(InputError, match=r"quantile of L is -inf: 50 of 1000 .*L\[0, 0\]"):
            llv.clip_quantile(L, q)
    L[3, 7] = np.nan
    with pytest.raises(InputError, match=r"L\[3, 7\] is nan"):
        qd.ModelMap(L, clip=0.2)


def test_model_map_input_errors_name_the_model():
    with pytest.raises(ShapeError, match="different lengths"):
        qd.ModelMap({"a": np.zeros(5), "b": np.zeros(4)})
    with pytest.raises(ShapeError, match="different lengths"):
        qd.ModelMap([[1.0, 2.0], [3.0]])
    with pytest.raises(InputError, match="model 'b'"):
        qd.ModelMap({"a": [1.0, 2.0], "b": [1.0, "x"]})
    m = qd.ModelMap([[1.0, 2.0, 4.0], [3.0, 1.0, 0.0]])
    assert m.shape == (2, 3)


def test_load_loglik_json_errors_name_the_file(tmp_path):
    (tmp_path / "bad.json").write_text('{"a": [-1.5, "x"]}')
    with pytest.raises(InputError, match=r"bad\.json: model 'a'"):
        llv.load_loglik(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('{"a": [-1.5,')
    with pytest.raises(InputError, match=r"broken\.json: not valid JSON"):
        llv.load_loglik(tmp_path / "broken.json")


def test_plot_groups_by_label_or_by_mapping(tmp_path):
    pytest.importorskip("matplotlib")
    m = qd.ModelMap(np.random.default_rng(5).normal(size=(4, 30)), names=["a", "b", "c", "d"])
    assert m._group_labels({"quantized": ["a", "c"], "base": "b"}) == ["quantized", "base", "quantized", "other"]
    assert m._group_labels(["x", "y", "x", "y"]) == ["x", "y", "x", "y"]
    with pytest.raises(InputError, match="both 'q' and 'r'"):
        m._group_labels({"q": ["a"], "r": ["a"]})
    with pytest.raises(InputError, match="unknown model 'z'"):
        m._group_labels({"q": ["z"]})
    with pytest.raises(ShapeError, match="one label per model"):
        m._group_labels(["x", "y"])
    m.plot(tmp_path / "map.png", groups={"quantized": ["a", "c"], "base": ["b", "d"]})
    assert (tmp_path / "map.png").stat().st_size > 0


def test_tsne_defaults_follow_the_original(monkeypatch):
    seen = {}

    class FakeTSNE:  # records the settings; scikit-learn need not be installed
        def __init__(self, **settings):
            seen.update(settings)

        def fit_transform(self, X):
            return np.zeros((X.shape[0], seen["n_components"]))

    import types

    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    manifold = types.ModuleType("sklearn.manifold")
    manifold.TSNE = FakeTSNE
    monkeypatch.setitem(sys.modules, "sklearn.manifold", manifold)
    for k, perplexity in ((50, 30.0), (31, 30.0), (12, 11.0), (2, 1.0)):
        qd.ModelMap(np.random.default_rng(k).normal(size=(k, 20))).coords("tsne")
        assert seen["perplexity"] == perplexity
        assert (seen["init"], seen["metric"], seen["random_state"]) == ("pca", "sqeuclidean", 42)


def test_trajectory_names_distinct_steps_distinctly():
    L = np.random.default_rng(3).normal(size=(4, 20))
    t = llv.Trajectory([1_000_000, 1_000_001, 2_000_000_000, 2.5e20], L)
    assert t.map.names == ["step1000000", "step1000001", "step2000000000", "step2.5e+20"]
    assert llv.Trajectory([0, 0.1, 0.2, 0.30000000000000004], L).map.names[3] == "step0.30000000000000004"
    with pytest.raises(InputError, match=r"steps\[1\] is nan"):
        llv.Trajectory([0, float("nan"), 2, 3], L)
    with pytest.raises(InputError, match=r"steps\[2\] = 1 follows 2"):
        llv.Trajectory([0, 2, 1, 3], L)


def test_kl_matrix_too_large_raises_memory_error():
    # 12 million models: a 1.15 PB result, beyond any address space whatever
    # the overcommit policy, refused before any work.
    Q = np.zeros((12_000_000, 1))
    with pytest.raises(MemoryError, match="12000000×12000000 KL matrix"):
        llv.kl_matrix(Q)


def test_load_loglik_csv_names_column(tmp_path):
    f = tmp_path / "steps.csv"
    f.write_text("1000,-1.5,-2.25,-3\n2000,-4,-5,-6.5\n")
    L, names = llv.load_loglik(f)  # all numeric: read as data unless told
    assert L.shape == (2, 4) and names is None
    L, names = llv.load_loglik(f, names_column=True)
    assert names == ["1000", "2000"]
    np.testing.assert_array_equal(L, [[-1.5, -2.25, -3], [-4, -5, -6.5]])
    g = tmp_path / "named.csv"
    g.write_text("a,-1,-2\nb,-3,-4\n")
    assert llv.load_loglik(g)[1] == ["a", "b"]
    with pytest.raises(InputError, match=r"named\.csv: not a numeric CSV"):
        llv.load_loglik(g, names_column=False)
