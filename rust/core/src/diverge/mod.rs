//! Divergences between rows of next-token distributions.
//!
//! Each row of `p` and `q` is one distribution over a vocabulary, given as
//! logits (softmax is taken after dividing by the temperature), as
//! log-probabilities, or as probabilities. [`divergence_rows`] returns one
//! value per row, in nats.
//!
//! The kinds follow the lecture (Defs 4.5 and 4.8) and the lesson's
//! f-divergences:
//!
//! | kind | value |
//! |---|---|
//! | `kl` | KL(P‖Q) = Σ P ln(P/Q) |
//! | `reverse_kl` | KL(Q‖P) |
//! | `js` | ½ KL(P‖M) + ½ KL(Q‖M), M = (P+Q)/2, in [0, ln 2] |
//! | `tv` | ½ Σ |P − Q|, in [0, 1] |
//! | `hellinger` | Σ (√P − √Q)², in [0, 2] (the f-divergence of (√t − 1)²) |
//! | `chi2` | Pearson χ²(P‖Q) = Σ (P − Q)²/Q |
//! | `renyi` | D_α = ln(Σ P^α Q^(1−α)) / (α − 1), α > 0; α = 1 is KL |
//! | `cross_entropy` | H(P, Q) = −Σ P ln Q |
//! | `entropy` | H(P) = −Σ P ln P |
//!
//! Conventions: 0·ln 0 = 0; a logit of −inf is probability 0; KL, χ²,
//! cross-entropy and Rényi with α > 1 are +inf when Q is 0 where P is not.
//!
//! float32, float16 and bfloat16 rows run through the vectorised kernels in
//! [`fast`]; float64 rows (and the rare rows whose values leave float32
//! range) run through the float64 [`reference`], which is the specification.

pub mod compare;
pub mod distill;
pub mod fast;
pub mod finish;
mod kinds;
pub use kinds::{renyi_reach, renyi_series, RENYI_TERMS};
pub mod reference;

use rayon::prelude::*;

use crate::error::{CoreError, Result};
use crate::rows::Rows;

/// Which divergence to compute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// KL(P‖Q).
    Kl,
    /// KL(Q‖P).
    ReverseKl,
    /// Jensen–Shannon divergence.
    Js,
    /// Total variation distance.
    Tv,
    /// Squared Hellinger distance Σ(√P − √Q)².
    Hellinger,
    /// Pearson χ²(P‖Q).
    Chi2,
    /// Rényi divergence of the given order α > 0.
    Renyi(f64),
    /// Cross-entropy H(P, Q).
    CrossEntropy,
    /// Entropy H(P); `q` is ignored.
    Entropy,
}

impl Kind {
    /// Parses a kind name; `alpha` is the Rényi order.
    pub fn parse(name: &str, alpha: Option<f64>) -> Result<Kind> {
        let kind = match name {
            "kl" => Kind::Kl,
            "reverse_kl" => Kind::ReverseKl,
            "js" => Kind::Js,
            "tv" => Kind::Tv,
            "hellinger" => Kind::Hellinger,
            "chi2" => Kind::Chi2,
            "cross_entropy" => Kind::CrossEntropy,
            "entropy" => Kind::Entropy,
            "renyi" => {
                let a = alpha.ok_or_else(|| {
                    CoreError::Value("kind='renyi' needs alpha, its order (alpha > 0)".into())
                })?;
                if !(a > 0.0 && a.is_finite()) {
                    return Err(CoreError::Value(format!(
                        "alpha must be a finite number > 0 for kind='renyi', got {a}"
                    )));
                }
                if a == 1.0 {
                    Kind::Kl
                } else {
                    Kind::Renyi(a)
                }
            }
            other => {
                return Err(CoreError::Value(format!(
                    "unknown divergence kind '{other}'; expected one of {}",
                    KIND_NAMES.join(", ")
                )))
            }
        };
        if alpha.is_some() && name != "renyi" {
            return Err(CoreError::Value(format!(
                "alpha is only used by kind='renyi', not {name:?}"
            )));
        }
        Ok(kind)
    }

