"""Logit sources and writers, on files the tests write.

The llama.cpp base file is checked byte for byte against an independent
writer below (struct + numpy float32 scalars, the C library's expf/log
through ctypes, as llama.cpp calls them); decoded rows are checked against a
float64 log-softmax; safetensors files are written here with struct + json.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import json
import math
import os
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd
from quantdrift import _core
from quantdrift.sources import LlamacppBaseWriter, llamacpp_row_len, write_npy, write_safetensors

BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.float32

# ---------------------------------------------------------------------------
# An independent llama.cpp writer (tools/perplexity/perplexity.cpp, log_softmax)
# ---------------------------------------------------------------------------

_LIBM_PATH = ctypes.util.find_library("m")
LIBM = ctypes.CDLL(_LIBM_PATH) if _LIBM_PATH else None
if LIBM is not None:
    LIBM.expf.restype, LIBM.expf.argtypes = ctypes.c_float, [ctypes.c_float]
    LIBM.log.restype, LIBM.log.argtypes = ctypes.c_double, [ctypes.c_double]


def _expf(x: float) -> float:
    return LIBM.expf(x) if LIBM is not None else float(F32(math.exp(x)))


def _log(x: float) -> float:
    return LIBM.log(x) if LIBM is not None else math.log(x)


def ref_row(logits: np.ndarray) -> bytes:
    """One packed row, following the C++ statement by statement in float32."""
    vocab = len(logits)
    mx = mn = F32(logits[0])
    for l in logits[1:]:
        mx = l if mx < l else mx
        mn = l if l < mn else mn
    mn = max(mn, F32(mx - F32(16)))
    sum_exp = 0.0  # double
    for l in logits:
        sum_exp += _expf(float(F32(l - mx)))
    lse = F32(_log(sum_exp))
    min_log_prob = F32(F32(mn - mx) - lse)
    scale = F32(F32(mx - mn) / F32(65535))
    q = [0] * vocab
    if scale != 0:
        inv = F32(F32(1) / scale)
        # nearest_int on [0, 65535] is round half to even of the float32 product
        q = [int(np.rint(F32(inv * F32(l - mn)))) if l > mn else 0 for l in logits]
    pad = [0] if vocab % 2 else []
    return struct.pack("<ff", scale, min_log_prob) + struct.pack(f"<{vocab + len(pad)}H", *q, *pad)


def ref_base_file(logits: np.ndarray, tokens: np.ndarray, n_ctx: int) -> bytes:
    n_chunk = len(tokens) // n_ctx
    vocab = logits.shape[1]
    out = [b"_logits_", struct.pack("<iii", n_ctx, vocab, n_chunk),
           np.asarray(tokens[: n_chunk * n_ctx], dtype="<i4").tobytes()]
    first = n_ctx // 2
    for c in range(n_chunk):
        for pos in range(first, n_ctx - 1):
            out.append(ref_row(logits[c * n_ctx + pos]))
    return b"".join(out)


def sample_logits(rng, rows, vocab):
    """Rows with narrow and wide (clamped) ranges, ties and a flat row."""
    x = (rng.standard_normal((rows, vocab)) * rng.choice([0.5, 3.0, 12.0], size=(rows, 1))).astype(F32)
    x[1] = 2.5  # flat: scale 0
    x[2, :3] = x[2].max()  # ties at the top
    return x


def log_softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------
# llama.cpp base files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [7, 10])
def test_base_file_bytes_equal_the_independent_writer(tmp_path, vocab):
    rng = np.random.default_rng(vocab)
    n_ctx, n_chunk = 16, 3
    logits = sample_logits(rng, n_chunk * n_ctx, vocab)
    tokens = rng.integers(0, vocab, n_chunk * n_ctx + 5)  # extra tokens are cut, as llama.cpp does
    path = tmp_path / "base.kld"
    qd.write_llamacpp_base(path, logits, tokens, n_ctx)
    got, want = path.read_bytes(), ref_base_file(logits, tokens, n_ctx)
    nv = llamacpp_row_len(vocab)
    assert len(got) == 20 + 4 * n_chunk * n_ctx + 2 * nv * 7 * n_chunk == len(want)
    if LIBM is None:  # min_log_prob then agrees only to about an ulp: compare the rest
        g = np.frombuffer(got[20 + 4 * n_chunk * n_ctx:], "<u2").reshape(-1, nv)
        w = np.frombuffer(want[20 + 4 * n_chunk * n_ctx:], "<u2").reshape(-1, nv)
        np.testing.assert_array_equal(np.delete(g, [2, 3], axis=1), np.delete(w, [2, 3], axis=1))
    else:
        assert got == want
    # the scored-rows-only form and a 3-D input write the same bytes
    first = n_ctx // 2
    scored = np.concatenate([logits[c * n_ctx + first: c * n_ctx + n_ctx - 1] for c in range(n_chunk)])
    qd.write_llamacpp_base(tmp_path / "b2.kld", scored, tokens, n_ctx)
    qd.write_llamacpp_base(tmp_path / "b3.kld", logits.reshape(n_chunk, n_ctx, vocab), tokens[: n_chunk * n_ctx])
    assert (tmp_path / "b2.kld").read_bytes() == got == (tmp_path / "b3.kld").read_bytes()


def test_base_file_reads_back_within_the_quantisation_step(tmp_path):
    rng = np.random.default_rng(1)
    n_ctx, n_chunk, vocab = 16, 3, 10
    logits = sample_logits(rng, n_chunk * n_ctx, vocab)
    tokens = rng.integers(0, vocab, n_chunk * n_ctx)
    path = tmp_path / "base.bin"
    qd.write_llamacpp_base(path, logits, tokens, n_ctx)
    with qd.open_source(path) as src:
        assert (src.format, src.layout, src.dtype, src.values) == ("llamacpp", "llamacpp", "uint16", "logprobs")
        assert (src.n_rows, src.vocab, src.n_ctx, src.n_chunk) == (21, vocab, n_ctx, n_chunk)
        first, per = 8, 7
        rows = np.concatenate([np.arange(c * n_ctx + first, c * n_ctx + n_ctx - 1) for c in range(n_chunk)])
        np.testing.assert_array_equal(src.tokens, tokens[rows + 1])
        assert src.tokens.dtype == np.int32
        np.testing.assert_array_equal(src.positions, np.tile(np.arange(first, first + per), n_chunk))
        np.testing.assert_array_equal(src.sequence_starts, [0, 7, 14])
        block = src.block(0, src.n_rows)
        assert block.dtype == np.uint16 and block.shape == (21, llamacpp_row_len(vocab))
        assert block.flags.c_contiguous
        src.prefetch(0, src.n_rows)
        decoded = _core.llamacpp_decode(block, vocab).astype(np.float64)
    exact = log_softmax64(logits[rows])
    step = np.frombuffer(block[:, :2].tobytes(), "<f4").astype(np.float64)[:, None]
    min_log_prob = np.frombuffer(block[:, 2:4].tobytes(), "<f4").astype(np.float64)[:, None]
    above = exact > exact.max(axis=1, keepdims=True) - 16
    err = np.abs(decoded - exact)
    assert np.all(err[above] <= (np.broadcast_to(step, err.shape)[above] / 2 + 1e-5))
    assert np.all(step <= 16 / 65535 * (1 + 1e-6))
    clamped = ~above
    assert clamped.any()
    np.testing.assert_array_equal(decoded[clamped], np.broadcast_to(min_log_prob, decoded.shape)[clamped])
    assert np.all(decoded[clamped] >= exact[clamped])
    # the statistics of the decoded rows match those of the arrays
    kl = qd.kl(logits[rows], decoded.astype(F32), inputs="logits")
    assert np.all(np.abs(kl) < 1e-4)


def test_streaming_writer_is_atomic(tmp_path):
    vocab, n_ctx = 5, 8
    tokens = np.arange(2 * n_ctx) % vocab
    x = np.random.default_rng(0).standard_normal((n_ctx, vocab)).astype(F32)
    path = tmp_path / "w.kld"
    with pytest.raises(RuntimeError):
        with LlamacppBaseWriter(path, tokens, n_ctx, vocab) as w:
            w.write_chunk(x)
            raise RuntimeError("crash mid-way")
    with pytest.raises(qd.InputError, match="1 of 2|3 of 6"):
        with LlamacppBaseWriter(path, tokens, n_ctx, vocab) as w:
            w.write_chunk(x)
    assert os.listdir(tmp_path) == []
    with LlamacppBaseWriter(path, tokens, n_ctx, vocab) as w:
        w.write_chunk(x)
        w.write_chunk(x[n_ctx // 2: n_ctx - 1])
    assert qd.open_source(path).n_rows == 6
    assert sorted(os.listdir(tmp_path)) == ["w.kld"]
    # A closed writer refuses more rows and leaves the finished file as it is.
    before = path.read_bytes()
    with pytest.raises(qd.InputError, match="the writer is closed"):
        w.write_chunk(x)
    assert path.read_bytes() == before
    with pytest.raises(qd.InputError, match="outside the vocabulary"):
        LlamacppBaseWriter(tmp_path / "x.kld", tokens + 5, n_ctx, vocab)
    with pytest.raises(qd.InputError, match="NaN|nan"):
        bad = x.copy()
        bad[5, 1] = np.nan
        qd.write_llamacpp_base(tmp_path / "y.kld", np.concatenate([bad, bad]), tokens, n_ctx)
    assert sorted(os.listdir(tmp_path)) == ["w.kld"]


def _base(tmp_path, vocab=7, n_ctx=16, n_chunk=3, name="base.kld", seed=0):
    rng = np.random.default_rng(seed)
    path = tmp_path / name
    qd.write_llamacpp_base(path, sample_logits(rng, n_chunk * n_ctx, vocab), rng.integers(0, vocab, n_chunk * n_ctx), n_ctx)
    return path


def test_base_file_errors(tmp_path):
    good = _base(tmp_path).read_bytes()
    cases = {
        "truncated.kld": (good[:-3], "truncated.*needs %d bytes, the file has %d" % (len(good), len(good) - 3)),
        "trailing.kld": (good + b"\0\0", "trailing bytes"),
        "short.kld": (good[:12], "truncated"),
        "magic.kld": (b"_logitz_" + good[8:], "unknown format.*_logits_"),
        "header.kld": (good[:8] + struct.pack("<i", -16) + good[12:], "corrupt llama.cpp header"),
        "tokens.kld": (good[:20] + struct.pack("<i", 99) + good[24:], "corrupt token array: token 99 at index 0"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(qd.FormatError, match=message) as e:
            qd.open_source(tmp_path / name)
        assert name in str(e.value)
    assert issubclass(qd.FormatError, qd.InputError)


# ---------------------------------------------------------------------------
# Arrays, .npy, safetensors
# ---------------------------------------------------------------------------


def test_arrays_in_every_dtype_and_3d():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 6)).astype(F32)
    src = qd.open_source(x)
    assert (src.name, src.layout, src.dtype, src.values, src.n_rows, src.vocab) == ("<array>", "dense", "float32", "logits", 12, 6)
    np.testing.assert_array_equal(src.sequence_starts, [0, 4, 8])
    np.testing.assert_array_equal(src.positions, np.tile(np.arange(4), 3))
    np.testing.assert_array_equal(src.block(3, 9), x.reshape(12, 6)[3:9])
    assert src.tokens is None and src.topk is None
    two = x.reshape(12, 6)
    assert qd.open_source(two).sequence_starts is None
    assert qd.open_source(two.astype(np.float64)).dtype == "float64"
    h = qd.open_source(two.astype(np.float16))
    assert h.dtype == "float16" and h.block(0, 2).dtype == np.float16
    b = qd.open_source(two.astype(BF16), values="logprobs")
    assert b.dtype == "bfloat16" and b.values == "logprobs"
    np.testing.assert_array_equal(b.block(0, 12), two.astype(BF16).view(np.uint16))
    u = qd.open_source(two.astype(BF16).view(np.uint16), dtype="bfloat16")
    np.testing.assert_array_equal(u.block(0, 12), b.block(0, 12))
    uh = qd.open_source(two.astype(np.float16).view(np.uint16), dtype="float16")
    assert uh.dtype == "float16" and uh.block(0, 1).dtype == np.float16
    # a strided array comes out C-contiguous
    wide = rng.standard_normal((12, 12)).astype(F32)
    assert qd.open_source(wide[:, ::2]).block(0, 5).flags.c_contiguous
    with pytest.raises(qd.DtypeError, match="dtype='bfloat16' or dtype='float16'"):
        qd.open_source(two.view(np.uint32).astype(np.uint16))
    with pytest.raises(qd.DtypeError, match="is float32"):
        qd.open_source(two, dtype="bfloat16")
    with pytest.raises(qd.DtypeError):
        qd.open_source(np.zeros((2, 3), np.int64))
    with pytest.raises(qd.ShapeError, match="rows, vocab"):
        qd.open_source(np.zeros(5, F32))
    with pytest.raises(qd.InputError, match="outside"):
        src.block(5, 20)
    assert qd.open_source(src) is src


def test_npy_files(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 5, 9)).astype(F32)
    for dtype in (F32, np.float16, np.float64):
        np.save(tmp_path / "a.npy", x.astype(dtype))
        with qd.open_source(tmp_path / "a.npy") as src:
            assert src.format == "npy" and src.n_rows == 10 and src.shape == (2, 5, 9)
            np.testing.assert_array_equal(src.block(2, 7), x.astype(dtype).reshape(10, 9)[2:7])
            src.prefetch(0, 10)
    # ml_dtypes bfloat16 saved by np.save (descr '<V2') and as uint16 + dtype
    np.save(tmp_path / "b.npy", x.astype(BF16))
    src = qd.open_source(tmp_path / "b.npy")
    assert src.dtype == "bfloat16"
    np.testing.assert_array_equal(src.block(0, 10), x.astype(BF16).view(np.uint16).reshape(10, 9))
    np.save(tmp_path / "u.npy", x.astype(BF16).view(np.uint16))
    with pytest.raises(qd.DtypeError, match="dtype="):
        qd.open_source(tmp_path / "u.npy")
    u = qd.open_source(tmp_path / "u.npy", dtype="bfloat16")
    np.testing.assert_array_equal(u.block(0, 10), src.block(0, 10))
    # Fortran order is read right (copied per block)
    np.save(tmp_path / "f.npy", np.asfortranarray(x[0]))
    np.testing.assert_array_equal(qd.open_source(tmp_path / "f.npy").block(1, 4), x[0][1:4])
    # errors
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-8])
    with pytest.raises(qd.FormatError, match="t.npy: truncated"):
        qd.open_source(tmp_path / "t.npy")
    (tmp_path / "m.npy").write_bytes(b"NOTNUMPY" + data[8:])
    with pytest.raises(qd.FormatError, match="bad magic"):
        qd.open_source(tmp_path / "m.npy")
    (tmp_path / "h.npy").write_bytes(data[:10] + b"{'descr': garbage" + data[27:])
    with pytest.raises(qd.FormatError, match="corrupt .npy header"):
        qd.open_source(tmp_path / "h.npy")
    with pytest.raises(FileNotFoundError):
        qd.open_source(tmp_path / "missing.npy")


def write_st(path, tensors, metadata=None, align=True):
    """A safetensors writer of its own: 8-byte length, JSON, raw bytes."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    if align:
        h += b" " * (-(8 + len(h)) % 8)
    elif (8 + len(h)) % 2 == 0:
        h += b" "  # odd start: the data is misaligned on purpose
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_files(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5)).astype(F32)
    write_st(tmp_path / "one.safetensors", {"logits": ("F32", x)})
    src = qd.open_source(tmp_path / "one.safetensors")
    assert (src.format, src.n_rows, src.vocab, src.dtype, src.shape) == ("safetensors", 12, 5, "float32", (3, 4, 5))
    np.testing.assert_array_equal(src.sequence_starts, [0, 4, 8])
    np.testing.assert_array_equal(src.block(0, 12), x.reshape(12, 5))
    write_st(tmp_path / "many.safetensors", {"a": ("F16", x[0].astype(np.float16)),
                                             "b": ("BF16", x[1].astype(BF16).view(np.uint16))}, align=False)
    with pytest.raises(qd.InputError, match=r"2 tensors \(a, b\); choose one with tensor="):
        qd.open_source(tmp_path / "many.safetensors")
    with pytest.raises(qd.InputError, match="no tensor 'c'"):
        qd.open_source(tmp_path / "many.safetensors", tensor="c")
    a = qd.open_source(tmp_path / "many.safetensors", tensor="a")
    assert a.dtype == "float16"
    np.testing.assert_array_equal(a.block(0, 4), x[0].astype(np.float16))
    b = qd.open_source(tmp_path / "many.safetensors", tensor="b")
    assert b.dtype == "bfloat16"
    blk = b.block(1, 3)
    assert blk.flags.aligned and blk.flags.c_contiguous
    np.testing.assert_array_equal(blk, x[1].astype(BF16).view(np.uint16)[1:3])
    # errors
    good = (tmp_path / "one.safetensors").read_bytes()
    bad = {
        "trunc.safetensors": (good[:-4], "truncated: tensor 'logits' ends at byte"),
        "len.safetensors": (struct.pack("<Q", 10**6) + good[8:], "header length says 1000000"),
        "json.safetensors": (good[:8] + b"{not json" + good[17:], "corrupt safetensors header"),
        "tiny.safetensors": (b"\x01\x02", "truncated"),
    }
    for name, (data, message) in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(qd.FormatError, match=message):
            qd.open_source(tmp_path / name)
    write_st(tmp_path / "ints.safetensors", {"t": ("I32", np.zeros((2, 3), np.int32))})
    with pytest.raises(qd.DtypeError, match="I32"):
        qd.open_source(tmp_path / "ints.safetensors")


