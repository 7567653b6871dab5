"""``quantdrift demo``: the whole job on data shipped in the package.

A small real language model (a character-level model of Shakespeare, see
:mod:`quantdrift.demo_model`) is quantized under several schemes; each
variant's next-token distributions on held-out text are compared with the
original's; a table of bits/param, KL, JS, top-1 agreement and perplexity is
printed, and a figure is written (SVG, no plotting library needed).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._errors import InputError
from ._files import write_text_atomic

#: Schemes the demo runs, in the order printed.
SCHEMES: Tuple[str, ...] = (
    "bfloat16",
    "float8_e4m3fn",
    "int8",
    "mxfp8_e4m3",
    "int4:g32",
    "int4:g32:asym",
    "nvfp4",
    "mxfp4",
    "float4_e2m1fn",
    "int3:g32",
    "int2:g32:asym",
)


@dataclass
class SchemeResult:
    """One scheme's row of the demo table."""

    scheme: str
    bits_per_param: float
    kl_mean: float
    kl_se: float
    kl_p99: float
    js_mean: float
    same_top1: float
    ppl: float


def quantize_model(weights_path: str, scheme: str, workdir: str) -> Tuple[Dict[str, np.ndarray], float]:
    """Quantizes the model's safetensors file under ``scheme`` with
    :func:`quantdrift.quantize_file` (the default recipe's rules: the
    embedding and 1-D tensors are kept), restores it with
    :func:`quantdrift.dequantize_file`, and returns the restored weights and
    the quantized matrices' mean bits/param (scales and zero-points
    included)."""
    import quantdrift as qd
    from .demo_model import read_safetensors

    packed = os.path.join(workdir, "packed.safetensors")
    restored = os.path.join(workdir, "restored.safetensors")
    report = qd.quantize_file(weights_path, packed, scheme, progress=False)
    qd.dequantize_file(packed, restored, progress=False)
    weights, _ = read_safetensors(restored)
    rows = [r for r in report.rows if r["scheme"] != "keep"]
    params = sum(int(np.prod(r["shape"])) for r in rows)
    bits = sum(r["bits_per_param"] * int(np.prod(r["shape"])) for r in rows) / params
    return weights, bits


def run(schemes: Sequence[str] = SCHEMES, *, chars: int = 8000, plot: Optional[str] = "quantdrift-demo.svg",
        echo: Callable[[str], None] = print) -> List[SchemeResult]:
    """Runs the demo and returns its table; ``plot=None`` skips the figure."""
    import tempfile

    import quantdrift as qd
    from .demo_model import MODEL_PATH, heldout_text, load_model

    started = time.perf_counter()
    model = load_model()
    if chars <= model.context:
        # the first `context` characters only feed the model: fewer leave nothing to score
        raise InputError(f"chars must be at least {model.context + 1} (the model reads {model.context} "
                         f"characters of context before it scores one), got {chars}")
    ids = model.encode(heldout_text(chars))
    reference = model.logits(ids)
    targets = model.targets(ids)
    n_params = sum(w.size for w in model.weights.values())
    base_report = qd.compare(reference, reference, tokens=targets, progress=False)
    base_ppl = base_report.summary()["ppl_base"]["value"]
    echo(f"quantdrift {qd.__version__} demo ({qd.isa()}, {qd.num_threads()} threads)")
    echo(f"model: character-level MLP, {n_params / 1e6:.2f}M parameters, vocabulary {len(model.vocab)}, "
         f"context {model.context}; {len(targets)} held-out characters of Shakespeare")
    echo(f"float32 model: perplexity {base_ppl:.3f} ({math.log2(base_ppl):.3f} bits/char)")
    echo("each scheme: quantize_file → dequantize_file on the model's safetensors, then the restored model's")
    echo("next-character distributions are compared with the float32 model's")
    echo("")
    header = (f"{'scheme':<16}{'bits/param':>11}{'mean KL ± se':>22}{'p99 KL':>11}{'mean JS':>11}"
              f"{'same top-1':>12}{'PPL':>9}{'ΔPPL':>8}")
    echo(header)
    echo("-" * len(header))
    results: List[SchemeResult] = []
    columns: Dict[str, np.ndarray] = {}
    workdir = tempfile.TemporaryDirectory(prefix="quantdrift-demo-")
    for scheme in schemes:
        weights, bits = quantize_model(str(MODEL_PATH), scheme, workdir.name)
        report = qd.compare(reference, model.logits(ids, weights=weights), tokens=targets, progress=False)
        s = report.summary()
        r = SchemeResult(scheme, bits, s["kl"]["mean"], s["kl"]["se"], s["kl"]["p99"], s["js"]["mean"],
                         s["same_top1"]["fraction"], s["ppl_other"]["value"])
        results.append(r)
        columns[scheme] = report.kl
        echo(f"{scheme:<16}{bits:>11.2f}{r.kl_mean:>13.2e} ± {r.kl_se:.1e}{r.kl_p99:>11.2e}{r.js_mean:>11.2e}"
             f"{r.same_top1:>12.1%}{r.ppl:>9.3f}{(r.ppl / base_ppl - 1):>+8.1%}")
    workdir.cleanup()
    echo("")
    echo("KL = KL(P_float32 ‖ P_scheme) per character, nats; JS in nats; bits/param of the weight matrices")
    echo("(scales and zero-points included; float formats carry one float32 scale per tensor, MX and NVFP4")
    echo("their block scales); the embedding and 1-D tensors stay float32 (the default recipe).")
    if plot:
        write_text_atomic(plot, svg_figure(results, columns))
        echo(f"figure: {os.path.abspath(plot)}")
    echo(f"done in {time.perf_counter() - started:.1f} s. Next: `quantdrift compare BASE OTHER` on your own logit dumps.")
    return results


