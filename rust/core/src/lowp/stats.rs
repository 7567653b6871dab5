//! Error statistics of a rounding or quantization: how far `y` (the
//! reconstruction) is from `x` (the original).
//!
//! The moments use only the pairs where both values are finite; the counts
//! say how many elements saturated, flushed to zero, or became NaN/Inf. Sums
//! run in float64 over fixed chunks merged in order, so the result does not
//! depend on the thread count.

use rayon::prelude::*;

use super::Values;
use crate::error::{CoreError, Result};

/// The statistics [`error_stats`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorStats {
    /// Number of elements.
    pub n: u64,
    /// Pairs where x and y are both finite (the moments use these).
    pub n_finite: u64,
    /// Mean of (x − y)².
    pub mse: f64,
    /// √mse.
    pub rmse: f64,
    /// max |x − y|.
    pub max_abs: f64,
    /// 10·log10(Σx² / Σ(x − y)²): +inf when y = x, −inf when x = 0 ≠ y.
    pub sqnr_db: f64,
    /// Σxy / √(Σx²·Σy²); NaN when either norm is zero.
    pub cosine: f64,
    /// Finite x with |x| > clip (clip defaults to the largest finite |y|).
    pub n_saturated: u64,
    /// Finite nonzero x whose y is zero.
    pub n_flushed: u64,
    /// NaN elements of y.
    pub n_nan: u64,
    /// ±Inf elements of y.
    pub n_inf: u64,
}

#[derive(Default, Clone, Copy)]
struct Partial {
    n_finite: u64,
    sum_err2: f64,
    max_abs: f64,
    sum_x2: f64,
    sum_y2: f64,
    sum_xy: f64,
    n_saturated: u64,
    n_flushed: u64,
    n_nan: u64,
    n_inf: u64,
}

impl Partial {
    fn merge(mut self, o: Partial) -> Partial {
        self.n_finite += o.n_finite;
        self.sum_err2 += o.sum_err2;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.sum_x2 += o.sum_x2;
        self.sum_y2 += o.sum_y2;
        self.sum_xy += o.sum_xy;
        self.n_saturated += o.n_saturated;
        self.n_flushed += o.n_flushed;
        self.n_nan += o.n_nan;
        self.n_inf += o.n_inf;
        self
    }
}

const STATS_CHUNK: usize = 1 << 14;

/// Error statistics of `y` against `x` (same length). `clip` is the
/// saturation bound (e.g. the format's max or the integer grid's end);
/// `None` uses the largest finite |y|.
pub fn error_stats(x: Values<'_>, y: Values<'_>, clip: Option<f64>) -> Result<ErrorStats> {
    if x.len() != y.len() {
        return Err(CoreError::Shape(format!(
            "x has {} elements but y has {}; they must have the same shape",
            x.len(),
            y.len()
        )));
    }
    if let Some(c) = clip {
        if c.is_nan() || c < 0.0 {
            return Err(CoreError::Value(format!(
                "clip must be a non-negative number, got {c}"
            )));
        }
    }
    crate::threads::init_pool();
    let n = x.len();
    let chunks = n.div_ceil(STATS_CHUNK);
    let clip = match clip {
        Some(c) => c,
        None => (0..chunks)
            .into_par_iter()
            .map(|k| {
                let mut m = 0.0f64;
                for i in k * STATS_CHUNK..((k + 1) * STATS_CHUNK).min(n) {
                    let v = y.get_f64(i).abs();
                    if v.is_finite() {
                        m = m.max(v);
                    }
                }
                m
            })
            .reduce(|| 0.0, f64::max),
    };
    let partials: Vec<Partial> = (0..chunks)
        .into_par_iter()
        .map(|k| {
            let mut p = Partial::default();
            for i in k * STATS_CHUNK..((k + 1) * STATS_CHUNK).min(n) {
                let (a, b) = (x.get_f64(i), y.get_f64(i));
                p.n_nan += b.is_nan() as u64;
                p.n_inf += b.is_infinite() as u64;
                if a.is_finite() {
                    p.n_saturated += (a.abs() > clip) as u64;
                    p.n_flushed += (a != 0.0 && b == 0.0) as u64;
                }
                if a.is_finite() && b.is_finite() {
                    let d = a - b;
                    p.n_finite += 1;
                    p.sum_err2 += d * d;
                    p.max_abs = p.max_abs.max(d.abs());
                    p.sum_x2 += a * a;
                    p.sum_y2 += b * b;
                    p.sum_xy += a * b;
                }
            }
            p
        })
        .collect();
    let t = partials
        .into_iter()
        .fold(Partial::default(), Partial::merge);
    let mse = if t.n_finite > 0 {
        t.sum_err2 / t.n_finite as f64
    } else {
        f64::NAN
    };
    let sqnr_db = if t.sum_err2 == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (t.sum_x2 / t.sum_err2).log10()
    };
    let cosine = if t.sum_x2 > 0.0 && t.sum_y2 > 0.0 {
        t.sum_xy / (t.sum_x2.sqrt() * t.sum_y2.sqrt())
    } else {
        f64::NAN
    };
    Ok(ErrorStats {
        n: n as u64,
        n_finite: t.n_finite,
        mse,
        rmse: mse.sqrt(),
        max_abs: if t.n_finite > 0 { t.max_abs } else { f64::NAN },
        sqnr_db,
        cosine,
        n_saturated: t.n_saturated,
        n_flushed: t.n_flushed,
        n_nan: t.n_nan,
        n_inf: t.n_inf,
    })
}
