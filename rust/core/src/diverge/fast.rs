//! Vectorised row kernels for float32, float16 and bfloat16 rows.
//!
//! Every row takes a scan pass (maxima, argmax, NaN/+inf checks, support
//! checks, all without transcendental work) and then one or two passes of
//! exponentials. A row of 128k float32 logits per side is 1 MB, which stays
//! in the 2 MB-class L2 caches of current CPUs between passes, so memory is
//! read once.
//!
//! Accuracy: elementwise work is float32 (about 1 ulp per `exp`/`ln`), sums
//! are flushed to float64 every [`BLOCK`] lane groups, and each kind is
//! evaluated in a form where the result is a sum of non-negative terms or a
//! difference of small, accurately computed quantities, so that near-equal
//! P and Q (tiny divergences) do not lose their digits to cancellation:
//!
//! * KL: with u = ln(P/Q) shifted so that u = 0 at the argmax of P,
//!   KL = E_P[u] + ln(1 + E_P[e^(−u) − 1 + u] − E_P[u]), where the middle
//!   term is summed from a Taylor series for small u.
//! * JS: Σ (P+Q)·g(δ)/4 with δ = (P−Q)/(P+Q) and
//!   g(δ) = (1+δ)ln(1+δ) + (1−δ)ln(1−δ) ≥ 0, a series for small δ.
//! * Rényi: ln(1 + Σ P[(Q/P)^(1−α) − 1 − (1−α)(Q/P − 1)]) / (α − 1).
//!
//! Rows whose intermediate values leave float32 range return `None` and are
//! recomputed by the float64 reference.

use crate::rows::{bf16_to_f32, f16_to_f32, Dtype, Rows};
use crate::simd::{self, Kernel, LANES, V};

use super::{Inputs, Kind, Options, RowIssue, Side};

/// Lane groups summed in float32 before the sums move to float64.
pub const BLOCK: usize = 16;

/// Per-thread buffers, reused across rows.
#[derive(Default)]
pub struct Scratch {
    /// A float64 copy of a p row, for the reference path.
    pub p64: Vec<f64>,
    /// A float64 copy of a q row, for the reference path.
    pub q64: Vec<f64>,
    /// ln(p) of a probability row.
    pub p32: Vec<f32>,
    /// ln(q) of a probability row.
    pub q32: Vec<f32>,
    /// Exponentials of a row pair kept between a kernel's passes.
    pub exps: Vec<f32>,
}

/// A row in one of the 16-bit or 32-bit storage types.
#[allow(clippy::len_without_is_empty)] // rows are never empty here
pub trait Load: Copy + Sync {
    /// Element `i` widened to float32.
    fn get(self, i: usize) -> f32;
    /// Row length.
    fn len(self) -> usize;
    /// The [`LANES`] elements from `start`, which must all be in the row.
    fn full_group(self, start: usize) -> V;
    /// The [`BLK`] elements from `start`, which must all be in the row.
    fn full_block(self, start: usize, out: &mut [f32; BLK]);
    /// The block from `start`, padded with −inf past the end of the row.
    #[inline(always)]
    fn block(self, start: usize, out: &mut [f32; BLK]) {
        if start + BLK <= self.len() {
            return self.full_block(start, out);
        }
        *out = [f32::NEG_INFINITY; BLK];
        for i in 0..self.len() - start {
            out[i] = self.get(start + i);
        }
    }
    /// Lane group starting at `start`, padded with `pad` past the end.
    #[inline(always)]
    fn group(self, start: usize, pad: f32) -> V {
        if start + LANES <= self.len() {
            return self.full_group(start);
        }
        let mut out = [pad; LANES];
        for i in 0..self.len() - start {
            out[i] = self.get(start + i);
        }
        out
    }
}

/// The `LANES` items from `start` as an array reference: one bounds check,
/// then plain vector loads.
#[inline(always)]
fn chunk<T>(data: &[T], start: usize) -> &[T; LANES] {
    data[start..start + LANES]
        .try_into()
        .expect("a full lane group")
}

impl Load for &[f32] {
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        self[i]
    }
    #[inline(always)]
    fn len(self) -> usize {
        <[f32]>::len(self)
    }
    #[inline(always)]
    fn full_group(self, start: usize) -> V {
        *chunk(self, start)
    }
    #[inline(always)]
    fn full_block(self, start: usize, out: &mut [f32; BLK]) {
        out.copy_from_slice(&self[start..start + BLK]);
    }
}

/// A float16 row (bit patterns).
#[derive(Clone, Copy)]
pub struct F16Row<'a>(pub &'a [u16]);
/// A bfloat16 row (bit patterns).
#[derive(Clone, Copy)]
pub struct Bf16Row<'a>(pub &'a [u16]);