def test_unknown_format(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"hello world, not logits")
    with pytest.raises(qd.FormatError, match="x.bin: unknown format"):
        qd.open_source(tmp_path / "x.bin")


# ---------------------------------------------------------------------------
# Shards, check_pair
# ---------------------------------------------------------------------------


def test_shards_from_folders_globs_and_lists(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 6)).astype(F32)
    d = tmp_path / "shards"
    d.mkdir()
    for i, (a, b) in enumerate([(0, 3), (3, 4), (4, 10)]):
        np.save(d / f"part-{i:03d}.npy", x[a:b])
    (d / "README.txt").write_text("ignored")
    for obj in (d, str(d / "part-*.npy"), sorted(glob.glob(str(d / "*.npy")))):
        src = qd.open_source(obj)
        assert (src.format, src.n_rows, src.vocab) == ("shards", 10, 6)
        np.testing.assert_array_equal(src.block(0, 10), x)
        np.testing.assert_array_equal(src.block(2, 5), x[2:5])  # spans three shards
        np.testing.assert_array_equal(src.block(4, 7), x[4:7])  # within one
        assert src.block(5, 5).shape == (0, 6)
        src.prefetch(0, 10)
        src.close()
    np.save(d / "part-003.npy", rng.standard_normal((2, 7)).astype(F32))
    with pytest.raises(qd.InputError, match="part-003.npy has vocab 7 but the first shard .*part-000.npy has 6"):
        qd.open_source(d)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        qd.open_source(str(tmp_path / "nothing-*.npy"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no shards"):
        qd.open_source(tmp_path / "empty")


def test_llamacpp_shards_concatenate_tokens_and_sequences(tmp_path):
    a, b = _base(tmp_path, name="a.kld", seed=1), _base(tmp_path, name="b.kld", n_chunk=2, seed=2)
    sa, sb = qd.open_source(a), qd.open_source(b)
    both = qd.open_source(str(tmp_path / "*.kld"))
    assert both.layout == "llamacpp" and both.n_rows == sa.n_rows + sb.n_rows
    np.testing.assert_array_equal(both.tokens, np.concatenate([sa.tokens, sb.tokens]))
    np.testing.assert_array_equal(both.sequence_starts, [0, 7, 14, 21, 28])
    np.testing.assert_array_equal(both.block(19, 23), np.concatenate([sa.block(19, 21), sb.block(0, 2)]))


def test_check_pair_names_both_files(tmp_path):
    np.save(tmp_path / "base.npy", np.zeros((4, 5), F32))
    np.save(tmp_path / "other.npy", np.zeros((4, 6), F32))
    np.save(tmp_path / "short.npy", np.zeros((3, 5), F32))
    base = qd.open_source(tmp_path / "base.npy")
    with pytest.raises(qd.InputError, match="vocab mismatch.*base.npy has 5.*other.npy has 6"):
        qd.check_pair(base, qd.open_source(tmp_path / "other.npy"))
    with pytest.raises(qd.InputError, match="row-count mismatch.*base.npy has 4 rows.*short.npy has 3"):
        qd.check_pair(base, qd.open_source(tmp_path / "short.npy"))
    qd.check_pair(base, qd.open_source(np.zeros((4, 5), F32)))
    x, y = qd.open_source(_base(tmp_path, name="x.kld", seed=3)), qd.open_source(_base(tmp_path, name="y.kld", seed=4))
    with pytest.raises(qd.InputError, match="token mismatch.*x.kld.*y.kld"):
        qd.check_pair(x, y)


def test_check_pair_opens_arrays_and_paths(tmp_path):
    """What open_source opens, check_pair takes as it is."""
    np.save(tmp_path / "base.npy", np.zeros((4, 5), F32))
    qd.check_pair(tmp_path / "base.npy", np.ones((4, 5), F32))
    qd.check_pair(str(tmp_path / "base.npy"), qd.open_source(tmp_path / "base.npy"))
    with pytest.raises(qd.InputError, match="vocab mismatch.*base.npy has 5.*<array> has 6"):
        qd.check_pair(tmp_path / "base.npy", np.zeros((4, 6), F32))
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        qd.check_pair(tmp_path / "missing.npy", tmp_path / "base.npy")


# ---------------------------------------------------------------------------
# Top-k dumps and the error of their approximation
# ---------------------------------------------------------------------------


def test_topk_dump_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((3, 5, 40)) * 3).astype(F32)
    path = tmp_path / "top.safetensors"
    qd.write_topk(path, x, 4)
    src = qd.open_source(path)
    assert (src.format, src.layout, src.topk, src.vocab, src.n_rows, src.dtype) == ("topk", "topk", 4, 40, 15, "float32")
    np.testing.assert_array_equal(src.sequence_starts, [0, 5, 10])
    idx, lp, rest = src.block(0, 15)
    assert idx.dtype == np.int32 and lp.dtype == np.float32 and rest.dtype == np.float32
    exact = log_softmax64(x.reshape(15, 40))
    want = np.argsort(-exact, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(lp, np.take_along_axis(exact, want, axis=1), rtol=1e-6, atol=1e-6)
    mass = np.exp(np.take_along_axis(exact, want, axis=1)).sum(axis=1)
    np.testing.assert_allclose(rest, np.log1p(-mass), rtol=1e-5, atol=1e-6)
    # without rest, from a llama.cpp base file (tokens come along), k = vocab
    base = _base(tmp_path, vocab=10)
    qd.write_topk(tmp_path / "t2.safetensors", base, 10, rest=False)
    t2 = qd.open_source(tmp_path / "t2.safetensors")
    assert t2.block(0, 3)[2] is None
    np.testing.assert_array_equal(t2.tokens, qd.open_source(base).tokens)
    qd.write_topk(tmp_path / "t3.safetensors", base, 10)
    assert np.all(np.isneginf(qd.open_source(tmp_path / "t3.safetensors").block(0, 21)[2]))
    with pytest.raises(qd.InputError, match="k must be in"):
        qd.write_topk(tmp_path / "t4.safetensors", x, 41)
    # a corrupt dump
    write_st(tmp_path / "bad.safetensors", {"indices": ("I32", np.full((2, 2), 50, np.int32)),
                                            "logprobs": ("F32", np.zeros((2, 2), F32))},
             metadata={"format": "quantdrift.topk", "vocab": "40", "k": "2"})
    with pytest.raises(qd.FormatError, match=r"indices must lie in \[0, 40\)"):
        qd.open_source(tmp_path / "bad.safetensors")


def coarse_kl(base_logp, other_logp, k):
    """KL between the base and other distributions coarsened to the base's
    top-k tokens plus one bucket holding the rest of the mass."""
    idx = np.argsort(-base_logp, axis=1, kind="stable")[:, :k]
    p = np.exp(np.take_along_axis(base_logp, idx, axis=1))
    q = np.exp(np.take_along_axis(other_logp, idx, axis=1))
    p_rest, q_rest = np.clip(1 - p.sum(1), 0, None), np.clip(1 - q.sum(1), 1e-300, None)
    terms = (p * (np.log(p) - np.log(q))).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = np.where(p_rest > 0, p_rest * (np.log(p_rest) - np.log(q_rest)), 0.0)
    return terms + rest


def test_topk_approximation_is_a_lower_bound_whose_error_shrinks_with_k(tmp_path):
    rng = np.random.default_rng(7)
    rows, vocab = 256, 1000
    # peaked, LM-like rows: a few likely tokens and a long tail
    base = (rng.standard_normal((rows, vocab)) * 2.5 + rng.gumbel(size=(rows, vocab))).astype(F32)
    other = (base + rng.standard_normal((rows, vocab)).astype(F32) * 0.3).astype(F32)
    bl, ol = log_softmax64(base), log_softmax64(other)
    exact = (np.exp(bl) * (bl - ol)).sum(1)
    errors = {}
    previous = np.zeros(rows)
    for k in (1, 8, 64, 256, vocab):
        path = tmp_path / f"top{k}.safetensors"
        qd.write_topk(path, base, k)
        idx, lp, rest = qd.open_source(path).block(0, rows)
        # the coarsened KL from what the dump stores equals the one from exact log-probs
        p, p_rest = np.exp(lp.astype(np.float64)), np.exp(rest.astype(np.float64))
        q = np.exp(np.take_along_axis(ol, idx.astype(np.int64), axis=1))
        q_rest = np.clip(1 - q.sum(1), 1e-300, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            from_dump = (p * (lp - np.log(q))).sum(1) + np.where(p_rest > 0, p_rest * (rest - np.log(q_rest)), 0)
        approx = coarse_kl(bl, ol, k)
        np.testing.assert_allclose(from_dump, approx, rtol=1e-4, atol=1e-6)
        # data-processing inequality: coarsening never increases KL, and finer
        # (nested) coarsenings approach the exact value from below
        assert np.all(approx <= exact + 1e-12)
        assert np.all(approx >= previous - 1e-12)
        previous = approx
        errors[k] = 1 - approx.mean() / exact.mean()
    assert errors[vocab] == pytest.approx(0, abs=1e-9)
    # and compare on the k = vocab dump gives the full-vocabulary values, both
    # directions (no rest bucket that rounding could leave on one side only)
    r = qd.compare(str(tmp_path / f"top{vocab}.safetensors"), other, progress=False)
    np.testing.assert_allclose(r.kl, exact, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(r.reverse_kl, (np.exp(ol) * (ol - bl)).sum(1), rtol=1e-4, atol=1e-7)
    assert errors[1] > errors[8] > errors[64] > errors[256]
    # measured on these rows: k=64 keeps most of the divergence, k=1 little of it
    assert errors[64] < 0.8 and errors[1] > 0.5
    print("relative KL error of the top-k approximation:", {k: round(v, 4) for k, v in errors.items()})


# ---------------------------------------------------------------------------
# Writers to .npy / safetensors, and the command line
# ---------------------------------------------------------------------------


def test_npy_and_safetensors_writers_keep_shape_and_dtype(tmp_path):
    x = np.random.default_rng(8).standard_normal((2, 3, 5)).astype(F32)
    for dtype in (F32, np.float16, BF16):
        write_npy(tmp_path / "o.npy", x.astype(dtype))
        write_safetensors(tmp_path / "o.safetensors", x.astype(dtype))
        for name in ("o.npy", "o.safetensors"):
            src = qd.open_source(tmp_path / name)
            assert src.shape == (2, 3, 5)
            np.testing.assert_array_equal(src.block(0, 6), qd.open_source(x.astype(dtype)).block(0, 6))
    base = _base(tmp_path, vocab=10)
    write_safetensors(tmp_path / "dec.safetensors", base)
    dec = qd.open_source(tmp_path / "dec.safetensors")
    assert dec.values == "logprobs" and dec.dtype == "float32"
    src = qd.open_source(base)
    np.testing.assert_array_equal(dec.block(0, 21), _core.llamacpp_decode(src.block(0, 21), 10))
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "quantdrift", *args], capture_output=True, text=True)


def test_cli_info_and_convert(tmp_path):
    rng = np.random.default_rng(9)
    n_ctx, vocab = 16, 7
    logits = sample_logits(rng, 3 * n_ctx, vocab)
    tokens = rng.integers(0, vocab, 3 * n_ctx)
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "tokens.npy", tokens)
    out = cli("convert", str(tmp_path / "logits.npy"), str(tmp_path / "base.kld"), "--to", "llamacpp",
              "--n-ctx", str(n_ctx), "--tokens", str(tmp_path / "tokens.npy"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "base.kld").read_bytes() == ref_base_file(logits, tokens, n_ctx) or LIBM is None
    info = cli("info", str(tmp_path / "base.kld"))
    assert info.returncode == 0, info.stderr
    assert "llamacpp" in info.stdout and "n_ctx:" in info.stdout and "tokens:           21" in info.stdout
    out = cli("convert", str(tmp_path / "base.kld"), str(tmp_path / "top.safetensors"), "--to", "topk", "--k", "3")
    assert out.returncode == 0, out.stderr
    assert "k:" in cli("info", str(tmp_path / "top.safetensors")).stdout
    out = cli("convert", str(tmp_path / "base.kld"), str(tmp_path / "dec.npy"))
    assert out.returncode == 0 and qd.open_source(tmp_path / "dec.npy").shape == (21, vocab)
    # bad input: exit 2, one line
    (tmp_path / "bad.kld").write_bytes((tmp_path / "base.kld").read_bytes()[:-1])
    for args in (("info", str(tmp_path / "bad.kld")), ("info", str(tmp_path / "nope.npy")),
                 ("convert", str(tmp_path / "logits.npy"), str(tmp_path / "x.kld"), "--to", "llamacpp"),
                 ("convert", str(tmp_path / "logits.npy"), str(tmp_path / "x.weird"))):
        bad = cli(*args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def _raw_st(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_safetensors_headers_that_lie_about_metadata_shape_or_offsets(tmp_path):
    data = np.zeros((4, 5), np.float32).tobytes()
    good = {"dtype": "F32", "shape": [4, 5], "data_offsets": [0, 80]}
    cases = {
        "meta": ({"__metadata__": "oops", "logits": good}, "__metadata__ is 'oops'"),
        "metaint": ({"__metadata__": {"values": 1}, "logits": good}, "__metadata__ is"),
        # (-4)·(-5)·4 = 80 matches the span; the product must not hide the signs
        "neg": ({"logits": {**good, "shape": [-4, -5]}}, "shape [-4, -5]; dimensions must be non-negative"),
        # 2**40·2**40 wraps to 0 in int64, which an empty span would match
        "wrap": ({"logits": {**good, "shape": [2**40, 2**40], "data_offsets": [0, 0]}},
                 f"needs {2**80 * 4} bytes, its offsets span 0"),
        "negoff": ({"logits": {**good, "data_offsets": [-80, 0]}}, "invalid data_offsets [-80, 0]"),
    }
    for stem, (header, says) in cases.items():
        path = tmp_path / f"{stem}.safetensors"
        _raw_st(path, header, data)
        with pytest.raises(qd.FormatError) as e:
            qd.open_source(path)
        assert str(path) in str(e.value) and says in str(e.value)
        assert "truncated" not in str(e.value)


def test_big_endian_npy_and_folder_arguments_get_their_own_messages(tmp_path):
    np.save(tmp_path / "be.npy", np.zeros((2, 3), ">f4"))
    with pytest.raises(qd.DtypeError, match="big-endian data"):
        qd.open_source(tmp_path / "be.npy")
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="tokens file d: is a folder"):
        qd.sources.read_npy(tmp_path / "d", "tokens file d")


def test_topk_writer_refuses_bad_token_ids_and_rows_without_a_distribution(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    out = tmp_path / "k.safetensors"
    with pytest.raises(qd.DtypeError, match=r"integer token ids, got dtype float64 \(row 1 holds 1\.5\)"):
        qd.sources.write_topk(out, x, 2, tokens=np.array([0, 1.5, 2, 3, 4, 0]))
    with pytest.raises(qd.InputError, match=r"id 9 at row 2 is outside the vocabulary \[0, 5\)"):
        qd.sources.write_topk(out, x, 2, tokens=np.array([0, 1, 9, 3, 4, 0]))
    for row, bad, says in ((4, np.nan, "has NaN at index 3"), (3, np.inf, "has \\+inf at index 3"),
                           (2, -np.inf, "is -inf everywhere")):
        y = x.copy()
        if bad == -np.inf:
            y[row] = bad
        else:
            y[row, 3] = bad
        np.save(tmp_path / "y.npy", y)
        with pytest.raises(qd.InputError, match=f"y.npy: row {row} {says}"):
            qd.sources.write_topk(out, str(tmp_path / "y.npy"), 2)
    assert not out.exists()


def test_topk_dump_with_stored_ids_outside_the_vocabulary_fails_on_open(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    path = tmp_path / "k.safetensors"
    qd.sources.write_topk(path, x, 2, tokens=np.array([0, 1, 2]))
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    begin = json.loads(raw[8:8 + n])["tokens"]["data_offsets"][0]
    raw[8 + n + begin + 4: 8 + n + begin + 8] = struct.pack("<i", 7)  # row 1's id
    path.write_bytes(bytes(raw))
    with pytest.raises(qd.FormatError, match=r"k.safetensors: top-k tensor 'tokens': id 7 at row 1 is outside"):
        qd.open_source(path)


def test_base_writer_names_the_source_row_of_a_bad_logit(tmp_path):
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    x[36, 3] = np.nan  # chunk 3 (n_ctx 10): scored positions 5..8, so the kernel's row 1
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "x.kld"
    with pytest.raises(qd.InputError, match=r"x.npy: row 36 has NaN at index 3"):
        qd.sources.write_llamacpp_base(out, str(tmp_path / "x.npy"), np.zeros(40, np.int32), 10)
    assert not out.exists()
    with LlamacppBaseWriter(out, np.zeros(40, np.int32), 10, 6) as w:  # rows counted across calls
        w.write_chunk(x[:10])
        with pytest.raises(qd.InputError, match=r"scored row 5 has NaN at index 3"):
            w.write_rows(x[35:39])
    assert not out.exists()


# ---------------------------------------------------------------------------
# Progress bars of the writers
# ---------------------------------------------------------------------------


def test_writers_show_progress_on_request_and_write_the_same_bytes(tmp_path, capsys):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((2 * 16, 9)).astype(F32)
    tokens = rng.integers(0, 9, 2 * 16)
    writers = {
        "base.kld": lambda path, progress: qd.write_llamacpp_base(path, logits, tokens, n_ctx=16, progress=progress),
        "top.safetensors": lambda path, progress: qd.write_topk(path, logits, 4, progress=progress),
        "rows.npy": lambda path, progress: write_npy(path, logits, progress=progress),
        "rows.safetensors": lambda path, progress: write_safetensors(path, logits, progress=progress),
    }
    # the bar's label and total (tqdm scales it: 14 rows show as 14.0)
    bars = {"base.kld": ("write base file", "14.0"), "top.safetensors": ("write top-k", "32.0"),
            "rows.npy": ("write", "32.0"), "rows.safetensors": ("write", "32.0")}
    for name, write in writers.items():
        quiet, shown = tmp_path / f"quiet-{name}", tmp_path / f"shown-{name}"
        write(quiet, False)
        assert capsys.readouterr().err == ""
        write(shown, True)
        err = capsys.readouterr().err
        label, total = bars[name]
        assert err.startswith(f"\r{label}:") and f"/{total} " in err and "row/s" in err, (name, err)
        assert quiet.read_bytes() == shown.read_bytes(), name
        # the default shows a bar only where tqdm sees a terminal or a notebook
        write(tmp_path / f"default-{name}", None)
        assert capsys.readouterr().err == "", name
    qd.compare(logits, logits + 0.1, progress=True)  # progress=True is that default for compare
    assert capsys.readouterr().err == ""
