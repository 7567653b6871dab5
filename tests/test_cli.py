"""The quantdrift command: exit codes and the demo."""

from __future__ import annotations

import subprocess
import sys

import quantdrift as qd
from quantdrift.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "quantdrift", *args], capture_output=True, text=True)


def test_demo_runs_and_reports_every_scheme():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    for scheme in ("bfloat16", "float8_e4m3fn", "mxfp4", "nvfp4"):
        assert scheme in out.stdout
    assert "mean KL" in out.stdout


def test_version_and_usage_errors():
    out = run("--version")
    assert out.returncode == 0 and qd.__version__ in out.stdout
    assert run().returncode == 2  # no command: usage, exit 2
    bad = run("frobnicate")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_bad_input_is_exit_2_with_one_line(capsys, monkeypatch):
    def broken(args):
        raise qd.InputError("p row 3 contains NaN or +inf")

    import quantdrift.cli as cli

    monkeypatch.setattr(cli, "_demo", broken)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["quantdrift demo: error: p row 3 contains NaN or +inf"]
