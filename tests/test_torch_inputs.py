"""torch tensors in CPU memory are read in place, as the numpy arrays they
share memory with; bfloat16 ones as ml_dtypes' bfloat16."""

from __future__ import annotations

import numpy as np
import pytest

import quantdrift as qd

torch = pytest.importorskip("torch", reason="torch tensors need torch")
ml_dtypes = pytest.importorskip("ml_dtypes")


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((6, 50)).astype(np.float32) * 3
    return p, p + 0.2 * rng.standard_normal((6, 50)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_divergences_of_tensors_equal_those_of_arrays(logits, dtype):
    p, q = logits
    tp, tq = (torch.from_numpy(a).to(getattr(torch, dtype)) for a in (p, q))
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    ap, aq = p.astype(np_dtype), q.astype(np_dtype)
    for kind in ("kl", "js", "cross_entropy"):
        np.testing.assert_array_equal(qd.divergence(tp, tq, kind), qd.divergence(ap, aq, kind))
    loss, grad = qd.distill_loss(tp, tq, temperature=2.0)
    want_loss, want_grad = qd.distill_loss(ap, aq, temperature=2.0)
    np.testing.assert_array_equal(loss, want_loss)
    np.testing.assert_array_equal(grad, want_grad)


def test_tensors_that_require_grad_are_read_not_changed(logits):
    p, q = logits
    tp = torch.from_numpy(p.copy()).requires_grad_(True)
    np.testing.assert_array_equal(qd.kl(tp, torch.from_numpy(q)), qd.kl(p, q))
    np.testing.assert_array_equal(tp.detach().numpy(), p)


def test_quantize_and_formats_take_tensors():
    w = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
    tw = torch.from_numpy(w).to(torch.bfloat16)
    aw = w.astype(ml_dtypes.bfloat16)
    a = qd.quantize(tw, bits=4, partition=qd.groups(-1, 32))
    b = qd.quantize(aw, bits=4, partition=qd.groups(-1, 32))
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scale, b.scale)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(qd.encode(tw, "float8_e4m3fn"), qd.encode(aw, "float8_e4m3fn"))
    np.testing.assert_array_equal(qd.fake_quantize(torch.from_numpy(w), bits=8), qd.fake_quantize(w, bits=8))


def test_compare_and_sources_take_tensors(logits):
    p, q = logits
    tokens = np.arange(6) % 50
    a = qd.compare(torch.from_numpy(p), torch.from_numpy(q), tokens=torch.from_numpy(tokens), progress=False)
    b = qd.compare(p, q, tokens=tokens, progress=False)
    np.testing.assert_array_equal(a.kl, b.kl)
    assert a.summary() == b.summary()
    src = qd.open_source(torch.from_numpy(p).to(torch.bfloat16))
    assert (src.n_rows, src.vocab) == (6, 50)
    same = qd.open_source(p.astype(ml_dtypes.bfloat16))
    assert src.dtype == same.dtype == "bfloat16"
    np.testing.assert_array_equal(src.block(0, 6), same.block(0, 6))


def test_a_tensor_on_another_device_is_refused_by_name(logits):
    p, q = logits
    elsewhere = torch.empty((6, 50), device="meta")
    with pytest.raises(qd.InputError, match=r"p is a torch tensor on meta; .*p\.cpu\(\)"):
        qd.kl(elsewhere, q)
    with pytest.raises(qd.InputError, match="on meta"):
        qd.open_source(elsewhere)


def test_float8_tensors_keep_their_type():
    from quantdrift._arrays import from_torch

    t = torch.tensor([0.5, -2.0, 448.0]).to(torch.float8_e4m3fn)
    arr = from_torch(t, "x")
    assert arr.dtype == np.dtype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(arr.astype(np.float32), [0.5, -2.0, 448.0])
    with pytest.raises(qd.DtypeError, match="p must be float32.*got dtype float8_e4m3fn"):
        qd.kl(t.reshape(1, 3), t.reshape(1, 3).float())
