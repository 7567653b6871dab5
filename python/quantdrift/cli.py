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
    """Compares a few next-token distributions with every divergence."""
    import numpy as np

    import quantdrift as qd

    vocab = ["the", "a", "cat", "dog", "sat", "ran"]
    reference = np.log(np.array([0.40, 0.25, 0.15, 0.10, 0.06, 0.04]))
    variants = {
        "identical": reference.copy(),
        "int8-like noise": reference + np.array([0.01, -0.02, 0.015, -0.01, 0.02, -0.005]),
        "int4-like noise": reference + np.array([0.12, -0.20, 0.18, -0.09, 0.25, -0.15]),
        "temperature 1.5": reference / 1.5,
        "another model": np.log(np.array([0.10, 0.15, 0.05, 0.40, 0.10, 0.20])),
    }
    names = list(variants)
    others = np.stack([variants[n] for n in names])
    base = np.broadcast_to(reference, others.shape)
    kinds = ["kl", "reverse_kl", "js", "tv", "hellinger", "chi2"]
    table = {k: qd.divergence(base, others, k, inputs="logprobs") for k in kinds}
    top1 = np.argmax(others, axis=-1) == np.argmax(reference)
    print(f"quantdrift {qd.__version__} demo ({qd.isa()}, {qd.num_threads()} threads)")
    print(f"reference next-token distribution over {vocab}:")
    print("  " + "  ".join(f"{w}={p:.2f}" for w, p in zip(vocab, np.exp(reference))))
    print()
    header = f"{'variant':<18}" + "".join(f"{k:>12}" for k in kinds) + f"{'same top-1':>12}"
    print(header)
    print("-" * len(header))
    for i, name in enumerate(names):
        row = "".join(f"{table[k][i]:>12.6f}" for k in kinds)
        print(f"{name:<18}{row}{'yes' if top1[i] else 'no':>12}")
    print()
    print("KL, JS in nats; TV, Hellinger, chi2 unitless. quantdrift.divergence computes these")
    print("for arrays of any size; `quantdrift --help` lists the commands.")
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="quantdrift",
        description="Compress language models and measure what the compression did.",
    )
    parser.add_argument("--version", action="version", version=f"quantdrift {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="compare a few distributions on built-in data")
    demo.set_defaults(run=_demo)
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