/// `Load` for a row of 16-bit float bit patterns widened by `$widen`.
macro_rules! load_16_bit_row {
    ($row:ident, $widen:ident) => {
        impl Load for $row<'_> {
            #[inline(always)]
            fn get(self, i: usize) -> f32 {
                $widen(self.0[i])
            }
            #[inline(always)]
            fn len(self) -> usize {
                self.0.len()
            }
            #[inline(always)]
            fn full_group(self, start: usize) -> V {
                let bits = chunk(self.0, start);
                let mut out = [0.0; LANES];
                for i in 0..LANES {
                    out[i] = $widen(bits[i]);
                }
                out
            }
            #[inline(always)]
            fn full_block(self, start: usize, out: &mut [f32; BLK]) {
                for (o, &x) in out.iter_mut().zip(&self.0[start..start + BLK]) {
                    *o = $widen(x);
                }
            }
        }
    };
}

load_16_bit_row!(F16Row, f16_to_f32);
load_16_bit_row!(Bf16Row, bf16_to_f32);

/// What the scan pass learns about a pair of rows.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    /// max of p.
    pub max_p: f32,
    /// max of q.
    pub max_q: f32,
    /// p holds NaN or +inf.
    pub p_bad: bool,
    /// q holds NaN or +inf.
    pub q_bad: bool,
    /// Some P > 0 has Q = 0.
    pub p_outside_q: bool,
    /// Some Q > 0 has P = 0.
    pub q_outside_p: bool,
    /// The bytes of the next row pair, prefetched into L2 while this row
    /// computes (otherwise the next scan waits on memory).
    pub next: Prefetch,
}

/// Where the row pair a thread is likely to take next lies in memory.
#[derive(Debug, Clone, Copy)]
pub struct Prefetch {
    p: *const u8,
    q: *const u8,
    /// Bytes per row (0: nothing to prefetch).
    row_bytes: usize,
    element_size: usize,
}

impl Prefetch {
    /// Nothing to prefetch.
    pub const NONE: Prefetch = Prefetch {
        p: std::ptr::null(),
        q: std::ptr::null(),
        row_bytes: 0,
        element_size: 0,
    };

    /// Row `r` of two equally shaped buffers of `vocab` elements each, or
    /// [`Prefetch::NONE`] past the last row.
    fn row<T>(p: &[T], q: &[T], vocab: usize, r: usize) -> Prefetch {
        if (r + 1) * vocab > p.len().min(q.len()) {
            return Prefetch::NONE;
        }
        let size = std::mem::size_of::<T>();
        Prefetch {
            p: p.as_ptr().wrapping_add(r * vocab) as *const u8,
            q: q.as_ptr().wrapping_add(r * vocab) as *const u8,
            row_bytes: vocab * size,
            element_size: size,
        }
    }
}

/// Lane-wise state of the scan pass.
struct ScanLanes {
    max_p: V,
    max_q: V,
    bad_p: [u32; LANES],
    bad_q: [u32; LANES],
    p_out: [u32; LANES],
    q_out: [u32; LANES],
}

impl ScanLanes {
    #[inline(always)]
    fn step(&mut self, pv: V, qv: V) {
        let neg = f32::NEG_INFINITY;
        for i in 0..LANES {
            let (x, y) = (pv[i], qv[i]);
            // f32::max ignores NaN, so NaN never becomes the max; the bad
            // flags catch it instead.
            self.max_p[i] = self.max_p[i].max(x);
            self.max_q[i] = self.max_q[i].max(y);
            self.bad_p[i] |= (x.is_nan() | (x == f32::INFINITY)) as u32;
            self.bad_q[i] |= (y.is_nan() | (y == f32::INFINITY)) as u32;
            self.p_out[i] |= ((x > neg) & (y == neg)) as u32;
            self.q_out[i] |= ((y > neg) & (x == neg)) as u32;
        }
    }
}

#[inline(always)]
fn scan<P: Load, Q: Load>(p: P, q: Q, next: Prefetch) -> Scan {
    let n = p.len();
    let neg = f32::NEG_INFINITY;
    let mut lanes = ScanLanes {
        max_p: [neg; LANES],
        max_q: [neg; LANES],
        bad_p: [0; LANES],
        bad_q: [0; LANES],
        p_out: [0; LANES],
        q_out: [0; LANES],
    };
    // Whole groups first, so the hot loop carries no tail logic.
    let full = n - n % LANES;
    let mut start = 0;
    while start < full {
        lanes.step(p.full_group(start), q.full_group(start));
        start += LANES;
    }
    if start < n {
        lanes.step(p.group(start, neg), q.group(start, neg));
    }
    let any = |v: &[u32; LANES]| v.iter().any(|&b| b != 0);
    Scan {
        max_p: lanes.max_p.iter().cloned().fold(neg, f32::max),
        max_q: lanes.max_q.iter().cloned().fold(neg, f32::max),
        p_bad: any(&lanes.bad_p),
        q_bad: any(&lanes.bad_q),
        p_outside_q: any(&lanes.p_out),
        q_outside_p: any(&lanes.q_out),
        next,
    }
}

/// The first index holding `value` (0 if none): a vector compare per lane
/// group with an early exit, over a row that is in cache after the scan.
#[inline(always)]
fn first_index_of<L: Load>(row: L, value: f32) -> usize {
    let n = row.len();
    let full = n - n % LANES;
    let mut start = 0;
    while start < full {
        let v = row.full_group(start);
        let mut hit = false;
        for i in 0..LANES {
            hit |= v[i] == value;
        }
        if hit {
            break;
        }
        start += LANES;
    }
    (start..n).find(|&i| row.get(i) == value).unwrap_or(0)
}

