"""The GPU backend's face: adapter information, device selection, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import quantdrift as qd


def test_info_describes_the_adapter(gpu):
    info = qd.gpu.info()
    assert info["adapter"] and info["backend"] in ("vulkan", "metal", "dx12", "gl")
    assert info["device_type"] in ("discrete", "integrated", "virtual", "cpu", "other")
    assert set(info["features"]) <= {"shader-f16", "subgroups"}
    assert info["limits"]["max_storage_buffer_binding_size"] > 0


def test_decode_on_the_gpu_equals_the_cpu_for_every_code(gpu):
    for name in ("float8_e4m3fn", "float8_e5m2fnuz", "float6_e2m3fn", "float4_e2m1fn", "float8_e8m0fnu"):
        n = 1 << (8 if "float8" in name else 6 if "float6" in name else 4)
        codes = np.arange(n, dtype=np.uint8).repeat(3)
        cpu = qd.decode(codes, name)
        got = qd.decode(codes, name, device="gpu")
        np.testing.assert_array_equal(got.view(np.uint32), cpu.view(np.uint32), err_msg=name)
    codes = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    for name in ("float16", "bfloat16"):
        cpu = qd.decode(codes, name)
        got = qd.decode(codes, name, device="gpu")
        assert got.shape == (256, 256)
        np.testing.assert_array_equal(got.view(np.uint32), cpu.view(np.uint32), err_msg=name)


def test_bad_codes_raise_the_cpu_error_on_the_gpu(gpu):
    with pytest.raises(qd.InputError, match="out of range"):
        qd.decode(np.array([3, 70], dtype=np.uint8), "float6_e2m3fn", device="gpu")


def test_auto_and_cpu_never_need_a_gpu():
    codes = np.arange(16, dtype=np.uint8)
    np.testing.assert_array_equal(qd.decode(codes, "float4_e2m1fn", device="auto"), qd.decode(codes, "float4_e2m1fn"))
    with pytest.raises(qd.InputError, match="device must be"):
        qd.decode(codes, "float4_e2m1fn", device="cuda")


def test_without_an_adapter_gpu_raises_and_auto_falls_back():
    script = (
        "import numpy as np, quantdrift as qd\n"
        "assert not qd.gpu.available()\n"
        "c = np.arange(16, dtype=np.uint8)\n"
        "assert qd.decode(c, 'float4_e2m1fn', device='auto').shape == (16,)\n"
        "try:\n"
        "    qd.decode(c, 'float4_e2m1fn', device='gpu')\n"
        "except qd.GpuUnavailableError as e:\n"
        "    assert 'lavapipe' in str(e) and isinstance(e, qd.QuantdriftError), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    # The Vulkan loader finds no driver at all: a machine without a GPU.
    env = dict(os.environ, VK_ICD_FILENAMES="/nonexistent.json", VK_DRIVER_FILES="/nonexistent.json")
    subprocess.run([sys.executable, "-c", script], check=True, env=env)


def test_quantdrift_gpu_off_hides_the_adapter():
    script = "import quantdrift as qd\nassert not qd.gpu.available()\n"
    subprocess.run([sys.executable, "-c", script], check=True, env=dict(os.environ, QUANTDRIFT_GPU="off"))
