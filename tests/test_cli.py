"""The quantdrift command: exit codes and the demo."""

from __future__ import annotations

import subprocess
import sys
from xml.etree import ElementTree

import pytest

import quantdrift as qd
from quantdrift.cli import main


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "quantdrift", *args], capture_output=True, text=True, cwd=cwd)


def test_demo_quantizes_the_model_and_reports_every_scheme(tmp_path):
    out = run("demo", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in DEMO_SCHEMES:
            rows[parts[0]] = (float(parts[1]), float(parts[2]))  # bits/param, mean KL
    assert set(rows) == set(DEMO_SCHEMES), out.stdout
    assert "mean KL" in out.stdout and "PPL" in out.stdout
    # more bits, less drift: 16-bit < 8-bit < 4-bit < 2-bit
    assert rows["bfloat16"][1] < rows["int8"][1] < rows["int4:g32"][1] < rows["int2:g32:asym"][1]
    assert rows["float8_e4m3fn"][1] < rows["mxfp4"][1]
    assert rows["int4:g32"][0] == pytest.approx(4 + 32 / 32)  # a float32 scale per 32 weights
    svg = (tmp_path / "quantdrift-demo.svg").read_text()
    ElementTree.fromstring(svg)  # well-formed
    assert "int4:g32" in svg


DEMO_SCHEMES = ("bfloat16", "float8_e4m3fn", "int8", "mxfp8_e4m3", "int4:g32", "int4:g32:asym", "nvfp4",
                "mxfp4", "float4_e2m1fn", "int3:g32", "int2:g32:asym")


def test_version_and_usage_errors():
    out = run("--version")
    assert out.returncode == 0 and qd.__version__ in out.stdout
    assert run().returncode == 2  # no command: usage, exit 2
    bad = run("frobnicate")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_import_and_help_leave_ml_dtypes_unloaded():
    # ml_dtypes can take a second to import; only bfloat16/float8 work loads it
    code = ("import sys, quantdrift\n"
            "from quantdrift.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes was imported'\n"
            "import numpy as np\n"
            "q = quantdrift.quantize(np.ones((2, 4), np.float32), bits=8, partition=quantdrift.per_tensor())\n"
            "assert q.dequantize(dtype='bfloat16').dtype.name == 'bfloat16'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_bad_input_is_exit_2_with_one_line(capsys, monkeypatch):
    def broken(args):
        raise qd.InputError("p row 3 contains NaN or +inf")

    import quantdrift.cli as cli

    monkeypatch.setattr(cli, "_demo", broken)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["quantdrift demo: error: p row 3 contains NaN or +inf"]


def test_bad_tokens_file_and_missing_output_folder_name_the_users_paths(tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((6, 5), np.float32))
    np.save(tmp_path / "t.npy", np.zeros(6, np.int64))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-4])
    assert main(["convert", str(tmp_path / "x.npy"), str(tmp_path / "y.topk"), "--to", "topk", "--k", "2",
                 "--tokens", str(tmp_path / "cut.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tokens file" in err[0] and "cut.npy: truncated" in err[0]
    target = tmp_path / "missing" / "y.npy"
    assert main(["convert", str(tmp_path / "x.npy"), str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and ".tmp" not in err[0]


# --- bad input: exit 2, one line naming the file or flag, nothing written ----


def _fail(capsys, *argv):
    """Runs the command, expects exit 2, returns its one-line message."""
    assert main(list(map(str, argv))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _logits(tmp_path, rows=8, vocab=6):
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, vocab)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", a + 0.1 * rng.standard_normal((rows, vocab)).astype(np.float32))
    return tmp_path / "a.npy", tmp_path / "b.npy"


def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path, capsys):
    import json

    import numpy as np

    a, b = _logits(tmp_path)
    before = {p: p.read_bytes() for p in (a, b)}
    assert "DST" in _fail(capsys, "convert", a, a, "--to", "safetensors")
    for flag in ("--json", "--columns"):
        msg = _fail(capsys, "compare", a, b, "--no-progress", flag, b)
        assert f"{flag} {b} is the input" in msg
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "0.npy", np.load(a))
    msg = _fail(capsys, "compare", tmp_path / "shards", a, "--no-progress", "--json", tmp_path / "shards" / "0.npy")
    assert "0.npy is the input" in msg  # a shard of a folder counts
    assert "same file" in _fail(capsys, "compare", a, b, "--no-progress", "--json", tmp_path / "r",
                                "--columns", tmp_path / "r")
    np.save(tmp_path / "L.npy", np.arange(12.0).reshape(3, 4) - 50)
    before[tmp_path / "L.npy"] = (tmp_path / "L.npy").read_bytes()
    assert "--json" in _fail(capsys, "map", tmp_path / "L.npy", "--json", tmp_path / "L.npy")
    assert not (tmp_path / "r").exists()
    for p, raw in before.items():
        assert p.read_bytes() == raw, p
    # a checkpoint's index and the shards it names are inputs of quantize
    import struct

    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}).encode()
    (tmp_path / "s1.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(32))
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "s1.safetensors"}}))
    msg = _fail(capsys, "quantize", index, tmp_path / "q.safetensors", "--report", index)
    assert "--report" in msg and "inputs are never overwritten" in msg
    assert json.loads(index.read_text()) == {"weight_map": {"w": "s1.safetensors"}}
    assert not (tmp_path / "q.safetensors").exists()