/// Elements per block: kernels compute a block's per-element values into
/// stack arrays with plain elementwise loops (which LLVM's loop vectoriser
/// handles reliably), then fold them into lane sums.
const BLK: usize = LANES * BLOCK;

/// Float64 lane totals of `K` sums.
struct Totals<const K: usize>([[f64; LANES]; K]);

impl<const K: usize> Totals<K> {
    #[inline(always)]
    fn new() -> Self {
        Totals([[0.0; LANES]; K])
    }
    /// Adds a block: float32 lane sums over its [`BLOCK`] groups, then
    /// float64 from there on.
    #[inline(always)]
    fn add(&mut self, k: usize, values: &[f32; BLK]) {
        let mut lanes = [0.0f32; LANES];
        for g in 0..BLOCK {
            for i in 0..LANES {
                lanes[i] += values[g * LANES + i];
            }
        }
        for i in 0..LANES {
            self.0[k][i] += lanes[i] as f64;
        }
    }
    #[inline(always)]
    fn finish(self) -> [f64; K] {
        let mut out = [0.0; K];
        for k in 0..K {
            out[k] = self.0[k].iter().sum();
        }
        out
    }
}

/// The blocks of a row pair as shifted, tempered scores
/// a = (p − max_p)/τ and b = (q − max_q)/τ (−inf past the end).
///
/// Kernels loop with `while blocks.next(&mut a, &mut b)` rather than taking
/// a closure: a closure is compiled as its own function, outside the
/// feature-enabled one that [`simd::dispatch`] inlines kernels into.
struct Blocks<P, Q> {
    p: P,
    q: Q,
    next: Prefetch,
    max_p: f32,
    max_q: f32,
    inv_t: f32,
    start: usize,
}

impl<P: Load, Q: Load> Blocks<P, Q> {
    #[inline(always)]
    fn new(p: P, q: Q, s: &Scan, max_p: f32, max_q: f32, inv_t: f32) -> Self {
        Blocks {
            p,
            q,
            next: s.next,
            max_p,
            max_q,
            inv_t,
            start: 0,
        }
    }

    #[inline(always)]
    fn next(&mut self, a: &mut [f32; BLK], b: &mut [f32; BLK]) -> bool {
        if self.start >= self.p.len() {
            return false;
        }
        let (next, size) = (self.next, self.next.element_size);
        simd::prefetch_l2(
            next.p,
            next.row_bytes,
            self.start * size,
            (self.start + BLK) * size,
        );
        simd::prefetch_l2(
            next.q,
            next.row_bytes,
            self.start * size,
            (self.start + BLK) * size,
        );
        self.p.block(self.start, a);
        self.q.block(self.start, b);
        self.start += BLK;
        for i in 0..BLK {
            a[i] = (a[i] - self.max_p) * self.inv_t;
            b[i] = (b[i] - self.max_q) * self.inv_t;
        }
        true
    }
}

/// Where [`exp_neg_remainder`] is used instead of e^(−u) − 1 + u computed
/// directly (which cancels for small u).
const SERIES_LIMIT: f32 = 1.0;

/// h(u) = e^(−u) − 1 + u for |u| ≤ [`SERIES_LIMIT`], from its Taylor series
/// Σ_{k≥2} (−u)^k / k! to k = 11 (truncation below 6e-9 relative at |u| = 1).
#[inline(always)]
fn exp_neg_remainder(u: f32) -> f32 {
    let mut p = 1.0f32 / 39_916_800.0;
    p = p.mul_add(-u, 1.0 / 3_628_800.0);
    p = p.mul_add(-u, 1.0 / 362_880.0);
    p = p.mul_add(-u, 1.0 / 40_320.0);
    p = p.mul_add(-u, 1.0 / 5_040.0);
    p = p.mul_add(-u, 1.0 / 720.0);
    p = p.mul_add(-u, 1.0 / 120.0);
    p = p.mul_add(-u, 1.0 / 24.0);
    p = p.mul_add(-u, 1.0 / 6.0);
    p = p.mul_add(-u, 0.5);
    p * u * u
}

#[inline(always)]
fn square(x: f32) -> f32 {
    x * x
}

/// Where [`js_series`] is used for g(δ).
const JS_SERIES_LIMIT: f32 = 0.25;

/// g(δ) from its series Σ_{k≥1} δ^(2k) / (k(2k−1)) to δ^14 (below 1e-8
/// relative for |δ| < [`JS_SERIES_LIMIT`]).
#[inline(always)]
fn js_series(delta: f32) -> f32 {
    let d2 = delta * delta;
    let mut p = 1.0f32 / 91.0;
    p = p.mul_add(d2, 1.0 / 66.0);
    p = p.mul_add(d2, 1.0 / 45.0);
    p = p.mul_add(d2, 1.0 / 28.0);
    p = p.mul_add(d2, 1.0 / 15.0);
    p = p.mul_add(d2, 1.0 / 6.0);
    p = p.mul_add(d2, 1.0);
    p * d2
}

