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

use crate::rows::{bf16_to_f32, f16_array_to_f32, f16_to_f32, Dtype, Rows};
use crate::simd::{self, F16c, Kernel, LANES, V};

use super::kinds::{
    Chi2, CrossEntropy, Entropy, Evaluate, Hellinger, Js, Kl, Normalised, Renyi, ReverseKl, Tv,
};
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
    /// The block from `start` as [`block`](Load::block) gives it, each
    /// value x turned into (x − `max`)·`inv_t` (−inf stays −inf).
    #[inline(always)]
    fn shifted_block(self, start: usize, max: f32, inv_t: f32, out: &mut [f32; BLK]) {
        self.block(start, out);
        shift_in_place(out, max, inv_t);
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

/// (x − `max`)·`inv_t` for each value of a block (−inf stays −inf).
#[inline(always)]
fn shift_in_place(block: &mut [f32; BLK], max: f32, inv_t: f32) {
    for v in block.iter_mut() {
        *v = (*v - max) * inv_t;
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
    /// Reads the row in place: one pass instead of a copy and a pass.
    #[inline(always)]
    fn shifted_block(self, start: usize, max: f32, inv_t: f32, out: &mut [f32; BLK]) {
        if start + BLK > self.len() {
            self.block(start, out);
            shift_in_place(out, max, inv_t);
            return;
        }
        let row: &[f32; BLK] = self[start..start + BLK].try_into().expect("a whole block");
        for i in 0..BLK {
            out[i] = (row[i] - max) * inv_t;
        }
    }
}

/// A float16 row (bit patterns), with the proof, if any, that the F16C
/// instruction may widen it (see [`F16Row::new`]).
#[derive(Clone, Copy)]
pub struct F16Row<'a>(pub &'a [u16], Option<F16c>);

impl<'a> F16Row<'a> {
    /// The row, with the instruction-set check made once here.
    #[inline(always)]
    pub fn new(bits: &'a [u16]) -> Self {
        F16Row(bits, F16c::detect())
    }
}

/// A bfloat16 row (bit patterns).
#[derive(Clone, Copy)]
pub struct Bf16Row<'a>(pub &'a [u16]);

/// `Load` for a row of 16-bit float bit patterns widened by `$widen`
/// (one value) and `$widen_array` (a lane group or block, given the row).
macro_rules! load_16_bit_row {
    ($row:ident, $widen:ident, $widen_array:ident) => {
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
                let mut out = [0.0; LANES];
                $widen_array(self, chunk(self.0, start), &mut out);
                out
            }
            #[inline(always)]
            fn full_block(self, start: usize, out: &mut [f32; BLK]) {
                let bits: &[u16; BLK] = self.0[start..start + BLK]
                    .try_into()
                    .expect("a whole block");
                $widen_array(self, bits, out);
            }
        }
    };
}

/// bfloat16 is the top half of a float32: a shift, which vectorises.
#[inline(always)]
fn bf16_array_to_f32<const N: usize>(_row: Bf16Row<'_>, src: &[u16; N], out: &mut [f32; N]) {
    for i in 0..N {
        out[i] = bf16_to_f32(src[i]);
    }
}

#[inline(always)]
fn f16_row_array_to_f32<const N: usize>(row: F16Row<'_>, src: &[u16; N], out: &mut [f32; N]) {
    f16_array_to_f32(src, out, row.1);
}

