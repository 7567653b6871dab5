"""Whole safetensors checkpoints (issue 4, acceptance 4).

The test writes its own checkpoints with a minimal safetensors writer and
reads results back with a minimal reader (both below, independent of
quantdrift), and compares quantize_file → dequantize_file with
quantdrift.fake_quantize (and the low-precision API for float schemes) of
the original tensors.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import quantdrift as qd
from quantdrift import checkpoint

ST = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3",
}
NP = {v: k for k, v in ST.items()}


def write_st(path, tensors, metadata=None):
    header, pos, blobs = {}, 0, []
    if metadata:
        header["__metadata__"] = metadata
    for k, v in tensors.items():
        b = np.ascontiguousarray(v).tobytes()
        header[k] = {"dtype": ST[v.dtype], "shape": list(v.shape), "data_offsets": [pos, pos + len(b)]}
        pos += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_st(path):
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for k, v in header.items():
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + b : 8 + n + e], dtype=NP.get(v["dtype"], np.uint8)).reshape(v["shape"])
    return out, meta


def model(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model.embed_tokens.weight": rng.normal(size=(50, 16)).astype(np.float32),
        "layers.0.mlp.up.weight": (rng.standard_t(4, size=(33, 300)) * 0.02).astype(ml_dtypes.bfloat16),
        "layers.0.attn.q.weight": (rng.normal(size=(40, 64)) * 0.02).astype(np.float16),
        "layers.0.attn.o.weight": (rng.normal(size=(24, 40)) * 0.02).astype(np.float32),
        "layers.0.conv.weight": (rng.normal(size=(6, 5, 7)) * 0.1).astype(np.float32),
        "layers.0.norm.weight": (1 + 0.1 * rng.normal(size=16)).astype(np.float32),
        "layers.0.mlp.up.bias": (rng.normal(size=33) * 0.01).astype(ml_dtypes.bfloat16),
        "step": np.arange(5),
    }


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # exercise the chunked paths (rows in multiples of 8) on small tensors
    monkeypatch.setattr(checkpoint, "CHUNK_ELEMENTS", 200)


def int_reference(x, bits, partition, symmetric=True, calibration="absmax"):
    qrange = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)
    return qd.fake_quantize(x, qrange=qrange, partition=partition, symmetric=symmetric, calibration=calibration)


@pytest.mark.parametrize(
    "scheme,reference",
    [
        ("int8", lambda x: int_reference(x, 8, qd.per_axis(0) if x.ndim >= 2 else qd.per_tensor())),
        ("int4:g128", lambda x: int_reference(x, 4, qd.groups(-1, 128))),
        ("int4:g64:asym:mse", lambda x: int_reference(x, 4, qd.groups(-1, 64), False, "mse")),
        ("int3:g32", lambda x: int_reference(x, 3, qd.groups(-1, 32))),
        ("int8:tensor:asym", lambda x: int_reference(x, 8, qd.per_tensor(), False)),
        ("int2:g16:percentile", lambda x: int_reference(x, 2, qd.groups(-1, 16), True, "percentile")),
    ],
)
def test_int_round_trip_equals_fake_quantize(tmp_path, scheme, reference):
    t = model()
    src, q, out = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "back.safetensors"
    write_st(src, t, metadata={"format": "pt"})
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    recipe = {"rules": [{"pattern": "*.bias", "scheme": scheme}], "default": scheme}
    rep = qd.quantize_file(src, q, recipe)
    qd.dequantize_file(q, out)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # input untouched
    back, meta = read_st(out)
    assert meta.get("format") == "pt"  # other metadata carried through
    assert set(back) == set(t)
    for name, x in t.items():
        y = back[name]
        assert y.dtype == x.dtype and y.shape == x.shape, name
        kept = name in ("model.embed_tokens.weight", "layers.0.norm.weight", "step")
        want = x if kept else reference(x)
        np.testing.assert_array_equal(y.view(np.uint8), np.ascontiguousarray(want).view(np.uint8), err_msg=name)
    # the metadata names each tensor's scheme and layout
    _, qmeta = read_st(q)
    layout = json.loads(qmeta["quantdrift"])
    assert layout["tensors"]["layers.0.mlp.up.weight"]["scheme"] == scheme
    assert layout["tensors"]["layers.0.mlp.up.bias"]["scheme"] == scheme
    assert layout["tensors"]["layers.0.norm.weight"]["scheme"] == "keep"
    up = layout["tensors"]["layers.0.mlp.up.weight"]
    assert up["dtype"] == "BF16" and up["shape"] == [33, 300] and up["kind"] == "int"
    stored, _ = read_st(q)
    assert stored[up["scale"]].shape == tuple(
        [33, 1] if up["partition"]["kind"] == "per_axis" else [1, 1] if up["partition"]["kind"] == "per_tensor"
        else [33, -(-300 // up["partition"]["size"][0])]
    )
    # report rows for every tensor
    assert [r["name"] for r in rep.rows] == list(t)
    row = {r["name"]: r for r in rep.rows}["layers.0.attn.o.weight"]
    x = t["layers.0.attn.o.weight"].astype(np.float64)
    y = back["layers.0.attn.o.weight"].astype(np.float64)
    assert row["mse"] == pytest.approx(np.mean((x - y) ** 2), rel=1e-9)
    assert row["cosine"] == pytest.approx(np.dot(x.ravel(), y.ravel()) / np.linalg.norm(x) / np.linalg.norm(y), rel=1e-9)
    assert row["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(x**2) / np.sum((x - y) ** 2)), rel=1e-9)


def lowp_reference(x, scheme):
    m = x.reshape(-1, x.shape[-1])
    if scheme == "mxfp4":
        c, s = qd.mx_encode(m, "fp4_e2m1")
        y = qd.mx_decode(c, s, "fp4_e2m1")
    elif scheme == "mxfp8_e4m3":
        c, s = qd.mx_encode(m, "fp8_e4m3")
        y = qd.mx_decode(c, s, "fp8_e4m3")
    elif scheme == "nvfp4":
        c, s, p = qd.nvfp4_encode(m, per_tensor_scale="auto")
        y = qd.nvfp4_decode(c, s, per_tensor_scale=p)
    elif scheme == "float8_e4m3fn":
        a = m.astype(np.float32)
        s = np.float32(np.abs(a).max() / 448)
        y = qd.round_to(a / s, "float8_e4m3fn") * s
    else:  # bfloat16 / float16 casts
        y = m.astype(np.float32).astype(ml_dtypes.bfloat16 if scheme == "bfloat16" else np.float16)
    return y.reshape(x.shape).astype(x.dtype)


@pytest.mark.parametrize("scheme", ["mxfp4", "mxfp8_e4m3", "nvfp4", "float8_e4m3fn", "bfloat16", "float16"])
def test_float_schemes_round_trip(tmp_path, scheme):
    t = model(1)
    src, q, out = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "back.safetensors"
    write_st(src, t)
    qd.quantize_file(src, q, scheme)
    qd.dequantize_file(q, out)
    back, _ = read_st(out)
    for name in ("layers.0.mlp.up.weight", "layers.0.attn.q.weight", "layers.0.conv.weight"):
        x = t[name]
        np.testing.assert_array_equal(back[name].view(np.uint8), lowp_reference(x, scheme).view(np.uint8),
                                      err_msg=name)
    stored, meta = read_st(q)
    layout = json.loads(meta["quantdrift"])["tensors"]
    assert layout["layers.0.mlp.up.weight"]["scheme"] == scheme
    if scheme == "mxfp4":
        assert stored["layers.0.mlp.up.weight"].shape == (33, 150)
        assert stored["layers.0.mlp.up.weight.__scale__"].shape == (33, 10)


def test_sharded_set(tmp_path):
    t = model(2)
    names = list(t)
    write_st(tmp_path / "model-00001-of-00002.safetensors", {k: t[k] for k in names[:4]})
    write_st(tmp_path / "model-00002-of-00002.safetensors", {k: t[k] for k in names[4:]})
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 if i < 4 else 2}-of-00002.safetensors"
                                            for i, k in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    single = tmp_path / "single.safetensors"
    write_st(single, t)
    qd.quantize_file(tmp_path / "model.safetensors.index.json", tmp_path / "q1.safetensors", "int4:g64")
    qd.quantize_file(single, tmp_path / "q2.safetensors", "int4:g64")
    a, _ = read_st(tmp_path / "q1.safetensors")
    b, _ = read_st(tmp_path / "q2.safetensors")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    qd.dequantize_file(tmp_path / "q1.safetensors", tmp_path / "back.safetensors")
    back, _ = read_st(tmp_path / "back.safetensors")
    x = t["layers.0.attn.q.weight"]
    np.testing.assert_array_equal(back["layers.0.attn.q.weight"], int_reference(x, 4, qd.groups(-1, 64)))


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    src, dst = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    write_st(src, model())
    real = checkpoint._encode_tensor
    calls = []

    def boom(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(checkpoint, "_encode_tensor", boom)
    with pytest.raises(KeyboardInterrupt):
        qd.quantize_file(src, dst)
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    # an existing destination survives a failed run unchanged
    dst.write_bytes(b"previous")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        qd.quantize_file(src, dst)
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "q.safetensors"]


def test_corrupt_and_truncated_inputs_name_the_tensor(tmp_path):
    src = tmp_path / "m.safetensors"
    t = model()
    write_st(src, t)
    raw = src.read_bytes()
    last = list(t)[-1]
    (tmp_path / "trunc.safetensors").write_bytes(raw[:-8])
    with pytest.raises(checkpoint.CheckpointError, match=f"'{last}'.*truncated"):
        qd.quantize_file(tmp_path / "trunc.safetensors", tmp_path / "q.safetensors")
    # a header entry whose byte range does not fit its shape
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header["layers.0.attn.q.weight"]["data_offsets"][1] -= 2
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n :])
    with pytest.raises(checkpoint.CheckpointError, match="layers.0.attn.q.weight"):
        qd.quantize_file(tmp_path / "bad.safetensors", tmp_path / "q.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(checkpoint.CheckpointError, match="JSON"):
        qd.quantize_file(tmp_path / "junk.safetensors", tmp_path / "q.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(checkpoint.CheckpointError):
        qd.quantize_file(tmp_path / "tiny.safetensors", tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()
    # a quantized file whose codes were cut off: the error names the tensor
    qd.quantize_file(src, tmp_path / "q.safetensors")
    qraw = (tmp_path / "q.safetensors").read_bytes()
    (tmp_path / "qtrunc.safetensors").write_bytes(qraw[:-16])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        qd.dequantize_file(tmp_path / "qtrunc.safetensors", tmp_path / "back.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match="quantdrift"):
        qd.dequantize_file(src, tmp_path / "back.safetensors")
    assert not (tmp_path / "back.safetensors").exists()
    with pytest.raises(qd.InputError, match="source"):
        qd.quantize_file(src, src)


def test_recipes(tmp_path):
    toml = tmp_path / "r.toml"
    toml.write_text(
        'default = "int8"\n'
        '[[rule]]\npattern = "*.attn.*"\nscheme = "int4:g32"\n'
        '[[rule]]\npattern = "re:^layers\\\\.0\\\\.attn\\\\.q"\nscheme = "keep"\n'  # later: never reached for q
        '[[rule]]\npattern = "re:conv"\nscheme = "mxfp4"\n'
    )
    r = qd.Recipe.load(toml)
    assert r.scheme_for("layers.0.attn.q.weight", (4, 4), "F32").text == "int4:g32"  # first match wins
    assert r.scheme_for("layers.0.conv.weight", (4, 4, 4), "F32").text == "mxfp4"
    assert r.scheme_for("layers.0.mlp.weight", (4, 4), "BF16").text == "int8"
    assert r.scheme_for("model.embed_tokens.weight", (4, 4), "F32").kind == "keep"
    assert r.scheme_for("layers.0.norm.weight", (4,), "F32").kind == "keep"
    assert r.scheme_for("layers.0.attn.q.weight", (4, 4), "I64").kind == "keep"
    js = tmp_path / "r.json"
    js.write_text(json.dumps({"rules": {"*.attn.*": "int4:g32", "re:conv": "mxfp4"}, "default": "nvfp4"}))
    rj = qd.Recipe.load(js)
    assert rj.rules == [("*.attn.*", "int4:g32"), ("re:conv", "mxfp4")] and rj.default == "nvfp4"
    for bad in ({"rules": [{"pattern": "*"}]}, {"rules": [{"pattern": "*", "scheme": "int99"}]}, {"colour": 1},
                {"rules": [{"pattern": "re:(", "scheme": "int8"}]}):
        with pytest.raises(qd.InputError):
            qd.Recipe.from_dict(bad)
    for text in ("int4:g128", "int4:g64:asym:mse", "int8", "float8_e4m3fn", "mxfp4", "nvfp4", "bfloat16", "keep"):
        checkpoint.parse_scheme(text)
    with pytest.raises(qd.InputError, match="unknown"):
        checkpoint.parse_scheme("int4:g128:bogus")
    # the default recipe: 1-D tensors and embeddings kept, int8 elsewhere
    src = tmp_path / "m.safetensors"
    write_st(src, model())
    rep = qd.quantize_file(src, tmp_path / "q.safetensors", report=tmp_path / "rep.json")
    schemes = {row["name"]: row["scheme"] for row in rep.rows}
    assert schemes["model.embed_tokens.weight"] == "keep" and schemes["layers.0.norm.weight"] == "keep"
    assert schemes["layers.0.mlp.up.bias"] == "keep" and schemes["layers.0.mlp.up.weight"] == "int8"
    data = json.loads((tmp_path / "rep.json").read_text())
    assert data["totals"]["bytes_out"] < data["totals"]["bytes_in"]
    assert data["totals"]["compression"] == pytest.approx(data["totals"]["bytes_in"] / data["totals"]["bytes_out"])
    qd.quantize_file(src, tmp_path / "q2.safetensors", toml, report=tmp_path / "rep.csv")
    lines = (tmp_path / "rep.csv").read_text().splitlines()
    assert lines[0].startswith("name,scheme,shape") and len(lines) == 1 + len(model())
    assert "tensors" in rep.to_table()


def test_cli(tmp_path):
    src = tmp_path / "m.safetensors"
    write_st(src, model())

    def run(*args):
        return subprocess.run([sys.executable, "-m", "quantdrift", *map(str, args)], capture_output=True, text=True)

    r = run("quantize", src, tmp_path / "q.safetensors", "--recipe", "int4:g128", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "bits/param" in r.stdout and (tmp_path / "r.json").exists()
    r = run("dequantize", tmp_path / "q.safetensors", tmp_path / "back.safetensors")
    assert r.returncode == 0, r.stderr
    r = run("quantize", src, tmp_path / "x.safetensors", "--recipe", "int4:nope")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown option" in r.stderr
    r = run("quantize", tmp_path / "missing.safetensors", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "missing.safetensors" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()
