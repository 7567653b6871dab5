"""Log-likelihood vectors, model maps and training trajectories.

A model ``i`` is represented by its vector ``ℓ_i`` of log-likelihoods
``log p_i(x_s)`` over a fixed set of N texts (each the **sum** of the
next-token log-probabilities over the text). Stacking K models gives the
K×N matrix L. Double centring ``Q = H_K · L · H_N`` removes each model's
level and each text's difficulty, and

    KL(p_i, p_j) ≈ ‖q_i − q_j‖² / (2N) = Var_s(ℓ_is − ℓ_js) / 2   (ddof 0)

in nats per text, for models close to each other and to the distribution
the texts were drawn from (a second-order expansion; to that order the
estimate is symmetric). In bits per byte it is divided by ``B̄ · ln 2``
with ``B̄`` the mean byte length of the texts (the original code's choice:
one mean over all texts, not per-text byte counts).

The centring and the K×K matrix are computed in Rust (``quantdrift._core``).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from ._errors import InputError, QuantdriftError, ShapeError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "loglik_from_token_logprobs",
    "loglik_from_logits",
    "load_loglik",
    "double_centre",
    "kl_matrix",
    "clip_quantile",
    "ModelMap",
    "fit_power_law",
    "PowerLaw",
    "Trajectory",
    "weight_distance",
]


# ---------------------------------------------------------------------------
# Building L
# ---------------------------------------------------------------------------


def loglik_from_token_logprobs(logprobs: Any, lengths: Any) -> np.ndarray:
    """Per-text log-likelihoods from per-token log-probabilities.

    ``logprobs``: the log-probability of each scored token, 1-D (one model)
    or 2-D (models × tokens); ``lengths``: the number of scored tokens of
    each text, in order (summing to the token count). Returns float64 sums
    per text (shape ``[texts]`` or ``[models, texts]``); a text with no
    scored token gets 0.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer):
        raise InputError("lengths must be a 1-D int array of per-text token counts")
    if np.any(lengths < 0):
        raise InputError(f"lengths must be >= 0, got {int(lengths.min())} for text {int(np.argmin(lengths))}")
    if lengths.size and int(lengths.max()) > np.iinfo(np.int64).max:
        raise InputError(f"lengths[{int(np.argmax(lengths))}] = {int(lengths.max())} is more tokens than any array holds")
    # Unsigned counts: int64 offsets (uint64 and int64 would promote to float64).
    lengths = lengths.astype(np.int64)
    if lp.ndim not in (1, 2):
        raise ShapeError(f"logprobs must be 1-D (tokens) or 2-D (models × tokens), got shape {lp.shape}")
    total = int(lengths.sum())
    if lp.shape[-1] != total:
        raise ShapeError(f"logprobs has {lp.shape[-1]} tokens but lengths sum to {total}")
    out_shape = lp.shape[:-1] + (lengths.size,)
    if lengths.size == 0:
        return np.zeros(out_shape)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nonempty = lengths > 0
    out = np.zeros(out_shape)
    if np.any(nonempty):
        out[..., nonempty] = np.add.reduceat(lp, starts[nonempty], axis=-1)
    return out


def loglik_from_logits(logits: Any, tokens: Any, sequences: Any, **compare_options: Any) -> np.ndarray:
    """Per-text log-likelihoods of one model from its logit dump.

    ``logits`` is anything :func:`quantdrift.compare` reads (arrays, ``.npy``,
    safetensors, llama.cpp files, shards), streamed in chunks; ``tokens`` the
    actual next token of every row; ``sequences`` the rows of each text (one
    int or an array of lengths). Each text's value is ``−Σ nll`` over its
    scored rows (``mask``/``prompt_lengths`` in ``compare_options`` choose
    them).

    Precision: each token's NLL is the report's float32 value (relative
    error ≤ 6e-8), and the sums are float64, so a text of T tokens carries
    an error of about 1e-7·√T nats: far below the differences between
    models that the KL estimate resolves. For log-probabilities already in
    float64, :func:`loglik_from_token_logprobs` keeps every digit.
    """
    from .compare import compare

    if sequences is None:
        raise InputError(
            "loglik_from_logits needs the texts' boundaries: sequences= (rows per text, one int or an array of lengths)"
        )
    compare_options.setdefault("progress", False)
    report = compare(logits, logits, tokens=tokens, sequences=sequences, **compare_options)
    if report.nll_base is None:
        raise InputError("loglik_from_logits needs the next token of every row: pass tokens=")
    seq = report.sequence
    ok = seq >= 0
    count = report.n_sequences if getattr(report, "n_sequences", 0) else int(seq.max()) + 1
    return -np.bincount(seq[ok], weights=report.nll_base[ok].astype(np.float64), minlength=count)


