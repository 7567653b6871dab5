//! Choosing s_j and b_j from the data, one part at a time.
//!
//! Every method first finds a clipping range [lo, hi] of the part's finite
//! values (NaN and ±Inf are ignored), then turns it into a scale and a
//! zero-point:
//!
//! * symmetric: b = ⌊(qmin + qmax + 1)/2⌋ (0 for a signed range),
//!   s = max(|lo|, |hi|) / min(b − qmin, qmax − b);
//! * asymmetric: the range is widened to contain 0, s = (hi − lo)/(qmax −
//!   qmin), b = clip(qmin − round_even(lo/s), qmin, qmax).
//!
//! A zero range gives s = 1. With `scale_f32` the scale is rounded to
//! float32 (clamped to its normal range) before b is computed, so that
//! quantizing with the stored float32 scale is what calibration assumed.
//! The torchao style reproduces `choose_qparams_affine` in float32 instead.

use rayon::prelude::*;

use super::kernel::{Divide, Reciprocal32, Scaled};
use super::kernel::{Down, NearestAway, NearestEven, Round, TowardZero, Up};
use super::partition::Plan;
use super::{Arith, Options};
use crate::error::{CoreError, Result};
use crate::lowp::codec::Rounding;
use crate::lowp::Values;

/// Steps of the MSE search: clipping ratios 1.00, 0.99, …, 0.21 of the
/// full range.
pub const MSE_STEPS: usize = 80;
/// Ratio decrement between MSE steps.
pub const MSE_STEP: f64 = 0.01;

/// How the clipping range of a part is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The full range: max |x| (symmetric) or [min x, max x] (asymmetric);
    /// the `absmax` and `minmax` calibrations.
    Range,
    /// numpy's linear-interpolation percentile `p` (in 0..=100) of |x|
    /// (symmetric) or the `100 − p` and `p` percentiles of x (asymmetric).
    Percentile(f64),
    /// The ratio α of the full range, among 1 − k·[`MSE_STEP`] for k <
    /// [`MSE_STEPS`], whose quantization has the least (importance-weighted)
    /// squared error; the first (widest) wins ties.
    Mse,
}

/// Formula family for turning a range into (s, b).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    /// The module's float64 formulas (module docs).
    Lecture,
    /// torchao `choose_qparams_affine` (preserve_zero, INT zero-point domain)
    /// in float32: SYMMETRIC s = max(−min_neg, max_pos)/((qmax − qmin)/2),
    /// b = trunc((qmax + qmin + 1)/2); ASYMMETRIC s = (max_pos − min_neg)/(qmax −
    /// qmin), b = clamp(qmin − round(min_neg/s)); s clamped below by `eps`.
    Torchao {
        /// Lower bound of the scale (torchao: finfo(input dtype).eps).
        eps: f32,
    },
}

/// Calibration settings.
#[derive(Debug, Clone, Copy)]
pub struct Calibration<'a> {
    /// Range method.
    pub method: Method,
    /// Formula family.
    pub style: Style,
    /// Symmetric (zero-point fixed at the middle of the integer range).
    pub symmetric: bool,
    /// Round scales to float32.
    pub scale_f32: bool,
    /// Per-element importance for the MSE search (≥ 0, x's length).
    pub weights: Option<Values<'a>>,
    /// Rounding and arithmetic the MSE search quantizes with (stochastic
    /// rounding searches with nearest-even).
    pub options: Options,
}

/// Lower and upper clip bound of each part.
pub struct Ranges<'a> {
    /// qmin per part.
    pub qmin: &'a [i32],
    /// qmax per part.
    pub qmax: &'a [i32],
}

/// Scale and zero-point of every part.
pub fn calibrate(
    x: Values<'_>,
    plan: &Plan<'_>,
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
) -> Result<(Vec<f64>, Vec<i32>)> {
    check(x.len(), plan, ranges, c)?;
    let k = plan.parts;
    crate::threads::init_pool();
    if let (Method::Range, Some(run), false) =
        (c.method, plan.uniform_runs(), matches!(x, Values::F64(_)))
    {
        return calibrate_runs(x, run, ranges, c);
    }
    let members = plan.members();
    let results: Vec<Result<(f64, i32)>> = (0..k)
        .into_par_iter()
        .with_min_len(64.min(k.max(1)))
        .map_init(
            || (Vec::new(), Vec::new()),
            |(vals, wts): &mut (Vec<f64>, Vec<f64>), j| {
                part_params(x, plan, members.as_ref(), j, ranges, c, vals, wts)
            },
        )
        .collect();
    let mut scale = Vec::with_capacity(k);
    let mut zero = Vec::with_capacity(k);
    for r in results {
        let (s, b) = r?;
        scale.push(s);
        zero.push(b);
    }
    Ok((scale, zero))
}