/// g(δ) = (1+δ)ln(1+δ) + (1−δ)ln(1−δ) = Σ_{k≥1} δ^(2k) / (k(2k−1)).
#[inline(always)]
fn js_core(delta: f32) -> f32 {
    let series = js_series(delta);
    let plus = 1.0 + delta;
    let minus = 1.0 - delta;
    let t_plus = simd::select(plus == 0.0, 0.0, plus * simd::ln_1p(delta));
    let t_minus = simd::select(minus == 0.0, 0.0, minus * simd::ln_1p(-delta));
    simd::select(delta.abs() < JS_SERIES_LIMIT, series, t_plus + t_minus)
}

/// One kind's evaluation of a row pair after the scan pass.
///
/// Each kind is its own type so that [`simd::dispatch`] compiles one tight
/// loop per kind, with no per-element branch on the kind.
trait Evaluate: Copy {
    /// Whether the kind reads `q` (everything but entropy).
    const NEEDS_Q: bool = true;
    /// The value of the row, or `None` to send it to the reference.
    fn evaluate<P: Load, Q: Load>(
        self,
        p: P,
        q: Q,
        s: &Scan,
        inv_t: f32,
        work: &mut Vec<f32>,
    ) -> Option<f64>;
}

struct RowKernel<'w, P, Q, E> {
    p: P,
    q: Q,
    work: &'w mut Vec<f32>,
    next: Prefetch,
    eval: E,
    inv_t: f32,
}

impl<P: Load, Q: Load, E: Evaluate> Kernel for RowKernel<'_, P, Q, E> {
    type Output = std::result::Result<Option<f64>, (Side, RowIssue)>;

    #[inline(always)]
    fn run(self) -> Self::Output {
        let RowKernel {
            p,
            q,
            work,
            next,
            eval,
            inv_t,
        } = self;
        let s = scan(p, q, next);
        if s.p_bad {
            return Err((Side::P, RowIssue::NotFinite));
        }
        if E::NEEDS_Q && s.q_bad {
            return Err((Side::Q, RowIssue::NotFinite));
        }
        if s.max_p == f32::NEG_INFINITY {
            return Err((Side::P, RowIssue::Empty));
        }
        if E::NEEDS_Q && s.max_q == f32::NEG_INFINITY {
            return Err((Side::Q, RowIssue::Empty));
        }
        Ok(eval.evaluate(p, q, &s, inv_t, work))
    }
}

/// KL(P‖Q) in two passes (scan, then this one); see the module docs.
#[derive(Clone, Copy)]
struct Kl;

impl Evaluate for Kl {
    #[inline(always)]
    fn evaluate<P: Load, Q: Load>(
        self,
        p: P,
        q: Q,
        s: &Scan,
        inv_t: f32,
        _work: &mut Vec<f32>,
    ) -> Option<f64> {
        if s.p_outside_q {
            return Some(f64::INFINITY);
        }
        // Shift: u = (a − b) − (a* − b*) where * is the argmax of p, so a* = 0.
        let shift = (q.get(first_index_of(p, s.max_p)) - s.max_q) * inv_t;
        let k = simd::exp(-shift); // e^(−shift) = w·e^(−u)/v, ≥ 1
        let robust = k.is_finite();
        let k = if robust { k } else { 0.0 };
        let mut totals = Totals::<4>::new();
        let mut blocks = Blocks::new(p, q, s, s.max_p, s.max_q, inv_t);
        let (mut a, mut b) = ([0.0; BLK], [0.0; BLK]);
        let (mut ws, mut vs, mut wus, mut rems) = ([0.0; BLK], [0.0; BLK], [0.0; BLK], [0.0; BLK]);
        let mut simple_lanes = [0.0f32; BLK];
        // Whether Σ e^b covers every block; it is only needed if the robust
        // form turns out ill-conditioned.
        let mut sq_complete = true;
        while blocks.next(&mut a, &mut b) {
            // Most blocks of near-equal models have P > 0 and small u
            // everywhere: then one exponential per element does, the series
            // giving w·h(u). Otherwise the block takes the general loop.
            for i in 0..BLK {
                let w = simd::exp_nonpositive(a[i]);
                let u = a[i] - b[i] + shift;
                ws[i] = w;
                wus[i] = w * u;
                rems[i] = w * exp_neg_remainder(u);
                // 0 where the series applies; kept as data, not a running
                // flag, so that this loop stays vectorised.
                simple_lanes[i] = simd::select((w > 0.0) & (u.abs() <= SERIES_LIMIT), 0.0, 1.0);
            }
            let mut exceptions = [0.0f32; LANES];
            for g in 0..BLOCK {
                for i in 0..LANES {
                    exceptions[i] += simple_lanes[g * LANES + i];
                }
            }
            if exceptions.iter().any(|&e| e > 0.0) || !robust {
                for i in 0..BLK {
                    let w = ws[i];
                    let v = simd::exp_nonpositive(b[i]);
                    let u = a[i] - b[i] + shift;
                    let positive = w > 0.0;
                    let w_u = w * u;
                    let ve = v * k; // = w·e^(−u)
                    let large = ve - w + w_u;
                    vs[i] = v;
                    wus[i] = simd::select(positive, w_u, 0.0);
                    rems[i] = simd::select(
                        positive,
                        simd::select(u.abs() <= SERIES_LIMIT, rems[i], large),
                        ve,
                    );
                }
                totals.add(1, &vs);
            } else {
                sq_complete = false;
            }
            totals.add(0, &ws);
            totals.add(2, &wus);
            totals.add(3, &rems);
        }
        let [sp, sq, su, sr] = totals.finish();
        let mean_u = su / sp;
        let excess = (sr - su) / sp; // E_P[e^(−u)] − 1
        let log_mean_exp = if robust && excess.is_finite() && excess > -0.5 {
            excess.ln_1p()
        } else if sq_complete {
            sq.ln() - sp.ln() - shift as f64
        } else {
            return None; // rare: the float64 reference redoes the row
        };
        let value = mean_u + log_mean_exp;
        value.is_finite().then_some(value.max(0.0))
    }
}