def load_loglik(path: PathLike, *, names_column: Optional[bool] = None) -> Tuple[np.ndarray, Optional[List[str]]]:
    """Loads a K×N log-likelihood matrix and its model names (or None).

    * ``.npy``: a 2-D array;
    * ``.csv``: one model per row, comma separated; with
      ``names_column=None`` a first column that is not numeric holds the
      names; say ``True`` when the names are numbers (checkpoint steps,
      say), ``False`` when there is no name column;
    * ``.json``: an object name → vector, or a list of vectors;
    * ``.pkl``/``.pickle``: a mapping name → vector (the released
      ``*_log-likelihood_1018.pkl`` format) or an array. Pickles run code
      when loaded: only open files you trust.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    names: Optional[List[str]] = None
    if suffix == ".npy":
        from .sources import read_npy

        data: Any = read_npy(p, f"matrix {p}")  # magic, header, size checked; no pickles
    elif suffix == ".csv":
        rows = [line.split(",") for line in p.read_text().splitlines() if line.strip()]
        data = None
        if not names_column:
            try:
                data = [[float(v) for v in r] for r in rows]
            except ValueError as e:
                if names_column is False:
                    raise InputError(f"{p}: not a numeric CSV ({e})") from None
        if data is None:
            names = [r[0].strip() for r in rows]
            try:
                data = [[float(v) for v in r[1:]] for r in rows]
            except ValueError as e:
                raise InputError(f"{p}: not a numeric CSV after the name column ({e})") from None
    elif suffix == ".json":
        try:
            data = json.loads(p.read_text())
        except ValueError as e:
            raise InputError(f"{p}: not valid JSON ({e})") from None
    elif suffix in (".pkl", ".pickle"):
        with open(p, "rb") as fh:
            try:
                data = pickle.load(fh)
            except Exception as e:  # noqa: BLE001 - unpickling raises whatever the bytes make it raise
                raise InputError(f"{p}: cannot unpickle the log-likelihoods: {type(e).__name__}: {e}") from None
    else:
        raise InputError(f"{p}: unknown log-likelihood file type {suffix!r}; use .npy, .csv, .json, .pkl or .pickle")
    L, mapped = _stacked(data, str(p))
    return L, mapped if mapped is not None else names


def _vector(v: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: not a vector of numbers ({e})") from None


def _stacked(data: Any, where: str) -> Tuple[np.ndarray, Optional[List[str]]]:
    """A K×N float64 matrix from an array, a list of vectors or a mapping
    name → vector (then also the names); ``where`` names the source in
    errors."""
    names: Optional[List[str]] = None
    rows: Optional[List[np.ndarray]] = None
    if isinstance(data, Mapping):
        names = [str(k) for k in data]
        rows = [_vector(v, f"{where}: model {k!r}").ravel() for k, v in data.items()]
    elif isinstance(data, (list, tuple)) and any(isinstance(v, (list, tuple, np.ndarray)) for v in data):
        rows = [_vector(v, f"{where}: row {i}") for i, v in enumerate(data)]
    if rows is not None:
        lengths = {v.size for v in rows if v.ndim == 1}
        if len(lengths) > 1:
            raise ShapeError(f"{where}: the vectors have different lengths {sorted(lengths)}")
        data = rows
    try:
        L = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: not a matrix of numbers ({e})") from None
    if L.ndim != 2:
        raise ShapeError(f"{where}: expected a 2-D models × texts matrix, got shape {L.shape}")
    return L, names


# ---------------------------------------------------------------------------
# Centring and the KL matrix
# ---------------------------------------------------------------------------


def _matrix(L: Any, arg: str = "L") -> np.ndarray:
    L = np.ascontiguousarray(L, dtype=np.float64)
    if L.ndim != 2:
        raise ShapeError(f"{arg} must be 2-D (models × texts), got shape {L.shape}")
    return L


def double_centre(L: Any) -> np.ndarray:
    """``Q = H_K · L · H_N`` (float64): each row's mean over texts removed,
    then each column's mean over models."""
    return _core.llv_double_centre(_matrix(L))


