//! The per-kind evaluations behind [`super::fast`]: each divergence is a
//! type implementing [`Evaluate`] (or [`Term`] for the kinds computed from
//! normalised P and Q), so that dispatch compiles one loop per kind. The
//! forms are chosen to keep their digits when P ≈ Q; see the module docs of
//! [`super::fast`].

use super::fast::{
    first_index_of, store_exps, stored_block, Blocks, Load, Scan, Totals, BLK, BLOCK,
};
use super::finish;
use crate::simd::{self, LANES};

/// Where [`exp_neg_remainder`] is used instead of e^(−u) − 1 + u computed
/// directly (which cancels for small u).
pub(super) const SERIES_LIMIT: f32 = 1.0;

/// h(u) = e^(−u) − 1 + u for |u| ≤ [`SERIES_LIMIT`], from its Taylor series
/// Σ_{k≥2} (−u)^k / k! to k = 11 (truncation below 6e-9 relative at |u| = 1).
#[inline(always)]
pub(super) fn exp_neg_remainder(u: f32) -> f32 {
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
pub(super) const JS_SERIES_LIMIT: f32 = 0.25;

/// g(δ) from its series Σ_{k≥1} δ^(2k) / (k(2k−1)) to δ^14 (below 1e-8
/// relative for |δ| < [`JS_SERIES_LIMIT`]).
#[inline(always)]
pub(super) fn js_series(delta: f32) -> f32 {
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
pub(super) fn js_core(delta: f32) -> f32 {
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
pub(super) trait Evaluate: Copy {
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

/// h(u)/u² for |u| ≤ [`SERIES_LIMIT`]: a degree-6 minimax polynomial
/// (relative error below 1e-7 on [−1, 1]; the Taylor form of
/// [`exp_neg_remainder`] needs degree 9 for the same). Four fewer
/// multiply-adds per element in KL's hot loop, whose speed is the count of
/// those.
#[inline(always)]
pub(super) fn exp_neg_remainder_ratio(u: f32) -> f32 {
    let mut p = 2.496_081_3e-5f32;
    p = p.mul_add(u, -2.032_548_5e-4);
    p = p.mul_add(u, 1.389_133_5e-3);
    p = p.mul_add(u, -8.330_93e-3);
    p = p.mul_add(u, 4.166_651_5e-2);
    p = p.mul_add(u, -1.666_669_5e-1);
    p.mul_add(u, 0.5)
}

/// KL(P‖Q) in two passes (scan, then this one); see the module docs.
#[derive(Clone, Copy)]
pub(super) struct Kl;

impl Kl {
    /// Adds the lane sums Σw, Σw·u and Σw·h(u) of the whole block at
    /// `start` to `totals` (0, 2 and 3) if every element in it has P > 0 and
    /// |u| ≤ [`SERIES_LIMIT`] (most blocks of near-equal models); `false`
    /// (nothing added) sends the block to [`Kl::general_block`].
    ///
    /// Written for speed: the loads, shifts and sums are fused, and
    /// u = (p − q)/τ + `centre` is taken from the difference of the raw
    /// scores (exact when they are within a factor of two of each other).
    ///
    /// `TEMPERED`: whether 1/τ differs from 1 (the common τ = 1 saves a
    /// multiply per element). `W`: the width of the lane sums, [`LANES`] or
    /// half of it where a register holds only half a lane group (see
    /// [`simd::lane_group_fits_register`]).
    #[inline(always)]
    fn simple_block<P: Load, Q: Load, const TEMPERED: bool, const W: usize>(
        p: P,
        q: Q,
        start: usize,
        max_p: f32,
        inv_t: f32,
        centre: f32,
        totals: &mut Totals<4>,
    ) -> bool {
        let mut sums = [[0.0f32; W]; 3];
        // All ones in a lane that met an element outside the series' range.
        let mut outside = [0u32; W];
        for g in 0..BLOCK {
            let pv = p.full_group(start + g * LANES);
            let qv = q.full_group(start + g * LANES);
            for part in 0..LANES / W {
                for i in 0..W {
                    let (x, y) = (pv[part * W + i], qv[part * W + i]);
                    let (a, u) = if TEMPERED {
                        ((x - max_p) * inv_t, (x - y).mul_add(inv_t, centre))
                    } else {
                        (x - max_p, (x - y) + centre)
                    };
                    // h(u) = u²·(h(u)/u²) does not wait for w, whose
                    // exponential is the long dependency chain here. The
                    // range test reuses u² (u² ≤ limit² is |u| ≤ limit for
                    // the limit 1, with no absolute value and one constant
                    // less) and is or-ed into a mask: a compare and an or,
                    // measured a few percent faster with AVX2 than a blend
                    // poisoning the sum with NaN. u² ≤ 1 also rules out
                    // P = 0, where u is −inf or NaN.
                    let u2 = u * u;
                    // Negated so that NaN counts as outside.
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    let out = !(u2 <= SERIES_LIMIT * SERIES_LIMIT);
                    outside[i] |= (out as u32).wrapping_neg();
                    let h = u2 * exp_neg_remainder_ratio(u);
                    let w = simd::exp_weight(a);
                    sums[0][i] += w;
                    sums[1][i] = w.mul_add(u, sums[1][i]);
                    sums[2][i] = w.mul_add(h, sums[2][i]);
                }
            }
        }
        if outside.iter().any(|&lane| lane != 0) {
            return false;
        }
        totals.add_lanes(0, &sums[0]);
        totals.add_lanes(2, &sums[1]);
        totals.add_lanes(3, &sums[2]);
        true
    }

    /// Every element of a block in the general form, adding Σw, Σv, Σw·u
    /// and Σ w·(e^(−u) − 1 + u) to `totals` (`k` = e^(−shift)).
    #[inline(always)]
    fn general_block(a: &[f32; BLK], b: &[f32; BLK], shift: f32, k: f32, totals: &mut Totals<4>) {
        let (mut ws, mut vs, mut wus, mut rems) = ([0.0; BLK], [0.0; BLK], [0.0; BLK], [0.0; BLK]);
        for i in 0..BLK {
            let w = simd::exp_nonpositive(a[i]);
            let v = simd::exp_nonpositive(b[i]);
            let u = a[i] - b[i] + shift;
            let positive = w > 0.0;
            let w_u = w * u;
            let ve = v * k; // = w·e^(−u)
            let large = ve - w + w_u;
            let series = w * exp_neg_remainder(u);
            ws[i] = w;
            vs[i] = v;
            wus[i] = simd::select(positive, w_u, 0.0);
            rems[i] = simd::select(
                positive,
                simd::select(u.abs() <= SERIES_LIMIT, series, large),
                ve,
            );
        }
        totals.add(0, &ws);
        totals.add(1, &vs);
        totals.add(2, &wus);
        totals.add(3, &rems);
    }
}

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
        let q_star = q.get(first_index_of(p, s.max_p));
        let shift = (q_star - s.max_q) * inv_t;
        // The same u from the raw scores: (p − q)/τ − (p* − q*)/τ.
        let centre = ((q_star as f64 - s.max_p as f64) * inv_t as f64) as f32;
        let k = simd::exp(-shift); // e^(−shift) = w·e^(−u)/v, ≥ 1
        let robust = k.is_finite() && centre.is_finite();
        let k = if robust { k } else { 0.0 };
        let mut totals = Totals::<4>::new();
        let (mut a, mut b) = ([0.0; BLK], [0.0; BLK]);
        // Whether Σ e^b covers every block; it is only needed if the robust
        // form turns out ill-conditioned.
        let mut sq_complete = true;
        let full_width = simd::lane_group_fits_register();
        let n = p.len();
        let mut start = 0;
        while start < n {
            s.next.fetch(start, start + BLK);
            // Most blocks of near-equal models have P > 0 and small u
            // everywhere: then one exponential per element does, the series
            // giving w·h(u). Otherwise the block takes the general form.
            const HALF: usize = LANES / 2;
            let (max_p, t) = (s.max_p, &mut totals);
            let simple = robust
                && start + BLK <= n
                && match (inv_t == 1.0, full_width) {
                    (true, true) => {
                        Kl::simple_block::<P, Q, false, LANES>(p, q, start, max_p, inv_t, centre, t)
                    }
                    (true, false) => {
                        Kl::simple_block::<P, Q, false, HALF>(p, q, start, max_p, inv_t, centre, t)
                    }
                    (false, true) => {
                        Kl::simple_block::<P, Q, true, LANES>(p, q, start, max_p, inv_t, centre, t)
                    }
                    (false, false) => {
                        Kl::simple_block::<P, Q, true, HALF>(p, q, start, max_p, inv_t, centre, t)
                    }
                };
            if simple {
                sq_complete = false;
            } else {
                p.shifted_block(start, s.max_p, inv_t, &mut a);
                q.shifted_block(start, s.max_q, inv_t, &mut b);
                Kl::general_block(&a, &b, shift, k, &mut totals);
            }
            start += BLK;
        }
        let [sp, sq, su, sr] = totals.finish();
        finish::kl(sp, sq, su, sr, shift, robust, sq_complete)
    }
}

/// KL(Q‖P): KL with the roles swapped.
#[derive(Clone, Copy)]
pub(super) struct ReverseKl;

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
pub(super) struct Entropy;

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
        Some(finish::entropy(sp, swa))
    }
}

