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
