//! Error statistics of a rounding or quantization: how far `y` (the
//! reconstruction) is from `x` (the original).
//!
//! [`error_sums`] gives the raw sums of one pass, which merge over chunks
//! (a checkpoint's tensor processed piece by piece adds them up);
//! [`error_stats`] divides them out. The moments use only the pairs where
//! both values are finite; the counts say how many elements saturated,
//! flushed to zero, or became NaN/Inf. Sums run in float64, lane-wise over
//! fixed chunks merged in order, so the result does not depend on the
//! thread count.

use rayon::prelude::*;

use crate::error::{CoreError, Result};
use crate::lowp::Values;
use crate::quant::kernel::{load, BLOCK};

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
    /// Finite x with |x| above the clip bound given to [`error_sums`].
    pub n_saturated: u64,
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
        self.n_saturated += o.n_saturated;
        self.n_flushed += o.n_flushed;
        self.n_nan += o.n_nan;
        self.n_inf += o.n_inf;
        self
    }

    /// The statistics these sums give.
    pub fn stats(&self) -> ErrorStats {
        let mse = if self.n_finite > 0 {
            self.sum_err2 / self.n_finite as f64
        } else {
            f64::NAN
        };
        let sqnr_db = if self.sum_err2 == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.sum_x2 / self.sum_err2).log10()
        };
        let cosine = if self.sum_x2 > 0.0 && self.sum_y2 > 0.0 {
            self.sum_xy / (self.sum_x2.sqrt() * self.sum_y2.sqrt())
        } else {
            f64::NAN
        };
        ErrorStats {
            n: self.n,
            n_finite: self.n_finite,
            mse,
            rmse: mse.sqrt(),
            max_abs: if self.n_finite > 0 {
                self.max_abs
            } else {
                f64::NAN
            },
            sqnr_db,
            cosine,
            n_saturated: self.n_saturated,
            n_flushed: self.n_flushed,
            n_nan: self.n_nan,
            n_inf: self.n_inf,
        }
    }
}

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

/// Elements per rayon task; the sums of each are merged in order.
const CHUNK: usize = 1 << 14;

/// Error statistics of `y` against `x` (same length). `clip` is the
/// saturation bound (e.g. the format's max or the integer grid's end);
/// `None` uses the largest finite |y|.
pub fn error_stats(x: Values<'_>, y: Values<'_>, clip: Option<f64>) -> Result<ErrorStats> {
    check_lengths(&x, &y)?;
    if let Some(c) = clip {
        if c.is_nan() || c < 0.0 {
            return Err(CoreError::Value(format!(
                "clip must be a non-negative number, got {c}"
            )));
        }
    }
    let clip = match clip {
        Some(c) => c,
        None => largest_finite_abs(y),
    };
    Ok(error_sums(x, y, clip)?.stats())
}

/// Error sums of `y` against `x` (same length), counting finite x with
/// |x| > `clip` as saturated (none for `clip` = +inf).
pub fn error_sums(x: Values<'_>, y: Values<'_>, clip: f64) -> Result<ErrorSums> {
    check_lengths(&x, &y)?;
    crate::threads::init_pool();
    let n = x.len();
    let parts: Vec<ErrorSums> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            crate::simd::dispatch(SumsRun {
                x,
                y,
                clip,
                start: k * CHUNK,
                end: ((k + 1) * CHUNK).min(n),
            })
        })
        .collect();
    Ok(parts
        .into_iter()
        .fold(ErrorSums::default(), ErrorSums::merge))
}

fn check_lengths(x: &Values<'_>, y: &Values<'_>) -> Result<()> {
    if x.len() != y.len() {
        return Err(CoreError::Shape(format!(
            "x has {} elements but y has {}; they must have the same shape",
            x.len(),
            y.len()
        )));
    }
    Ok(())
}

/// The largest finite |y| (0 when there is none).
fn largest_finite_abs(y: Values<'_>) -> f64 {
    crate::threads::init_pool();
    let n = y.len();
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            let (start, end) = (k * CHUNK, ((k + 1) * CHUNK).min(n));
            let mut block = [0f64; BLOCK];
            let mut m = 0.0f64;
            let mut pos = start;
            while pos < end {
                let len = BLOCK.min(end - pos);
                load(&y, pos, &mut block[..len]);
                for &v in &block[..len] {
                    let a = v.abs();
                    m = if a < f64::INFINITY && a > m { a } else { m };
                }
                pos += len;
            }
            m
        })
        .reduce(|| 0.0, f64::max)
}

/// The sums of one chunk, lane-wise over float64 blocks.
struct SumsRun<'a> {
    x: Values<'a>,
    y: Values<'a>,
    clip: f64,
    start: usize,
    end: usize,
}

impl crate::simd::Kernel for SumsRun<'_> {
    type Output = ErrorSums;
    #[inline(always)]
    fn run(self) -> ErrorSums {
        const L: usize = 8;
        let (mut xb, mut yb) = ([0f64; BLOCK], [0f64; BLOCK]);
        let mut err2 = [0f64; L];
        let mut x2 = [0f64; L];
        let mut y2 = [0f64; L];
        let mut xy = [0f64; L];
        let mut mx = [0f64; L];
        let mut fin = [0u64; L];
        let mut saturated = [0u64; L];
        let mut flushed = [0u64; L];
        let mut nan = [0u64; L];
        let mut inf = [0u64; L];
        let mut pos = self.start;
        while pos < self.end {
            let m = BLOCK.min(self.end - pos);
            load(&self.x, pos, &mut xb[..m]);
            load(&self.y, pos, &mut yb[..m]);
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
                    saturated[l] += (fa & (a.abs() > self.clip)) as u64;
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
            fin[0] -= (BLOCK - m) as u64;
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
            n_saturated: saturated.iter().sum(),
            n_flushed: flushed.iter().sum(),
            n_nan: nan.iter().sum(),
            n_inf: inf.iter().sum(),
        }
    }
}