/// [`calibrate`] with the full range when part j is the run
/// `[j·run, (j+1)·run)` of float32/16 data: one vectorised pass over x in
/// batches of whole parts, instead of a dispatched kernel per part (which
/// dominated for groups of 32–128).
fn calibrate_runs(
    x: Values<'_>,
    run: usize,
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
) -> Result<(Vec<f64>, Vec<i32>)> {
    let k = x.len() / run;
    let (mut scale, mut zero) = (vec![0f64; k], vec![0i32; k]);
    let parts_per_task = (super::kernel::CHUNK / run).max(1);
    scale
        .par_chunks_mut(parts_per_task)
        .zip(zero.par_chunks_mut(parts_per_task))
        .enumerate()
        .try_for_each(|(t, (s, b))| {
            let first = t * parts_per_task;
            let xs = x.slice(first * run, (first + s.len()) * run);
            let qmin = &ranges.qmin[first..first + s.len()];
            let qmax = &ranges.qmax[first..first + s.len()];
            calibrate_batch(xs, run, qmin, qmax, c, s, b).map(|_| ())
        })?;
    Ok((scale, zero))
}

/// Full-range parameters of the runs of `run` elements that make up `x`
/// (one per slot of `scale` and `zero`): their finite min and max in one
/// vectorised pass, then the calibration's formulas. Returns the ranges
/// (min > max for a run with no finite value).
pub(super) fn calibrate_batch(
    x: Values<'_>,
    run: usize,
    qmin: &[i32],
    qmax: &[i32],
    c: &Calibration<'_>,
    scale: &mut [f64],
    zero: &mut [i32],
) -> Result<Vec<[f32; 2]>> {
    let mut min_max = vec![[0f32; 2]; scale.len()];
    crate::simd::dispatch(MinMaxRuns {
        x,
        run,
        out: &mut min_max,
    });
    crate::simd::dispatch(FormulaBatch {
        min_max: &min_max,
        qmin,
        qmax,
        c,
        scale,
        zero,
    });
    Ok(min_max)
}

/// The calibration's formulas ([`lecture_params`] or [`torchao_params`])
/// for a batch of parts from their finite ranges (lo > hi: none, taken as
/// [0, 0]), compiled per instruction set: in the baseline build the
/// rounding is a software routine and the loop stays scalar, and the
/// formulas then cost as much as finding the range of a group of 32.
struct FormulaBatch<'a> {
    min_max: &'a [[f32; 2]],
    qmin: &'a [i32],
    qmax: &'a [i32],
    c: &'a Calibration<'a>,
    scale: &'a mut [f64],
    zero: &'a mut [i32],
}

impl crate::simd::Kernel for FormulaBatch<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let (symmetric, scale_f32) = (self.c.symmetric, self.c.scale_f32);
        // zipped, not indexed: bounds checks would keep the loop scalar
        let ranges = self.min_max.iter().zip(self.qmin.iter().zip(self.qmax));
        let parts = ranges.zip(self.scale.iter_mut().zip(self.zero.iter_mut()));
        let widen = |[lo, hi]: [f32; 2]| {
            let some = lo <= hi;
            (
                if some { lo as f64 } else { 0.0 },
                if some { hi as f64 } else { 0.0 },
            )
        };
        // the style decided once per batch, outside the loops
        match self.c.style {
            Style::Lecture => {
                for ((&m, (&qlo, &qhi)), (s, b)) in parts {
                    let (lo, hi) = widen(m);
                    (*s, *b) = lecture_params(lo, hi, qlo, qhi, symmetric, scale_f32);
                }
            }
            Style::Torchao { eps } => {
                for ((&m, (&qlo, &qhi)), (s, b)) in parts {
                    let (lo, hi) = widen(m);
                    (*s, *b) = torchao_params(lo, hi, qlo, qhi, symmetric, eps);
                }
            }
        }
    }
}