def kl_matrix(Q: Any) -> np.ndarray:
    """K×K matrix ``‖q_i − q_j‖² / (2N)`` of the rows of ``Q``, in nats per
    text; exactly symmetric with a zero diagonal."""
    return _core.llv_kl_matrix(_matrix(Q, "Q"))


def clip_quantile(L: Any, q: float) -> np.ndarray:
    """``max(L, quantile_q(L))`` with one global quantile (the original clips
    at q = 0.02)."""
    L = _matrix(L)
    if not (0.0 <= q < 1.0):
        raise InputError(f"clip must be a quantile in [0, 1), got {q}")
    bad = np.isnan(L) | (L == np.inf)
    if bad.any():
        i, j = np.unravel_index(int(np.argmax(bad)), L.shape)
        raise InputError(f"L[{i}, {j}] is {L[i, j]}; log-likelihoods must be finite or -inf")
    if L.size == 0:
        return L.copy()
    # Between two −inf entries linear interpolation gives NaN; between −inf
    # and a finite value, −inf: either way the level is −inf.
    with np.errstate(invalid="ignore"):
        level = np.quantile(L, q)
    if not np.isfinite(level):
        lost = np.isneginf(L)
        i, j = np.unravel_index(int(np.argmax(lost)), L.shape)
        raise InputError(
            f"the {q} quantile of L is -inf: {int(lost.sum())} of {L.size} log-likelihoods are -inf "
            f"(the first L[{i}, {j}]); clip at a higher quantile, or drop the texts a model cannot score"
        )
    return np.maximum(L, level)


