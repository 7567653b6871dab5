"""quantize_file / dequantize_file with device="gpu": the files are the CPU's,
byte for byte, for every kind of scheme (chunked as in the CPU tests)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import quantdrift as qd

from test_checkpoint import model, small_chunks, write_st  # noqa: F401  (fixture re-used)

SCHEMES = ["int8", "int4:g128", "int3:g32:asym", "int8:tensor:asym", "int4:g64:mse",
           "float8_e4m3fn", "bfloat16", "mxfp4", "mxfp8_e4m3", "nvfp4"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_files_equal_the_cpu_files(gpu, tmp_path, scheme):
    src = tmp_path / "m.safetensors"
    write_st(src, model(2))
    outs = {}
    for device in ("cpu", "gpu"):
        q, back = tmp_path / f"q-{device}.safetensors", tmp_path / f"back-{device}.safetensors"
        rep = qd.quantize_file(src, q, scheme, device=device)
        qd.dequantize_file(q, back, device=device)
        outs[device] = (q.read_bytes(), back.read_bytes(), rep.to_table())
    assert outs["gpu"][0] == outs["cpu"][0], "quantized file differs"
    assert outs["gpu"][1] == outs["cpu"][1], "dequantized file differs"
    assert outs["gpu"][2] == outs["cpu"][2], "report differs"


def test_bad_device_fails_before_any_file(tmp_path):
    src = tmp_path / "m.safetensors"
    write_st(src, model())
    with pytest.raises(qd.InputError, match="device must be"):
        qd.quantize_file(src, tmp_path / "q.safetensors", "int8", device="tpu")
    with pytest.raises(qd.InputError, match="device must be"):
        qd.dequantize_file(src, tmp_path / "back.safetensors", device="tpu")
    assert not (tmp_path / "q.safetensors").exists() and not (tmp_path / "back.safetensors").exists()


def test_cli_device(gpu, tmp_path):
    src = tmp_path / "m.safetensors"
    write_st(src, model())

    def run(*args):
        return subprocess.run([sys.executable, "-m", "quantdrift", *map(str, args)], capture_output=True, text=True)

    for device in ("cpu", "gpu"):
        r = run("quantize", src, tmp_path / f"q-{device}.safetensors", "--recipe", "int4:g128", "--device", device)
        assert r.returncode == 0, r.stderr
        r = run("dequantize", tmp_path / f"q-{device}.safetensors", tmp_path / f"b-{device}.safetensors",
                "--device", device)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "q-gpu.safetensors").read_bytes() == (tmp_path / "q-cpu.safetensors").read_bytes()
    assert (tmp_path / "b-gpu.safetensors").read_bytes() == (tmp_path / "b-cpu.safetensors").read_bytes()
    r = run("quantize", src, tmp_path / "x.safetensors", "--device", "gpu", "--scheduler", "tcp://127.0.0.1:1")
    assert r.returncode == 2 and "--scheduler" in r.stderr