/// The checks [`calibrate`] makes before touching the data: per-part
/// ranges that match the partition and allow the method, importance of x's
/// length `len`, a valid percentile and style.
pub fn check(len: usize, plan: &Plan<'_>, ranges: &Ranges<'_>, c: &Calibration<'_>) -> Result<()> {
    let k = plan.parts;
    if ranges.qmin.len() != k || ranges.qmax.len() != k {
        return Err(CoreError::Shape(format!(
            "qmin/qmax have {}/{} values but the partition has {k} parts",
            ranges.qmin.len(),
            ranges.qmax.len()
        )));
    }
    if let Some(w) = &c.weights {
        if w.len() != len {
            return Err(CoreError::Shape(format!(
                "importance has {} elements but x has {}; they must match",
                w.len(),
                len
            )));
        }
    }
    if let Method::Percentile(p) = c.method {
        if !(0.0..=100.0).contains(&p) {
            return Err(CoreError::Value(format!(
                "percentile must be in [0, 100], got {p}"
            )));
        }
    }
    if matches!(c.style, Style::Torchao { .. }) && c.method != Method::Range {
        return Err(CoreError::Value(
            "the torchao compatibility mode calibrates with absmax/minmax only".into(),
        ));
    }
    // A branch-free fold first (it sees every part of 10^5-group tensors
    // on every call); a failure is then located for its message. With
    // lo < hi, the middle b = ⌊(lo + hi + 1)/2⌋ has codes on both sides
    // exactly when hi − lo ≥ 2.
    let least = 1 + c.symmetric as i64;
    let ok = crate::simd::dispatch(crate::simd::Fold(|| {
        ranges
            .qmin
            .iter()
            .zip(ranges.qmax)
            .fold(true, |all, (&lo, &hi)| {
                all & (hi as i64 - lo as i64 >= least)
            })
    }));
    if ok {
        return Ok(());
    }
    for j in 0..k {
        let (lo, hi) = (ranges.qmin[j], ranges.qmax[j]);
        if lo >= hi {
            return Err(CoreError::Value(format!(
                "part {j}: the integer range [{lo}, {hi}] needs qmin < qmax"
            )));
        }
        if c.symmetric {
            let b = mid(lo, hi);
            if (b - lo as i64).min(hi as i64 - b) <= 0 {
                return Err(CoreError::Value(format!(
                    "part {j}: symmetric quantization needs codes on both sides of the zero-point {b} in [{lo}, {hi}]"
                )));
            }
        }
    }
    Ok(())
}

/// ⌊(lo + hi + 1)/2⌋, as an arithmetic shift (a floor, like div_euclid
/// by 2, but one instruction that vectorises).
#[inline(always)]
fn mid(lo: i32, hi: i32) -> i64 {
    (lo as i64 + hi as i64 + 1) >> 1
}

#[allow(clippy::too_many_arguments)]
fn part_params(
    x: Values<'_>,
    plan: &Plan<'_>,
    members: Option<&(Vec<usize>, Vec<usize>)>,
    j: usize,
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
    vals: &mut Vec<f64>,
    wts: &mut Vec<f64>,
) -> Result<(f64, i32)> {
    let (qlo, qhi) = (ranges.qmin[j], ranges.qmax[j]);
    let (lo, hi) = match c.method {
        Method::Range => {
            let mut acc = MinMax::default();
            match members {
                None => plan.tile_runs(j, &mut |s, n| acc.run(&x, s, n)),
                Some((off, idx)) => {
                    for &i in &idx[off[j]..off[j + 1]] {
                        acc.one(x.get_f64(i));
                    }
                }
            }
            acc.range()
        }
        Method::Percentile(p) => {
            gather(x, None, plan, members, j, vals, wts)?;
            let q = p / 100.0;
            if c.symmetric {
                for v in vals.iter_mut() {
                    *v = v.abs();
                }
                let a = quantile(vals, q);
                (-a, a)
            } else {
                let lo = quantile(vals, (100.0 - p) / 100.0);
                let hi = quantile(vals, q);
                (lo, hi)
            }
        }
        Method::Mse => {
            gather(x, c.weights, plan, members, j, vals, wts)?;
            let mut acc = MinMax::default();
            for &v in vals.iter() {
                acc.one(v);
            }
            let (lo, hi) = acc.range();
            let w = if c.weights.is_some() {
                Some(&wts[..])
            } else {
                None
            };
            return mse_search(vals, w, lo, hi, qlo, qhi, c);
        }
    };
    params(lo, hi, qlo, qhi, c)
}

/// (s, b) of the clipping range [lo, hi].
pub(super) fn params(
    lo: f64,
    hi: f64,
    qlo: i32,
    qhi: i32,
    c: &Calibration<'_>,
) -> Result<(f64, i32)> {
    match c.style {
        Style::Lecture => Ok(lecture_params(lo, hi, qlo, qhi, c.symmetric, c.scale_f32)),
        Style::Torchao { eps } => Ok(torchao_params(lo, hi, qlo, qhi, c.symmetric, eps)),
    }
}