class ModelMap:
    """A map of K models from their log-likelihoods on N shared texts.

    ``L``: K×N (models × texts) log-likelihoods, an array or a mapping
    name → vector; ``names``: K model names (default ``model0…``);
    ``text_bytes``: the texts' byte lengths (N values, or one mean), needed
    for bits per byte; ``clip``: a global quantile to clip L at from below
    before centring (the original uses 0.02), or None.
    """

    def __init__(
        self,
        L: Any,
        names: Optional[Sequence[str]] = None,
        text_bytes: Any = None,
        clip: Optional[float] = None,
    ):
        if isinstance(L, (Mapping, list, tuple)):
            L, mapped = _stacked(L, "L")
            if names is None:
                names = mapped
        L = _matrix(L)
        k, n = L.shape
        if names is None:
            names = [f"model{i}" for i in range(k)]
        names = [str(s) for s in names]
        if len(names) != k:
            raise ShapeError(f"names has {len(names)} entries but L has {k} rows (models)")
        if len(set(names)) != k:
            raise InputError("names must be unique")
        if clip is not None:
            L = clip_quantile(L, clip)
        self.L = L
        self.names = names
        self.clip = clip
        self.mean_bytes: Optional[float] = None
        if text_bytes is not None:
            tb = np.asarray(text_bytes, dtype=np.float64)
            if tb.ndim == 0:
                mean = float(tb)
            elif tb.shape == (n,):
                mean = float(tb.mean())
            else:
                raise ShapeError(f"text_bytes must be one number or {n} values (one per text), got shape {tb.shape}")
            if not (mean > 0 and math.isfinite(mean)):
                raise InputError(f"text_bytes must have a positive finite mean, got {mean}")
            self.mean_bytes = mean
        self._Q: Optional[np.ndarray] = None
        self._kl: Optional[np.ndarray] = None

    @property
    def shape(self) -> Tuple[int, int]:
        return self.L.shape  # type: ignore[return-value]

    @property
    def Q(self) -> np.ndarray:
        """The double-centred matrix ``H_K · L · H_N``."""
        if self._Q is None:
            self._Q = double_centre(self.L)
        return self._Q

    def kl_matrix(self, unit: str = "nats") -> np.ndarray:
        """K×K KL estimates: ``"nats"`` per text, or ``"bpb"`` (bits per
        byte: nats / (B̄ ln 2), B̄ the mean text byte length)."""
        if self._kl is None:
            self._kl = kl_matrix(self.Q)
        if unit == "nats":
            return self._kl.copy()
        if unit == "bpb":
            if self.mean_bytes is None:
                raise InputError("unit='bpb' needs the texts' byte lengths: ModelMap(..., text_bytes=...)")
            return self._kl / (self.mean_bytes * math.log(2.0))
        raise InputError(f"unit must be 'nats' or 'bpb', got {unit!r}")

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise InputError(f"unknown model {name!r}; the map holds {len(self.names)} models") from None

    def nearest(self, name: str, k: int = 5, unit: str = "nats") -> List[Tuple[str, float]]:
        """The ``k`` models closest to ``name`` by the KL estimate, nearest
        first, as (name, KL) pairs."""
        i = self._index(name)
        row = self.kl_matrix(unit)[i]
        order = [j for j in np.argsort(row, kind="stable") if j != i][: max(int(k), 0)]
        return [(self.names[j], float(row[j])) for j in order]

    def coords(self, method: str = "pca", dims: int = 2, **options: Any) -> np.ndarray:
        """K×dims coordinates of the models.

        * ``"pca"``: the leading left singular vectors of Q scaled by their
          singular values over √(2N), so that squared distances in the full
          space are the KL estimates;
        * ``"mds"``: classical MDS of the KL matrix taken as squared
          distances;
        * ``"tsne"``: scikit-learn's TSNE on the rows of Q (``pip install
          'quantdrift[tsne]'``) with the original's settings as defaults:
          perplexity=30 (K − 1 for maps of 30 models or fewer, since
          scikit-learn needs it below K), init="pca", metric="sqeuclidean",
          random_state=42; ``options`` override them.
        """
        k, n = self.shape
        if method == "pca":
            U, S, _ = np.linalg.svd(self.Q, full_matrices=False)
            X = U[:, :dims] * (S[:dims] / math.sqrt(2.0 * n))
        elif method == "mds":
            D = self.kl_matrix()
            H = np.eye(k) - 1.0 / k
            B = -0.5 * H @ D @ H
            w, V = np.linalg.eigh(B)
            order = np.argsort(w)[::-1][:dims]
            X = V[:, order] * np.sqrt(np.maximum(w[order], 0.0))
        elif method == "tsne":
            try:
                from sklearn.manifold import TSNE
            except ImportError as e:
                raise QuantdriftError(
                    "coords(method='tsne') needs scikit-learn: pip install 'quantdrift[tsne]' (or pip install scikit-learn)"
                ) from e
            settings: Dict[str, Any] = dict(
                n_components=dims,
                perplexity=min(30.0, max(1.0, k - 1.0)),
                init="pca",
                metric="sqeuclidean",
                random_state=42,
            )
            settings.update(options)
            X = TSNE(**settings).fit_transform(self.Q / math.sqrt(2.0 * n))
        else:
            raise InputError(f"method must be 'pca', 'mds' or 'tsne', got {method!r}")
        if X.shape[1] < dims:
            X = np.pad(X, ((0, 0), (0, dims - X.shape[1])))
        return np.asarray(X, dtype=np.float64)

    def plot(
        self,
        path: PathLike,
        groups: Union[None, Sequence[str], Mapping[str, Sequence[str]]] = None,
        method: str = "pca",
        **options: Any,
    ) -> None:
        """A labelled 2-D map of the models, written atomically to ``path``
        (format from the extension). ``groups`` colours the points: one label
        per model, or a mapping label → model names (models it does not
        name are drawn as ``"other"``)."""
        from ._plots import _pyplot, save

        labels = self._group_labels(groups)
        X = self.coords(method, **options)
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 6))
        if labels is None:
            ax.scatter(X[:, 0], X[:, 1], s=18)
        else:
            groups = labels
            for g in dict.fromkeys(groups):
                sel = np.array([x == g for x in groups])
                ax.scatter(X[sel, 0], X[sel, 1], s=18, label=str(g))
            ax.legend(fontsize=8)
        for (x, y), name in zip(X, self.names):
            ax.annotate(name, (x, y), fontsize=7, xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"model map ({method}, {self.shape[0]} models, {self.shape[1]} texts)")
        try:
            save(fig, path)
        finally:
            plt.close(fig)

    def _group_labels(self, groups: Any) -> Optional[List[str]]:
        """One label per model from ``plot``'s ``groups``."""
        if groups is None:
            return None
        if isinstance(groups, Mapping):
            labels: List[Optional[str]] = [None] * len(self.names)
            for label, members in groups.items():
                for name in [members] if isinstance(members, str) else members:
                    i = self._index(str(name))
                    if labels[i] is not None:
                        raise InputError(f"groups puts model {name!r} in both {labels[i]!r} and {str(label)!r}")
                    labels[i] = str(label)
            return [label if label is not None else "other" for label in labels]
        if isinstance(groups, str) or len(groups) != len(self.names):
            n = 1 if isinstance(groups, str) else len(groups)
            raise ShapeError(
                f"groups has {n} labels but the map holds {len(self.names)} models "
                "(give one label per model, or a mapping label → model names)"
            )
        return [str(g) for g in groups]

    def to_dict(self) -> Dict[str, Any]:
        """Names, shape, options and the KL matrix (nats, and bits per byte
        when byte lengths are known), JSON-ready."""
        out: Dict[str, Any] = {
            "names": list(self.names),
            "models": self.shape[0],
            "texts": self.shape[1],
            "clip": self.clip,
            "mean_bytes": self.mean_bytes,
            "kl_nats": self.kl_matrix().tolist(),
        }
        if self.mean_bytes is not None:
            out["kl_bpb"] = self.kl_matrix("bpb").tolist()
        return out

    def __repr__(self) -> str:
        return f"ModelMap({self.shape[0]} models × {self.shape[1]} texts)"