# ---------------------------------------------------------------------------
# The figure, as plain SVG


def svg_figure(results: Sequence[SchemeResult], kl_columns: Dict[str, np.ndarray]) -> str:
    """Two panels: mean KL against bits/param (log scale), and the CDF of
    per-character KL for every scheme."""
    W, H, pad = 1100, 420, 60
    pw = (W - 3 * pad - 110) / 2  # room for the legend on the right
    ph = H - 2 * pad
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
              "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd", "#1b9e77", "#d95f02"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']

    def frame(x0, title, xlabel, ylabel):
        out.append(f'<rect x="{x0}" y="{pad}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
        out.append(f'<text x="{x0 + pw / 2}" y="{pad - 15}" text-anchor="middle" font-size="14">{title}</text>')
        out.append(f'<text x="{x0 + pw / 2}" y="{H - 15}" text-anchor="middle">{xlabel}</text>')
        out.append(f'<text x="{x0 - 45}" y="{pad + ph / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 {x0 - 45} {pad + ph / 2})">{ylabel}</text>')

    # panel 1: mean KL vs bits/param
    x0: float = pad
    frame(x0, "mean KL per character vs storage", "bits per parameter", "mean KL (nats, log scale)")
    kls = [max(r.kl_mean, 1e-12) for r in results]
    lo, hi = math.floor(math.log10(min(kls))), math.ceil(math.log10(max(kls)))
    hi = max(hi, lo + 1)
    bmax = max(r.bits_per_param for r in results)
    bx = lambda b: x0 + pw * b / (bmax * 1.08)  # noqa: E731
    ky = lambda k: pad + ph * (1 - (math.log10(max(k, 1e-12)) - lo) / (hi - lo))  # noqa: E731
    for e in range(lo, hi + 1):
        y = ky(10.0 ** e)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for b in range(0, int(bmax * 1.08) + 1, 4):
        out.append(f'<text x="{bx(b):.1f}" y="{pad + ph + 16}" text-anchor="middle">{b}</text>')
    for i, r in enumerate(results):
        x, y = bx(r.bits_per_param), ky(r.kl_mean)
        c = colors[i % len(colors)]
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{c}"/>')
        out.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" fill="{c}">{r.scheme}</text>')

    # panel 2: CDF of per-character KL
    x0 = 2 * pad + pw
    frame(x0, "distribution of per-character KL", "KL (nats, log scale)", "fraction of characters ≤ KL")
    positive = np.concatenate([v[v > 0] for v in kl_columns.values()] or [np.ones(1)])
    lo2 = math.floor(math.log10(max(np.percentile(positive, 1), 1e-12)))
    hi2 = math.ceil(math.log10(positive.max()))
    hi2 = max(hi2, lo2 + 1)
    cx = lambda k: x0 + pw * (math.log10(max(k, 10.0 ** lo2)) - lo2) / (hi2 - lo2)  # noqa: E731
    for e in range(lo2, hi2 + 1):
        out.append(f'<text x="{cx(10.0 ** e):.1f}" y="{pad + ph + 16}" text-anchor="middle">1e{e}</text>')
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = pad + ph * (1 - f)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{f:g}</text>')
    for i, (name, kl) in enumerate(kl_columns.items()):
        xs = np.sort(kl.astype(np.float64))
        idx = np.unique(np.linspace(0, xs.size - 1, min(xs.size, 200)).astype(int))
        pts = " ".join(f"{cx(xs[j]):.1f},{pad + ph * (1 - (j + 1) / xs.size):.1f}" for j in idx)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colors[i % len(colors)]}" stroke-width="1.5"/>')
        out.append(f'<text x="{x0 + pw + 5}" y="{pad + 14 * i + 10}" fill="{colors[i % len(colors)]}" '
                   f'font-size="11">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
