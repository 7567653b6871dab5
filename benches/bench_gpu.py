"""The CPU benches' workloads on the GPU: quantdrift ``device="gpu"`` vs
``device="cpu"`` (and torch CUDA where it exists) in the same run.

Three GPU figures per workload:

* **end to end**: the call as users make it, host arrays in and out, so every
  host→device and device→host transfer is counted;
* **resident**: the kernels alone on inputs already on the device (profiling
  mode: each dispatch runs by itself and is timed to completion), as GB/s of
  the bytes the kernels read and write;
* **of roofline**: resident GB/s over the device's own memory-read bandwidth,
  measured here by a kernel that reads a resident buffer once.

The torch CUDA peer (where CUDA exists) runs on inputs already on the GPU, so
``× torch`` is torch's time over quantdrift's resident time.

Run: ``python benches/bench_gpu.py [--scale 1]``. On a software adapter
(Mesa's lavapipe) the figures only show the GPU path works: lavapipe runs the
shaders on the same CPU cores. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from typing import Callable, List, Optional, Tuple

import ml_dtypes
import numpy as np

import quantdrift as qd
from quantdrift import _core

try:
    import torch
except ImportError:  # pragma: no cover - optional peer
    torch = None


def best(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm up: pipelines compile, pages fault in
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def resident(fn: Callable[[], object], repeat: int) -> float:
    """Kernel seconds of one call, best of ``repeat``, from GPU profiling."""
    fn()
    out = float("inf")
    for _ in range(repeat):
        _core.gpu_profile(True)
        fn()
        out = min(out, _core.gpu_profile(False))
    return out


def cuda_peer(name: str, arrays: dict) -> Optional[Callable[[], object]]:
    """The torch CUDA version of a workload, inputs already on the GPU."""
    if torch is None or not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    if name.startswith("kl"):
        p = torch.from_numpy(arrays["p"]).to(dev)
        q = torch.from_numpy(arrays["q"]).to(dev)

        def kl():
            lp, lq = torch.log_softmax(p, -1), torch.log_softmax(q, -1)
            out = torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)
            torch.cuda.synchronize()
            return out

        return kl
    if name.startswith("encode float8_e4m3fn"):
        x = torch.from_numpy(arrays["x"]).to(dev)

        def cast():
            out = x.to(torch.float8_e4m3fn)
            torch.cuda.synchronize()
            return out

        return cast
    return None


def workloads(scale: float) -> List[Tuple[str, dict, Callable[[str], object], int]]:
    """(name, arrays, call(device), bytes the kernels read and write) for each workload."""
    rng = np.random.default_rng(0)
    rows, vocab = max(1, int(64 * scale)), 32000
    p = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    q = (p + rng.standard_normal((rows, vocab)).astype(np.float32) * 0.1).astype(np.float32)
    n = max(1 << 16, int((1 << 22) * scale))
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    w = (rng.standard_normal((max(1, n // 4096), 4096)) * 0.02).astype(np.float32)
    codes = qd.encode(x, "float8_e4m3fn")
    out = [
        ("kl f32 logits", {"p": p, "q": q}, lambda d: qd.kl(p, q, device=d), p.nbytes + q.nbytes),
        ("js f32 logits", {"p": p, "q": q}, lambda d: qd.js(p, q, device=d), p.nbytes + q.nbytes),
        (
            "kl bf16 logits",
            {},
            lambda d, a=p.astype(ml_dtypes.bfloat16), b=q.astype(ml_dtypes.bfloat16): qd.kl(a, b, device=d),
            p.nbytes,
        ),
        ("encode float8_e4m3fn", {"x": x}, lambda d: qd.encode(x, "float8_e4m3fn", device=d), x.nbytes + x.size),
        ("round_to float6_e3m2fn", {"x": x}, lambda d: qd.round_to(x, "float6_e3m2fn", device=d), 2 * x.nbytes),
        ("decode float8_e4m3fn", {}, lambda d: qd.decode(codes, "float8_e4m3fn", device=d), 5 * codes.nbytes),
        ("mx_encode fp4_e2m1", {"x": x}, lambda d: qd.mx_encode(x, "fp4_e2m1", device=d), x.nbytes + x.size),
        ("nvfp4_encode", {"x": x}, lambda d: qd.nvfp4_encode(x, device=d), x.nbytes + x.size),
        (
            "quantize int4 groups(128)",
            {"w": w},
            lambda d: qd.quantize(w, bits=4, partition=qd.groups(-1, 128), device=d),
            w.nbytes + w.size,
        ),
        (
            "fake_quantize int8 per_axis(0)",
            {"w": w},
            lambda d: qd.fake_quantize(w, bits=8, partition=qd.per_axis(0), device=d),
            2 * w.nbytes,
        ),
        (
            "compare f32 logits",
            {},
            lambda d: qd.compare(p, q, device=d, progress=False),
            p.nbytes + q.nbytes,
        ),
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="workload size multiplier")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not qd.gpu.available():
        raise SystemExit("no GPU adapter: install a GPU driver or Mesa's lavapipe (mesa-vulkan-drivers)")
    info = qd.gpu.info()
    bandwidth = _core.gpu_read_bandwidth(1 << 27, 5)
    print(f"# host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, quantdrift threads={qd.num_threads()}, isa={qd.isa()}")
    print(f"# GPU: {info['adapter']} ({info['device_type']}, {info['backend']}), features={info['features']}")
    print(f"# device memory-read roofline: {bandwidth / 1e9:.1f} GB/s (a kernel reading a resident 128 MiB buffer)")
    if info["device_type"] == "cpu":
        print("# software adapter: figures are functional only (the shaders run on the host's CPU cores)")
    cuda = torch is not None and torch.cuda.is_available()
    if torch is not None:
        print(f"# torch {torch.__version__}, CUDA {'available' if cuda else 'not available'}")
    header = (
        f"{'workload':<32}{'cpu ms':>9}{'gpu ms':>9}{'× cpu':>7}{'resident ms':>13}{'GB/s':>8}"
        f"{'of roofline':>13}{'torch cuda ms':>15}{'× torch':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, arrays, call, nbytes in workloads(args.scale):
        try:
            t_cpu = best(lambda: call("cpu"), args.repeat)
            t_gpu = best(lambda: call("gpu"), args.repeat)
            t_res = resident(lambda: call("gpu"), args.repeat)
        except TypeError as e:  # a function without a GPU kernel
            print(f"{name:<32} (no GPU kernel: {e})")
            continue
        peer = cuda_peer(name, arrays)
        t_torch = best(peer, args.repeat) if peer is not None else float("nan")
        gbs = nbytes / t_res / 1e9 if t_res > 0 else float("nan")
        print(
            f"{name:<32}{t_cpu * 1e3:>9.2f}{t_gpu * 1e3:>9.2f}{t_cpu / t_gpu:>7.2f}{t_res * 1e3:>13.2f}"
            f"{gbs:>8.1f}{gbs * 1e9 / bandwidth:>13.2f}{t_torch * 1e3:>15.2f}{t_torch / t_res:>9.2f}"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"# peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