load_16_bit_row!(F16Row, f16_to_f32, f16_row_array_to_f32);
load_16_bit_row!(Bf16Row, bf16_to_f32, bf16_array_to_f32);

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

    /// Pulls elements `from..to` of both rows into L2 (a hint).
    #[inline(always)]
    pub(super) fn fetch(self, from: usize, to: usize) {
        let size = self.element_size;
        simd::prefetch_l2(self.p, self.row_bytes, from * size, to * size);
        simd::prefetch_l2(self.q, self.row_bytes, from * size, to * size);
    }

    /// Row `r` of two equally shaped buffers of `vocab` elements each, or
    /// [`Prefetch::NONE`] past the last row.
    pub(super) fn row<T>(p: &[T], q: &[T], vocab: usize, r: usize) -> Prefetch {
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

/// Lane-wise state of the scan pass. Flags are all ones in the lanes that
/// saw the condition: the vector compare's own mask, or-ed in as it is.
struct ScanLanes {
    max_p: V,
    max_q: V,
    bad_p: [i32; LANES],
    bad_q: [i32; LANES],
    p_out: [i32; LANES],
    q_out: [i32; LANES],
}

/// All ones where `b` holds (a compare's mask), else 0.
#[inline(always)]
fn mask(b: bool) -> i32 {
    -(b as i32)
}

impl ScanLanes {
    #[inline(always)]
    fn step(&mut self, pv: V, qv: V) {
        let neg = f32::NEG_INFINITY;
        for i in 0..LANES {
            let (x, y) = (pv[i], qv[i]);
            // Compare-and-select is one vector max; f32::max's NaN rule
            // costs two more instructions on AVX2. NaN never becomes the
            // max either way; the bad flags catch it.
            self.max_p[i] = if x > self.max_p[i] { x } else { self.max_p[i] };
            self.max_q[i] = if y > self.max_q[i] { y } else { self.max_q[i] };
            self.bad_p[i] |= mask(x.is_nan() | (x == f32::INFINITY));
            self.bad_q[i] |= mask(y.is_nan() | (y == f32::INFINITY));
            self.p_out[i] |= mask((x > neg) & (y == neg));
            self.q_out[i] |= mask((y > neg) & (x == neg));
        }
    }
}

/// The scan of a row pair, which in the common case (every value finite)
/// is [`finite_scan`]'s: maxima and a single sum that any NaN or ±inf makes
/// non-finite, four vector instructions per lane group where the checks
/// that tell those cases apart take sixteen.
#[inline(always)]
pub(super) fn scan<P: Load, Q: Load>(p: P, q: Q, next: Prefetch) -> Scan {
    finite_scan(p, q, next).unwrap_or_else(|| full_scan(p, q, next))
}

/// The maxima of a row pair whose values are all finite (then no flag of
/// [`Scan`] is set), or `None` if any is NaN or ±inf. Σ(p − q) is
/// non-finite exactly then: a NaN or an infinity on either side carries
/// through, and opposite infinities meet as NaN (p = q = −inf gives NaN
/// too). A finite sum that overflows (values near float32's limits) only
/// sends the row to the full scan.
#[inline(always)]
fn finite_scan<P: Load, Q: Load>(p: P, q: Q, next: Prefetch) -> Option<Scan> {
    let n = p.len();
    let neg = f32::NEG_INFINITY;
    let mut lanes = FiniteLanes {
        max_p: [neg; LANES],
        max_q: [neg; LANES],
        sum: [0.0; LANES],
    };
    let full = n - n % LANES;
    let mut start = 0;
    while start < full {
        lanes.step(p.full_group(start), q.full_group(start));
        start += LANES;
    }
    // Through memory, unchanged: without this LLVM's SLP vectoriser packs
    // lanes of max_p and max_q together for the folds below, and the loop
    // above with them, into scalar and two-lane code four times as long.
    let mut lanes = std::hint::black_box(lanes);
    // The tail by the padded groups for the maxima and element by element
    // for the sum (padding that keeps Σ(p − q) finite would have to differ
    // between p and q).
    let mut tail_sum = 0.0f32;
    if start < n {
        lanes.max_only(p.group(start, neg), q.group(start, neg));
        for i in start..n {
            tail_sum += p.get(i) - q.get(i);
        }
    }
    if !(tail_sum.is_finite() && lanes.sum.iter().all(|s| s.is_finite())) {
        return None;
    }
    Some(Scan {
        max_p: lanes.max_p.iter().cloned().fold(neg, f32::max),
        max_q: lanes.max_q.iter().cloned().fold(neg, f32::max),
        p_bad: false,
        q_bad: false,
        p_outside_q: false,
        q_outside_p: false,
        next,
    })
}

/// Lane-wise state of [`finite_scan`].
struct FiniteLanes {
    max_p: V,
    max_q: V,
    sum: V,
}

impl FiniteLanes {
    #[inline(always)]
    fn step(&mut self, pv: V, qv: V) {
        self.max_only(pv, qv);
        for i in 0..LANES {
            self.sum[i] += pv[i] - qv[i];
        }
    }
    #[inline(always)]
    fn max_only(&mut self, pv: V, qv: V) {
        for i in 0..LANES {
            self.max_p[i] = if pv[i] > self.max_p[i] {
                pv[i]
            } else {
                self.max_p[i]
            };
            self.max_q[i] = if qv[i] > self.max_q[i] {
                qv[i]
            } else {
                self.max_q[i]
            };
        }
    }
}

/// The scan with every check made lane by lane.
#[inline(always)]
fn full_scan<P: Load, Q: Load>(p: P, q: Q, next: Prefetch) -> Scan {
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
    let any = |v: &[i32; LANES]| v.iter().any(|&b| b != 0);
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
pub(super) fn first_index_of<L: Load>(row: L, value: f32) -> usize {
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
pub(super) const BLK: usize = LANES * BLOCK;

/// Float64 lane totals of `K` sums.
pub(super) struct Totals<const K: usize>([[f64; LANES]; K]);

impl<const K: usize> Totals<K> {
    #[inline(always)]
    pub(super) fn new() -> Self {
        Totals([[0.0; LANES]; K])
    }
    /// Adds a block: float32 lane sums over its [`BLOCK`] groups, then
    /// float64 from there on.
    #[inline(always)]
    pub(super) fn add(&mut self, k: usize, values: &[f32; BLK]) {
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
    /// Adds float32 sums of the first `W` lanes, which move to float64 here.
    #[inline(always)]
    pub(super) fn add_lanes<const W: usize>(&mut self, k: usize, lanes: &[f32; W]) {
        for i in 0..W {
            self.0[k][i] += lanes[i] as f64;
        }
    }
    #[inline(always)]
    pub(super) fn finish(self) -> [f64; K] {
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
pub(super) struct Blocks<P, Q> {
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
    pub(super) fn new(p: P, q: Q, s: &Scan, max_p: f32, max_q: f32, inv_t: f32) -> Self {
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
    pub(super) fn next(&mut self, a: &mut [f32; BLK], b: &mut [f32; BLK]) -> bool {
        if self.start >= self.p.len() {
            return false;
        }
        self.next.fetch(self.start, self.start + BLK);
        self.p.shifted_block(self.start, self.max_p, self.inv_t, a);
        self.q.shifted_block(self.start, self.max_q, self.inv_t, b);
        self.start += BLK;
        true
    }
}

/// The row issue a scan found, if any: NaN or +inf, or no finite value
/// (q is checked only when the kind reads it).
#[inline(always)]
pub(super) fn check_scan(s: &Scan, needs_q: bool) -> std::result::Result<(), (Side, RowIssue)> {
    if s.p_bad {
        return Err((Side::P, RowIssue::NotFinite));
    }
    if needs_q && s.q_bad {
        return Err((Side::Q, RowIssue::NotFinite));
    }
    if s.max_p == f32::NEG_INFINITY {
        return Err((Side::P, RowIssue::Empty));
    }
    if needs_q && s.max_q == f32::NEG_INFINITY {
        return Err((Side::Q, RowIssue::Empty));
    }
    Ok(())
}

/// The exponentials w = e^a and v = e^b of a row pair's shifted scores,
/// stored block by block in `work` (grown as needed; 2 × the padded row,
/// which stays in L2 for a second pass), and their sums (Sp, Sq).
#[inline(always)]
pub(super) fn store_exps<P: Load, Q: Load>(
    p: P,
    q: Q,
    s: &Scan,
    inv_t: f32,
    work: &mut Vec<f32>,
) -> (f64, f64) {
    let padded = p.len().div_ceil(BLK) * BLK;
    if work.len() < 2 * padded {
        work.resize(2 * padded, 0.0);
    }
    let (w_all, v_all) = work[..2 * padded].split_at_mut(padded);
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
    (sp, sq)
}

/// Block `start / BLK` of the exponentials [`store_exps`] left in `work`.
#[inline(always)]
pub(super) fn stored_block(
    work: &[f32],
    padded: usize,
    start: usize,
) -> (&[f32; BLK], &[f32; BLK]) {
    let w = (&work[start..start + BLK])
        .try_into()
        .expect("a whole block");
    let v = (&work[padded + start..padded + start + BLK])
        .try_into()
        .expect("a whole block");
    (w, v)
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
        check_scan(&s, E::NEEDS_Q)?;
        if shift_overflows(p, s.max_p, inv_t) || (E::NEEDS_Q && shift_overflows(q, s.max_q, inv_t))
        {
            return Ok(None);
        }
        Ok(eval.evaluate(p, q, &s, inv_t, work))
    }
}

/// Whether some finite score x of `row` has a shifted score
/// (x − `max`)·`inv_t` that overflows to −inf, as the kernels compute it.
///
/// The kernels read a shifted −inf as probability 0, the mark of a score
/// that is −inf itself. An overflowed one is a probability that is tiny but
/// not 0, and the kinds that divide by Q or take its logarithm (cross
/// entropy's ln Q, χ²'s P²/Q, Rényi's P^α·Q^(1−α)) then lose a term that
/// may be large or infinite: such rows go to the float64 reference.
///
/// The shifted score is monotone in x, so the smallest finite score
/// decides; that takes a pass over the row only where the smallest float32
/// there could be, −f32::MAX, would overflow (a temperature below 1, or
/// scores beyond ~1e31), never for typical logits at τ ≥ 1.
#[inline(always)]
fn shift_overflows<L: Load>(row: L, max: f32, inv_t: f32) -> bool {
    let shifted = |x: f32| (x - max) * inv_t;
    if shifted(-f32::MAX) > f32::NEG_INFINITY {
        return false;
    }
    let neg = f32::NEG_INFINITY;
    let mut lanes = [f32::INFINITY; LANES];
    let n = row.len();
    let full = n - n % LANES;
    let mut start = 0;
    while start < full {
        let v = row.full_group(start);
        for i in 0..LANES {
            lanes[i] = if v[i] > neg && v[i] < lanes[i] {
                v[i]
            } else {
                lanes[i]
            };
        }
        start += LANES;
    }
    let body = lanes.iter().cloned().fold(f32::INFINITY, f32::min);
    let min = (full..n)
        .map(|i| row.get(i))
        .filter(|&x| x > neg)
        .fold(body, f32::min);
    min < f32::INFINITY && shifted(min) == neg
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
        Kind::Renyi(alpha) => go(p, q, Normalised(Renyi::new(alpha)), inv_t, next, work),
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
        Rows::F16(d, _) => probs_to_logits(F16Row::new(&d[r * v..(r + 1) * v]), tol, out),
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
            F16Row::new(&a[span.clone()]),
            F16Row::new(&b[span]),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What the two scans report, without the prefetch address.
    fn flags(s: &Scan) -> (u32, u32, bool, bool, bool, bool) {
        let (a, b) = (s.max_p.to_bits(), s.max_q.to_bits());
        (a, b, s.p_bad, s.q_bad, s.p_outside_q, s.q_outside_p)
    }

    #[test]
    fn the_quick_scan_agrees_with_the_full_one() {
        let specials = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 3e38, -3e38, 0.0];
        let mut state = 7u32;
        let mut next = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32
        };
        for n in [1, 2, 15, 16, 17, 33, 256, 1000] {
            for trial in 0..40 {
                let mut p: Vec<f32> = (0..n).map(|_| next() * 20.0 - 10.0).collect();
                let mut q: Vec<f32> = p.iter().map(|x| x + next() - 0.5).collect();
                // Trial 0 stays finite; the others plant special values on
                // either side, in the vector body and the tail alike.
                for _ in 0..trial % 4 {
                    let at = (next() * n as f32) as usize % n;
                    let value = specials[(next() * 6.0) as usize % 6];
                    if next() < 0.5 {
                        p[at] = value;
                    } else {
                        q[at] = value;
                    }
                }
                let (p, q) = (&p[..], &q[..]);
                if trial % 4 == 0 {
                    assert!(finite_scan(p, q, Prefetch::NONE).is_some(), "n = {n}");
                }
                let quick = scan(p, q, Prefetch::NONE);
                let full = full_scan(p, q, Prefetch::NONE);
                assert_eq!(flags(&quick), flags(&full), "n = {n}, trial {trial}");
            }
        }
        // Finite values whose differences overflow take the full scan.
        let (p, q) = ([3e38f32, 1.0], [-3e38f32, 2.0]);
        assert!(finite_scan(&p[..], &q[..], Prefetch::NONE).is_none());
        assert_eq!(
            flags(&scan(&p[..], &q[..], Prefetch::NONE)).0,
            3e38f32.to_bits()
        );
    }
}
