"""The demo's character-level model: its file, its numpy forward pass, its quality."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

import quantdrift as qd
from quantdrift.demo_model import (
    MODEL_PATH,
    CharModel,
    heldout_text,
    load_model,
    read_safetensors,
    train_text,
)


@pytest.fixture(scope="module")
def model() -> CharModel:
    return load_model()


@pytest.fixture(scope="module")
def heldout_ids(model) -> np.ndarray:
    return model.encode(heldout_text())


@pytest.fixture(scope="module")
def heldout_logits(model, heldout_ids) -> np.ndarray:
    return model.logits(heldout_ids)


def _parse_independently(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__")
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32"
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + begin : 8 + n + end], dtype="<f4").reshape(info["shape"])
    return out, meta


def _forward_float64(w, ids, context, eps):
    """Independent float64 forward pass, one row per window, written from the
    architecture in scripts/train_demo_model.py."""
    w = {k: v.astype(np.float64) for k, v in w.items()}

    def ln(x, scale, shift):
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * scale + shift

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    rows = []
    for i in range(len(ids) - context):
        x = np.concatenate([w["embed.weight"][t] for t in ids[i : i + context]])
        h1 = gelu(ln(w["fc1.weight"] @ x + w["fc1.bias"], w["ln1.weight"], w["ln1.bias"]))
        h2 = gelu(ln(w["fc2.weight"] @ h1 + w["fc2.bias"], w["ln2.weight"], w["ln2.bias"])) + h1
        rows.append(w["out.weight"] @ h2 + w["out.bias"])
    return np.array(rows).reshape(-1, len(w["out.bias"]))


def _mean_nll_float64(logits, targets):
    logits = logits.astype(np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_z - logits[np.arange(len(targets)), targets]))


# ---------------------------------------------------------------------------
# the file


def test_load_gives_the_file_tensors_and_config(model):
    tensors, meta = _parse_independently(MODEL_PATH)
    assert set(model.weights) == set(tensors)
    for name, tensor in tensors.items():
        assert model.weights[name].dtype == np.float32
        np.testing.assert_array_equal(model.weights[name], tensor)
    assert model.vocab == meta["vocab"] and len(model.vocab) == 65
    assert model.context == int(meta["context"]) == 32
    assert model.metadata == meta
    assert int(meta["parameters"]) == sum(t.size for t in tensors.values())


def test_matrices_tile_into_quantization_groups(model):
    assert sorted(model.matrices) == ["embed.weight", "fc1.weight", "fc2.weight", "out.weight"]
    for name in model.matrices:
        rows, cols = model.weights[name].shape
        assert cols % 32 == 0, name  # input axis: groups of 32 and MX blocks fit
        if name in ("fc1.weight", "fc2.weight", "out.weight"):
            assert cols % 128 == 0, name
        if name != "out.weight" and name != "embed.weight":
            assert rows % 64 == 0, name  # only the vocab axis is ragged


def test_read_safetensors_rejects_bad_files(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(qd.InputError, match="shorter than the 8-byte"):
        read_safetensors(short)

    raw = MODEL_PATH.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[:-4])
    with pytest.raises(qd.InputError, match="data_offsets"):
        read_safetensors(truncated)

    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(qd.InputError, match="header length"):
        read_safetensors(huge)

    with pytest.raises(OSError):
        read_safetensors(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------
# the text


def test_text_split_matches_training(model):
    train, held = train_text(), heldout_text()
    assert len(train) == int(model.metadata["train_chars"])
    assert len(held) == int(model.metadata["heldout_chars"])
    assert len(train) == int(0.9 * (len(train) + len(held)))
    assert heldout_text(100) == held[:100]
    assert heldout_text(0) == ""
    assert train.startswith("First Citizen:")
    with pytest.raises(qd.InputError):
        heldout_text(-1)


def test_encode_decode_round_trip(model):
    text = heldout_text(500)
    ids = model.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (500,)
    np.testing.assert_array_equal(ids, [model.vocab.index(c) for c in text])
    assert model.decode(ids) == text
    assert model.encode("").shape == (0,)
    with pytest.raises(qd.InputError, match="position 3"):
        model.encode("abc\u00e9")
    with pytest.raises(qd.InputError, match="position 1"):
        model.encode("a~")  # '~' is past every vocab code point


# ---------------------------------------------------------------------------
# the forward pass


def test_logits_shape_dtype_and_alignment(model):
    ids = model.encode(heldout_text(300))
    logits = model.logits(ids)
    assert logits.dtype == np.float32
    assert logits.shape == (300 - model.context, len(model.vocab))
    assert np.isfinite(logits).all()
    np.testing.assert_array_equal(model.targets(ids), ids[model.context :])
    assert model.targets(ids).dtype == np.int32
    # row i depends only on ids[i : i + context]
    for i in (0, 17, 267):
        window = ids[i : i + model.context + 1]
        np.testing.assert_allclose(model.logits(window)[0], logits[i], rtol=1e-5, atol=1e-5)
    # no full context, no rows
    assert model.logits(ids[: model.context]).shape == (0, len(model.vocab))
    assert model.logits(ids[:0]).shape == (0, len(model.vocab))


def test_logits_equal_float64_oracle(model):
    ids = model.encode(heldout_text(2000))[::7]  # an arbitrary id sequence
    ids = ids[:100]
    eps = float(model.metadata["layer_norm_eps"])
    expected = _forward_float64(model.weights, ids, model.context, eps)
    np.testing.assert_allclose(model.logits(ids), expected, rtol=1e-4, atol=1e-4)


def test_logits_are_chunked_consistently(model, heldout_ids):
    ids = heldout_ids[:20000]  # more rows than one chunk
    whole = model.logits(ids)
    pieces = np.concatenate([model.logits(ids[:9000]), model.logits(ids[9000 - model.context :])])
    np.testing.assert_allclose(whole, pieces, rtol=1e-5, atol=1e-5)


def test_logits_equal_torch_forward(model):
    torch = pytest.importorskip("torch", reason="torch is needed to compare with the training framework")
    F = torch.nn.functional
    ids = model.encode(heldout_text(600))
    w = {k: torch.from_numpy(v.copy()) for k, v in model.weights.items()}
    hidden, eps = model.hidden, float(model.metadata["layer_norm_eps"])
    windows = torch.from_numpy(ids.astype(np.int64)).unfold(0, model.context, 1)[:-1]
    x = w["embed.weight"][windows].reshape(len(windows), -1)

    def block(x, layer, norm):
        h = F.linear(x, w[f"{layer}.weight"], w[f"{layer}.bias"])
        return F.gelu(F.layer_norm(h, (hidden,), w[f"{norm}.weight"], w[f"{norm}.bias"], eps), approximate="tanh")

    h1 = block(x, "fc1", "ln1")
    h2 = block(h1, "fc2", "ln2") + h1
    expected = F.linear(h2, w["out.weight"], w["out.bias"]).numpy()
    np.testing.assert_allclose(model.logits(ids), expected, rtol=1e-4, atol=1e-4)


def test_heldout_loss_matches_training_record(model, heldout_ids, heldout_logits):
    recorded = float(model.metadata["heldout_loss"])
    got = _mean_nll_float64(heldout_logits, model.targets(heldout_ids))
    assert got == pytest.approx(recorded, abs=1e-4)
    head = heldout_ids[:3000]
    np.testing.assert_allclose(model.nll(head).mean(), _mean_nll_float64(heldout_logits[: 3000 - 32], head[32:]), rtol=1e-6)


def test_model_beats_unigram_and_bigram(model, heldout_ids, heldout_logits):
    vocab = len(model.vocab)
    train = model.encode(train_text())
    targets = model.targets(heldout_ids)
    unigram = np.bincount(train, minlength=vocab) + 1.0
    unigram_nll = -np.log(unigram[targets] / unigram.sum()).mean()
    bigram = np.ones((vocab, vocab))
    np.add.at(bigram, (train[:-1], train[1:]), 1.0)
    bigram /= bigram.sum(axis=1, keepdims=True)
    bigram_nll = -np.log(bigram[heldout_ids[model.context - 1 : -1], targets]).mean()
    model_nll = _mean_nll_float64(heldout_logits, targets)
    assert bigram_nll < unigram_nll
    assert model_nll < bigram_nll - 0.4  # clearly better than a bigram model
    assert float(model.metadata["heldout_bigram_loss"]) == pytest.approx(bigram_nll, abs=1e-9)
    assert float(model.metadata["heldout_unigram_loss"]) == pytest.approx(unigram_nll, abs=1e-9)


def test_weights_argument(model):
    ids = model.encode(heldout_text(400))
    base = model.logits(ids)
    # the same tensors, as float64 copies, give the same logits
    same = {k: v.astype(np.float64) for k, v in model.weights.items()}
    np.testing.assert_array_equal(model.logits(ids, weights=same), base)
    # perturbing any one tensor changes them, and leaves the model alone
    rng = np.random.default_rng(0)
    for name in ("embed.weight", "fc1.weight", "fc2.weight", "out.weight", "ln2.bias"):
        w = model.weights[name]
        noisy = (w + rng.normal(0, 0.05, w.shape)).astype(np.float32)
        assert not np.allclose(model.logits(ids, weights={name: noisy}), base), name
    np.testing.assert_array_equal(model.logits(ids), base)
    with pytest.raises(qd.ShapeError, match="fc1.weight"):
        model.logits(ids, weights={"fc1.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(qd.InputError, match="unknown tensor 'fc9.weight'"):
        model.logits(ids, weights={"fc9.weight": np.zeros(3)})


def test_bad_token_ids(model):
    with pytest.raises(qd.ShapeError, match="1-D"):
        model.logits(np.zeros((2, 40), np.int32))
    with pytest.raises(qd.InputError, match=r"token_ids\[33\] = 65"):
        model.logits(np.r_[np.zeros(33, np.int32), 65])
    with pytest.raises(qd.InputError, match="integers"):
        model.logits(np.zeros(40, np.float32))
