//! The float64 reference: plain loops, one obvious formula per kind.
//!
//! This is the specification the vectorised kernels are tested against, and
//! the path float64 inputs take. Everything is computed from log-softmaxed
//! rows in float64, where the textbook formulas lose nothing that matters.

use super::{Inputs, Kind, Options, RowIssue, RowResult, Side};

/// Log-probabilities of one row (log-softmax of x/τ), or the issue that
/// makes it no distribution. `tol` is the allowed |Σp − 1| for probabilities.
pub fn log_softmax(
    x: &[f64],
    inputs: Inputs,
    temperature: f64,
    tol: f64,
) -> Result<Vec<f64>, RowIssue> {
    if x.iter().any(|v| v.is_nan() || *v == f64::INFINITY) {
        return Err(RowIssue::NotFinite);
    }
    let scores: Vec<f64> = match inputs {
        Inputs::Probs => {
            if x.iter().any(|&v| v < 0.0) {
                return Err(RowIssue::Negative);
            }
            let sum: f64 = x.iter().sum();
            if sum == 0.0 {
                return Err(RowIssue::Empty);
            }
            if (sum - 1.0).abs() > tol {
                return Err(RowIssue::BadSum(sum));
            }
            x.iter().map(|v| v.ln() / temperature).collect()
        }
        Inputs::Logits | Inputs::LogProbs => x.iter().map(|v| v / temperature).collect(),
    };
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return Err(RowIssue::Empty);
    }
    let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
    let lse = max + sum.ln();
    Ok(scores.iter().map(|s| s - lse).collect())
}

/// `ln(e^a + e^b)` with −inf handled.
fn log_add_exp(a: f64, b: f64) -> f64 {
    let hi = a.max(b);
    if hi == f64::NEG_INFINITY {
        return hi;
    }
    hi + ((a - hi).exp() + (b - hi).exp()).ln()
}

/// KL(P‖Q) from log-probabilities.
fn kl(lp: &[f64], lq: &[f64]) -> f64 {
    let mut total = 0.0;
    for (&a, &b) in lp.iter().zip(lq) {
        if a == f64::NEG_INFINITY {
            continue;
        }
        if b == f64::NEG_INFINITY {
            return f64::INFINITY;
        }
        total += a.exp() * (a - b);
    }
    total.max(0.0)
}

/// The value of one row. `tol` holds the probability-sum tolerances of p and q.
pub fn row(p: &[f64], q: Option<&[f64]>, opts: &Options, tol: (f64, f64)) -> RowResult {
    let t = opts.temperature;
    let lp = log_softmax(p, opts.inputs, t, tol.0).map_err(|e| (Side::P, e))?;
    let lq = match q {
        Some(q) => Some(log_softmax(q, opts.inputs, t, tol.1).map_err(|e| (Side::Q, e))?),
        None => None,
    };
    let lq = lq.as_deref().unwrap_or(&lp);
    let pairs = || lp.iter().zip(lq).map(|(&a, &b)| (a, b));
    let value = match opts.kind {
        Kind::Kl => kl(&lp, lq),
        Kind::ReverseKl => kl(lq, &lp),
        Kind::Entropy => -lp
            .iter()
            .filter(|a| a.is_finite())
            .map(|&a| a.exp() * a)
            .sum::<f64>(),
        Kind::CrossEntropy => {
            let mut total = 0.0;
            for (a, b) in pairs() {
                if a == f64::NEG_INFINITY {
                    continue;
                }
                if b == f64::NEG_INFINITY {
                    return Ok(f64::INFINITY);
                }
                total -= a.exp() * b;
            }
            total
        }
        Kind::Js => {
            // Def 4.8: ½ Σ P ln(P/M) + ½ Σ Q ln(Q/M), M = (P + Q)/2.
            let mut total = 0.0;
            for (a, b) in pairs() {
                let ln_m = log_add_exp(a, b) - std::f64::consts::LN_2;
                if a > f64::NEG_INFINITY {
                    total += 0.5 * a.exp() * (a - ln_m);
                }
                if b > f64::NEG_INFINITY {
                    total += 0.5 * b.exp() * (b - ln_m);
                }
            }
            total.clamp(0.0, std::f64::consts::LN_2)
        }
        Kind::Tv => (0.5 * pairs().map(|(a, b)| (a.exp() - b.exp()).abs()).sum::<f64>()).min(1.0),
        Kind::Hellinger => {
            let s: f64 = pairs()
                .map(|(a, b)| ((0.5 * a).exp() - (0.5 * b).exp()).powi(2))
                .sum();
            s.min(2.0)
        }
        Kind::Chi2 => {
            let mut total = 0.0;
            for (a, b) in pairs() {
                if b == f64::NEG_INFINITY {
                    if a > f64::NEG_INFINITY {
                        return Ok(f64::INFINITY);
                    }
                    continue;
                }
                // (P − Q)²/Q in log space, so that neither P nor Q has to
                // be representable on its own.
                let y = a - b; // ln(P/Q)
                total += if y >= 0.0 {
                    (a + y).exp() * (-y).exp_m1().powi(2)
                } else {
                    b.exp() * y.exp_m1().powi(2)
                };
            }
            total
        }
        Kind::Renyi(alpha) => {
            // ln Σ P^α Q^(1−α) as a log-sum-exp over the support of P.
            let beta = 1.0 - alpha;
            let mut terms = Vec::with_capacity(lp.len());
            for (a, b) in pairs() {
                if a == f64::NEG_INFINITY {
                    continue;
                }
                if b == f64::NEG_INFINITY {
                    if alpha > 1.0 {
                        return Ok(f64::INFINITY);
                    }
                    continue;
                }
                terms.push(alpha * a + beta * b);
            }
            let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if max == f64::NEG_INFINITY {
                return Ok(f64::INFINITY);
            }
            let lse = max + terms.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            (lse / (alpha - 1.0)).max(0.0)
        }
    };
    Ok(value)
}