/// H(P, Q) = ln Sq − Σ w·b / Sp.
#[derive(Clone, Copy)]
pub(super) struct CrossEntropy;

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
        finish::cross_entropy(sp, sq, swb)
    }
}

/// Per-row constants of the normalised kinds.
#[derive(Clone, Copy)]
pub(super) struct Norm {
    inv_sp: f32,
    inv_sq: f32,
    /// ln Sp − ln Sq, so that ln(Q/P) = b − a + log_ratio_shift.
    log_ratio_shift: f32,
    log_sp: f32,
}

/// A kind evaluated from normalised P and Q, one term per element.
pub(super) trait Term: Copy {
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
pub(super) struct Normalised<T>(pub(super) T);

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
        let (sp, sq) = store_exps(p, q, s, inv_t, work);
        let padded = p.len().div_ceil(BLK) * BLK;
        let norm = Norm {
            inv_sp: (1.0 / sp) as f32,
            inv_sq: (1.0 / sq) as f32,
            log_ratio_shift: (sp.ln() - sq.ln()) as f32,
            log_sp: sp.ln() as f32,
        };
        let mut terms = Totals::<1>::new();
        let mut blocks = Blocks::new(p, q, s, s.max_p, s.max_q, inv_t);
        let (mut a, mut b) = ([0.0; BLK], [0.0; BLK]);
        let mut out = [0.0; BLK];
        let mut start = 0;
        while blocks.next(&mut a, &mut b) {
            let (ws, vs) = stored_block(work, padded, start);
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
pub(super) struct Js;

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
        Some(finish::js(total))
    }
}