/// The module's float64 formulas, written without branches (selects, and
/// a shift for the midpoint) so that the loop over a batch of parts in
/// [`calibrate_batch`] vectorises: with branches, a clamp's check and an
/// integer division, the formulas cost as much as finding the range of a
/// group of 32.
#[inline(always)]
pub fn lecture_params(
    lo: f64,
    hi: f64,
    qlo: i32,
    qhi: i32,
    symmetric: bool,
    scale_f32: bool,
) -> (f64, i32) {
    let mid = mid(qlo, qhi);
    let (qlo, qhi) = (qlo as i64, qhi as i64);
    // min(lo, 0) and max(hi, 0) as selects (NaN gives 0, as f64::min and
    // max do; a −0 instead of +0 changes neither s nor b)
    let mn = if lo < 0.0 { lo } else { 0.0 };
    let s = if symmetric {
        let half = (mid - qlo).min(qhi - mid) as f64;
        // max(|lo|, |hi|), ignoring a NaN as f64::max does
        let (a, c) = (lo.abs(), hi.abs());
        (if a >= c || c.is_nan() { a } else { c }) / half
    } else {
        (if hi > 0.0 { hi } else { 0.0 } - mn) / (qhi - qlo) as f64
    };
    let s = if s > 0.0 && s < f64::INFINITY { s } else { 1.0 };
    let s = if scale_f32 {
        let t = s as f32;
        let t = if t < f32::MIN_POSITIVE {
            f32::MIN_POSITIVE
        } else {
            t
        };
        (if t > f32::MAX { f32::MAX } else { t }) as f64
    } else {
        s
    };
    let b = if symmetric {
        mid as i32
    } else {
        let b = qlo as f64 - (mn / s).round_ties_even();
        let b = if b < qlo as f64 { qlo as f64 } else { b };
        let b = if b > qhi as f64 { qhi as f64 } else { b };
        // SAFETY: b is finite (mn is, s is positive and finite) and lies
        // within [qlo, qhi], both i32 values.
        unsafe { b.to_int_unchecked::<i32>() }
    };
    (s, b)
}

/// torchao's `choose_qparams_affine` in float32.
#[inline(always)]
pub fn torchao_params(
    lo: f64,
    hi: f64,
    qlo: i32,
    qhi: i32,
    symmetric: bool,
    eps: f32,
) -> (f64, i32) {
    let min_neg = (lo as f32).min(0.0);
    let max_pos = (hi as f32).max(0.0);
    if symmetric {
        let m = (-min_neg).max(max_pos);
        let s = (m / ((qhi as f64 - qlo as f64) / 2.0) as f32).max(eps);
        let b = ((qhi as f64 + qlo as f64 + 1.0) / 2.0).trunc() as i32;
        (s as f64, b)
    } else {
        let s = ((max_pos - min_neg) / (qhi as f64 - qlo as f64) as f32).max(eps);
        let b = qlo as f32 - (min_neg / s).round_ties_even();
        let b = b.clamp(qlo as f32, qhi as f32) as i32;
        (s as f64, b)
    }
}

#[derive(Clone, Copy)]
struct MinMax {
    lo: f64,
    hi: f64,
}

impl Default for MinMax {
    fn default() -> Self {
        MinMax {
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
        }
    }
}

impl MinMax {
    #[inline(always)]
    fn one(&mut self, v: f64) {
        if v.is_finite() {
            self.lo = self.lo.min(v);
            self.hi = self.hi.max(v);
        }
    }

    /// Min and max of the finite values of a run (vectorised; float64
    /// input is exact, other inputs go through float32 exactly).
    fn run(&mut self, x: &Values<'_>, start: usize, n: usize) {
        if let Values::F64(v) = x {
            for &e in &v[start..start + n] {
                self.one(e);
            }
            return;
        }
        let (lo, hi) = crate::simd::dispatch(MinMaxRun { x: *x, start, n });
        if lo <= hi {
            self.one(lo as f64);
            self.one(hi as f64);
        }
    }

    fn range(&self) -> (f64, f64) {
        if self.lo > self.hi {
            (0.0, 0.0)
        } else {
            (self.lo, self.hi)
        }
    }
}

/// Collects the finite values of part `j` (and their weights) into `vals`
/// and `wts`.
fn gather(
    x: Values<'_>,
    weights: Option<Values<'_>>,
    plan: &Plan<'_>,
    members: Option<&(Vec<usize>, Vec<usize>)>,
    j: usize,
    vals: &mut Vec<f64>,
    wts: &mut Vec<f64>,
) -> Result<()> {
    vals.clear();
    wts.clear();
    let mut bad: Option<(usize, f64)> = None;
    let mut take = |i: usize| {
        let v = x.get_f64(i);
        if v.is_finite() {
            vals.push(v);
            if let Some(w) = &weights {
                let wi = w.get_f64(i);
                if !(wi >= 0.0 && wi.is_finite()) && bad.is_none() {
                    bad = Some((i, wi));
                }
                wts.push(wi);
            }
        }
    };
    match members {
        None => plan.tile_runs(j, &mut |s, n| {
            for i in s..s + n {
                take(i)
            }
        }),
        Some((off, idx)) => {
            for &i in &idx[off[j]..off[j + 1]] {
                take(i);
            }
        }
    }
    if let Some((i, w)) = bad {
        return Err(CoreError::Value(format!(
            "importance[{i}] = {w}; importance weights must be finite and ≥ 0"
        )));
    }
    Ok(())
}

/// numpy's default (linear) quantile of `v` at `q` in [0, 1]; reorders `v`.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    let virtual_index = (n - 1) as f64 * q;
    let prev = virtual_index.floor();
    let gamma = virtual_index - prev;
    let i = (prev as usize).min(n - 1);
    let (_, a, rest) = v.select_nth_unstable_by(i, f64::total_cmp);
    let a = *a;
    let b = if i + 1 < n {
        rest.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        a
    };
    // numpy's _lerp, including its form for gamma ≥ 0.5.
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

