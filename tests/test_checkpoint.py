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


def test_float4_codes_are_packed_two_per_byte(tmp_path):
    t = model(3)
    src, q, out = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "back.safetensors"
    write_st(src, t)
    rep = qd.quantize_file(src, q, "float4_e2m1fn")
    qd.dequantize_file(q, out)
    back, _ = read_st(out)
    stored, meta = read_st(q)
    layout = json.loads(meta["quantdrift"])
    assert layout["version"] == 2
    for name, packed_shape in (("layers.0.mlp.up.weight", (33, 150)), ("layers.0.conv.weight", (6, 5, 4))):
        x = t[name]
        assert stored[name].shape == packed_shape and stored[name].dtype == np.uint8
        assert layout["tensors"][name]["packed"] is True
        m = x.reshape(-1, x.shape[-1]).astype(np.float32)
        s = np.float32(np.abs(m).max() / 6)
        want = (qd.round_to(m / s, "float4_e2m1fn") * s).reshape(x.shape).astype(x.dtype)
        np.testing.assert_array_equal(back[name].view(np.uint8), want.view(np.uint8), err_msg=name)
        # low nibble first, as lowp.encode(packed=True)
        np.testing.assert_array_equal(stored[name], qd.encode(m / s, "float4_e2m1fn", packed=True).reshape(packed_shape))
    row = next(r for r in rep.rows if r["name"] == "layers.0.mlp.up.weight")
    assert row["bits_per_param"] < 4.01

    # A layout-1 file (one code per byte, no "packed") still reads.
    v1 = dict(stored)
    for name, m in layout["tensors"].items():
        if m.get("packed") and m["kind"] == "float":
            c = stored[name]
            cols = m["shape"][-1]
            v1[name] = np.stack([c & 15, c >> 4], axis=-1).reshape(c.shape[:-1] + (-1,))[..., :cols].astype(np.uint8)
            del m["packed"], m["axis"]
    layout["version"] = 1
    write_st(tmp_path / "v1.safetensors", v1, {**meta, "quantdrift": json.dumps(layout)})
    qd.dequantize_file(tmp_path / "v1.safetensors", tmp_path / "back1.safetensors")
    assert (tmp_path / "back1.safetensors").read_bytes() == out.read_bytes()


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
    # --no-progress changes nothing but the terminal
    r = run("quantize", src, tmp_path / "q2.safetensors", "--recipe", "int4:g128", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "q2.safetensors").read_bytes() == (tmp_path / "q.safetensors").read_bytes()
    r = run("dequantize", tmp_path / "q.safetensors", tmp_path / "back2.safetensors", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back2.safetensors").read_bytes() == (tmp_path / "back.safetensors").read_bytes()
    r = run("quantize", src, tmp_path / "x.safetensors", "--recipe", "int4:nope")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown option" in r.stderr
    r = run("quantize", tmp_path / "missing.safetensors", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "missing.safetensors" in r.stderr
    assert not (tmp_path / "x.safetensors").exists()


# ---------------------------------------------------------------------------
# Regressions: overwriting shards, alignment, empty and tiny tensors,
# malformed headers, float64 scales
# ---------------------------------------------------------------------------

ST[np.dtype(np.float64)] = "F64"
NP["F64"] = np.dtype(np.float64)


def write_raw(path, header, data, odd=False):
    """A safetensors file from a header dict and the data bytes as given;
    ``odd`` pads the header to an odd length (the format allows any), so
    that the data starts at an odd file offset."""
    h = json.dumps(header).encode()
    if odd:
        h += b" " * (1 - len(h) % 2)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + data)


def reheader(src, dst):
    """src's tensors and metadata in a new file whose header has an odd length."""
    raw = Path(src).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    write_raw(dst, json.loads(raw[8 : 8 + n]), raw[8 + n :], odd=True)


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_destination_may_not_be_a_shard_of_the_source(tmp_path):
    t = model(3)
    names = list(t)
    shard = {k: f"s{1 if i < 4 else 2}.safetensors" for i, k in enumerate(names)}
    write_st(tmp_path / "s1.safetensors", {k: t[k] for k in names[:4]})
    write_st(tmp_path / "s2.safetensors", {k: t[k] for k in names[4:]})
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": shard}))
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "s2.safetensors")
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    for dst in ("s1.safetensors", "s2.safetensors", "link.safetensors"):
        with pytest.raises(qd.InputError, match=f"destination .*{dst}.*shard.*never overwritten"):
            qd.quantize_file(index, tmp_path / dst, "int4:g32")
    with pytest.raises(qd.InputError, match="is the source; inputs are never overwritten"):
        qd.quantize_file(index, index, "int4:g32")
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before  # nothing written, no temporary left
    # dequantize_file takes an index too: the same rule
    qd.quantize_file(index, tmp_path / "q.safetensors", "int4:g32")
    qindex = tmp_path / "q.safetensors.index.json"
    qindex.write_text(json.dumps({"weight_map": {k: "q.safetensors" for k in read_st(tmp_path / "q.safetensors")[0]}}))
    q_before = sha(tmp_path / "q.safetensors")
    with pytest.raises(qd.InputError, match="shard.*never overwritten"):
        qd.dequantize_file(qindex, tmp_path / "q.safetensors")
    assert sha(tmp_path / "q.safetensors") == q_before
    qd.dequantize_file(qindex, tmp_path / "back.safetensors")
    back, _ = read_st(tmp_path / "back.safetensors")
    x = t["layers.0.attn.q.weight"]
    np.testing.assert_array_equal(back["layers.0.attn.q.weight"], int_reference(x, 4, qd.groups(-1, 32)))


