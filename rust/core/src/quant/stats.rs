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
            crate::simd::dispatch(SumsRun {
                x,
                y,
                start: k * CHUNK,
                end: ((k + 1) * CHUNK).min(n),
            })
        })
        .collect();
    Ok(parts
        .into_iter()
        .fold(ErrorSums::default(), ErrorSums::merge))
}

/// The sums of one chunk, lane-wise over float64 blocks.
struct SumsRun<'a> {
    x: Values<'a>,
    y: Values<'a>,
    start: usize,
    end: usize,
}

impl crate::simd::Kernel for SumsRun<'_> {
    type Output = ErrorSums;
    #[inline(always)]
    fn run(self) -> ErrorSums {
        const B: usize = super::kernel::BLOCK;
        const L: usize = 8;
        let (mut xb, mut yb) = ([0f64; B], [0f64; B]);
        let mut err2 = [0f64; L];
        let mut x2 = [0f64; L];
        let mut y2 = [0f64; L];
        let mut xy = [0f64; L];
        let mut mx = [0f64; L];
        let mut fin = [0u64; L];
        let mut flushed = [0u64; L];
        let mut nan = [0u64; L];
        let mut inf = [0u64; L];
        let mut pos = self.start;
        while pos < self.end {
            let m = B.min(self.end - pos);
            super::kernel::load(&self.x, pos, &mut xb[..m]);
            super::kernel::load(&self.y, pos, &mut yb[..m]);
            // padding pairs are (0, 0): finite with zero error, subtracted below
            for v in xb[m..].iter_mut().chain(yb[m..].iter_mut()) {
                *v = 0.0;
            }
            for (xs, ys) in xb.chunks_exact(L).zip(yb.chunks_exact(L)) {
                for l in 0..L {
                    let (a, b) = (xs[l], ys[l]);
                    let fa = a.abs() < f64::INFINITY;
                    let fb = b.abs() < f64::INFINITY;
                    let ok = fa & fb;
                    #[allow(clippy::eq_op)]
                    let b_nan = b != b;
                    nan[l] += b_nan as u64;
                    inf[l] += (b.abs() == f64::INFINITY) as u64;
                    flushed[l] += (fa & (a != 0.0) & (b == 0.0)) as u64;
                    let (a0, b0) = if ok { (a, b) } else { (0.0, 0.0) };
                    let d = a0 - b0;
                    fin[l] += ok as u64;
                    err2[l] += d * d;
                    mx[l] = if d.abs() > mx[l] { d.abs() } else { mx[l] };
                    x2[l] += a0 * a0;
                    y2[l] += b0 * b0;
                    xy[l] += a0 * b0;
                }
            }
            fin[0] -= (B - m) as u64;
            pos += m;
        }
        ErrorSums {
            n: (self.end - self.start) as u64,
            n_finite: fin.iter().sum(),
            sum_err2: err2.iter().sum(),
            max_abs: mx.iter().copied().fold(0.0, f64::max),
            sum_x2: x2.iter().sum(),
            sum_y2: y2.iter().sum(),
            sum_xy: xy.iter().sum(),
            n_flushed: flushed.iter().sum(),
            n_nan: nan.iter().sum(),
            n_inf: inf.iter().sum(),
        }
    }
}
