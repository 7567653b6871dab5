"""The result of :func:`quantdrift.compare`: per-token columns and the
statistics people read from llama.cpp's KLD mode, and more.

Every statistic is computed from the per-token columns, so reports of shards
merge exactly (:meth:`Report.merge` concatenates the columns): a sharded run
equals a single run, percentiles included.

Where llama.cpp's ``llama-perplexity --kl-divergence`` defines a statistic,
its formula is used, so numbers are comparable:

* mean ± standard error: ``MU(s, s², n)`` = ``s/n ± sqrt((s²/n − (s/n)²)/(n−1))``
  (0 when the variance is not positive or n ≤ 10);
* covariance of the two NLL means: ``(Σab/n − (Σa/n)(Σb/n))/(n−1)`` (0 when n < 10);
* percentiles: sort, ``p = f·(n−1)``, linear interpolation between the
  neighbours (the median is the mean of the middle two when n is even);
* ``RMS Δp = sqrt(mean Δp²) ± 0.5/RMS · MU(Δp², Δp⁴)``;
* ``Same top p = n_same/n ± sqrt(p(1−p)/(n−1))``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ._errors import InputError

#: Percentile levels of KL and JS, as llama.cpp prints them (fractions).
KL_LEVELS: Tuple[Tuple[str, float], ...] = (
    ("max", 1.0),
    ("p99.9", 0.999),
    ("p99", 0.99),
    ("p95", 0.95),
    ("p90", 0.90),
    ("median", 0.5),
    ("p10", 0.10),
    ("p5", 0.05),
    ("p1", 0.01),
    ("p0.1", 0.001),
    ("min", 0.0),
)
#: Percentile levels of Δp, as llama.cpp prints them.
DP_LEVELS: Tuple[Tuple[str, float], ...] = (
    ("max", 1.0),
    ("p99.9", 0.999),
    ("p99", 0.99),
    ("p95", 0.95),
    ("p90", 0.90),
    ("p75", 0.75),
    ("median", 0.5),
    ("p25", 0.25),
    ("p10", 0.10),
    ("p5", 0.05),
    ("p1", 0.01),
    ("p0.1", 0.001),
    ("min", 0.0),
)


def mean_se(values: np.ndarray) -> Tuple[float, float]:
    """llama.cpp's ``MU``: the mean and its standard error, from float64 sums."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan, math.nan
    s, s2 = float(x.sum()), float((x * x).sum())
    return _mu(s, s2, n)


def _mu(s: float, s2: float, n: int) -> Tuple[float, float]:
    f = s / n
    var = s2 / n - f * f
    se = math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0
    return f, se


def _cov(a: np.ndarray, b: np.ndarray) -> float:
    n = a.size
    if n < 10:
        return 0.0
    sa, sb, sab = float(a.sum()), float(b.sum()), float((a * b).sum())
    return (sab / n - (sa / n) * (sb / n)) / (n - 1)


def _exp(x: float) -> float:
    """exp(x) as a float: +inf past float64's range (math.exp raises there;
    a mean NLL above ~709 nats is a PPL beyond float64, not an error)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _expm1(x: float) -> float:
    try:
        return math.expm1(x)
    except OverflowError:
        return math.inf


def _clamp0(x: float) -> float:
    """max(x, 0) that keeps NaN: a variance made of infinite terms is
    undefined, not 0."""
    return x if math.isnan(x) else max(x, 0.0)


def percentiles(values: np.ndarray, levels: Sequence[Tuple[str, float]]) -> Dict[str, float]:
    """Percentiles by llama.cpp's rule: sort, ``p = f·(n−1)``, interpolate."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    out: Dict[str, float] = {}
    for name, f in levels:
        if n == 0:
            out[name] = math.nan
            continue
        p = f * (n - 1)
        i = min(int(math.floor(p)), n - 1)
        frac = p - i
        if frac == 0.0:
            # Exactly on a sample: no blend, so an infinite neighbour (KL is
            # +inf where the other model gives a token probability 0) cannot
            # turn the answer into 0·inf = NaN.
            out[name] = float(x[i])
            continue
        hi = x[min(i + 1, n - 1)]
        out[name] = float((1 - frac) * x[i] + frac * hi)
    return out