fn mse_search(
    vals: &[f64],
    wts: Option<&[f64]>,
    lo: f64,
    hi: f64,
    qlo: i32,
    qhi: i32,
    c: &Calibration<'_>,
) -> Result<(f64, i32)> {
    macro_rules! with_round {
        ($A:ty) => {
            match c.options.rounding {
                Rounding::NearestAway => search::<NearestAway, $A>(vals, wts, lo, hi, qlo, qhi, c),
                Rounding::TowardZero => search::<TowardZero, $A>(vals, wts, lo, hi, qlo, qhi, c),
                Rounding::Down => search::<Down, $A>(vals, wts, lo, hi, qlo, qhi, c),
                Rounding::Up => search::<Up, $A>(vals, wts, lo, hi, qlo, qhi, c),
                Rounding::NearestEven | Rounding::Stochastic => {
                    search::<NearestEven, $A>(vals, wts, lo, hi, qlo, qhi, c)
                }
            }
        };
    }
    Ok(match c.options.arith {
        Arith::Divide => with_round!(Divide),
        Arith::Reciprocal32 => with_round!(Reciprocal32),
    })
}

fn search<R: Round, A: Scaled>(
    vals: &[f64],
    wts: Option<&[f64]>,
    lo: f64,
    hi: f64,
    qlo: i32,
    qhi: i32,
    c: &Calibration<'_>,
) -> (f64, i32) {
    let mut best = lecture_params(lo, hi, qlo, qhi, c.symmetric, c.scale_f32);
    let mut best_err = f64::INFINITY;
    for k in 0..MSE_STEPS {
        let alpha = 1.0 - k as f64 * MSE_STEP;
        let (s, b) = lecture_params(alpha * lo, alpha * hi, qlo, qhi, c.symmetric, c.scale_f32);
        let a = A::multiplier(s);
        let (bf, lof, hif) = (b as f64, qlo as f64, qhi as f64);
        let mut err = 0.0;
        for (i, &v) in vals.iter().enumerate() {
            let q = (R::round(A::scaled(v, a), [0, 0], 0) + bf).clamp(lof, hif);
            let d = v - s * (q - bf);
            err += match wts {
                Some(w) => w[i] * d * d,
                None => d * d,
            };
        }
        if err < best_err {
            best_err = err;
            best = (s, b);
        }
    }
    best
}

/// Lane-wise min/max of the finite float32 values of a run.
struct MinMaxRun<'a> {
    x: Values<'a>,
    start: usize,
    n: usize,
}

impl crate::simd::Kernel for MinMaxRun<'_> {
    type Output = (f32, f32);
    #[inline(always)]
    fn run(self) -> (f32, f32) {
        min_max_f32(&self.x, self.start, self.n, &mut [0f32; BUF])
    }
}

/// Min and max of the finite values of each run of `run` elements of `x`,
/// one per slot of `out` (+inf > −inf when a run has none).
struct MinMaxRuns<'a> {
    x: Values<'a>,
    run: usize,
    out: &'a mut [[f32; 2]],
}

impl crate::simd::Kernel for MinMaxRuns<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        // One widening buffer for the batch: zeroing it per run cost as
        // much as scanning a group of 128.
        let mut buf = [0f32; BUF];
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if let Values::F32(v) = self.x {
            if self.run.is_multiple_of(16) && crate::simd::has_avx2() {
                // SAFETY: the CPU has AVX2; `v` holds every run of `out`.
                done = unsafe { min_max_runs8_avx2(v, self.run, self.out, &mut buf) };
            }
        }
        for (j, o) in self.out.iter_mut().enumerate().skip(done) {
            let (lo, hi) = min_max_f32(&self.x, j * self.run, self.run, &mut buf);
            *o = [lo, hi];
        }
    }
}