@pytest.mark.parametrize("scheme", ["int8", "int4:g16:asym", "int3:g8", "float8_e4m3fn", "mxfp4", "nvfp4",
                                    "bfloat16", "keep"])
def test_misaligned_tensors_round_trip(tmp_path, scheme):
    rng = np.random.default_rng(4)
    t = {
        "a.weight": rng.normal(size=(3, 7)).astype(np.float16),  # 42 bytes: the next tensor starts at 2 mod 4
        "b.weight": rng.normal(size=(5, 40)).astype(np.float32),
        "c.weight": (rng.normal(size=(4, 33)) * 0.1).astype(ml_dtypes.bfloat16),
        "d.weight": rng.normal(size=(6, 9)).astype(np.float64),
        "e": np.arange(2, dtype=np.int8),
        "f.weight": rng.normal(size=(2, 48)).astype(np.float32),
    }
    padded, src = tmp_path / "padded.safetensors", tmp_path / "m.safetensors"
    write_st(padded, t)  # the header padded to 8, but b and d start off their itemsize
    reheader(padded, src)  # an odd header length: a, c and f too
    raw = src.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    for name, info in json.loads(raw[8 : 8 + n]).items():
        assert (8 + n + info["data_offsets"][0]) % t[name].itemsize != 0 or name == "e", name
    recipe = {"rules": [{"pattern": "*.weight", "scheme": scheme}]}
    q, qodd, out = tmp_path / "q.safetensors", tmp_path / "qodd.safetensors", tmp_path / "back.safetensors"
    qd.quantize_file(src, q, recipe)
    qd.quantize_file(padded, tmp_path / "q_padded.safetensors", recipe)
    assert q.read_bytes() == (tmp_path / "q_padded.safetensors").read_bytes()
    # the quantized file with an odd header length restores the same tensors
    reheader(q, qodd)
    qd.dequantize_file(qodd, out)
    back, _ = read_st(out)
    for name, x in t.items():
        want = x if name == "e" else checkpoint.fake_quantize_tensor(x, scheme)
        assert back[name].dtype == x.dtype and back[name].shape == x.shape, name
        np.testing.assert_array_equal(back[name].view(np.uint8), want.view(np.uint8), err_msg=name)