    /// Whether the value is a log-ratio quantity (scaled by `base`).
    pub fn is_logarithmic(self) -> bool {
        !matches!(self, Kind::Tv | Kind::Hellinger | Kind::Chi2)
    }

    /// Whether the kind reads `q`.
    pub fn needs_q(self) -> bool {
        !matches!(self, Kind::Entropy)
    }
}

/// Every kind name, in documentation order.
pub const KIND_NAMES: [&str; 9] = [
    "kl",
    "reverse_kl",
    "js",
    "tv",
    "hellinger",
    "chi2",
    "renyi",
    "cross_entropy",
    "entropy",
];

/// How the rows encode a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// Unnormalised scores; P = softmax(x / temperature).
    Logits,
    /// Log-probabilities. Treated like logits: log-softmax is idempotent on
    /// normalised rows, and rows dumped in 16-bit floats are renormalised.
    LogProbs,
    /// Probabilities: non-negative, each row summing to 1 within
    /// [`probs_tolerance`]. With a temperature τ ≠ 1, P ∝ P^(1/τ).
    Probs,
}

impl Inputs {
    /// Parses `"logits"`, `"logprobs"` or `"probs"`.
    pub fn parse(name: &str) -> Result<Inputs> {
        match name {
            "logits" => Ok(Inputs::Logits),
            "logprobs" => Ok(Inputs::LogProbs),
            "probs" => Ok(Inputs::Probs),
            other => Err(CoreError::Value(format!(
                "unknown inputs '{other}'; expected 'logits', 'logprobs' or 'probs'"
            ))),
        }
    }
}

/// How far a row of probabilities may sum from 1: 1e-4 for float32 and
/// float64 rows, 1e-2 for float16 and bfloat16 rows (8- and 11-bit
/// significands cannot do better over a large vocabulary).
pub fn probs_tolerance(dtype: crate::rows::Dtype) -> f64 {
    match dtype {
        crate::rows::Dtype::F32 | crate::rows::Dtype::F64 => 1e-4,
        _ => 1e-2,
    }
}

/// Options of a divergence computation.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Which divergence.
    pub kind: Kind,
    /// How rows encode distributions.
    pub inputs: Inputs,
    /// Softmax temperature (> 0).
    pub temperature: f64,
}

impl Options {
    /// Checks the option values.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(CoreError::Value(format!(
                "temperature must be a finite number > 0, got {}",
                self.temperature
            )));
        }
        Ok(())
    }
}

/// Why a row could not be evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowIssue {
    /// The row holds NaN or +inf.
    NotFinite,
    /// Every entry is −inf (logits) or 0 (probabilities): no distribution.
    Empty,
    /// A probability is negative.
    Negative,
    /// Probabilities sum to this value, too far from 1.
    BadSum(f64),
}

/// Which argument a row issue is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first distribution, P.
    P,
    /// The second distribution, Q.
    Q,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::P => "p",
            Side::Q => "q",
        }
    }
}

/// The outcome of one row.
pub type RowResult = std::result::Result<f64, (Side, RowIssue)>;

/// The error for `issue` of row `row` on `side`, worded as every kernel
/// words it (`tol` is the probability-sum tolerance of that side).
pub fn issue_error(row: usize, side: Side, issue: RowIssue, inputs: Inputs, tol: f64) -> CoreError {
    let arg = side.name();
    match issue {
        RowIssue::NotFinite => CoreError::Value(format!(
            "{arg} row {row} contains NaN or +inf; {} must be finite or -inf",
            match inputs {
                Inputs::Probs => "probabilities",
                Inputs::LogProbs => "log-probabilities",
                Inputs::Logits => "logits",
            }
        )),
        RowIssue::Empty => CoreError::Value(match inputs {
            Inputs::Probs => format!("{arg} row {row} is all zeros: it is not a distribution"),
            _ => format!("{arg} row {row} is all -inf: it gives no distribution"),
        }),
        RowIssue::Negative => {
            CoreError::Value(format!("{arg} row {row} has a negative probability"))
        }
        RowIssue::BadSum(s) => CoreError::Value(format!(
            "{arg} row {row} sums to {s:.8}, not 1 (tolerance {tol:e}); pass inputs='logits' \
             or normalise the rows"
        )),
    }
}

