"""The ``quantdrift`` command.

Exit codes: 0 success, 2 bad input (a one-line message, no traceback),
1 internal error.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from typing import Any, List, Optional, Tuple

from ._errors import InputError, QuantdriftError


# --- checks made before any work ----------------------------------------------


def _input_files(path: Optional[str]) -> List[str]:
    """The files a path argument reads: a folder's or glob's shards, a
    sharded checkpoint's index and the shards it names, or the path itself."""
    if not path:
        return []
    from .sources import shard_files

    try:
        files = shard_files(path)
    except OSError:  # reported, by the command that opens it, in its own words
        return [path]
    if path.endswith(".json") and os.path.isfile(path):
        import json

        try:
            with open(path, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map", {})
            folder = os.path.dirname(path)
            files += [os.path.join(folder, v) for v in set(weight_map.values()) if isinstance(v, str)]
        except (OSError, ValueError, AttributeError):  # not an index: the command says what it is
            pass
    return files


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)  # links, bind mounts


def _check_outputs(outputs: List[Tuple[str, Optional[str]]], inputs: List[Optional[str]]) -> None:
    """Refuses, before any work, an output that would fail only at the end or
    destroy an input: a missing folder, an existing folder, a plot format
    matplotlib cannot write, a path that is an input (or another output).

    Args:
        outputs: (flag, path) pairs; a path of None was not asked for.
        inputs: the input path arguments (folders and globs are expanded).
    """
    files = [f for path in inputs for f in _input_files(path)]
    given = [(flag, path) for flag, path in outputs if path]
    for i, (flag, path) in enumerate(given):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(errno.ENOENT, f"{flag}: the folder {folder} does not exist", path)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, f"{flag}: is a folder; give a file name", path)
        for f in files:
            if _same_file(path, f):
                raise InputError(f"{flag} {path} is the input {f}; inputs are never overwritten")
        for other_flag, other in given[:i]:
            if _same_file(path, other):
                raise InputError(f"{flag} and {other_flag} name the same file {path}")
        if flag == "--plot":
            from ._plots import check_format

            check_format(path, flag)


def _open(path: str, flag: str, **kwargs: Any) -> Any:
    """open_source, with the library's ``tensor=`` hint given as the command's flag."""
    from .sources import open_source

    try:
        return open_source(path, **kwargs)
    except InputError as e:
        if str(e).endswith("choose one with tensor="):
            raise InputError(f"{str(e)[:-len('tensor=')]}{flag}") from None
        raise


def _read_lines(path: str, flag: str) -> List[str]:
    """The non-empty lines of a UTF-8 text file given by ``flag``."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise InputError(f"{flag} file {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _text_bytes(path: Optional[str]) -> Any:
    if not path:
        return None
    import numpy as np

    try:
        return np.loadtxt(path, ndmin=1)
    except ValueError as e:
        raise InputError(f"--text-bytes file {path}: not one number per line ({e})") from None


# --- commands ---------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """Quantizes the built-in language model under several schemes and
    measures how far each variant's next-token distributions drift."""
    from .demo import SCHEMES, run

    schemes = SCHEMES if not args.schemes else tuple(args.schemes.split(","))
    run(schemes, chars=args.chars, plot=None if args.no_plot else args.plot)
    return 0


def _info(args: argparse.Namespace) -> int:
    """Prints what a logit file (or folder/glob of shards) holds."""
    with _open(args.file, "--tensor", dtype=args.dtype, tensor=args.tensor) as src:
        for key, value in src.info().items():
            print(f"{key + ':':<18}{value}")
    return 0


def _map(args: argparse.Namespace) -> int:
    """A model map from a log-likelihood matrix: nearest neighbours, optional figure and JSON."""
    import json

    from ._files import atomic_path
    from .llv import ModelMap, load_loglik

    if args.nearest < 0:
        raise InputError(f"--nearest must be >= 0, got {args.nearest}")
    _check_outputs([("--json", args.json), ("--plot", args.plot)], [args.matrix, args.names, args.text_bytes])
    L, names = load_loglik(args.matrix)
    if args.names:
        names = _read_lines(args.names, "--names")
    text_bytes = _text_bytes(args.text_bytes)
    m = ModelMap(L, names=names, text_bytes=text_bytes, clip=args.clip)
    unit = "bpb" if text_bytes is not None else "nats"
    print(f"{m.shape[0]} models x {m.shape[1]} texts; KL estimates in {'bits/byte' if unit == 'bpb' else 'nats/text'}")
    for name in m.names:
        near = ", ".join(f"{n} {v:.4g}" for n, v in m.nearest(name, args.nearest, unit=unit))
        print(f"{name}: {near}")
    if args.json:
        with atomic_path(args.json) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(m.to_dict(), fh)
    if args.plot:
        m.plot(args.plot, method=args.method)
    return 0