EMPTY_SCHEMES = [None, "int8", "int8:tensor", "int8:channel", "int4:g4", "int4:g4:asym", "int8:tensor:asym",
                 "uint4:channel:asym", "float8_e4m3fn", "mxfp4", "mxint8", "nvfp4", "bfloat16", "keep"]


@pytest.mark.parametrize("scheme", EMPTY_SCHEMES)
def test_zero_size_tensors_round_trip(tmp_path, scheme):
    rng = np.random.default_rng(5)
    t = {
        "a.weight": np.zeros((3, 0), np.float32),
        "b.weight": np.zeros((0, 3), np.float32),
        "c.weight": np.zeros((2, 0, 5), np.float16),
        "d.weight": np.zeros((0,), ml_dtypes.bfloat16),
        "w.weight": rng.normal(size=(4, 40)).astype(np.float32),
    }
    src, q, out = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "back.safetensors"
    write_st(src, t)
    recipe = None if scheme is None else {"rules": [{"pattern": "*", "scheme": scheme}]}
    rep = qd.quantize_file(src, q, recipe)
    qd.dequantize_file(q, out)
    back, _ = read_st(out)
    assert set(back) == set(t)
    for name, x in t.items():
        assert back[name].dtype == x.dtype and back[name].shape == x.shape, name
    used = "int8" if scheme is None else scheme
    np.testing.assert_array_equal(back["w.weight"], checkpoint.fake_quantize_tensor(t["w.weight"], used))
    for name, x in t.items():
        assert checkpoint.fake_quantize_tensor(x, used).shape == x.shape
    assert [r["name"] for r in rep.rows] == list(t)
    # side tensors that have elements hold what an all-zero tensor calibrates to
    stored, meta = read_st(q)
    layout = json.loads(meta["quantdrift"])["tensors"]
    for name, x in t.items():
        if name == "w.weight":
            continue
        m = layout[name]
        assert stored[m["codes"]].size == 0, name
        for key in ("scale", "tensor_scale"):
            if key in m and stored[m[key]].size:
                assert stored[m[key]].dtype == np.float32 and np.all(stored[m[key]] == 1.0), (name, key)
        if "zero_point" in m:
            zp = stored[m["zero_point"]]
            assert np.all((m["qmin"] <= zp) & (zp <= m["qmax"])), name


TINY = np.float32(2.0**-149)  # the smallest positive float32


@pytest.mark.parametrize(
    "x,scale,want",
    [
        # float32(1e-43) = 71·2^-149: 71/448 of 2^-149 underflows float32, so s = 2^-149;
        # x/s = 71, 0, -36, 7 round in float8_e4m3fn to 72, 0, -36, 7
        ([[1e-43, 0, -5e-44, 1e-44]], TINY, [[72, 0, -36, 7]]),
        # 492/448 of 2^-149 rounds down to 2^-149, where 492 > 448 (NaN in e4m3fn):
        # s = 2·2^-149, x/s = 246 rounds to 240
        ([[492 * 2.0**-149, 0]], 2 * TINY, [[480, 0]]),
        ([[0.0, 0.0, -0.0], [0.0, 0.0, 0.0]], np.float32(1), [[0, 0, 0], [0, 0, 0]]),
    ],
)
def test_float_scheme_on_tiny_values(tmp_path, x, scale, want):
    x = np.array(x, np.float32)
    src, q, out = tmp_path / "m.safetensors", tmp_path / "q.safetensors", tmp_path / "back.safetensors"
    write_st(src, {"w": x})
    qd.quantize_file(src, q, "float8_e4m3fn")
    qd.dequantize_file(q, out)
    stored, meta = read_st(q)
    assert stored["w.__scale__"] == scale
    y = read_st(out)[0]["w"]
    assert not np.any(np.isnan(y))
    np.testing.assert_array_equal(y, np.array(want, np.float64) * TINY)
    np.testing.assert_array_equal(y, checkpoint.fake_quantize_tensor(x, "float8_e4m3fn"))