/// [`min_max_f32`] of runs of `run` float32 values (a multiple of 16) in
/// batches of eight: each run's lanes are reduced to one vector of minima
/// and one of maxima, and the eight runs' vectors are then reduced
/// together by transposing them, three vector steps for all eight. One
/// horizontal reduction per run cost groups of 128 a third as much as
/// scanning them. A run that reached an infinity is scanned again, as
/// [`min_max_f32`] does. Returns how many runs were done (whole batches).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn min_max_runs8_avx2(
    v: &[f32],
    run: usize,
    out: &mut [[f32; 2]],
    buf: &mut [f32; BUF],
) -> usize {
    use std::arch::x86_64::*;
    /// Reduces eight vectors with `$op` lane-wise into one vector whose lane
    /// r is `$op` over all lanes of vector r.
    macro_rules! reduce8 {
        ($v:expr, $op:ident) => {{
            let v = $v;
            // pairs: lanes (r, r+1, r, r+1) per 128-bit half
            let p = |a: __m256, b: __m256| $op(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            let (p01, p23, p45, p67) = (p(v[0], v[1]), p(v[2], v[3]), p(v[4], v[5]), p(v[6], v[7]));
            // quads: lanes (r .. r+3) per half
            let q = |a: __m256, b: __m256| {
                $op(
                    _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
                    _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
                )
            };
            let (q0, q4) = (q(p01, p23), q(p45, p67));
            // the two halves of each quad together
            $op(
                _mm256_permute2f128_ps::<0x20>(q0, q4),
                _mm256_permute2f128_ps::<0x31>(q0, q4),
            )
        }};
    }
    let batches = out.len() / 8;
    for b in 0..batches {
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); 8], [_mm256_setzero_ps(); 8]);
        for r in 0..8 {
            let start = (8 * b + r) * run;
            let mut acc = [
                _mm256_set1_ps(f32::INFINITY),
                _mm256_set1_ps(f32::INFINITY),
                _mm256_set1_ps(f32::NEG_INFINITY),
                _mm256_set1_ps(f32::NEG_INFINITY),
            ];
            for group in v[start..start + run].chunks_exact(16) {
                // SAFETY: a group holds 16 values.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(group.as_ptr()),
                        _mm256_loadu_ps(group.as_ptr().add(8)),
                    )
                };
                // min_ps(x, m) is `x < m ? x : m`: m wherever x is NaN.
                acc[0] = _mm256_min_ps(x, acc[0]);
                acc[1] = _mm256_min_ps(y, acc[1]);
                acc[2] = _mm256_max_ps(x, acc[2]);
                acc[3] = _mm256_max_ps(y, acc[3]);
            }
            lo[r] = _mm256_min_ps(acc[0], acc[1]);
            hi[r] = _mm256_max_ps(acc[2], acc[3]);
        }
        let (lo, hi) = (reduce8!(lo, _mm256_min_ps), reduce8!(hi, _mm256_max_ps));
        let infinite = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_EQ_OQ>(lo, _mm256_set1_ps(f32::NEG_INFINITY)),
            _mm256_cmp_ps::<_CMP_EQ_OQ>(hi, _mm256_set1_ps(f32::INFINITY)),
        );
        // [lo, hi] pairs: runs 0, 1, 4, 5 and runs 2, 3, 6, 7 interleaved,
        // then the 128-bit halves put in run order
        let (a, c) = (_mm256_unpacklo_ps(lo, hi), _mm256_unpackhi_ps(lo, hi));
        let pairs = &mut out[8 * b..8 * b + 8];
        // SAFETY: `pairs` is eight [f32; 2], 64 contiguous bytes.
        unsafe {
            let p = pairs.as_mut_ptr() as *mut f32;
            _mm256_storeu_ps(p, _mm256_permute2f128_ps::<0x20>(a, c));
            _mm256_storeu_ps(p.add(8), _mm256_permute2f128_ps::<0x31>(a, c));
        }
        let mut infinite = _mm256_movemask_ps(infinite);
        while infinite != 0 {
            let j = 8 * b + infinite.trailing_zeros() as usize;
            let (lo, hi) = min_max_f32(&Values::F32(v), j * run, run, buf);
            out[j] = [lo, hi];
            infinite &= infinite - 1;
        }
    }
    batches * 8
}

/// Elements of 16-bit input widened at a time.
const BUF: usize = super::kernel::BLOCK;

/// Min and max of the finite values of `x[start..start + n]` (float32 or
/// 16-bit input, widened through `buf`), in 16 lanes; inlined into each
/// dispatched kernel.
#[inline(always)]
fn min_max_f32(x: &Values<'_>, start: usize, n: usize, buf: &mut [f32; BUF]) -> (f32, f32) {
    // Plain compare-and-select skips NaN (the comparison is false) but
    // keeps ±inf: a run that reaches an infinity is scanned again with the
    // finiteness test, so finite data pays two instructions per vector.
    let (lo, hi) = lanes_min_max::<false>(x, start, n, buf);
    if lo == f32::NEG_INFINITY || hi == f32::INFINITY {
        return lanes_min_max::<true>(x, start, n, buf);
    }
    (lo, hi)
}

/// Lane-wise minima and maxima of the finite values seen so far.
struct MinMaxLanes {
    lo: [f32; 16],
    hi: [f32; 16],
}

impl MinMaxLanes {
    #[inline(always)]
    fn take<const FINITE: bool>(&mut self, b: &[f32; 16]) {
        for l in 0..16 {
            let e = b[l];
            let (el, eh) = if FINITE && !e.is_finite() {
                (f32::INFINITY, f32::NEG_INFINITY)
            } else {
                (e, e)
            };
            self.lo[l] = if el < self.lo[l] { el } else { self.lo[l] };
            self.hi[l] = if eh > self.hi[l] { eh } else { self.hi[l] };
        }
    }