def _trajectory(args: argparse.Namespace) -> int:
    """Exponents of a training trajectory: KL from the first checkpoint, and
    weight distance when checkpoints are given, against steps on log-log axes."""
    import json

    import numpy as np

    from ._files import atomic_path
    from .llv import Trajectory, load_loglik

    steps_file = args.steps if args.steps.endswith(".npy") else None
    _check_outputs([("--json", args.json), ("--plot", args.plot)],
                   [args.matrix, steps_file, args.text_bytes, *(args.weights or [])])
    L, _ = load_loglik(args.matrix)
    if steps_file:
        from .sources import read_npy

        steps = read_npy(steps_file, f"--steps file {steps_file}")
    else:
        try:
            steps = np.array([float(x) for x in args.steps.split(",")])
        except ValueError:
            raise InputError(f"--steps must be a .npy file or comma-separated numbers, got {args.steps!r}") from None
    text_bytes = _text_bytes(args.text_bytes)
    traj = Trajectory(steps, L, weights=args.weights or None, text_bytes=text_bytes, clip=args.clip)
    unit = "bpb" if text_bytes is not None else "nats"
    fit = traj.fit(unit)
    out = {"steps": traj.steps.tolist(), "kl_from_start": traj.kl_from_start(unit).tolist(), "unit": unit}
    cq = fit["c_q"]
    print(f"{len(traj.steps)} checkpoints x {L.shape[1]} texts; KL from step {traj.steps[0]:g} in {unit}")
    print(f"c_q (KL ~ t^c_q)      = {cq.exponent:.4f}  95% CI [{cq.ci[0]:.4f}, {cq.ci[1]:.4f}]  r2 {cq.r2:.3f}")
    out["c_q"] = {"exponent": cq.exponent, "ci": list(cq.ci), "r2": cq.r2}
    if fit["c_w"] is not None:
        cw = fit["c_w"]
        print(f"c_w (|dW|^2 ~ t^c_w)  = {cw.exponent:.4f}  95% CI [{cw.ci[0]:.4f}, {cw.ci[1]:.4f}]  r2 {cw.r2:.3f}")
        print(f"Hölder exponent alpha = c_q / c_w = {fit['alpha']:.4f}")
        out["c_w"] = {"exponent": cw.exponent, "ci": list(cw.ci), "r2": cw.r2}
        out["alpha"] = fit["alpha"]
        out["weight_from_start"] = traj.weight_from_start().tolist()
    if args.json:
        with atomic_path(args.json) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            json.dump(out, fh)
    if args.plot:
        traj.plot(args.plot, unit)
    return 0


def _convert(args: argparse.Namespace) -> int:
    """Converts logits between formats (e.g. .npy + token ids -> llama.cpp base file)."""
    from . import sources

    _check_outputs([("DST", args.dst)], [args.src, args.tokens])
    to = args.to or {".npy": "npy", ".safetensors": "safetensors"}.get(args.dst[args.dst.rfind("."):])
    if to is None:
        raise ValueError(f"cannot tell the output format from {args.dst!r}; give --to llamacpp|npy|safetensors|topk")
    progress = False if args.no_progress else None  # None: on a terminal
    with _open(args.src, "--tensor", dtype=args.dtype, tensor=args.tensor) as src:
        what = f"--tokens file {args.tokens}"
        tokens = None if args.tokens is None else sources.read_npy(args.tokens, what)
        if to == "llamacpp":
            if tokens is None:
                raise ValueError("--to llamacpp needs --tokens F (a .npy of the text's token ids)")
            tokens = sources.check_token_ids(tokens, src.vocab, what, unit="index")
            sources.write_llamacpp_base(args.dst, src, tokens, args.n_ctx, progress=progress)
        elif to == "topk":
            if tokens is not None:
                tokens = sources.check_token_ids(tokens, src.vocab, what)
            sources.write_topk(args.dst, src, args.k, tokens=tokens, progress=progress)
        else:
            getattr(sources, f"write_{to}")(args.dst, src, progress=progress)
    print(f"wrote {args.dst} ({to})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Compares two logit dumps and prints the report."""
    import numpy as np

    from .compare import compare

    # Output paths are checked before the comparison, not after it.
    _check_outputs([("--json", args.json), ("--plot", args.plot), ("--columns", args.columns)],
                   [args.base, args.other, args.tokens, args.mask])
    try:
        topk = tuple(int(k) for k in (args.topk or "1,5").split(","))
    except ValueError:
        raise InputError(f"--topk must be comma-separated integers, e.g. 1,5; got {args.topk!r}") from None
    if args.worst < 0:
        raise InputError(f"--worst must be >= 0, got {args.worst}")
    opts = dict(
        sequences=args.sequences,
        prompt_lengths=args.prompt_length,
        metrics=tuple(args.metrics.split(",")),
        topk=topk,
        temperature=args.temperature,
        chunk_bytes=int(args.chunk_mb * 1024 * 1024),
        worst=args.worst,
    )
    if args.scheduler:
        # shards of BASE and OTHER pair up in name order; workers read them
        from .distributed import _distributed, compare_shards, shard_pairs

        if args.tokens or args.mask or args.base_tensor or args.other_tensor or args.base_dtype or args.other_dtype:
            raise ValueError("--scheduler takes shard folders or globs only (no --tokens/--mask/--*-tensor/--*-dtype)")
        with _distributed().Client(args.scheduler) as client:
            report = compare_shards(shard_pairs(args.base, args.other), client, **opts)
    else:
        base = _open(args.base, "--base-tensor", tensor=args.base_tensor, dtype=args.base_dtype)
        other = _open(args.other, "--other-tensor", tensor=args.other_tensor, dtype=args.other_dtype)
        if args.topk and max(topk) > base.vocab:  # the default 1,5 stays usable on a tiny vocabulary
            raise InputError(f"--topk {max(topk)} exceeds the vocabulary of {base.vocab} ({base.name})")
        # paths, not arrays: compare checks the files and names them in errors
        report = compare(base, other, tokens=args.tokens, mask=args.mask, progress=not args.no_progress,
                         device=args.device, **opts)
    print(report)
    if args.json:
        report.to_json(args.json)
    if args.plot:
        report.plot(args.plot)
    if args.columns:
        from ._files import atomic_path

        with atomic_path(args.columns) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **report.columns())  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    return 0