def malformed(tmp_path, mutate, name="m.safetensors"):
    """A valid two-tensor file whose header `mutate` edits in place."""
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(6, dtype=np.float32) * 0.5
    header = {"a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b.weight": {"dtype": "F32", "shape": [6], "data_offsets": [24, 48]}}
    mutate(header)
    write_raw(tmp_path / name, header, a.tobytes() + b.tobytes())
    return tmp_path / name


def _set(key, field, value):
    def mutate(h):
        h[key][field] = value
    return mutate


@pytest.mark.parametrize(
    "mutate,match",
    [
        pytest.param(_set("a.weight", "data_offsets", [0.0, 24.0]), "'a.weight'.*data_offsets", id="float-offsets"),
        pytest.param(_set("a.weight", "data_offsets", "ab"), "'a.weight'.*data_offsets", id="string-offsets"),
        pytest.param(_set("a.weight", "data_offsets", {"x": 0, "y": 24}), "'a.weight'.*data_offsets",
                     id="object-offsets"),
        pytest.param(_set("a.weight", "data_offsets", [0, 24, 48]), "'a.weight'.*data_offsets", id="three-offsets"),
        pytest.param(_set("a.weight", "data_offsets", [True, 25]), "'a.weight'.*data_offsets", id="bool-offset"),
        pytest.param(_set("a.weight", "shape", [-2, -3]), "'a.weight'.*shape", id="negative-shape"),
        pytest.param(_set("a.weight", "shape", [2.7, 3]), "'a.weight'.*shape", id="fractional-shape"),
        pytest.param(_set("a.weight", "shape", [2.0, 3]), "'a.weight'.*shape", id="float-shape"),
        pytest.param(_set("b.weight", "shape", [True, 6]), "'b.weight'.*shape", id="bool-shape"),
        pytest.param(_set("b.weight", "shape", 6), "'b.weight'.*shape", id="scalar-shape"),
        pytest.param(_set("a.weight", "dtype", ["F32"]), "'a.weight'.*dtype", id="list-dtype"),
        pytest.param(_set("a.weight", "dtype", 4), "'a.weight'.*dtype", id="number-dtype"),
        pytest.param(lambda h: h.update({"c.weight": [1, 2]}), "'c.weight'", id="list-entry"),
        pytest.param(lambda h: h.update({"__metadata__": ["format", "pt"]}), "__metadata__", id="list-metadata"),
        pytest.param(lambda h: h.update({"__metadata__": "pt"}), "__metadata__", id="string-metadata"),
        pytest.param(lambda h: h.update({"__metadata__": {"format": 1}}), r"__metadata__\['format'\]",
                     id="number-metadata-value"),
        pytest.param(lambda h: h.update({"__metadata__": {"format": {"x": "y"}}}), r"__metadata__\['format'\]",
                     id="object-metadata-value"),
        pytest.param(_set("b.weight", "data_offsets", [8, 32]), "'b.weight'.*overlaps.*'a.weight'", id="overlap"),
        pytest.param(lambda h: h.update({"c.weight": {"dtype": "F16", "shape": [4], "data_offsets": [40, 48]}}),
                     "'c.weight'.*overlaps.*'b.weight'", id="overlap-inside"),
    ],
)
def test_malformed_headers_raise_checkpoint_error(tmp_path, mutate, match):
    src = malformed(tmp_path, mutate)
    for run in (lambda: qd.quantize_file(src, tmp_path / "q.safetensors", "int8"),
                lambda: qd.dequantize_file(src, tmp_path / "q.safetensors")):
        with pytest.raises(checkpoint.CheckpointError, match=match) as e:
            run()
        assert "m.safetensors" in str(e.value)
        assert isinstance(e.value, qd.InputError) and isinstance(e.value, ValueError)
    assert not (tmp_path / "q.safetensors").exists()