/// Total variation: ½ Σ |P − Q|.
#[derive(Clone, Copy)]
pub(super) struct Tv;

impl Term for Tv {
    #[inline(always)]
    fn term(self, _a: f32, _b: f32, w: f32, v: f32, n: &Norm) -> f32 {
        (w * n.inv_sp - v * n.inv_sq).abs()
    }
    fn finish(self, total: f64) -> Option<f64> {
        Some(finish::tv(total))
    }
}

/// Squared Hellinger: Σ (√P − √Q)² = Σ (P − Q)²/(√P + √Q)².
#[derive(Clone, Copy)]
pub(super) struct Hellinger;

impl Term for Hellinger {
    #[inline(always)]
    fn term(self, _a: f32, _b: f32, w: f32, v: f32, n: &Norm) -> f32 {
        let (pp, qq) = (w * n.inv_sp, v * n.inv_sq);
        let diff = pp - qq;
        let root = pp.sqrt() + qq.sqrt();
        simd::select(root > 0.0, diff * diff / (root * root), 0.0)
    }
    fn finish(self, total: f64) -> Option<f64> {
        Some(finish::hellinger(total))
    }
}

/// Pearson χ²: (P − Q)²/Q in log space, since P²/Q may be large while P
/// itself underflows.
#[derive(Clone, Copy)]
pub(super) struct Chi2;

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
        Some(finish::chi2(total))
    }
    fn infinite_outside_q(self) -> bool {
        true
    }
}