def test_output_paths_are_checked_before_the_work(tmp_path, capsys):
    import json
    import struct

    a, b = _logits(tmp_path)
    msg = _fail(capsys, "compare", a, b, "--no-progress", "--json", tmp_path / "r.json", "--plot",
                tmp_path / "r.xyz")
    assert "--plot" in msg and "r.xyz" in msg and ".xyz" in msg
    assert not (tmp_path / "r.json").exists()
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(32))
    q = tmp_path / "q.safetensors"
    msg = _fail(capsys, "quantize", tmp_path / "m.safetensors", q, "--report", tmp_path / "nodir" / "r.json")
    assert "--report" in msg and "nodir" in msg and ".tmp" not in msg
    assert "must end in .json or .csv" in _fail(capsys, "quantize", tmp_path / "m.safetensors", q,
                                                "--report", tmp_path / "r.txt")
    assert not q.exists()
    (tmp_path / "d").mkdir()
    assert "is a folder" in _fail(capsys, "convert", a, str(tmp_path / "d") + "/", "--to", "npy")


def test_safetensors_metadata_that_is_not_an_object_is_bad_input(tmp_path, capsys):
    import json
    import struct

    a, _ = _logits(tmp_path, rows=2, vocab=4)
    header = json.dumps({"__metadata__": "oops",
                         "logits": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}}).encode()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + bytes(32))
    for argv in (("info", bad), ("compare", bad, a, "--no-progress"), ("convert", bad, tmp_path / "x.npy")):
        msg = _fail(capsys, *argv)
        assert f"{bad}: corrupt safetensors header: __metadata__ is 'oops'" in msg
    assert not (tmp_path / "x.npy").exists()


def test_demo_needs_more_characters_than_its_context(capsys):
    for chars in ("0", "32"):
        msg = _fail(capsys, "demo", "--chars", chars, "--schemes", "int8", "--no-plot")
        assert "chars must be at least 33" in msg


def test_map_names_a_matrix_or_names_file_it_cannot_read(tmp_path, capsys):
    import numpy as np

    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    np.save(tmp_path / "L.npy", np.arange(12.0).reshape(3, 4) - 50)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "L.npy").read_bytes()[:-7])
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    (tmp_path / "names.txt").write_bytes(b"\xff\xfe model")
    for name, says in (("empty.npy", "bad magic"), ("bad.pkl", "UnpicklingError"), ("cut.npy", "truncated"),
                       ("obj.npy", "pickled Python objects")):
        msg = _fail(capsys, "map", tmp_path / name)
        assert str(tmp_path / name) in msg and says in msg
    msg = _fail(capsys, "map", tmp_path / "L.npy", "--names", tmp_path / "names.txt")
    assert f"--names file {tmp_path / 'names.txt'}: not UTF-8" in msg
    assert "--nearest must be >= 0" in _fail(capsys, "map", tmp_path / "L.npy", "--nearest", "-1")