# --- checkpoints: quantize / dequantize -------------------------------------


def _quantize(args: argparse.Namespace) -> int:
    from .checkpoint import _check_report, quantize_file

    # DST == SRC (or a shard) is refused by quantize_file; --report is checked here too,
    # since with --scheduler nothing else sees it before the set is written.
    outputs = [("--report", args.report)] + ([] if args.scheduler else [("DST", args.dst)])
    recipe = args.recipe if args.recipe and os.path.isfile(args.recipe) else None
    _check_outputs(outputs, [args.src, recipe])
    _check_report(args.report)
    if args.scheduler:
        if args.device != "cpu":
            raise InputError("--device applies to a local run; with --scheduler the workers use their CPUs")
        # one task per file of the set; DST is a folder that receives the set
        from .distributed import _distributed, quantize_files

        with _distributed().Client(args.scheduler) as client:
            rep = quantize_files(args.src, args.dst, args.recipe, client, report=args.report)
    else:
        rep = quantize_file(args.src, args.dst, args.recipe, report=args.report, stats=not args.no_stats,
                            device=args.device, progress=False if args.no_progress else None)
    print(rep.to_table())
    return 0


def _dequantize(args: argparse.Namespace) -> int:
    from .checkpoint import dequantize_file

    dequantize_file(args.src, args.dst, device=args.device, progress=False if args.no_progress else None)
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
    q.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on a Dask cluster, one task per file of the set; DST is then an output folder")
    q.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu",
                   help="where the encoding kernels run (default cpu; the output is the same byte for byte)")
    d = commands.add_parser("dequantize", help="restore float tensors from a file written by `quantize`")
    d.add_argument("src")
    d.add_argument("dst")
    d.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu",
                   help="where the decoding kernels run (default cpu; the output is the same byte for byte)")
    for p in (q, d):
        p.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal)")
    q.set_defaults(run=_quantize)
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
    demo = commands.add_parser(
        "demo",
        help="quantize a built-in language model under several schemes and measure the drift",
        description="Quantizes a small character-level language model shipped with quantdrift under "
        "several schemes and compares each variant's next-character distributions with the original's.",
    )
    demo.add_argument("--plot", default="quantdrift-demo.svg", help="where to write the figure (SVG)")
    demo.add_argument("--no-plot", action="store_true", help="do not write the figure")
    demo.add_argument("--chars", type=int, default=8000, help="held-out characters to score (default 8000)")
    demo.add_argument("--schemes", help="comma-separated schemes, e.g. int8,int4:g32,mxfp4")
    demo.set_defaults(run=_demo)
    info = commands.add_parser("info", help="show the format, shape, dtype and tokens of a logit file")
    info.add_argument("file", help="a .npy, .safetensors, llama.cpp base or top-k file, a folder or a glob")
    convert = commands.add_parser("convert", help="convert logits between formats")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--to", choices=("llamacpp", "npy", "safetensors", "topk"),
                         help="output format (default: from DST's extension)")
    convert.add_argument("--n-ctx", type=int, help="llamacpp: tokens per chunk (default: positions of 3-D logits)")
    convert.add_argument("--tokens", help="a .npy of token ids (llamacpp: the text; topk: one per row)")
    convert.add_argument("--k", type=int, default=20, help="topk: entries kept per row (default 20)")
    convert.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal)")
    for p in (info, convert):
        p.add_argument("--dtype", choices=("bfloat16", "float16"), help="what uint16 data holds")
        p.add_argument("--tensor", help="safetensors: the tensor to read")
    info.set_defaults(run=_info)
    convert.set_defaults(run=_convert)

    cmp = commands.add_parser(
        "compare",
        help="compare two models' next-token distributions from dumped logits",
        description="Compare OTHER with BASE token by token (KL, JS, top-k agreement, PPL, Δp) and "
        "print a llama.cpp-style report. BASE and OTHER are .npy, .safetensors, llama.cpp "
        "--kl-divergence-base files, top-k dumps, or folders/globs of shards.",
    )
    cmp.add_argument("base", help="reference model's logits (or llama.cpp base file, top-k dump)")
    cmp.add_argument("other", help="changed model's logits")
    cmp.add_argument("--tokens", help=".npy of next-token ids, one per row")
    cmp.add_argument("--mask", help=".npy of booleans, one per row, True where scored")
    cmp.add_argument("--sequences", type=int, help="rows per sequence (for per-sequence sums and positions)")
    cmp.add_argument("--prompt-length", type=int, help="context tokens per sequence that are not scored")
    cmp.add_argument("--metrics", default="kl,js", help="shown metrics: kl,reverse_kl,js (default kl,js)")
    cmp.add_argument("--topk", help="top-k overlap sizes, each at most the vocabulary (default 1,5)")
    cmp.add_argument("--temperature", type=float, default=1.0)
    cmp.add_argument("--chunk-mb", type=float, default=512, help="memory budget per read step, MB (default 512)")
    cmp.add_argument("--worst", type=int, default=10, help="list the N tokens with the largest KL")
    cmp.add_argument("--base-tensor", help="tensor name in a safetensors BASE")
    cmp.add_argument("--other-tensor", help="tensor name in a safetensors OTHER")
    cmp.add_argument("--base-dtype", help="dtype of uint16 data in BASE (float16 or bfloat16)")
    cmp.add_argument("--other-dtype", help="dtype of uint16 data in OTHER")
    cmp.add_argument("--json", help="write the report as JSON here")
    cmp.add_argument("--plot", help="write a figure here (PNG/PDF/SVG; needs matplotlib)")
    cmp.add_argument("--columns", help="write the per-token columns as .npz here")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bar")
    cmp.add_argument("--device", choices=("cpu", "gpu", "auto"), default="cpu",
                     help="where the row kernel runs (default cpu; gpu needs an adapter, auto picks)")
    cmp.add_argument("--scheduler", metavar="ADDRESS",
                     help="run on a Dask cluster: BASE and OTHER are folders/globs of shards, paired by name order")
    cmp.set_defaults(run=_compare)

    mp = commands.add_parser("map", help="a model map from a models x texts log-likelihood matrix")
    mp.add_argument("matrix", help="the matrix: .npy, .csv, .json or .pkl (name -> vector)")
    mp.add_argument("--names", help="a text file with one model name per line")
    mp.add_argument("--text-bytes", help="a text file with each text's byte length (KL in bits/byte)")
    mp.add_argument("--clip", type=float, help="clip L at this global quantile first (the original uses 0.02)")
    mp.add_argument("--nearest", type=int, default=3, help="neighbours to list per model (default 3)")
    mp.add_argument("--method", default="pca", choices=["pca", "mds", "tsne"], help="map coordinates (default pca)")
    mp.add_argument("--plot", help="write the map here (PNG/PDF/SVG; needs matplotlib)")
    mp.add_argument("--json", help="write names and KL matrices as JSON here")
    mp.set_defaults(run=_map)

    tr = commands.add_parser("trajectory", help="exponents of a training trajectory (KL and weight distance vs steps)")
    tr.add_argument("matrix", help="checkpoints x texts log-likelihood matrix (.npy, .csv, .json, .pkl), in step order")
    tr.add_argument("--steps", required=True, help="the checkpoints' steps: a .npy or a comma-separated list")
    tr.add_argument("--weights", nargs="+", help="the checkpoints' safetensors files, in step order (for c_w and alpha)")
    tr.add_argument("--text-bytes", help="a text file with each text's byte length (KL in bits/byte)")
    tr.add_argument("--clip", type=float, help="clip L at this global quantile first")
    tr.add_argument("--plot", help="write the log-log plot here (needs matplotlib)")
    tr.add_argument("--json", help="write the exponents and curves as JSON here")
    tr.set_defaults(run=_trajectory)

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