/// KL(Q‖P): KL with the roles swapped.
#[derive(Clone, Copy)]
struct ReverseKl;

impl Evaluate for ReverseKl {
    #[inline(always)]
    fn evaluate<P: Load, Q: Load>(
        self,
        p: P,
        q: Q,
        s: &Scan,
        inv_t: f32,
        work: &mut Vec<f32>,
    ) -> Option<f64> {
        let swapped = Scan {
            max_p: s.max_q,
            max_q: s.max_p,
            p_outside_q: s.q_outside_p,
            q_outside_p: s.p_outside_q,
            ..*s
        };
        Kl.evaluate(q, p, &swapped, inv_t, work)
    }
}

/// H(P) = ln Sp − Σ w·a / Sp: a sum of non-negative parts, no cancellation.
#[derive(Clone, Copy)]
struct Entropy;

impl Evaluate for Entropy {
    const NEEDS_Q: bool = false;
    #[inline(always)]
    fn evaluate<P: Load, Q: Load>(
        self,
        p: P,
        _q: Q,
        s: &Scan,
        inv_t: f32,
        _work: &mut Vec<f32>,
    ) -> Option<f64> {
        let mut totals = Totals::<2>::new();
        let mut blocks = Blocks::new(p, p, s, s.max_p, s.max_p, inv_t);
        let (mut a, mut unused) = ([0.0; BLK], [0.0; BLK]);
        let (mut ws, mut was) = ([0.0; BLK], [0.0; BLK]);
        while blocks.next(&mut a, &mut unused) {
            for i in 0..BLK {
                let w = simd::exp_nonpositive(a[i]);
                ws[i] = w;
                was[i] = simd::select(w > 0.0, w * a[i], 0.0);
            }
            totals.add(0, &ws);
            totals.add(1, &was);
        }
        let [sp, swa] = totals.finish();
        Some((sp.ln() - swa / sp).max(0.0))
    }
}

/// H(P, Q) = ln Sq − Σ w·b / Sp.
#[derive(Clone, Copy)]
struct CrossEntropy;

impl Evaluate for CrossEntropy {
    #[inline(always)]
    fn evaluate<P: Load, Q: Load>(
        self,
        p: P,
        q: Q,
        s: &Scan,
        inv_t: f32,
        _work: &mut Vec<f32>,
    ) -> Option<f64> {
        if s.p_outside_q {
            return Some(f64::INFINITY);
        }
        let mut totals = Totals::<3>::new();
        let mut blocks = Blocks::new(p, q, s, s.max_p, s.max_q, inv_t);
        let (mut a, mut b) = ([0.0; BLK], [0.0; BLK]);
        let (mut ws, mut vs, mut wbs) = ([0.0; BLK], [0.0; BLK], [0.0; BLK]);
        while blocks.next(&mut a, &mut b) {
            for i in 0..BLK {
                let w = simd::exp_nonpositive(a[i]);
                ws[i] = w;
                vs[i] = simd::exp_nonpositive(b[i]);
                wbs[i] = simd::select(w > 0.0, w * b[i], 0.0);
            }
            totals.add(0, &ws);
            totals.add(1, &vs);
            totals.add(2, &wbs);
        }
        let [sp, sq, swb] = totals.finish();
        Some((sq.ln() - swb / sp).max(0.0))
    }
}

/// Per-row constants of the normalised kinds.
#[derive(Clone, Copy)]
struct Norm {
    inv_sp: f32,
    inv_sq: f32,
    /// ln Sp − ln Sq, so that ln(Q/P) = b − a + log_ratio_shift.
    log_ratio_shift: f32,
    log_sp: f32,
}