    /// [`take`](Self::take)`::<false>` over whole lane groups of `v` (its
    /// length a multiple of 16), in AVX2 registers. `vminps`/`vmaxps` are
    /// the same compare-and-select, NaN skipped; written out because LLVM
    /// kept the portable loop's accumulators lane-reversed, paying four
    /// permutes per group.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn take_groups_avx2(&mut self, v: &[f32]) {
        use std::arch::x86_64::*;
        // SAFETY: every load and store below stays inside `v` or the
        // 16-lane arrays of `self` (two vectors of 8 each).
        unsafe {
            let (lo, hi) = (self.lo.as_mut_ptr(), self.hi.as_mut_ptr());
            let mut acc = [
                _mm256_loadu_ps(lo),
                _mm256_loadu_ps(lo.add(8)),
                _mm256_loadu_ps(hi),
                _mm256_loadu_ps(hi.add(8)),
            ];
            for group in v.chunks_exact(16) {
                let (a, b) = (
                    _mm256_loadu_ps(group.as_ptr()),
                    _mm256_loadu_ps(group.as_ptr().add(8)),
                );
                // min_ps(x, m) is `x < m ? x : m`: m wherever x is NaN.
                acc[0] = _mm256_min_ps(a, acc[0]);
                acc[1] = _mm256_min_ps(b, acc[1]);
                acc[2] = _mm256_max_ps(a, acc[2]);
                acc[3] = _mm256_max_ps(b, acc[3]);
            }
            _mm256_storeu_ps(lo, acc[0]);
            _mm256_storeu_ps(lo.add(8), acc[1]);
            _mm256_storeu_ps(hi, acc[2]);
            _mm256_storeu_ps(hi.add(8), acc[3]);
        }
    }
}

