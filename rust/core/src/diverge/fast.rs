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
}

/// A row in one of the 16-bit or 32-bit storage types.
pub trait Load: Copy + Sync {
    /// Element `i` widened to float32.
    fn get(self, i: usize) -> f32;
    /// Row length.
    fn len(self) -> usize;
    /// Lane group starting at `start`, padded with `pad` past the end.
    #[inline(always)]
    fn group(self, start: usize, pad: f32) -> V {
        let mut out = [pad; LANES];
        if start + LANES <= self.len() {
            for i in 0..LANES {
                out[i] = self.get(start + i);
            }
        } else {
            for i in 0..self.len() - start {
                out[i] = self.get(start + i);
            }
        }
        out
    }
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
}

/// A float16 row (bit patterns).
#[derive(Clone, Copy)]
pub struct F16Row<'a>(pub &'a [u16]);
/// A bfloat16 row (bit patterns).
#[derive(Clone, Copy)]
pub struct Bf16Row<'a>(pub &'a [u16]);

impl Load for F16Row<'_> {
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        f16_to_f32(self.0[i])
    }
    #[inline(always)]
    fn len(self) -> usize {
        self.0.len()
    }
}

impl Load for Bf16Row<'_> {
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        bf16_to_f32(self.0[i])
    }
    #[inline(always)]
    fn len(self) -> usize {
        self.0.len()
    }
}

/// What the scan pass learns about a pair of rows.
#[derive(Debug, Clone, Copy)]
pub struct Scan {
    /// max of p.
    pub max_p: f32,
    /// First index of max of p.
    pub argmax_p: usize,
    /// max of q.
    pub max_q: f32,
    /// First index of max of q.
    pub argmax_q: usize,
    /// p holds NaN or +inf.
    pub p_bad: bool,
    /// q holds NaN or +inf.
    pub q_bad: bool,
    /// Some P > 0 has Q = 0.
    pub p_outside_q: bool,
    /// Some Q > 0 has P = 0.
    pub q_outside_p: bool,
}

#[inline(always)]
fn scan<P: Load, Q: Load>(p: P, q: Q) -> Scan {
    let n = p.len();
    let neg = f32::NEG_INFINITY;
    let (mut mp, mut mq) = ([neg; LANES], [neg; LANES]);
    let (mut ip, mut iq) = ([u32::MAX; LANES], [u32::MAX; LANES]);
    let (mut bad_p, mut bad_q, mut p_out, mut q_out) =
        ([0u32; LANES], [0u32; LANES], [0u32; LANES], [0u32; LANES]);
    let mut start = 0;
    while start < n {
        let pv = p.group(start, neg);
        let qv = q.group(start, neg);
        for i in 0..LANES {
            let (x, y) = (pv[i], qv[i]);
            let idx = (start + i) as u32;
            // `x > mp` is false for NaN, so NaN never becomes the max; the
            // bad flags catch it instead.
            let better_p = x > mp[i];
            mp[i] = if better_p { x } else { mp[i] };
            ip[i] = if better_p { idx } else { ip[i] };
            let better_q = y > mq[i];
            mq[i] = if better_q { y } else { mq[i] };
            iq[i] = if better_q { idx } else { iq[i] };
            bad_p[i] |= (x.is_nan() | (x == f32::INFINITY)) as u32;
            bad_q[i] |= (y.is_nan() | (y == f32::INFINITY)) as u32;
            p_out[i] |= ((x > neg) & (y == neg)) as u32;
            q_out[i] |= ((y > neg) & (x == neg)) as u32;
        }
        start += LANES;
    }
    let (max_p, argmax_p) = reduce_argmax(&mp, &ip);
    let (max_q, argmax_q) = reduce_argmax(&mq, &iq);
    let any = |v: &[u32; LANES]| v.iter().any(|&b| b != 0);
    Scan {
        max_p,
        argmax_p,
        max_q,
        argmax_q,
        p_bad: any(&bad_p),
        q_bad: any(&bad_q),
        p_outside_q: any(&p_out),
        q_outside_p: any(&q_out),
    }
}

#[inline(always)]
fn reduce_argmax(max: &V, idx: &[u32; LANES]) -> (f32, usize) {
    let m = max.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut best = u32::MAX;
    for i in 0..LANES {
        if max[i] == m && idx[i] < best {
            best = idx[i];
        }
    }
    (m, if best == u32::MAX { 0 } else { best as usize })
}

/// Float64 running sums of float32 lane sums, flushed every [`BLOCK`] groups.
#[derive(Clone, Copy)]
struct Sums<const K: usize> {
    lanes: [V; K],
    total: [f64; K],
    pending: usize,
}