/// Rényi of order α: ln(1 + Σ P·B(y)) / (α − 1), with y = ln(Q/P),
/// β = 1 − α and the bracket B(y) = (Q/P)^β − 1 − β(Q/P − 1).
///
/// B is evaluated in the form that keeps its digits: both of its direct
/// forms subtract terms of size ~|y| to leave a value of size ~y²·|αβ|,
/// which near-equal models (small y) and orders near 0 or 1 (small α or β)
/// would lose to float32 rounding. So:
/// - |y| ≤ [`Renyi::reach`]: the series Σ_{k≥2} (β^k − β) y^k / k!, whose
///   coefficients are computed once per call in float64;
/// - else, for α ≤ ½: Q/P·(e^(−αy) − 1) + α(e^y − 1), whose terms are of
///   size α (the form with β loses them as α → 0);
/// - else: (e^(βy) − 1) − β(e^y − 1), whose terms are of size β.
#[derive(Clone, Copy)]
pub(super) struct Renyi {
    pub(super) alpha: f32,
    pub(super) beta: f32,
    /// (β^k − β)/k! for k = 2..=13.
    series: [f32; RENYI_TERMS],
    /// 1/max(1, |β|): where the series is used; there every omitted term is
    /// below 3e-10 of the first (see [`Renyi::new`]).
    reach: f32,
    /// Whether the direct form is the one with α (α ≤ ½).
    small_alpha: bool,
    /// α > 1 (in float64: α = 1 + 1e-9 is 1 in float32).
    above_one: bool,
    /// α − 1 in float64, the divisor of the logarithm.
    alpha_minus_one: f64,
}

/// Terms of [`Renyi`]'s series, k = 2..=13.
pub const RENYI_TERMS: usize = 12;

/// The coefficients (β^k − β)/k!, k = 2..=13, of the series of the Rényi
/// bracket B(y) = Σ_k (β^k − β) y^k / k! for order `alpha`, β = 1 − α,
/// computed in float64 (the GPU kernels take them too).
pub fn renyi_series(alpha: f64) -> [f32; RENYI_TERMS] {
    let beta = 1.0 - alpha;
    let mut series = [0.0f32; RENYI_TERMS];
    let mut factorial = 1.0f64;
    for (j, c) in series.iter_mut().enumerate() {
        let k = j as i32 + 2;
        factorial *= k as f64;
        // β^k − β = β·(β^(k−1) − 1); for 0 < β < 1 the bracket cancels as
        // β → 1 (α → 0), so it is e^((k−1)·ln β) − 1 with ln β = ln(1 − α)
        // taken from α.
        let power_minus_one = if beta > 0.0 {
            ((k - 1) as f64 * (-alpha).ln_1p()).exp_m1()
        } else {
            beta.powi(k - 1) - 1.0
        };
        *c = (beta * power_minus_one / factorial) as f32;
    }
    series
}

/// |y| up to which the Rényi series is used: 1/max(1, |β|) (see
/// [`Renyi::new`]).
pub fn renyi_reach(alpha: f64) -> f32 {
    (1.0 / (1.0 - alpha).abs().max(1.0)) as f32
}

impl Renyi {
    /// The evaluation for order `alpha` (> 0, ≠ 1).
    ///
    /// With |y| ≤ 1/max(1, |β|), term k over term 2 is
    /// (1 + β + … + β^(k−2))·y^(k−2)·2/k!, at most 2(k−1)/k!: for the first
    /// omitted term, k = 14, 3e-10.
    pub(super) fn new(alpha: f64) -> Renyi {
        Renyi {
            alpha: alpha as f32,
            beta: (1.0 - alpha) as f32,
            series: renyi_series(alpha),
            reach: renyi_reach(alpha),
            small_alpha: alpha <= 0.5,
            above_one: alpha > 1.0,
            alpha_minus_one: alpha - 1.0,
        }
    }

    /// B(y) for ln(Q/P) = `y` with P > 0.
    #[inline(always)]
    fn bracket(self, y: f32) -> f32 {
        let mut s = self.series[RENYI_TERMS - 1];
        for k in (0..RENYI_TERMS - 1).rev() {
            s = s.mul_add(y, self.series[k]);
        }
        let series = s * y * y;
        let direct = if self.small_alpha {
            // Q/P·(e^(−αy) − 1) is 0 where Q is (y = −inf: 0·inf otherwise).
            let scaled = simd::exp(y) * simd::expm1(-self.alpha * y);
            let scaled = simd::select(y == f32::NEG_INFINITY, 0.0, scaled);
            scaled + self.alpha * simd::expm1(y)
        } else {
            simd::expm1(self.beta * y) - self.beta * simd::expm1(y)
        };
        simd::select(y.abs() <= self.reach, series, direct)
    }
}