/// A kind evaluated from normalised P and Q, one term per element.
trait Term: Copy {
    /// The term of one element: shifted scores a, b, their exponentials
    /// w, v, and P = w/Sp, Q = v/Sq.
    fn term(self, a: f32, b: f32, w: f32, v: f32, n: &Norm) -> f32;
    /// The terms of a block (elementwise [`Term::term`] unless a kind knows
    /// a cheaper route for typical blocks).
    #[inline(always)]
    fn block(
        self,
        a: &[f32; BLK],
        b: &[f32; BLK],
        w: &[f32; BLK],
        v: &[f32; BLK],
        n: &Norm,
        out: &mut [f32; BLK],
    ) {
        for i in 0..BLK {
            out[i] = self.term(a[i], b[i], w[i], v[i], n);
        }
    }
    /// The divergence from the sum of the terms (`None`: use the reference).
    fn finish(self, total: f64) -> Option<f64>;
    /// Whether Q = 0 where P > 0 makes the divergence +inf.
    fn infinite_outside_q(self) -> bool {
        false
    }
}

#[derive(Clone, Copy)]
struct Normalised<T>(T);

impl<T: Term> Evaluate for Normalised<T> {
    #[inline(always)]
    fn evaluate<P: Load, Q: Load>(
        self,
        p: P,
        q: Q,
        s: &Scan,
        inv_t: f32,
        work: &mut Vec<f32>,
    ) -> Option<f64> {
        if self.0.infinite_outside_q() && s.p_outside_q {
            return Some(f64::INFINITY);
        }
        // The sum pass keeps its exponentials (2 × the row, in L2) for the
        // term pass rather than computing them twice.
        let padded = p.len().div_ceil(BLK) * BLK;
        work.clear();
        work.resize(2 * padded, 0.0);
        let (w_all, v_all) = work.split_at_mut(padded);
        let mut totals = Totals::<2>::new();
        let mut blocks = Blocks::new(p, q, s, s.max_p, s.max_q, inv_t);
        let (mut a, mut b) = ([0.0; BLK], [0.0; BLK]);
        let mut start = 0;
        while blocks.next(&mut a, &mut b) {
            let ws: &mut [f32; BLK] = (&mut w_all[start..start + BLK])
                .try_into()
                .expect("a whole block");
            let vs: &mut [f32; BLK] = (&mut v_all[start..start + BLK])
                .try_into()
                .expect("a whole block");
            for i in 0..BLK {
                ws[i] = simd::exp_nonpositive(a[i]);
                vs[i] = simd::exp_nonpositive(b[i]);
            }
            totals.add(0, ws);
            totals.add(1, vs);
            start += BLK;
        }
        let [sp, sq] = totals.finish();
        let norm = Norm {
            inv_sp: (1.0 / sp) as f32,
            inv_sq: (1.0 / sq) as f32,
            log_ratio_shift: (sp.ln() - sq.ln()) as f32,
            log_sp: sp.ln() as f32,
        };
        let mut terms = Totals::<1>::new();
        let mut blocks = Blocks::new(p, q, s, s.max_p, s.max_q, inv_t);
        let mut out = [0.0; BLK];
        let mut start = 0;
        while blocks.next(&mut a, &mut b) {
            let ws: &[f32; BLK] = (&w_all[start..start + BLK])
                .try_into()
                .expect("a whole block");
            let vs: &[f32; BLK] = (&v_all[start..start + BLK])
                .try_into()
                .expect("a whole block");
            self.0.block(&a, &b, ws, vs, &norm, &mut out);
            terms.add(0, &out);
            start += BLK;
        }
        let [total] = terms.finish();
        self.0.finish(total).filter(|v| v.is_finite())
    }
}

/// Jensen–Shannon: Σ (P+Q)·g(δ)/4, δ = (P−Q)/(P+Q).
#[derive(Clone, Copy)]
struct Js;

impl Term for Js {
    #[inline(always)]
    fn term(self, _a: f32, _b: f32, w: f32, v: f32, n: &Norm) -> f32 {
        let (pp, qq) = (w * n.inv_sp, v * n.inv_sq);
        let sum = pp + qq;
        simd::select(sum > 0.0, sum * js_core((pp - qq) / sum), 0.0)
    }
    /// Blocks where |δ| < 1/4 everywhere (near-equal models) need only the
    /// series; the logarithms are computed for the others alone.
    #[inline(always)]
    fn block(
        self,
        a: &[f32; BLK],
        b: &[f32; BLK],
        w: &[f32; BLK],
        v: &[f32; BLK],
        n: &Norm,
        out: &mut [f32; BLK],
    ) {
        let mut far = [0.0f32; BLK];
        for i in 0..BLK {
            let (pp, qq) = (w[i] * n.inv_sp, v[i] * n.inv_sq);
            let sum = pp + qq;
            let delta = (pp - qq) / sum;
            out[i] = simd::select(sum > 0.0, sum * js_series(delta), 0.0);
            far[i] = simd::select(delta.abs() < JS_SERIES_LIMIT, 0.0, 1.0);
        }
        let mut lanes = [0.0f32; LANES];
        for g in 0..BLOCK {
            for i in 0..LANES {
                lanes[i] += far[g * LANES + i];
            }
        }
        if lanes.iter().any(|&f| f > 0.0) {
            for i in 0..BLK {
                out[i] = self.term(a[i], b[i], w[i], v[i], n);
            }
        }
    }
    fn finish(self, total: f64) -> Option<f64> {
        Some((total / 4.0).clamp(0.0, std::f64::consts::LN_2))
    }
}