impl<const K: usize> Sums<K> {
    #[inline(always)]
    fn new() -> Self {
        Sums {
            lanes: [[0.0; LANES]; K],
            total: [0.0; K],
            pending: 0,
        }
    }
    #[inline(always)]
    fn add(&mut self, values: [V; K]) {
        for k in 0..K {
            simd::add_into(&mut self.lanes[k], values[k]);
        }
        self.pending += 1;
        if self.pending == BLOCK {
            self.flush();
        }
    }
    #[inline(always)]
    fn flush(&mut self) {
        for k in 0..K {
            self.total[k] += simd::hsum_f64(self.lanes[k]);
            self.lanes[k] = [0.0; LANES];
        }
        self.pending = 0;
    }
    #[inline(always)]
    fn finish(mut self) -> [f64; K] {
        self.flush();
        self.total
    }
}

/// The lane groups of a row pair as shifted, tempered scores
/// a = (p − max_p)/τ and b = (q − max_q)/τ (−inf past the end).
///
/// Kernels loop with `while let Some((a, b)) = groups.next()` rather than
/// taking a closure: a closure is compiled as its own function, outside the
/// feature-enabled one that [`simd::dispatch`] inlines kernels into.
struct Groups<P, Q> {
    p: P,
    q: Q,
    max_p: f32,
    max_q: f32,
    inv_t: f32,
    start: usize,
}

impl<P: Load, Q: Load> Groups<P, Q> {
    #[inline(always)]
    fn new(p: P, q: Q, max_p: f32, max_q: f32, inv_t: f32) -> Self {
        Groups { p, q, max_p, max_q, inv_t, start: 0 }
    }

    #[inline(always)]
    fn next(&mut self) -> Option<(V, V)> {
        if self.start >= self.p.len() {
            return None;
        }
        let pv = self.p.group(self.start, f32::NEG_INFINITY);
        let qv = self.q.group(self.start, f32::NEG_INFINITY);
        self.start += LANES;
        let mut a = [0.0; LANES];
        let mut b = [0.0; LANES];
        for i in 0..LANES {
            a[i] = (pv[i] - self.max_p) * self.inv_t;
            b[i] = (qv[i] - self.max_q) * self.inv_t;
        }
        Some((a, b))
    }
}