def test_convert_refuses_token_ids_and_rows_a_dump_cannot_hold(tmp_path, capsys):
    import numpy as np

    a, _ = _logits(tmp_path, rows=8, vocab=6)
    out = tmp_path / "k.safetensors"
    np.save(tmp_path / "float.npy", np.arange(8) + 0.5)
    np.save(tmp_path / "big.npy", np.array([0, 1, 2, 60, 4, 5, 0, 1]))
    msg = _fail(capsys, "convert", a, out, "--to", "topk", "--k", "2", "--tokens", tmp_path / "float.npy")
    assert "--tokens file" in msg and "float.npy" in msg and "row 0 holds 0.5" in msg
    msg = _fail(capsys, "convert", a, out, "--to", "topk", "--k", "2", "--tokens", tmp_path / "big.npy")
    assert "big.npy: id 60 at row 3 is outside the vocabulary [0, 6)" in msg
    x = np.load(a)
    x[6, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    msg = _fail(capsys, "convert", tmp_path / "nan.npy", out, "--to", "topk", "--k", "2")
    assert "nan.npy: row 6 has NaN at index 2" in msg
    # n_ctx 4 scores position 2 of each chunk: the file's row 6 is the writer's row 1 (its chunk's row 0)
    np.save(tmp_path / "ids.npy", np.zeros(8, np.int64))
    msg = _fail(capsys, "convert", tmp_path / "nan.npy", out, "--to", "llamacpp", "--n-ctx", "4",
                "--tokens", tmp_path / "ids.npy")
    assert "nan.npy: row 6 has NaN at index 2" in msg
    assert not out.exists()


def test_compare_refuses_tokens_that_contradict_the_stored_ones(tmp_path, capsys):
    import numpy as np

    a, b = _logits(tmp_path, rows=8, vocab=6)
    np.save(tmp_path / "ids.npy", np.arange(8) % 6)
    assert main(["convert", str(a), str(tmp_path / "a.kld"), "--to", "llamacpp", "--n-ctx", "4",
                 "--tokens", str(tmp_path / "ids.npy")]) == 0
    capsys.readouterr()
    scored = np.load(b)[[2, 6]]  # the scored positions of the two chunks
    np.save(tmp_path / "o.npy", scored)
    np.save(tmp_path / "same.npy", np.array([3, 1]))  # ids 3 and 7 % 6 follow positions 2 and 6
    np.save(tmp_path / "alt.npy", np.array([3, 2]))
    assert main(["compare", str(tmp_path / "a.kld"), str(tmp_path / "o.npy"), "--no-progress",
                 "--tokens", str(tmp_path / "same.npy")]) == 0
    capsys.readouterr()
    msg = _fail(capsys, "compare", tmp_path / "a.kld", tmp_path / "o.npy", "--no-progress",
                "--tokens", tmp_path / "alt.npy")
    assert "token mismatch: row 1" in msg and "alt.npy" in msg and "a.kld" in msg


def test_small_option_errors_name_the_option(tmp_path, capsys):
    import json
    import struct

    import numpy as np

    a, b = _logits(tmp_path, rows=8, vocab=6)
    assert "--topk" in _fail(capsys, "compare", a, b, "--no-progress", "--topk", "x")
    assert "--topk 500 exceeds the vocabulary of 6" in _fail(capsys, "compare", a, b, "--no-progress",
                                                             "--topk", "1,500")
    assert "--worst must be >= 0" in _fail(capsys, "compare", a, b, "--no-progress", "--worst", "-1")
    (tmp_path / "d").mkdir()
    assert "tokens file" in _fail(capsys, "compare", a, b, "--no-progress", "--tokens", tmp_path / "d")
    assert "is a folder" in _fail(capsys, "compare", a, b, "--no-progress", "--tokens", tmp_path / "d")
    np.save(tmp_path / "be.npy", np.load(a).astype(">f4"))
    assert "big-endian" in _fail(capsys, "info", tmp_path / "be.npy")
    raw = np.load(a).tobytes()
    t = {"dtype": "F32", "shape": [8, 6], "data_offsets": [0, len(raw)]}
    header = json.dumps({"x": t, "y": t}).encode()
    (tmp_path / "two.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + raw)
    assert _fail(capsys, "compare", tmp_path / "two.safetensors", b, "--no-progress").endswith(
        "choose one with --base-tensor")
    assert _fail(capsys, "compare", b, tmp_path / "two.safetensors", "--no-progress").endswith(
        "choose one with --other-tensor")
    assert _fail(capsys, "info", tmp_path / "two.safetensors").endswith("choose one with --tensor")