/// Total variation: ½ Σ |P − Q|.
#[derive(Clone, Copy)]
struct Tv;

impl Term for Tv {
    #[inline(always)]
    fn term(self, _a: f32, _b: f32, w: f32, v: f32, n: &Norm) -> f32 {
        (w * n.inv_sp - v * n.inv_sq).abs()
    }
    fn finish(self, total: f64) -> Option<f64> {
        Some((total / 2.0).min(1.0))
    }
}

/// Squared Hellinger: Σ (√P − √Q)² = Σ (P − Q)²/(√P + √Q)².
#[derive(Clone, Copy)]
struct Hellinger;

impl Term for Hellinger {
    #[inline(always)]
    fn term(self, _a: f32, _b: f32, w: f32, v: f32, n: &Norm) -> f32 {
        let (pp, qq) = (w * n.inv_sp, v * n.inv_sq);
        let diff = pp - qq;
        let root = pp.sqrt() + qq.sqrt();
        simd::select(root > 0.0, diff * diff / (root * root), 0.0)
    }
    fn finish(self, total: f64) -> Option<f64> {
        Some(total.min(2.0))
    }
}

/// Pearson χ²: (P − Q)²/Q in log space, since P²/Q may be large while P
/// itself underflows.
#[derive(Clone, Copy)]
struct Chi2;

impl Term for Chi2 {
    #[inline(always)]
    fn term(self, a: f32, b: f32, _w: f32, v: f32, n: &Norm) -> f32 {
        let y = a - b - n.log_ratio_shift; // ln(P/Q)
        let log_p = a - n.log_sp;
        let above = simd::exp(log_p + y) * square(simd::expm1(-y));
        let below = v * n.inv_sq * square(simd::expm1(y));
        let term = simd::select(y >= 0.0, above, below);
        simd::select(b == f32::NEG_INFINITY, 0.0, term)
    }
    fn finish(self, total: f64) -> Option<f64> {
        Some(total.max(0.0))
    }
    fn infinite_outside_q(self) -> bool {
        true
    }
}

/// Rényi of order α: ln(1 + Σ P[(Q/P)^β − 1 − β(Q/P − 1)]) / (α − 1), β = 1 − α.
#[derive(Clone, Copy)]
struct Renyi {
    alpha: f32,
    beta: f32,
}

impl Term for Renyi {
    #[inline(always)]
    fn term(self, a: f32, b: f32, w: f32, v: f32, n: &Norm) -> f32 {
        let (pp, qq) = (w * n.inv_sp, v * n.inv_sq);
        let beta = self.beta;
        let y = b - a + n.log_ratio_shift; // ln(Q/P)
        let bracket = simd::expm1(beta * y) - beta * simd::expm1(y);
        // Where P underflowed, P^α Q^(1−α) may still count.
        let log_q = b - (n.log_sp - n.log_ratio_shift);
        let tiny = simd::exp(self.alpha * (a - n.log_sp) + beta * log_q) - beta * qq;
        let tiny = simd::select(a == f32::NEG_INFINITY, -beta * qq, tiny);
        simd::select(w > 0.0, pp * bracket, tiny)
    }
    fn finish(self, total: f64) -> Option<f64> {
        // NaN fails `total > -0.5` and goes to the reference too.
        if total.partial_cmp(&-0.5) != Some(std::cmp::Ordering::Greater) || !total.is_finite() {
            return None;
        }
        Some((total.ln_1p() / (self.alpha as f64 - 1.0)).max(0.0))
    }
    fn infinite_outside_q(self) -> bool {
        self.alpha > 1.0
    }
}

/// Fills `out` with ln(x) of a probability row after validating it.
fn probs_to_logits<L: Load>(
    row: L,
    tol: f64,
    out: &mut Vec<f32>,
) -> std::result::Result<(), RowIssue> {
    out.clear();
    let mut sum = 0.0f64;
    for i in 0..row.len() {
        let x = row.get(i);
        if x.is_nan() || x == f32::INFINITY {
            return Err(RowIssue::NotFinite);
        }
        if x < 0.0 {
            return Err(RowIssue::Negative);
        }
        sum += x as f64;
        out.push(simd::ln(x));
    }
    if sum == 0.0 {
        return Err(RowIssue::Empty);
    }
    if (sum - 1.0).abs() > tol {
        return Err(RowIssue::BadSum(sum));
    }
    Ok(())
}