def test_gaps_and_empty_tensors_between_others_are_tolerated(tmp_path):
    def mutate(h):
        h["b.weight"]["data_offsets"] = [28, 52]  # 4 unused bytes before b
        h["e"] = {"dtype": "F32", "shape": [0, 2], "data_offsets": [8, 8]}  # owns no bytes
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(6, dtype=np.float32) * 0.5
    header = {"a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b.weight": {"dtype": "F32", "shape": [6], "data_offsets": [24, 48]}}
    mutate(header)
    write_raw(tmp_path / "m.safetensors", header, a.tobytes() + b"gap!" + b.tobytes())
    qd.quantize_file(tmp_path / "m.safetensors", tmp_path / "q.safetensors", "keep")
    qd.dequantize_file(tmp_path / "q.safetensors", tmp_path / "back.safetensors")
    back, _ = read_st(tmp_path / "back.safetensors")
    np.testing.assert_array_equal(back["a.weight"], a)
    np.testing.assert_array_equal(back["b.weight"], b)
    assert back["e"].shape == (0, 2)


MISSING_SHARD = {"weight_map": {"a.weight": "m.safetensors", "b.weight": "gone.safetensors",
                                 "c.weight": "gone.safetensors"}}


@pytest.mark.parametrize(
    "index,match",
    [
        pytest.param({"weight_map": [["a.weight", "m.safetensors"]]}, "weight_map", id="list-weight-map"),
        pytest.param({"weight_map": {"a.weight": 3}}, r"weight_map\['a.weight'\]", id="number-shard"),
        pytest.param({"weight_map": {"a.weight": None}}, r"weight_map\['a.weight'\]", id="null-shard"),
        pytest.param({"weight_map": {"a.weight": ""}}, r"weight_map\['a.weight'\]", id="empty-shard"),
        pytest.param({"metadata": {}}, "weight_map", id="no-weight-map"),
        pytest.param([1, 2], "weight_map", id="list-index"),
        pytest.param(MISSING_SHARD,
                     r"m.safetensors.index.json: shard 'gone.safetensors' .*'b.weight'.*does not exist",
                     id="missing-shard"),
    ],
)
def test_malformed_indexes_raise_checkpoint_error(tmp_path, index, match):
    malformed(tmp_path, lambda h: None)
    src = tmp_path / "m.safetensors.index.json"
    src.write_text(json.dumps(index))
    for run in (lambda: qd.quantize_file(src, tmp_path / "q.safetensors", "int8"),
                lambda: qd.dequantize_file(src, tmp_path / "q.safetensors")):
        with pytest.raises(checkpoint.CheckpointError, match=match) as e:
            run()
        assert "m.safetensors.index.json" in str(e.value)
    assert not (tmp_path / "q.safetensors").exists()