/// Checks that `p` and `q` have the same shape.
pub fn check_pair(p: &Rows<'_>, q: Option<&Rows<'_>>) -> Result<()> {
    if let Some(q) = q {
        if p.rows() != q.rows() || p.vocab() != q.vocab() {
            return Err(CoreError::Shape(format!(
                "p and q must have the same shape, got p ({}, {}) and q ({}, {})",
                p.rows(),
                p.vocab(),
                q.rows(),
                q.vocab()
            )));
        }
    }
    if p.rows() > 0 && p.vocab() == 0 {
        return Err(CoreError::Shape("the vocabulary axis has length 0".into()));
    }
    Ok(())
}

/// One divergence value per row, in nats (TV, Hellinger and χ² are not
/// logarithmic and have no unit).
///
/// `q` may be `None` only for [`Kind::Entropy`]. Rows are processed in
/// parallel on the rayon pool; an invalid row raises an error naming the
/// first such row.
///
/// ```
/// use quantdrift_core::{diverge::*, Rows};
/// let p = [0.0f32, 0.0];
/// let q = [0.0f32, 1.0];
/// let opts = Options { kind: Kind::Kl, inputs: Inputs::Logits, temperature: 1.0 };
/// let kl = divergence_rows(Rows::new_f32(&p, 2).unwrap(), Some(Rows::new_f32(&q, 2).unwrap()), &opts).unwrap();
/// let (a, b) = (1.0f64 / (1.0 + 1f64.exp()), 1.0 / (1.0 + (-1f64).exp()));
/// let want = 0.5 * (0.5 / a).ln() + 0.5 * (0.5 / b).ln();
/// assert!((kl[0] - want).abs() < 1e-7);
/// ```
pub fn divergence_rows(p: Rows<'_>, q: Option<Rows<'_>>, opts: &Options) -> Result<Vec<f64>> {
    opts.validate()?;
    let q = match (opts.kind.needs_q(), q) {
        (true, None) => {
            return Err(CoreError::Value(
                "q is required for every kind but 'entropy'".into(),
            ))
        }
        (true, Some(q)) => Some(q),
        (false, _) => None,
    };
    check_pair(&p, q.as_ref())?;
    crate::threads::init_pool();
    let rows = p.rows();
    let results: Vec<RowResult> = (0..rows)
        .into_par_iter()
        .with_min_len(1)
        .map_init(fast::Scratch::default, |scratch, r| {
            row_value(&p, q.as_ref(), r, opts, scratch)
        })
        .collect();
    let mut out = Vec::with_capacity(rows);
    for (r, res) in results.into_iter().enumerate() {
        match res {
            Ok(v) => out.push(v),
            Err((side, issue)) => {
                let dtype = if side == Side::P {
                    p.dtype()
                } else {
                    q.map_or(p.dtype(), |q| q.dtype())
                };
                return Err(issue_error(
                    r,
                    side,
                    issue,
                    opts.inputs,
                    probs_tolerance(dtype),
                ));
            }
        }
    }
    Ok(out)
}

/// The value of row `r`: the fast kernel where it applies, the reference
/// otherwise (float64 data, or a fast result that left float32 range).
fn row_value(
    p: &Rows<'_>,
    q: Option<&Rows<'_>>,
    r: usize,
    opts: &Options,
    scratch: &mut fast::Scratch,
) -> RowResult {
    let all_f64 = p.dtype() == crate::rows::Dtype::F64
        && q.is_none_or(|q| q.dtype() == crate::rows::Dtype::F64);
    if !all_f64 {
        if let Some(v) = fast::row(p, q, r, opts, scratch)? {
            return Ok(v);
        }
    }
    let fast::Scratch { p64, q64, .. } = scratch;
    p.row_f64(r, p64);
    let qs = q.map(|q| {
        q.row_f64(r, q64);
        &q64[..]
    });
    let tolerances = (
        probs_tolerance(p.dtype()),
        q.map_or(0.0, |q| probs_tolerance(q.dtype())),
    );
    reference::row(p64, qs, opts, tolerances)
}
