"""Integer quantization: quantdrift vs numpy vs torch (vs torchao if
installed) vs the memory roofline, and quantize_file on a generated bf16
checkpoint (wall time and peak RSS).

Run: ``python benches/bench_quantize.py [--quick] [--checkpoint-gb 4]``.
Timings are the best of a few runs of quantize + dequantize (calibration
included). The roofline time is the bytes an ideal pair of passes moves
(read x, write codes; read codes, write y) at the threaded plain-read rate
of this machine, so "of roofline" = roofline time / measured time. The
plain read and the peers are timed in turn with quantdrift's calls, round
after round (best of each), so all come from the same minutes of a host
whose speed drifts; the read's rate is the "read GB/s" column. Nothing here
is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

import quantdrift as qd
from quantdrift import _core
from timing import best_interleaved

try:
    import torch
except ImportError:  # pragma: no cover - optional peer
    torch = None
try:
    from torchao.quantization.quant_primitives import (  # type: ignore[import-not-found]
        MappingType,
        choose_qparams_affine,
        dequantize_affine,
        quantize_affine,
    )
except Exception:  # pragma: no cover - optional peer
    choose_qparams_affine = None


# --- the peers ---------------------------------------------------------------


def numpy_int8_per_channel(x):
    s = np.abs(x).max(axis=1, keepdims=True) / np.float32(127)
    q = np.clip(np.rint(x / s), -128, 127).astype(np.int8)
    return q.astype(np.float32) * s


def numpy_int4_g128(x):
    r, c = x.shape
    g = x.reshape(r, c // 128, 128)
    s = np.abs(g).max(axis=2, keepdims=True) / np.float32(7)
    q = np.clip(np.rint(g / s), -8, 7).astype(np.int8)
    packed = (q[..., 0::2] & 15).astype(np.uint8) | (q[..., 1::2].astype(np.uint8) << 4)
    lo = (packed & 15).astype(np.int8)
    hi = (packed >> 4).astype(np.int8)
    lo = np.where(lo > 7, lo - 16, lo)
    hi = np.where(hi > 7, hi - 16, hi)
    un = np.stack([lo, hi], axis=-1).reshape(g.shape)
    return (un.astype(np.float32) * s).reshape(r, c)


def torch_int8_per_channel(tx):
    s = tx.abs().amax(dim=1) / 127
    q = torch.quantize_per_channel(tx, s.double(), torch.zeros(tx.shape[0], dtype=torch.int64), 0, torch.qint8)
    return q.dequantize()


def torch_int4_g128(tx):
    # torchao's quantize_affine/dequantize_affine written in torch ops
    r, c = tx.shape
    g = tx.view(r, c // 128, 128)
    s = g.abs().amax(dim=2, keepdim=True) / 7
    q = torch.clamp(torch.round(g * (1.0 / s)), -8, 7).to(torch.int8)
    packed = (q[..., 0::2] & 15).to(torch.uint8) | (q[..., 1::2].to(torch.uint8) << 4)
    lo = (packed & 15).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    un = torch.stack([torch.where(lo > 7, lo - 16, lo), torch.where(hi > 7, hi - 16, hi)], dim=-1).view(g.shape)
    return (un.to(torch.float32) * s).view(r, c)


def torchao_run(tx, bits, group):
    block = (1, group or tx.shape[1])
    dt = torch.int8 if bits == 8 else torch.int8
    qmin, qmax = (-128, 127) if bits == 8 else (-8, 7)
    s, z = choose_qparams_affine(tx, MappingType.SYMMETRIC, block, dt, quant_min=qmin, quant_max=qmax)
    q = quantize_affine(tx, block, s, z, dt, quant_min=qmin, quant_max=qmax)
    return dequantize_affine(q, block, s, z, dt, quant_min=qmin, quant_max=qmax)


# --- tensors -----------------------------------------------------------------


def bench_tensors(shapes, repeat):
    rng = np.random.default_rng(0)
    header = (f"{'case':<26}{'quantdrift ms':>14}{'numpy ms':>10}{'× numpy':>9}{'torch ms':>10}{'× torch':>9}"
              f"{'torchao ms':>11}{'× torchao':>10}{'read GB/s':>10}{'roofline ms':>12}{'of roofline':>12}")
    print(header)
    print("-" * len(header))
    rows = []
    for shape in shapes:
        rows += bench_shape(rng, shape, repeat)
    return rows


def bench_shape(rng, shape, repeat):
    """The table's rows of one matrix shape (int8 per channel, int4 groups)."""
    rows = []
    x = (rng.standard_t(5, size=shape) * 0.02).astype(np.float32)
    raw = x.view(np.uint8).reshape(-1)
    tx = torch.from_numpy(x) if torch is not None else None
    for label, bits, part, code_bytes in (
        ("int8 per-channel", 8, qd.per_axis(0), 1.0),
        ("int4 group-128", 4, qd.groups(-1, 128), 0.5),
    ):

        def ours():
            return qd.quantize(x, bits=bits, partition=part).dequantize()

        # ours, the plain read (the roofline) and the peers in turn: the
        # ratios compare the same minutes
        few = max(1, repeat // 2)
        np_fn = numpy_int8_per_channel if bits == 8 else numpy_int4_g128
        runs = [(ours, repeat), (lambda: _core.read_all(raw), repeat), (lambda: np_fn(x), few)]
        if tx is not None:
            t_fn = torch_int8_per_channel if bits == 8 else torch_int4_g128
            runs.append((lambda: t_fn(tx), few))
            if choose_qparams_affine is not None:
                runs.append((lambda: torchao_run(tx, bits, None if bits == 8 else 128), few))
        t_qd, t_read, t_np, *peers = best_interleaved(runs) + [float("nan")] * (5 - len(runs))
        t_t, t_ao = peers[:2]
        rate = x.nbytes / t_read
        n = x.size
        traffic = 4 * n + code_bytes * n + code_bytes * n + 4 * n
        t_roof = traffic / rate
        case = f"{label} {shape[0]}x{shape[1]}"
        print(f"{case:<26}{t_qd * 1e3:>14.1f}{t_np * 1e3:>10.1f}{t_np / t_qd:>8.1f}x{t_t * 1e3:>10.1f}"
              f"{t_t / t_qd:>8.1f}x{t_ao * 1e3:>11.1f}{t_ao / t_qd:>9.1f}x{rate / 1e9:>10.1f}{t_roof * 1e3:>12.1f}"
              f"{t_roof / t_qd:>12.2f}")
        rows.append({"case": case, "quantdrift_ms": t_qd * 1e3, "numpy_ms": t_np * 1e3, "torch_ms": t_t * 1e3,
                     "torchao_ms": t_ao * 1e3, "roofline_ms": t_roof * 1e3, "read_gbps": rate / 1e9})
    return rows


# --- checkpoint --------------------------------------------------------------


def write_checkpoint(path: Path, gb: float) -> int:
    """A Llama-like bf16 checkpoint of about `gb` GB, written tensor by tensor
    from a reused random block; returns the largest tensor's bytes."""
    hidden, inter, vocab = 4096, 14336, 32000
    layer = [("self_attn.q_proj.weight", (hidden, hidden)), ("self_attn.k_proj.weight", (hidden // 4, hidden)),
             ("self_attn.v_proj.weight", (hidden // 4, hidden)), ("self_attn.o_proj.weight", (hidden, hidden)),
             ("mlp.gate_proj.weight", (inter, hidden)), ("mlp.up_proj.weight", (inter, hidden)),
             ("mlp.down_proj.weight", (hidden, inter)), ("input_layernorm.weight", (hidden,)),
             ("post_attention_layernorm.weight", (hidden,))]
    per_layer = sum(2 * int(np.prod(s)) for _, s in layer)
    n_layers = max(1, round((gb * 1e9 - 2 * 2 * vocab * hidden) / per_layer))
    tensors = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(n_layers):
        tensors += [(f"model.layers.{i}.{n}", s) for n, s in layer]
    tensors += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    header, pos = {}, 0
    for name, shape in tensors:
        nbytes = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    block = (np.random.default_rng(1).standard_t(5, size=1 << 22) * 0.02).astype(ml_dtypes.bfloat16)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for name, shape in tensors:
            n = int(np.prod(shape))
            for start in range(0, n, block.size):
                f.write(block[: min(block.size, n - start)].tobytes())
    return max(2 * int(np.prod(s)) for _, s in tensors)


def bench_checkpoint(gb: float, folder: str) -> dict:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src, dst = Path(tmp) / "model.safetensors", Path(tmp) / "model-int8.safetensors"
        t = time.perf_counter()
        largest = write_checkpoint(src, gb)
        t_gen = time.perf_counter() - t
        size = src.stat().st_size
        # the run goes in a child process so that its peak RSS is its own
        code = (
            "import time, json, sys, quantdrift as qd\n"
            "t = time.perf_counter()\n"
            f"rep = qd.quantize_file({str(src)!r}, {str(dst)!r}, stats=sys.argv[1] == '1', progress=False)\n"
            "wall = time.perf_counter() - t\n"
            # VmHWM is this process's own peak (ru_maxrss would carry the
            # parent's peak across fork + exec)
            "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print(json.dumps({'wall': wall, 'rss_kb': hwm}))\n"
        )
        target = 3 * largest + 300e6
        print(f"checkpoint: {size / 1e9:.2f} GB bf16 (generated in {t_gen:.1f} s), largest tensor {largest / 1e6:.0f} MB, "
              f"default recipe (int8 per channel, embeddings and 1-D kept)")
        result = {"gb": size / 1e9, "largest_mb": largest / 1e6, "target_mb": target / 1e6}
        for stats in (True, False):
            out = subprocess.run([sys.executable, "-c", code, "1" if stats else "0"], capture_output=True, text=True,
                                 check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            out_size = dst.stat().st_size
            rss = res["rss_kb"] * 1024
            print(f"  quantize_file (error stats {'on' if stats else 'off'}): wall {res['wall']:.1f} s "
                  f"({size / res['wall'] / 1e9:.2f} GB/s in), output {out_size / 1e9:.2f} GB, peak RSS {rss / 1e6:.0f} MB "
                  f"(target <= 3 x largest + 300 MB = {target / 1e6:.0f} MB: {'met' if rss <= target else 'NOT met'})")
            result[f"stats_{stats}"] = {"wall_s": res["wall"], "peak_rss_mb": rss / 1e6}
            dst.unlink()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (1024x4096, 0.3 GB checkpoint)")
    ap.add_argument("--repeat", type=int, default=9, help="best of this many runs (peers: half as many)")
    ap.add_argument("--checkpoint-gb", type=float, default=None)
    ap.add_argument("--no-checkpoint", action="store_true")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder for the generated checkpoint")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, quantdrift threads={qd.num_threads()}, "
          f"isa={qd.isa()}")
    if torch is None:
        print("# torch is not installed: torch columns are empty")
    else:
        torch.set_num_threads(qd.num_threads())
        print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; torchao "
              f"{'present' if choose_qparams_affine is not None else 'not installed'}")
    shapes = [(1024, 4096)] if args.quick else [(4096, 4096), (16384, 4096)]
    bench_tensors(shapes, args.repeat)
    if not args.no_checkpoint:
        print()
        bench_checkpoint(args.checkpoint_gb or (0.3 if args.quick else 4.0), args.dir)


if __name__ == "__main__":
    main()
