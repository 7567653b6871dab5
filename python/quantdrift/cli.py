"""The ``quantdrift`` command.

Exit codes: 0 success, 2 bad input (a one-line message, no traceback),
1 internal error.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ._errors import QuantdriftError


def _demo(args: argparse.Namespace) -> int:
    """Rounds a layer's weights into several formats and measures how far
    each variant's next-token distributions drift from the original."""
    import numpy as np

    import quantdrift as qd

    # A stand-in output layer: hidden states of 256 positions times an
    # unembedding matrix of a 4096-token vocabulary, with heavy-tailed
    # weights like a trained model's. Built-in and deterministic.
    rng = np.random.default_rng(2024)
    hidden, vocab, positions = 512, 4096, 256
    weights = (rng.standard_t(df=5, size=(vocab, hidden)) * 0.02).astype(np.float32)
    states = rng.standard_normal((positions, hidden)).astype(np.float32)
    reference = states @ weights.T

    def mx(elem):
        codes, scales = qd.mx_encode(weights, elem)
        return qd.mx_decode(codes, scales, elem), 32

    def per_tensor(fmt):
        # one float32 scale per tensor mapping max |w| onto the format's max
        scale = np.float32(np.abs(weights).max() / qd.formats.get(fmt).max)
        return qd.round_to(weights / scale, fmt) * scale, None

    def nvfp4():
        codes, scales, tensor_scale = qd.nvfp4_encode(weights, per_tensor_scale="auto")
        return qd.nvfp4_decode(codes, scales, per_tensor_scale=tensor_scale), 16

    schemes = {
        "bfloat16": lambda: (qd.round_to(weights, "bfloat16"), None),
        "float16": lambda: (qd.round_to(weights, "float16"), None),
        "float8_e4m3fn": lambda: per_tensor("float8_e4m3fn"),
        "float8_e5m2": lambda: per_tensor("float8_e5m2"),
        "mxfp8_e4m3": lambda: mx("fp8_e4m3"),
        "mxfp6_e2m3": lambda: mx("fp6_e2m3"),
        "mxfp4": lambda: mx("fp4_e2m1"),
        "nvfp4": nvfp4,
    }
    element_bits = {"bfloat16": 16, "float16": 16, "float8_e4m3fn": 8, "float8_e5m2": 8,
                    "mxfp8_e4m3": 8, "mxfp6_e2m3": 6, "mxfp4": 4, "nvfp4": 4}
    print(f"quantdrift {qd.__version__} demo ({qd.isa()}, {qd.num_threads()} threads)")
    print(f"output layer {vocab}x{hidden}, {positions} positions; each scheme rounds the weights,")
    print("then the next-token distributions are compared with the float32 original.")
    print()
    header = (f"{'scheme':<15}{'bits/param':>11}{'sqnr dB':>9}{'mean KL':>12}{'p99 KL':>12}"
              f"{'mean JS':>12}{'top-1 same':>11}")
    print(header)
    print("-" * len(header))
    for name, make in schemes.items():
        rounded, block = make()
        logits = states @ rounded.T
        kl = qd.kl(reference, logits)
        js = qd.js(reference, logits, reduction="mean")
        same = float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))
        stats = qd.error_stats(weights, rounded)
        # block scales: 8 bits per block of `block` elements (+ one float32 for nvfp4)
        bits = element_bits[name] + (8 / block if block else 0)
        print(f"{name:<15}{bits:>11.2f}{stats.sqnr_db:>9.1f}{kl.mean():>12.3e}{np.percentile(kl, 99):>12.3e}"
              f"{js:>12.3e}{same:>11.1%}")
    print()
    print("KL(P_float32 || P_scheme) and JS in nats per token. `quantdrift --help` lists the commands.")
    return 0


# --- checkpoints: quantize / dequantize -------------------------------------


def _quantize(args: argparse.Namespace) -> int:
    from .checkpoint import quantize_file

    rep = quantize_file(args.src, args.dst, args.recipe, report=args.report, stats=not args.no_stats)
    print(rep.to_table())
    return 0


def _dequantize(args: argparse.Namespace) -> int:
    from .checkpoint import dequantize_file

    dequantize_file(args.src, args.dst)
    return 0


def _add_checkpoint_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    q = commands.add_parser("quantize", help="quantize a safetensors checkpoint (file or *.index.json) by a recipe")
    q.add_argument("src", help="input .safetensors file or sharded *.index.json")
    q.add_argument("dst", help="output .safetensors file")
    q.add_argument("--recipe", default=None,
                   help="TOML/JSON recipe file, or a scheme for every matrix (int8, int4:g128, mxfp4, ...); "
                        "default: int8 per channel, 1-D tensors and embeddings kept")
    q.add_argument("--report", default=None, help="also write the report to this .json or .csv file")
    q.add_argument("--no-stats", action="store_true", help="skip the error columns (faster)")
    q.set_defaults(run=_quantize)
    d = commands.add_parser("dequantize", help="restore float tensors from a file written by `quantize`")
    d.add_argument("src")
    d.add_argument("dst")
    d.set_defaults(run=_dequantize)


# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="quantdrift",
        description="Compress language models and measure what the compression did.",
    )
    parser.add_argument("--version", action="version", version=f"quantdrift {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="round a built-in layer into several formats and measure the drift")
    demo.set_defaults(run=_demo)
    _add_checkpoint_commands(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``quantdrift`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (QuantdriftError, ValueError, OSError) as e:
        print(f"quantdrift {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence
        print(f"quantdrift {args.command}: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