/// h(u) = e^(−u) − 1 + u for |u| ≤ 1/4, from its Taylor series (error below
/// 1e-8 relative there).
#[inline(always)]
fn exp_neg_remainder(u: f32) -> f32 {
    let mut p = 1.0f32 / 40_320.0;
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

/// g(δ) = (1+δ)ln(1+δ) + (1−δ)ln(1−δ) = Σ_{k≥1} δ^(2k) / (k(2k−1)).
#[inline(always)]
fn js_core(delta: f32) -> f32 {
    let d2 = delta * delta;
    let mut p = 1.0f32 / 91.0;
    p = p.mul_add(d2, 1.0 / 66.0);
    p = p.mul_add(d2, 1.0 / 45.0);
    p = p.mul_add(d2, 1.0 / 28.0);
    p = p.mul_add(d2, 1.0 / 15.0);
    p = p.mul_add(d2, 1.0 / 6.0);
    p = p.mul_add(d2, 1.0);
    let series = p * d2;
    let plus = 1.0 + delta;
    let minus = 1.0 - delta;
    let t_plus = simd::select(plus == 0.0, 0.0, plus * simd::ln_1p(delta));
    let t_minus = simd::select(minus == 0.0, 0.0, minus * simd::ln_1p(-delta));
    simd::select(delta.abs() < 0.25, series, t_plus + t_minus)
}

struct RowKernel<P, Q> {
    p: P,
    q: Q,
    kind: Kind,
    inv_t: f32,
}

impl<P: Load, Q: Load> Kernel for RowKernel<P, Q> {
    type Output = std::result::Result<Option<f64>, (Side, RowIssue)>;

    #[inline(always)]
    fn run(self) -> Self::Output {
        let RowKernel { p, q, kind, inv_t } = self;
        let s = scan(p, q);
        if s.p_bad {
            return Err((Side::P, RowIssue::NotFinite));
        }
        if kind.needs_q() && s.q_bad {
            return Err((Side::Q, RowIssue::NotFinite));
        }
        if s.max_p == f32::NEG_INFINITY {
            return Err((Side::P, RowIssue::Empty));
        }
        if kind.needs_q() && s.max_q == f32::NEG_INFINITY {
            return Err((Side::Q, RowIssue::Empty));
        }
        let value = match kind {
            Kind::Kl => kl(p, q, &s, inv_t, s.p_outside_q),
            Kind::ReverseKl => {
                let swapped = Scan {
                    max_p: s.max_q,
                    argmax_p: s.argmax_q,
                    max_q: s.max_p,
                    argmax_q: s.argmax_p,
                    ..s
                };
                kl(q, p, &swapped, inv_t, s.q_outside_p)
            }
            Kind::CrossEntropy | Kind::Entropy => {
                if kind == Kind::CrossEntropy && s.p_outside_q {
                    return Ok(Some(f64::INFINITY));
                }
                let mut sums = Sums::<3>::new();
                let mut groups = Groups::new(p, q, s.max_p, s.max_q, inv_t);
                let entropy = kind == Kind::Entropy;
                while let Some((a, b)) = groups.next() {
                    let w = simd::map(a, simd::exp);
                    let v = simd::map(b, simd::exp);
                    let mut wx = [0.0; LANES];
                    for i in 0..LANES {
                        let score = simd::select(entropy, a[i], b[i]);
                        wx[i] = simd::select(w[i] > 0.0, w[i] * score, 0.0);
                    }
                    sums.add([w, v, wx]);
                }
                let [sp, sq, swx] = sums.finish();
                let lse = if kind == Kind::Entropy {
                    sp.ln()
                } else {
                    sq.ln()
                };
                Some((lse - swx / sp).max(0.0))
            }
            _ => normalised(p, q, &s, kind, inv_t),
        };
        Ok(value)
    }
}

/// KL(P‖Q) in two passes (scan, then this one); see the module docs.
#[inline(always)]
fn kl<P: Load, Q: Load>(p: P, q: Q, s: &Scan, inv_t: f32, p_outside_q: bool) -> Option<f64> {
    if p_outside_q {
        return Some(f64::INFINITY);
    }
    // Shift: u = (a − b) − (a* − b*) where * is the argmax of p, so a* = 0.
    let shift = (q.get(s.argmax_p) - s.max_q) * inv_t;
    let k = simd::exp(-shift); // e^(−shift) = w·e^(−u)/v, ≥ 1
    let robust = k.is_finite();
    let k = if robust { k } else { 0.0 };
    let mut sums = Sums::<4>::new();
    let mut groups = Groups::new(p, q, s.max_p, s.max_q, inv_t);
    while let Some((a, b)) = groups.next() {
        let w = simd::map(a, simd::exp);
        let v = simd::map(b, simd::exp);
        let mut wu = [0.0; LANES];
        let mut rem = [0.0; LANES];
        for i in 0..LANES {
            let u = a[i] - b[i] + shift;
            let positive = w[i] > 0.0;
            let w_u = w[i] * u;
            wu[i] = simd::select(positive, w_u, 0.0);
            let ve = v[i] * k; // = w·e^(−u)
            let small = w[i] * exp_neg_remainder(u);
            let large = ve - w[i] + w_u;
            rem[i] = simd::select(positive, simd::select(u.abs() <= 0.25, small, large), ve);
        }
        sums.add([w, v, wu, rem]);
    }
    let [sp, sq, su, sr] = sums.finish();
    let mean_u = su / sp;
    let excess = (sr - su) / sp; // E_P[e^(−u)] − 1
    let log_mean_exp = if robust && excess.is_finite() && excess > -0.5 {
        excess.ln_1p()
    } else {
        sq.ln() - sp.ln() - shift as f64
    };
    let value = mean_u + log_mean_exp;
    value.is_finite().then_some(value.max(0.0))
}

/// Kinds evaluated from normalised P and Q: a sum pass, then a term pass.
#[inline(always)]
fn normalised<P: Load, Q: Load>(p: P, q: Q, s: &Scan, kind: Kind, inv_t: f32) -> Option<f64> {
    match kind {
        Kind::Chi2 if s.p_outside_q => return Some(f64::INFINITY),
        Kind::Renyi(alpha) if alpha > 1.0 && s.p_outside_q => return Some(f64::INFINITY),
        _ => {}
    }
    let mut sums = Sums::<2>::new();
    let mut groups = Groups::new(p, q, s.max_p, s.max_q, inv_t);
    while let Some((a, b)) = groups.next() {
        sums.add([simd::map(a, simd::exp), simd::map(b, simd::exp)]);
    }
    let [sp, sq] = sums.finish();
    let (inv_sp, inv_sq) = ((1.0 / sp) as f32, (1.0 / sq) as f32);
    // ln(Q/P) = b − a + (ln Sp − ln Sq).
    let log_ratio_shift = (sp.ln() - sq.ln()) as f32;
    let log_sp = sp.ln() as f32;
    let beta = match kind {
        Kind::Renyi(alpha) => (1.0 - alpha) as f32,
        _ => 0.0,
    };
    let mut terms = Sums::<1>::new();
    let mut groups = Groups::new(p, q, s.max_p, s.max_q, inv_t);
    while let Some((a, b)) = groups.next() {
        let mut t = [0.0; LANES];
        for i in 0..LANES {
            let w = simd::exp(a[i]);
            let v = simd::exp(b[i]);
            let (pp, qq) = (w * inv_sp, v * inv_sq);
            let diff = pp - qq;
            t[i] = match kind {
                Kind::Js => {
                    let sum = pp + qq;
                    simd::select(sum > 0.0, sum * js_core(diff / sum), 0.0)
                }
                Kind::Tv => diff.abs(),
                Kind::Hellinger => {
                    let root = pp.sqrt() + qq.sqrt();
                    simd::select(root > 0.0, diff * diff / (root * root), 0.0)
                }
                Kind::Chi2 => {
                    // (P − Q)²/Q in log space: P²/Q may be large while P
                    // itself underflows. y = ln(P/Q).
                    let y = a[i] - b[i] - log_ratio_shift;
                    let log_p = a[i] - log_sp;
                    let above = simd::exp(log_p + y) * square(simd::expm1(-y));
                    let below = qq * square(simd::expm1(y));
                    let term = simd::select(y >= 0.0, above, below);
                    simd::select(b[i] == f32::NEG_INFINITY, 0.0, term)
                }
                Kind::Renyi(_) => {
                    let y = b[i] - a[i] + log_ratio_shift; // ln(Q/P)
                    let bracket = simd::expm1(beta * y) - beta * simd::expm1(y);
                    // Where P underflowed, P^α Q^(1−α) may still count.
                    let alpha = 1.0 - beta;
                    let log_q = b[i] - (log_sp - log_ratio_shift);
                    let tiny = simd::exp(alpha * (a[i] - log_sp) + beta * log_q) - beta * qq;
                    let tiny = simd::select(a[i] == f32::NEG_INFINITY, -beta * qq, tiny);
                    simd::select(w > 0.0, pp * bracket, tiny)
                }
                _ => 0.0,
            };
        }
        terms.add([t]);
    }
    let [total] = terms.finish();
    let value = match kind {
        Kind::Js => (total / 4.0).clamp(0.0, std::f64::consts::LN_2),
        Kind::Tv => (total / 2.0).min(1.0),
        Kind::Hellinger => total.min(2.0),
        Kind::Chi2 => total.max(0.0),
        Kind::Renyi(alpha) => {
            if !(total > -0.5) || !total.is_finite() {
                return None;
            }
            (total.ln_1p() / (alpha - 1.0)).max(0.0)
        }
        _ => return None,
    };
    value.is_finite().then_some(value)
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
) -> std::result::Result<Option<f64>, (Side, RowIssue)> {
    simd::dispatch(RowKernel { p, q, kind, inv_t })
}

fn run_with_q<P: Load>(
    p: P,
    q: &Rows<'_>,
    r: usize,
    kind: Kind,
    inv_t: f32,
) -> std::result::Result<Option<f64>, (Side, RowIssue)> {
    let v = q.vocab();
    match *q {
        Rows::F32(d, _) => run_pair(p, &d[r * v..(r + 1) * v], kind, inv_t),
        Rows::F16(d, _) => run_pair(p, F16Row(&d[r * v..(r + 1) * v]), kind, inv_t),
        Rows::Bf16(d, _) => run_pair(p, Bf16Row(&d[r * v..(r + 1) * v]), kind, inv_t),
        // A float64 side takes the reference path.
        Rows::F64(..) => Ok(None),
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
        let Scratch { p32, q32, .. } = scratch;
        let tol_p = super::probs_tolerance(p.dtype());
        let tol_q = super::probs_tolerance(q.dtype());
        probs_row_to_logits(p, r, tol_p, p32).map_err(|e| (Side::P, e))?;
        probs_row_to_logits(q, r, tol_q, q32).map_err(|e| (Side::Q, e))?;
        return run_pair(&p32[..], &q32[..], opts.kind, inv_t);
    }
    match *p {
        Rows::F32(d, _) => run_with_q(&d[r * v..(r + 1) * v], q, r, opts.kind, inv_t),
        Rows::F16(d, _) => run_with_q(F16Row(&d[r * v..(r + 1) * v]), q, r, opts.kind, inv_t),
        Rows::Bf16(d, _) => run_with_q(Bf16Row(&d[r * v..(r + 1) * v]), q, r, opts.kind, inv_t),
        Rows::F64(..) => Ok(None),
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