impl Term for Renyi {
    #[inline(always)]
    fn term(self, a: f32, b: f32, w: f32, v: f32, n: &Norm) -> f32 {
        let (pp, qq) = (w * n.inv_sp, v * n.inv_sq);
        let beta = self.beta;
        let y = b - a + n.log_ratio_shift; // ln(Q/P)
        let bracket = self.bracket(y);
        // Where P underflowed, P·B(y) = P^α·Q^β − βQ − αP may still count
        // (αP is below float32's range). For α ≤ ½ it is taken in the
        // bracket's α-form, Q·(e^(−αy) − 1) + αQ: the direct difference
        // subtracts terms of size Q to leave one of size αQ·y, which loses
        // its digits as α → 0 (1e-4 of the divergence at α = 1e-6 on wide
        // logits). Q = 0 contributes 0 (−βQ); P = 0 gives y = +inf, −βQ too.
        let tiny = if self.small_alpha {
            let scaled = qq * simd::expm1(-self.alpha * y) + self.alpha * qq;
            simd::select(qq > 0.0, scaled, 0.0)
        } else {
            // Here P^α·Q^β may exceed Q (α > 1): its own exponential.
            let log_q = b - (n.log_sp - n.log_ratio_shift);
            let direct = simd::exp(self.alpha * (a - n.log_sp) + beta * log_q) - beta * qq;
            simd::select(a == f32::NEG_INFINITY, -beta * qq, direct)
        };
        simd::select(w > 0.0, pp * bracket, tiny)
    }
    fn finish(self, total: f64) -> Option<f64> {
        finish::renyi(total, self.alpha_minus_one)
    }
    fn infinite_outside_q(self) -> bool {
        self.above_one
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h(u)/u² in float64, from its series where e^(−u) − 1 + u cancels.
    fn ratio64(u: f64) -> f64 {
        if u.abs() < 1e-2 {
            (1..=8).rev().fold(0.0, |acc, k| {
                let fact: f64 = (1..=k + 1).map(f64::from).product();
                acc * -u + 1.0 / fact
            })
        } else {
            ((-u).exp_m1() + u) / (u * u)
        }
    }

    /// Whether `Kl::simple_block` takes a block whose elements all have
    /// u = 0 but the one at `at`, which has u = `u` (or P given by a p of
    /// `p_at`), in both lane-sum widths (they must agree).
    fn simple_takes(at: usize, u: f32, p_at: f32) -> bool {
        let mut p: Vec<f32> = (0..BLK).map(|i| -((i % 37) as f32) / 4.0).collect();
        let mut q = p.clone();
        // u = (p − q) + centre with centre 0: exact with p = 0 here.
        (p[at], q[at]) = (p_at, -u);
        let (mut half, mut full) = (Totals::<4>::new(), Totals::<4>::new());
        let (p, q) = (&p[..], &q[..]);
        let a = Kl::simple_block::<_, _, false, { LANES / 2 }>(p, q, 0, 0.0, 1.0, 0.0, &mut half);
        let b = Kl::simple_block::<_, _, false, LANES>(p, q, 0, 0.0, 1.0, 0.0, &mut full);
        assert_eq!(a, b, "u = {u}, p = {p_at} at {at}");
        a
    }

    #[test]
    fn the_simple_block_takes_exactly_the_series_range() {
        let above = f32::from_bits(SERIES_LIMIT.to_bits() + 1);
        for at in [0, 7, 8, 15, 16, BLK - 1] {
            for u in [0.0, 0.5, SERIES_LIMIT, -SERIES_LIMIT] {
                assert!(simple_takes(at, u, 0.0), "u = {u} at {at}");
            }
            for u in [above, -above, 3.0, f32::INFINITY, f32::NEG_INFINITY] {
                assert!(!simple_takes(at, u, 0.0), "u = {u} at {at}");
            }
            // P = 0 (p = −inf) or a NaN score sends the block away.
            assert!(!simple_takes(at, 0.0, f32::NEG_INFINITY));
            assert!(!simple_takes(at, 0.0, f32::NAN));
        }
    }

    #[test]
    fn remainder_ratio_is_within_two_tenths_of_a_millionth() {
        let n = 400_000;
        for i in 0..=n {
            let u = -SERIES_LIMIT + 2.0 * SERIES_LIMIT * (i as f32 / n as f32);
            let want = ratio64(u as f64);
            let err = (exp_neg_remainder_ratio(u) as f64 - want).abs() / want;
            assert!(err < 2e-7, "h({u})/u² rel err {err}");
        }
    }
}