fn run_pair<P: Load, Q: Load>(
    p: P,
    q: Q,
    kind: Kind,
    inv_t: f32,
    next: Prefetch,
    work: &mut Vec<f32>,
) -> std::result::Result<Option<f64>, (Side, RowIssue)> {
    fn go<P: Load, Q: Load, E: Evaluate>(
        p: P,
        q: Q,
        eval: E,
        inv_t: f32,
        next: Prefetch,
        work: &mut Vec<f32>,
    ) -> std::result::Result<Option<f64>, (Side, RowIssue)> {
        simd::dispatch(RowKernel {
            p,
            q,
            work,
            next,
            eval,
            inv_t,
        })
    }
    match kind {
        Kind::Kl => go(p, q, Kl, inv_t, next, work),
        Kind::ReverseKl => go(p, q, ReverseKl, inv_t, next, work),
        Kind::Entropy => go(p, q, Entropy, inv_t, next, work),
        Kind::CrossEntropy => go(p, q, CrossEntropy, inv_t, next, work),
        Kind::Js => go(p, q, Normalised(Js), inv_t, next, work),
        Kind::Tv => go(p, q, Normalised(Tv), inv_t, next, work),
        Kind::Hellinger => go(p, q, Normalised(Hellinger), inv_t, next, work),
        Kind::Chi2 => go(p, q, Normalised(Chi2), inv_t, next, work),
        Kind::Renyi(alpha) => go(
            p,
            q,
            Normalised(Renyi {
                alpha: alpha as f32,
                beta: (1.0 - alpha) as f32,
            }),
            inv_t,
            next,
            work,
        ),
    }
}

/// Validates probability row `r` of `rows` and writes its logarithms.
fn probs_row_to_logits(
    rows: &Rows<'_>,
    r: usize,
    tol: f64,
    out: &mut Vec<f32>,
) -> std::result::Result<(), RowIssue> {
    let v = rows.vocab();
    match *rows {
        Rows::F32(d, _) => probs_to_logits(&d[r * v..(r + 1) * v], tol, out),
        Rows::F16(d, _) => probs_to_logits(F16Row(&d[r * v..(r + 1) * v]), tol, out),
        Rows::Bf16(d, _) => probs_to_logits(Bf16Row(&d[r * v..(r + 1) * v]), tol, out),
        Rows::F64(..) => unreachable!("float64 rows take the reference path"),
    }
}

/// Row `r` of `rows` widened to float32 (for pairs of mixed dtypes, which
/// then run through the float32 kernels rather than one per dtype pair).
fn widen_row(rows: &Rows<'_>, r: usize, out: &mut Vec<f32>) {
    let v = rows.vocab();
    out.clear();
    match *rows {
        Rows::F32(d, _) => out.extend_from_slice(&d[r * v..(r + 1) * v]),
        Rows::F16(d, _) => out.extend(d[r * v..(r + 1) * v].iter().map(|&x| f16_to_f32(x))),
        Rows::Bf16(d, _) => out.extend(d[r * v..(r + 1) * v].iter().map(|&x| bf16_to_f32(x))),
        Rows::F64(..) => unreachable!("float64 rows take the reference path"),
    }
}

/// Row `r` by the fast kernels: `Ok(None)` sends it to the reference
/// (float64 data, or values that left float32 range).
pub fn row(
    p: &Rows<'_>,
    q: Option<&Rows<'_>>,
    r: usize,
    opts: &Options,
    scratch: &mut Scratch,
) -> std::result::Result<Option<f64>, (Side, RowIssue)> {
    let v = p.vocab();
    let inv_t = (1.0 / opts.temperature) as f32;
    let q = q.unwrap_or(p);
    if p.dtype() == Dtype::F64 || q.dtype() == Dtype::F64 {
        return Ok(None);
    }
    if opts.inputs == Inputs::Probs {
        let Scratch { p32, q32, exps, .. } = scratch;
        let tol_p = super::probs_tolerance(p.dtype());
        let tol_q = super::probs_tolerance(q.dtype());
        probs_row_to_logits(p, r, tol_p, p32).map_err(|e| (Side::P, e))?;
        probs_row_to_logits(q, r, tol_q, q32).map_err(|e| (Side::Q, e))?;
        return run_pair(&p32[..], &q32[..], opts.kind, inv_t, Prefetch::NONE, exps);
    }
    let span = r * v..(r + 1) * v;
    let exps = &mut scratch.exps;
    match (*p, *q) {
        (Rows::F32(a, _), Rows::F32(b, _)) => run_pair(
            &a[span.clone()],
            &b[span],
            opts.kind,
            inv_t,
            Prefetch::row(a, b, v, r + 1),
            exps,
        ),
        (Rows::F16(a, _), Rows::F16(b, _)) => run_pair(
            F16Row(&a[span.clone()]),
            F16Row(&b[span]),
            opts.kind,
            inv_t,
            Prefetch::row(a, b, v, r + 1),
            exps,
        ),
        (Rows::Bf16(a, _), Rows::Bf16(b, _)) => run_pair(
            Bf16Row(&a[span.clone()]),
            Bf16Row(&b[span]),
            opts.kind,
            inv_t,
            Prefetch::row(a, b, v, r + 1),
            exps,
        ),
        _ => {
            let Scratch { p32, q32, exps, .. } = scratch;
            widen_row(p, r, p32);
            widen_row(q, r, q32);
            run_pair(&p32[..], &q32[..], opts.kind, inv_t, Prefetch::NONE, exps)
        }
    }
}
