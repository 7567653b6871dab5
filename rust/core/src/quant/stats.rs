//! Mergeable error sums of a reconstruction `y` against `x`: what a
//! per-tensor report needs when a tensor is processed in chunks (the
//! moments of `lowp::stats::error_stats`, before they are divided out).

use rayon::prelude::*;

use crate::error::{CoreError, Result};
use crate::lowp::Values;

/// Sums over the pairs where x and y are both finite, plus counts over all
/// elements. Merge chunks with [`ErrorSums::merge`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ErrorSums {
    /// Elements.
    pub n: u64,
    /// Pairs with x and y finite.
    pub n_finite: u64,
    /// Σ(x − y)².
    pub sum_err2: f64,
    /// max |x − y|.
    pub max_abs: f64,
    /// Σx².
    pub sum_x2: f64,
    /// Σy².
    pub sum_y2: f64,
    /// Σxy.
    pub sum_xy: f64,
    /// Finite nonzero x whose y is zero.
    pub n_flushed: u64,
    /// NaN elements of y.
    pub n_nan: u64,
    /// ±Inf elements of y.
    pub n_inf: u64,
}

impl ErrorSums {
    /// The sums of two disjoint sets of elements.
    pub fn merge(mut self, o: ErrorSums) -> ErrorSums {
        self.n += o.n;
        self.n_finite += o.n_finite;
        self.sum_err2 += o.sum_err2;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.sum_x2 += o.sum_x2;
        self.sum_y2 += o.sum_y2;
        self.sum_xy += o.sum_xy;
        self.n_flushed += o.n_flushed;
        self.n_nan += o.n_nan;
        self.n_inf += o.n_inf;
        self
    }
}

const CHUNK: usize = 1 << 14;

/// Error sums of `y` against `x` (same length), merged over fixed chunks
/// in order, so the result does not depend on the thread count.
pub fn error_sums(x: Values<'_>, y: Values<'_>) -> Result<ErrorSums> {
    if x.len() != y.len() {
        return Err(CoreError::Shape(format!(
            "x has {} elements but y has {}; they must match",
            x.len(),
            y.len()
        )));
    }
    crate::threads::init_pool();
    let n = x.len();
    let parts: Vec<ErrorSums> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            let mut p = ErrorSums::default();
            let end = ((k + 1) * CHUNK).min(n);
            p.n = (end - k * CHUNK) as u64;
            for i in k * CHUNK..end {
                let (a, b) = (x.get_f64(i), y.get_f64(i));
                p.n_nan += b.is_nan() as u64;
                p.n_inf += b.is_infinite() as u64;
                p.n_flushed += (a.is_finite() && a != 0.0 && b == 0.0) as u64;
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
    Ok(parts
        .into_iter()
        .fold(ErrorSums::default(), ErrorSums::merge))
}