# ---------------------------------------------------------------------------
# Trajectories: power-law exponents and weight distances
# ---------------------------------------------------------------------------

# Two-sided 97.5% Student-t quantiles by degrees of freedom (used when scipy
# is absent); beyond the table the normal quantile 1.96 is close enough.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def _t975(df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - depends on the install
        keys = [k for k in sorted(_T975) if k <= df]
        return _T975[keys[-1]] if df <= 120 else 1.96


class PowerLaw(tuple):
    """``y ≈ a · t^c`` fitted on log–log axes: (exponent, ci_low, ci_high,
    prefactor, r2)."""

    __slots__ = ()

    def __new__(cls, exponent: float, ci: Tuple[float, float], prefactor: float, r2: float):
        return super().__new__(cls, (exponent, ci[0], ci[1], prefactor, r2))

    exponent = property(lambda s: s[0])
    ci = property(lambda s: (s[1], s[2]))
    prefactor = property(lambda s: s[3])
    r2 = property(lambda s: s[4])

    def __repr__(self) -> str:
        return f"PowerLaw(exponent={self[0]:.4g}, ci=({self[1]:.4g}, {self[2]:.4g}), r2={self[4]:.3f})"


def fit_power_law(t: Any, y: Any) -> PowerLaw:
    """Least-squares fit of ``log y = log a + c · log t``: the exponent ``c``
    with a 95% confidence interval (Student t on n − 2 degrees of freedom),
    the prefactor ``a`` and R². Needs at least 3 points with t > 0, y > 0."""
    t = np.asarray(t, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if t.shape != y.shape:
        raise ShapeError(f"t and y must have the same length, got {t.size} and {y.size}")
    if t.size < 3:
        raise InputError(f"a power-law fit with a confidence interval needs at least 3 points, got {t.size}")
    if not (np.all(t > 0) and np.all(y > 0) and np.all(np.isfinite(t)) and np.all(np.isfinite(y))):
        raise InputError("t and y must be finite and positive (they are fitted on log–log axes)")
    lx, ly = np.log(t), np.log(y)
    xm, ym = lx.mean(), ly.mean()
    sxx = np.sum((lx - xm) ** 2)
    if sxx == 0:
        raise InputError("t must take at least two distinct values")
    c = float(np.sum((lx - xm) * (ly - ym)) / sxx)
    b = ym - c * xm
    resid = ly - (b + c * lx)
    df = t.size - 2
    se = math.sqrt(float(np.sum(resid**2)) / df / sxx)
    half = _t975(df) * se
    sst = float(np.sum((ly - ym) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / sst if sst > 0 else 1.0
    return PowerLaw(c, (c - half, c + half), math.exp(b), r2)


def weight_distance(a: PathLike, b: PathLike) -> float:
    """``‖W_a − W_b‖²`` summed over every floating-point tensor of two
    safetensors checkpoints (files or ``*.index.json`` sets), in float64.

    Tensors are read one at a time as zero-copy views of the memory-mapped
    files; the Rust kernel widens every element exactly to float64 and sums
    on all threads; the pages are released after each tensor, so resident
    memory stays bounded whatever the checkpoint size. Both checkpoints must
    hold the same float tensor names and shapes (dtypes may differ:
    F64/F32/F16/BF16/F8_E4M3/F8_E5M2; float8 tensors are widened exactly to
    float32 a chunk at a time). Integer tensors (such as quantized codes)
    are not weights in this sense and are left out.
    """
    from .checkpoint import _Checkpoint

    total = 0.0
    with _Checkpoint(a) as ca, _Checkpoint(b) as cb:
        fa = {n: e for n, e in ca.entries.items() if e.dtype in _FLOAT_DTYPES}
        fb = {n: e for n, e in cb.entries.items() if e.dtype in _FLOAT_DTYPES}
        if set(fa) != set(fb):
            only = sorted(set(fa) ^ set(fb))[:5]
            raise ShapeError(f"{a} and {b} hold different float tensors (e.g. {only})")
        for name in sorted(fa):
            ea, eb = fa[name], fb[name]
            if ea.shape != eb.shape:
                raise ShapeError(f"tensor {name!r}: shape {list(ea.shape)} in {a} but {list(eb.shape)} in {b}")
            total += _tensor_distance(ea, eb)
            ea.source.release(ea.start, ea.end)
            eb.source.release(eb.start, eb.end)
    return total


# safetensors float dtypes → the name the kernel takes 16-bit floats by
# (None: passed as they are; "float32": float8, widened to float32 first).
_FLOAT_DTYPES = {
    "F64": None,
    "F32": None,
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float32",
    "F8_E5M2": "float32",
}


def _tensor_distance(ea, eb) -> float:
    """‖a − b‖² of two checkpoint tensors of one shape (float64)."""
    from .checkpoint import CHUNK_ELEMENTS

    xa, xb = ea.array().reshape(-1), eb.array().reshape(-1)
    widen = "float32" in (_FLOAT_DTYPES[ea.dtype], _FLOAT_DTYPES[eb.dtype])
    step = CHUNK_ELEMENTS if widen else max(xa.size, 1)
    total = 0.0
    for s in range(0, xa.size, step):
        va, a16 = _flat(xa[s : s + step], ea.dtype)
        vb, b16 = _flat(xb[s : s + step], eb.dtype)
        total += _core.llv_squared_distance(va, vb, a16=a16, b16=b16)
    return total


def _flat(arr: np.ndarray, dtype: str) -> Tuple[np.ndarray, str]:
    """Flat values of a safetensors ``dtype`` as the kernel takes them:
    16-bit floats as uint16 with their name, float8 widened to float32."""
    kind = _FLOAT_DTYPES[dtype]
    if kind == "float32":
        return arr.astype(np.float32), "bfloat16"
    if kind is not None:
        arr = arr.view(np.uint16)
    if not (arr.flags.c_contiguous and arr.flags.aligned):
        arr = np.ascontiguousarray(arr)
    return arr, kind or "bfloat16"


def _step_name(step: float) -> str:
    """A step as written, exactly: 1000000, 2.5e+20, 0.1 (repr's shortest
    round trip, so distinct steps get distinct names)."""
    return str(int(step)) if step.is_integer() and abs(step) < 2.0**53 else repr(float(step))


class Trajectory:
    """Ordered checkpoints of one training run: ``steps`` (T values,
    increasing), their log-likelihood vectors ``L`` (T×N), optionally their
    safetensors ``weights`` paths, and the texts' ``text_bytes``.

    ``kl_from_start()`` is the KL estimate between each checkpoint and the
    first (row 0 of the KL matrix); ``weight_from_start()`` is
    ``‖W_t − W_t0‖²``; ``fit()`` fits both against ``t − t0`` on log–log
    axes and returns the exponents c_q, c_w and the Hölder exponent
    α = c_q / c_w.
    """

    def __init__(self, steps: Any, L: Any, weights: Optional[Sequence[PathLike]] = None,
                 text_bytes: Any = None, clip: Optional[float] = None):
        steps = np.asarray(steps, dtype=np.float64).ravel()
        L = _matrix(L)
        if steps.size != L.shape[0]:
            raise ShapeError(f"steps has {steps.size} values but L has {L.shape[0]} rows (checkpoints)")
        if not np.all(np.isfinite(steps)):
            i = int(np.argmin(np.isfinite(steps)))
            raise InputError(f"steps[{i}] is {steps[i]}; steps must be finite")
        if np.any(np.diff(steps) <= 0):
            i = int(np.argmax(np.diff(steps) <= 0)) + 1
            raise InputError(f"steps must be strictly increasing: steps[{i}] = {steps[i]:g} follows {steps[i - 1]:g}")
        if weights is not None and len(weights) != steps.size:
            raise ShapeError(f"weights has {len(weights)} paths but there are {steps.size} checkpoints")
        self.steps = steps
        self.map = ModelMap(L, names=[f"step{_step_name(s)}" for s in steps], text_bytes=text_bytes, clip=clip)
        self.weights = list(weights) if weights is not None else None
        self._w: Optional[np.ndarray] = None

    def kl_from_start(self, unit: str = "nats") -> np.ndarray:
        return self.map.kl_matrix(unit)[0]

    def weight_from_start(self) -> np.ndarray:
        if self.weights is None:
            raise InputError("weight distances need the checkpoints' safetensors files: Trajectory(..., weights=[...])")
        if self._w is None:
            self._w = np.array([0.0] + [weight_distance(self.weights[0], w) for w in self.weights[1:]])
        return self._w

    def fit(self, unit: str = "nats") -> Dict[str, Any]:
        """{"c_q": PowerLaw, "c_w": PowerLaw or None, "alpha": c_q/c_w or None}."""
        lag = self.steps[1:] - self.steps[0]
        cq = fit_power_law(lag, self.kl_from_start(unit)[1:])
        out: Dict[str, Any] = {"c_q": cq, "c_w": None, "alpha": None}
        if self.weights is not None:
            cw = fit_power_law(lag, self.weight_from_start()[1:])
            out["c_w"] = cw
            out["alpha"] = cq.exponent / cw.exponent
        return out

    def plot(self, path: PathLike, unit: str = "nats") -> None:
        """Log–log plot of the KL and (if known) weight distance from the start
        against the lag, with the fitted lines; written atomically."""
        from ._plots import _pyplot, save

        plt = _pyplot()
        lag = self.steps[1:] - self.steps[0]
        fits = self.fit(unit)
        fig, ax = plt.subplots(figsize=(6, 4.5))
        series = [("KL", self.kl_from_start(unit)[1:], fits["c_q"])]
        if fits["c_w"] is not None:
            series.append(("‖ΔW‖²", self.weight_from_start()[1:], fits["c_w"]))
        for label, y, f in series:
            ax.loglog(lag, y, "o", label=f"{label} (c = {f.exponent:.3g})")
            ax.loglog(lag, f.prefactor * lag**f.exponent, "-", lw=1)
        ax.set_xlabel("t − t0")
        ax.legend()
        try:
            save(fig, path)
        finally:
            plt.close(fig)