def test_cli_reports_a_missing_shard_as_an_input_error(tmp_path):
    malformed(tmp_path, lambda h: None)
    src = tmp_path / "m.safetensors.index.json"
    src.write_text(json.dumps(MISSING_SHARD))
    r = subprocess.run([sys.executable, "-m", "quantdrift", "quantize", str(src), str(tmp_path / "q.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "index.json" in r.stderr and "gone.safetensors" in r.stderr and "b.weight" in r.stderr


@pytest.mark.parametrize(
    "layout,match",
    [
        ("[]", "quantdrift metadata"),
        ('{"version": 1, "tensors": []}', "quantdrift metadata"),
        ('{"version": 1, "tensors": {"a.weight": 3}}', "'a.weight'"),
        ('{"version": 1, "tensors": {"a.weight": {"kind": "keep", "codes": "a.weight", "dtype": "F32", '
         '"shape": [2.5, 3]}}}', "'a.weight'.*shape"),
        ('{"version": 1, "tensors": {"a.weight": {"kind": "keep", "codes": "a.weight", "dtype": "X", '
         '"shape": [2, 3]}}}', "'a.weight'.*dtype"),
        ('{"version": 1, "tensors": {"a.weight": {"kind": "keep", "codes": "a.weight", "dtype": "F32"}}}',
         "'a.weight'.*lacks 'shape'"),
    ],
)
def test_malformed_quantdrift_metadata(tmp_path, layout, match):
    src = malformed(tmp_path, lambda h: h.update({"__metadata__": {"quantdrift": layout}}))
    with pytest.raises(checkpoint.CheckpointError, match=match) as e:
        qd.dequantize_file(src, tmp_path / "back.safetensors")
    assert "m.safetensors" in str(e.value)


def test_float64_round_trip_equals_fake_quantize_tensor(tmp_path):
    rng = np.random.default_rng(6)
    t = {
        "a.weight": rng.normal(size=(20, 70)) * 0.03,
        "b.weight": rng.standard_t(3, size=(3, 5, 40)),
        "c.weight": rng.normal(size=50) * 1e-3,
    }
    src = tmp_path / "m.safetensors"
    write_st(src, t)
    for scheme in ("int8", "int4:g16:asym", "int8:tensor", "int3:g32:mse", "uint8:channel:asym:percentile"):
        qd.quantize_file(src, tmp_path / "q.safetensors", {"rules": [{"pattern": "*", "scheme": scheme}]})
        qd.dequantize_file(tmp_path / "q.safetensors", tmp_path / "back.safetensors")
        back, _ = read_st(tmp_path / "back.safetensors")
        for name, x in t.items():
            assert back[name].dtype == np.float64
            np.testing.assert_array_equal(back[name], checkpoint.fake_quantize_tensor(x, scheme),
                                          err_msg=f"{scheme} {name}")
    # an oracle for int8 per channel: float32 scales max|row|/127, codes
    # rint(x/s) in float64, products rounded to float32
    x = t["a.weight"]
    s = (np.abs(x).max(axis=1, keepdims=True) / 127).astype(np.float32).astype(np.float64)
    want = (np.clip(np.rint(x / s), -128, 127) * s).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(checkpoint.fake_quantize_tensor(x, "int8"), want)


def test_outputs_and_reports_get_the_umask_permissions(tmp_path):
    import os

    src = tmp_path / "m.safetensors"
    write_st(src, {"w": np.ones((8, 16), np.float32)})
    old = os.umask(0o022)
    try:
        qd.quantize_file(src, tmp_path / "q.safetensors", "int8", report=tmp_path / "r.csv", progress=False)
        qd.dequantize_file(tmp_path / "q.safetensors", tmp_path / "back.safetensors", progress=False)
    finally:
        os.umask(old)
    for name in ("q.safetensors", "r.csv", "back.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_a_bad_report_path_fails_before_the_output_is_written(tmp_path):
    src = tmp_path / "m.safetensors"
    write_st(src, {"w": np.ones((8, 16), np.float32)})
    dst = tmp_path / "q.safetensors"
    with pytest.raises(FileNotFoundError, match="nodir") as e:
        qd.quantize_file(src, dst, "int8", report=tmp_path / "nodir" / "r.json", progress=False)
    assert ".tmp" not in str(e.value)
    with pytest.raises(qd.InputError, match=r"r.txt must end in .json or .csv"):
        qd.quantize_file(src, dst, "int8", report=tmp_path / "r.txt", progress=False)
    assert not dst.exists()
    # the report may not replace an input: the index, a shard it names, or the output
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "m.safetensors"}}))
    index_text = (tmp_path / "m.safetensors.index.json").read_text()
    (tmp_path / "link.json").symlink_to(src)  # links to an input count
    for report in (tmp_path / "m.safetensors.index.json", tmp_path / "link.json"):
        with pytest.raises(qd.InputError, match="inputs are never overwritten"):
            qd.quantize_file(tmp_path / "m.safetensors.index.json", dst, "int8", report=report, progress=False)
    assert (tmp_path / "m.safetensors.index.json").read_text() == index_text and not dst.exists()
    assert read_st(src)[0]["w"].shape == (8, 16)