#[inline(always)]
fn lanes_min_max<const FINITE: bool>(
    x: &Values<'_>,
    start: usize,
    n: usize,
    buf: &mut [f32; BUF],
) -> (f32, f32) {
    let mut lanes = MinMaxLanes {
        lo: [f32::INFINITY; 16],
        hi: [f32::NEG_INFINITY; 16],
    };
    let mut pos = start;
    let end = start + n;
    // float32 is read in place, whole lane groups first.
    if let Values::F32(v) = x {
        let whole = end - n % 16;
        #[cfg(target_arch = "x86_64")]
        if !FINITE && crate::simd::has_avx2() {
            // SAFETY: the CPU has AVX2.
            unsafe { lanes.take_groups_avx2(&v[pos..whole]) };
            pos = whole;
        }
        while pos < whole {
            lanes.take::<FINITE>(v[pos..pos + 16].try_into().expect("a lane group"));
            pos += 16;
        }
    }
    while pos < end {
        let m = BUF.min(end - pos);
        super::kernel::load32(x, pos, &mut buf[..m]);
        // Pad to whole lane groups with NaN, which both passes skip; a
        // short run costs its own length, not a block's.
        let padded = m.next_multiple_of(16);
        for v in buf[m..padded].iter_mut() {
            *v = f32::NAN;
        }
        for b in buf[..padded].chunks_exact(16) {
            lanes.take::<FINITE>(b.try_into().expect("a lane group"));
        }
        pos += m;
    }
    let MinMaxLanes { mut lo, mut hi } = lanes;
    // A halving tree (four vector steps) rather than a chain of fifteen
    // dependent scalar steps: for groups of 128 the chain cost as much as
    // reading the group.
    let mut width = 8;
    while width > 0 {
        for l in 0..width {
            // Compare-and-select, like the scan: the lanes hold no NaN,
            // and f32::min's NaN handling would turn each step scalar.
            let (a, b) = (lo[l + width], hi[l + width]);
            lo[l] = if a < lo[l] { a } else { lo[l] };
            hi[l] = if b > hi[l] { b } else { hi[l] };
        }
        width /= 2;
    }
    (lo[0], hi[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Min and max of the finite values, one at a time.
    fn reference(v: &[f32]) -> (f32, f32) {
        v.iter()
            .filter(|e| e.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &e| {
                (lo.min(e), hi.max(e))
            })
    }

    /// The lecture formulas written plainly (branches, f64::clamp,
    /// div_euclid), as the module docs state them.
    fn plain_lecture_params(
        lo: f64,
        hi: f64,
        qlo: i32,
        qhi: i32,
        symmetric: bool,
        scale_f32: bool,
    ) -> (f64, i32) {
        let mid = (qlo as i64 + qhi as i64 + 1).div_euclid(2);
        let (mut s, mn) = if symmetric {
            let half = (mid - qlo as i64).min(qhi as i64 - mid) as f64;
            (lo.abs().max(hi.abs()) / half, 0.0)
        } else {
            let (mn, mx) = (lo.min(0.0), hi.max(0.0));
            ((mx - mn) / (qhi as f64 - qlo as f64), mn)
        };
        if !(s > 0.0 && s.is_finite()) {
            s = 1.0;
        }
        if scale_f32 {
            s = (s as f32).clamp(f32::MIN_POSITIVE, f32::MAX) as f64;
        }
        let b = if symmetric {
            mid as i32
        } else {
            let b = qlo as f64 - (mn / s).round_ties_even();
            b.clamp(qlo as f64, qhi as f64) as i32
        };
        (s, b)
    }

    #[test]
    fn branch_free_lecture_params_equal_the_plain_formulas() {
        let values = [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1.2e-38,
            1e-30,
            -3.5,
            0.75,
            2.0,
            -7.0,
            1e30,
            -3.4e38,
            3.4e38,
            1e300,
            f64::NAN,
        ];
        let ranges = [
            (-8, 7),
            (-7, 7),
            (0, 15),
            (0, 255),
            (-128, 127),
            (-1, 1),
            (3, 9),
            (-(1 << 15), (1 << 15) - 1),
            (i32::MIN, i32::MAX),
        ];
        for &lo in &values {
            for &hi in &values {
                for &(qlo, qhi) in &ranges {
                    for symmetric in [false, true] {
                        if symmetric && (qlo, qhi) == (3, 9) {
                            continue; // not a symmetric range (check() refuses it)
                        }
                        for scale_f32 in [false, true] {
                            let got = lecture_params(lo, hi, qlo, qhi, symmetric, scale_f32);
                            let want = plain_lecture_params(lo, hi, qlo, qhi, symmetric, scale_f32);
                            assert_eq!(
                                (got.0.to_bits(), got.1),
                                (want.0.to_bits(), want.1),
                                "[{lo}, {hi}] in [{qlo}, {qhi}] symmetric={symmetric} scale_f32={scale_f32}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `n` values in (−500, 500) from a seeded LCG, with NaN, +inf, −inf,
    /// −0 and +0 each about once in `one_in` (the zeros only with `zeros`).
    fn with_specials(seed: u32, n: usize, one_in: u32, zeros: bool) -> Vec<f32> {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state
        };
        (0..n)
            .map(|_| match next() % one_in {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 if zeros => -0.0,
                4 if zeros => 0.0,
                _ => (next() as f32 / u32::MAX as f32 - 0.5) * 1e3,
            })
            .collect()
    }

    #[test]
    fn lane_min_max_equals_a_scalar_fold_for_every_length_and_offset() {
        let data = with_specials(7, 5000, 97, false);
        let finite: Vec<f32> = data
            .iter()
            .map(|&e| if e.is_finite() { e } else { 1.0 })
            .collect();
        let bits: Vec<u16> = data.iter().map(|&e| (e.to_bits() >> 16) as u16).collect();
        let mut buf = [0f32; BUF];
        for n in [
            1, 2, 15, 16, 17, 31, 32, 33, 47, 128, 129, 255, 256, 257, 1000, 4099,
        ] {
            for start in [0, 1, 3, 16, 333] {
                for v in [&data, &finite] {
                    let got = min_max_f32(&Values::F32(v), start, n, &mut buf);
                    assert_eq!(got, reference(&v[start..start + n]), "n={n} start={start}");
                }
                let widened: Vec<f32> = bits[start..start + n]
                    .iter()
                    .map(|&b| f32::from_bits((b as u32) << 16))
                    .collect();
                let got = min_max_f32(&Values::Bf16(&bits), start, n, &mut buf);
                assert_eq!(got, reference(&widened), "bfloat16 n={n} start={start}");
            }
        }
        // No finite value at all: +inf > −inf.
        let none = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].repeat(11);
        assert_eq!(
            min_max_f32(&Values::F32(&none), 0, none.len(), &mut buf),
            (f32::INFINITY, f32::NEG_INFINITY)
        );
    }

    #[test]
    fn runs_in_batches_of_eight_equal_one_run_at_a_time() {
        // specials rare enough that some batches have none and others
        // several; runs of only NaN and ±inf; zeros of both signs
        let data = with_specials(11, 40_000, 600, true);
        let mut data_none = data.clone();
        data_none[32..64]
            .copy_from_slice(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN].repeat(8));
        for v in [&data, &data_none] {
            for run in [16, 32, 48, 128, 24, 1, 7] {
                for parts in [1, 7, 8, 9, 16, 23, 64] {
                    let x = &v[..run * parts];
                    let mut out = vec![[0f32; 2]; parts];
                    crate::simd::dispatch(MinMaxRuns {
                        x: Values::F32(x),
                        run,
                        out: &mut out,
                    });
                    for (j, got) in out.iter().enumerate() {
                        let (lo, hi) = reference(&x[j * run..(j + 1) * run]);
                        assert_eq!(*got, [lo, hi], "run={run} parts={parts} part {j}");
                    }
                }
            }
        }
    }
}