@dataclass
class Report:
    """Per-token statistics of ``other`` against ``base`` and their summary.

    Columns (one entry per scored token, in row order): ``kl`` = KL(base‖other),
    ``reverse_kl`` = KL(other‖base), ``js``, ``top1_base``/``top1_other``,
    ``overlap`` (k → |top-k ∩ top-k|/k), and with token ids ``nll_base``/
    ``nll_other`` (−ln p of the actual next token), all float32/int32 numpy
    arrays. ``rows`` holds each token's row in the sources, ``sequence`` and
    ``position`` its sequence and position where known (−1 otherwise).
    """

    base_name: str
    other_name: str
    vocab: int
    n_rows: int
    kl: np.ndarray
    reverse_kl: np.ndarray
    js: np.ndarray
    top1_base: np.ndarray
    top1_other: np.ndarray
    overlap: Dict[int, np.ndarray]
    rows: np.ndarray
    sequence: np.ndarray
    position: np.ndarray
    nll_base: Optional[np.ndarray] = None
    nll_other: Optional[np.ndarray] = None
    tokens: Optional[np.ndarray] = None
    temperature: float = 1.0
    base_layout: str = "dense"
    n_sequences: int = 0
    worst_n: int = 10
    metrics: Tuple[str, ...] = ("kl", "js")
    _cache: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ basics
    @property
    def n_tokens(self) -> int:
        """Number of scored tokens."""
        return int(self.kl.size)

    @property
    def has_tokens(self) -> bool:
        """Whether next-token ids were given (PPL, Δp and the NLL columns)."""
        return self.nll_base is not None

    @property
    def delta_p(self) -> Optional[np.ndarray]:
        """p_other(token) − p_base(token) per token (float32), or None."""
        if self.nll_base is None or self.nll_other is None:
            return None
        p = np.exp(-self.nll_other.astype(np.float32))
        p_base = np.exp(-self.nll_base.astype(np.float32))
        return (p - p_base).astype(np.float32)

    # ------------------------------------------------------------- statistics
    def summary(self) -> Dict[str, Any]:
        """Every statistic as plain Python numbers (what ``to_dict`` holds)."""
        if "summary" in self._cache:
            return self._cache["summary"]
        n = self.n_tokens
        out: Dict[str, Any] = {
            "base": self.base_name,
            "other": self.other_name,
            "vocab": self.vocab,
            "rows": self.n_rows,
            "tokens": n,
            "temperature": self.temperature,
        }
        kl_mean, kl_se = mean_se(self.kl)
        out["kl"] = {"mean": kl_mean, "se": kl_se, **percentiles(self.kl, KL_LEVELS)}
        rkl_mean, rkl_se = mean_se(self.reverse_kl)
        out["reverse_kl"] = {"mean": rkl_mean, "se": rkl_se, **percentiles(self.reverse_kl, KL_LEVELS)}
        js_mean, js_se = mean_se(self.js)
        out["js"] = {"mean": js_mean, "se": js_se, **percentiles(self.js, KL_LEVELS)}
        same = int(np.count_nonzero(self.top1_base == self.top1_other))
        p_same = same / n if n else math.nan
        out["same_top1"] = {
            "fraction": p_same,
            "se": math.sqrt(p_same * (1 - p_same) / (n - 1)) if n > 1 else 0.0,
            "count": same,
        }
        out["topk_overlap"] = {str(k): mean_se(v)[0] for k, v in self.overlap.items()}
        if self.has_tokens:
            out.update(self._token_statistics())
        if self.sequence is not None and np.any(self.sequence >= 0):
            sums = self.per_sequence()
            out["per_sequence_kl"] = {
                "sequences": int(sums.size),
                "mean": float(sums.mean()) if sums.size else math.nan,
            }
        self._cache["summary"] = out
        return out

    def _token_statistics(self) -> Dict[str, Any]:
        assert self.nll_base is not None and self.nll_other is not None, "called only with tokens"
        nq = self.nll_other.astype(np.float64)
        nb = self.nll_base.astype(np.float64)
        # An NLL is unknown (NaN) only where a top-k base does not list the
        # token; such tokens are left out of PPL and Δp. An NLL of +inf (the
        # model gives the actual token probability 0) is known and stays in:
        # PPL = exp(mean NLL) is then +inf, as in llama.cpp.
        known = ~(np.isnan(nq) | np.isnan(nb))
        out: Dict[str, Any] = {}
        if not np.all(known):
            out["tokens_with_both_nll"] = int(known.sum())
            nq, nb = nq[known], nb[known]
        n = nq.size
        if n == 0:
            return out
        with np.errstate(invalid="ignore", over="ignore"):
            mq, sq = mean_se(nq)
            mb, sb = mean_se(nb)
            cov = _cov(nq, nb)
        ppl_q, ppl_b = _exp(mq), _exp(mb)
        cor = cov / (sq * sb) if sq > 0 and sb > 0 else math.nan
        ratio = mq - mb
        ratio_se = math.sqrt(_clamp0(sq * sq + sb * sb - 2 * cov))
        u_q, u_b = ppl_q * sq, ppl_b * sb
        if math.isfinite(ppl_q) and math.isfinite(ppl_b):
            diff = ppl_q - ppl_b  # llama.cpp's form, bit for bit
        else:
            # One of the PPLs overflowed float64 (mean NLL > ~709): their
            # difference is exp(m_B)·(exp(m_Q − m_B) − 1), exactly 0 where
            # the means agree; inf − inf would give NaN.
            diff = 0.0 if ratio == 0 else _exp(mb) * _expm1(ratio)
        out["ppl_other"] = {"value": ppl_q, "se": u_q}
        out["ppl_base"] = {"value": ppl_b, "se": u_b}
        out["nll_correlation"] = cor
        out["ln_ppl_ratio"] = {"mean": ratio, "se": ratio_se}
        out["ppl_ratio"] = {"value": _exp(ratio), "se": _exp(ratio) * ratio_se}
        out["ppl_diff"] = {
            "value": diff,
            "se": math.sqrt(_clamp0(u_q * u_q + u_b * u_b - 2 * ppl_q * ppl_b * cov)),
        }
        delta_p = self.delta_p
        assert delta_p is not None
        dp = delta_p[known].astype(np.float64)
        dp_mean, dp_se = mean_se(dp)
        dp2 = dp * dp
        rms = math.sqrt(float(dp2.mean()))
        _, dp2_se = _mu(float(dp2.sum()), float((dp2 * dp2).sum()), n)
        out["delta_p"] = {
            "mean": dp_mean,
            "se": dp_se,
            "rms": rms,
            "rms_se": 0.5 / rms * dp2_se if rms > 0 else 0.0,
            **percentiles(dp, DP_LEVELS),
        }
        return out

    def per_sequence(self) -> np.ndarray:
        """KL(base‖other) summed over each sequence's scored tokens (float64):
        by the chain rule (Prop 4.2), the KL between the two models'
        distributions over the sequence's scored continuation, given its
        context."""
        ids = self.sequence
        if ids is None or not np.any(ids >= 0):
            return np.zeros(0)
        count = int(ids.max()) + 1
        return np.bincount(ids[ids >= 0], weights=self.kl[ids >= 0].astype(np.float64), minlength=count)

    def per_position(self) -> np.ndarray:
        """Mean KL(base‖other) at each position within a sequence (NaN where
        no token was scored)."""
        pos = self.position
        if pos is None or not np.any(pos >= 0):
            return np.zeros(0)
        ok = pos >= 0
        count = int(pos.max()) + 1
        sums = np.bincount(pos[ok], weights=self.kl[ok].astype(np.float64), minlength=count)
        n = np.bincount(pos[ok], minlength=count)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, sums / np.maximum(n, 1), np.nan)

    def worst(self, n: Optional[int] = None) -> List[Dict[str, Any]]:
        """The ``n`` tokens with the largest KL(base‖other), worst first: row,
        KL, JS, both models' top-1 tokens, and the actual token if known."""
        n = self.worst_n if n is None else n
        n = min(n, self.n_tokens)
        if n <= 0:
            return []
        idx = np.argpartition(-self.kl, n - 1)[:n]
        idx = idx[np.lexsort((self.rows[idx], -self.kl[idx]))]
        out = []
        for i in idx.tolist():
            item: Dict[str, Any] = {
                "row": int(self.rows[i]),
                "kl": float(self.kl[i]),
                "js": float(self.js[i]),
                "top1_base": int(self.top1_base[i]),
                "top1_other": int(self.top1_other[i]),
            }
            if self.sequence[i] >= 0:
                item["sequence"] = int(self.sequence[i])
            if self.position[i] >= 0:
                item["position"] = int(self.position[i])
            if self.tokens is not None:
                item["token"] = int(self.tokens[i])
            out.append(item)
        return out

    # ---------------------------------------------------------------- merging
    @classmethod
    def merge(cls, reports: Iterable["Report"]) -> "Report":
        """One report of several, as if their sources had been compared as
        one concatenated source (rows and sequences renumbered in order)."""
        reports = list(reports)
        if not reports:
            raise InputError("merge needs at least one report")
        first = reports[0]
        # Settings under which the columns were computed: columns of reports
        # that differ in any of them measure different things, and a merged
        # report could state only one of them.
        settings = {
            "vocab": lambda r: r.vocab,
            "temperature": lambda r: r.temperature,
            "top-k overlap sizes": lambda r: sorted(r.overlap),
            "token ids (PPL, Δp)": lambda r: "given" if r.has_tokens else "not given",
            "base layout": lambda r: r.base_layout,
            "metrics": lambda r: list(r.metrics),
        }
        for i, r in enumerate(reports[1:], start=1):
            for what, of in settings.items():
                if of(r) != of(first):
                    raise InputError(
                        f"cannot merge reports computed with different settings: {what} {of(first)} in "
                        f"report 0 ({first.base_name} vs {first.other_name}) but {of(r)} in report {i} "
                        f"({r.base_name} vs {r.other_name})"
                    )
        row_base, seq_base = 0, 0
        rows, seqs = [], []
        for r in reports:
            rows.append(r.rows + row_base)
            seqs.append(np.where(r.sequence >= 0, r.sequence + seq_base, -1))
            row_base += r.n_rows
            seq_base += r.n_sequences
        cat = np.concatenate

        def column(name):
            values = [getattr(r, name) for r in reports]
            return None if values[0] is None else cat(values)

        return cls(
            base_name=first.base_name if len(reports) == 1 else f"{first.base_name} (+{len(reports) - 1} shards)",
            other_name=first.other_name if len(reports) == 1 else f"{first.other_name} (+{len(reports) - 1} shards)",
            vocab=first.vocab,
            n_rows=row_base,
            kl=column("kl"),
            reverse_kl=column("reverse_kl"),
            js=column("js"),
            top1_base=column("top1_base"),
            top1_other=column("top1_other"),
            overlap={k: cat([r.overlap[k] for r in reports]) for k in first.overlap},
            rows=cat(rows),
            sequence=cat(seqs),
            position=column("position"),
            nll_base=column("nll_base"),
            nll_other=column("nll_other"),
            tokens=column("tokens"),
            temperature=first.temperature,
            base_layout=first.base_layout,
            n_sequences=seq_base,
            worst_n=first.worst_n,
            metrics=first.metrics,
        )

    # -------------------------------------------------------------- rendering
    def to_dict(self, *, arrays: bool = False) -> Dict[str, Any]:
        """The summary (and, with ``arrays=True``, the per-token columns as
        lists) as plain Python data."""
        out = dict(self.summary())
        out["worst"] = self.worst()
        pos = self.per_position()
        if pos.size:
            out["per_position_kl"] = [None if math.isnan(x) else float(x) for x in pos]
        if arrays:
            out["columns"] = {
                name: values.tolist()
                for name, values in self.columns().items()
            }
        return out

    def columns(self) -> Dict[str, np.ndarray]:
        """Every per-token column by name."""
        cols: Dict[str, np.ndarray] = {
            "row": self.rows,
            "kl": self.kl,
            "reverse_kl": self.reverse_kl,
            "js": self.js,
            "top1_base": self.top1_base,
            "top1_other": self.top1_other,
        }
        for k, v in self.overlap.items():
            cols[f"top{k}_overlap"] = v
        delta_p = self.delta_p
        if self.nll_base is not None and self.nll_other is not None and delta_p is not None:
            cols["nll_base"] = self.nll_base
            cols["nll_other"] = self.nll_other
            cols["delta_p"] = delta_p
        if self.tokens is not None:
            cols["token"] = self.tokens
        cols["sequence"] = self.sequence
        cols["position"] = self.position
        return cols

    def to_json(self, path: Optional[str] = None, *, indent: int = 2) -> str:
        """The summary as JSON text (NaN written as null); written atomically
        to ``path`` when given."""
        text = json.dumps(_jsonable(self.to_dict()), indent=indent, allow_nan=False)
        if path is not None:
            from ._files import write_text_atomic

            write_text_atomic(path, text + "\n")
        return text

    def __str__(self) -> str:
        return render(self)

    def plot(self, path: str) -> None:
        """Writes a figure: KL histogram on a log axis, its CDF, and the
        per-position mean KL (needs matplotlib: ``pip install quantdrift[plot]``)."""
        from ._plots import plot_report

        plot_report(self, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def render(report: Report) -> str:
    """The report as text, in llama.cpp's layout where it has one."""
    s = report.summary()
    lines = [
        f"quantdrift compare: {report.base_name} (base) vs {report.other_name}",
        f"{s['tokens']} tokens scored of {s['rows']} rows, vocabulary {s['vocab']}"
        + (f", temperature {s['temperature']:g}" if s["temperature"] != 1.0 else ""),
        "",
    ]
    if report.has_tokens and "ppl_other" in s:
        pq, pb = s["ppl_other"], s["ppl_base"]
        lines.append("====== Perplexity statistics ======")
        if "tokens_with_both_nll" in s:
            lines.append(
                f"PPL and Δp over {s['tokens_with_both_nll']} of {s['tokens']} tokens: for the rest the "
                "top-k base does not list the actual token, so its NLL is unknown"
            )
        lines += [
            f"Mean PPL(Q)                   : {pq['value']:10.6f} ± {pq['se']:10.6f}",
            f"Mean PPL(base)                : {pb['value']:10.6f} ± {pb['se']:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * s['nll_correlation']:6.2f}%",
            f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_ppl_ratio']['mean']:10.6f} ± {s['ln_ppl_ratio']['se']:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {s['ppl_ratio']['value']:10.6f} ± {s['ppl_ratio']['se']:10.6f}",
            f"Mean PPL(Q)-PPL(base)         : {s['ppl_diff']['value']:10.6f} ± {s['ppl_diff']['se']:10.6f}",
            "",
        ]
    lines.append("====== KL divergence statistics ======")
    lines += _stat_block("KLD", s["kl"], KL_LEVELS)
    if "reverse_kl" in report.metrics:
        lines += ["", "====== Reverse KL, KL(Q||base) ======"]
        lines += _stat_block("RKL", s["reverse_kl"], KL_LEVELS)
    if "js" in report.metrics:
        lines += ["", "====== Jensen-Shannon divergence ======"]
        lines += _stat_block("JSD", s["js"], KL_LEVELS)
    lines += ["", "====== Token probability statistics ======"]
    if report.has_tokens and "delta_p" in s:
        dp = s["delta_p"]
        lines += _stat_block("Δp", dp, DP_LEVELS, percent=True)
        lines.append(f"RMS Δp    : {100 * dp['rms']:6.3f} ± {100 * dp['rms_se']:5.3f} %")
    st = s["same_top1"]
    lines.append(f"Same top p: {100 * st['fraction']:6.3f} ± {100 * st['se']:5.3f} %")
    for k, v in s["topk_overlap"].items():
        if k != "1":
            lines.append(f"Top-{k} overlap: {100 * v:6.3f} %")
    worst = report.worst()
    if worst:
        lines += ["", f"====== {len(worst)} tokens with the largest KLD ======"]
        lines.append("      row         KLD   top1(base)  top1(Q)" + ("    token" if report.tokens is not None else ""))
        for w in worst:
            line = f"{w['row']:9d} {w['kl']:11.6f} {w['top1_base']:12d} {w['top1_other']:8d}"
            if "token" in w:
                line += f" {w['token']:8d}"
            lines.append(line)
    return "\n".join(lines)


_LABELS = {"max": "Maximum", "median": "Median ", "min": "Minimum"}


def _stat_block(name: str, stats: Dict[str, float], levels, *, percent: bool = False) -> List[str]:
    scale, unit = (100.0, " %") if percent else (1.0, "")
    fmt = "{:8.3f}" if percent else "{:10.6f}"
    lines = [f"Mean    {name}: {fmt.format(scale * stats['mean'])} ± {fmt.format(scale * stats['se'])}{unit}"]
    for key, f in levels:
        label = _LABELS.get(key) or f"{100 * f:4.1f}%  "
        lines.append(f"{label} {name}: {fmt.format(scale * stats[key])}{unit}")
    return lines
