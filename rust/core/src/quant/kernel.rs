//! The quantize / dequantize / fake-quantize kernels.
//!
//! Work is split into chunks of [`CHUNK`] flat elements (rayon), each chunk
//! into blocks of [`BLOCK`]. A block that lies in one part (a row of a
//! per-channel matrix, a group of 128) runs an element loop with constant
//! parameters; any other block first writes each element's part id into a
//! stack array and gathers. The element loops are plain loops over stack
//! arrays, compiled once per instruction set by [`simd::dispatch`], with
//! no closures and no saturating float → int casts inside.

use rayon::prelude::*;

use super::pack;
use super::partition::Plan;
use super::{Arith, CodesMut, CodesRef, Options, Resolved};
use crate::lowp::codec::{random_u32, seed_key, Rounding};
use crate::lowp::Values;
use crate::rows::f16_to_f32;
use crate::simd::{self, Ahead, Kernel};

/// Elements per rayon task (a multiple of [`BLOCK`] and of 8, so packed
/// output of every width starts on a byte boundary).
pub const CHUNK: usize = 1 << 16;
/// Elements per block (stack arrays).
pub const BLOCK: usize = 256;

// ---------------------------------------------------------------------------
// Rounding and arithmetic, as types so that each loop compiles without a
// branch on the mode.
// ---------------------------------------------------------------------------

/// round(t) of eq. (9).
pub trait Round: Copy + Send + Sync {
    /// Rounds `t`; `index` is the element's flat index (stochastic rounding
    /// draws from a hash of the key and the index).
    fn round(t: f64, key: [u32; 2], index: u64) -> f64;
    /// Whether the float32 fast path may run this mode (deterministic modes).
    const FAST32: bool = true;
    /// round(t) in float32 (deterministic modes only).
    fn round32(t: f32) -> f32;
    /// How far `t` (≈ x/s) lies from the nearest rounding boundary of
    /// this mode beyond `tol`, a bound on |t − x/s|: ≤ 0 when the exact
    /// quotient could round otherwise than `r = round32(t)`; NaN when t is;
    /// `x` is the input.
    fn margin32(t: f32, r: f32, x: f32, tol: f32) -> f32;
}

/// Boundaries at k + ½.
#[inline(always)]
fn margin_half(t: f32, r: f32, _x: f32, tol: f32) -> f32 {
    (0.5 - tol) - (t - r).abs()
}

/// Boundaries at integers. An exact zero input is exact; a product that
/// underflowed to 0 from a nonzero input is near.
#[inline(always)]
fn margin_integer(t: f32, _r: f32, x: f32, tol: f32) -> f32 {
    let m = (t - t.round_ties_even()).abs() - tol;
    if x == 0.0 {
        f32::INFINITY
    } else if t == 0.0 {
        -1.0
    } else {
        m
    }
}

macro_rules! simple_round {
    ($name:ident, $doc:literal, $f:ident, $near:ident) => {
        #[doc = $doc]
        #[derive(Clone, Copy)]
        pub struct $name;
        impl Round for $name {
            #[inline(always)]
            fn round(t: f64, _key: [u32; 2], _index: u64) -> f64 {
                t.$f()
            }
            #[inline(always)]
            fn round32(t: f32) -> f32 {
                t.$f()
            }
            #[inline(always)]
            fn margin32(t: f32, r: f32, x: f32, tol: f32) -> f32 {
                simple_round!(@margin $near, t, r, x, tol)
            }
        }
    };
    (@margin half, $t:expr, $r:expr, $x:expr, $tol:expr) => { margin_half($t, $r, $x, $tol) };
    (@margin integer, $t:expr, $r:expr, $x:expr, $tol:expr) => { margin_integer($t, $r, $x, $tol) };
}
simple_round!(NearestEven, "Nearest, ties to even.", round_ties_even, half);
simple_round!(NearestAway, "Nearest, ties away from zero.", round, half);
simple_round!(TowardZero, "Truncation.", trunc, integer);
simple_round!(Down, "Toward −∞.", floor, integer);
simple_round!(Up, "Toward +∞.", ceil, integer);

/// Up with probability frac(t) (quantised to 32 bits), from a
/// counter-based hash of (seed, index): the same whatever the threads.
#[derive(Clone, Copy)]
pub struct Stochastic;
impl Round for Stochastic {
    const FAST32: bool = false;
    #[inline(always)]
    fn round32(t: f32) -> f32 {
        t.floor() // unused: stochastic rounding always takes the float64 path
    }
    #[inline(always)]
    fn margin32(_t: f32, _r: f32, _x: f32, _tol: f32) -> f32 {
        -1.0
    }
    #[inline(always)]
    fn round(t: f64, key: [u32; 2], index: u64) -> f64 {
        let floor = t.floor();
        let draw = random_u32(key, index) as f64;
        if draw < (t - floor) * 4_294_967_296.0 {
            floor + 1.0
        } else {
            floor
        }
    }
}

/// How x/s is formed.
pub trait Scaled: Copy + Send + Sync {
    /// `x` scaled by the part's multiplier `a` (the scale for division, the
    /// float32 reciprocal for the reciprocal mode).
    fn scaled(x: f64, a: f64) -> f64;
    /// The multiplier `a` of a part with scale `scale`.
    fn multiplier(scale: f64) -> f64;
    /// The multiplier of element `i` of a block.
    fn multiplier_of<P: Params>(p: &P, i: usize) -> f64;
    /// Whether the float32 fast path only approximates this arithmetic (and
    /// must check for near-boundary quotients).
    const CHECK: bool;
}

/// x / s in float64 (the lecture's eq. (9); exact for float32 inputs and
/// scales up to one float64 rounding, as a float64 numpy oracle computes it).
#[derive(Clone, Copy)]
pub struct Divide;
impl Scaled for Divide {
    const CHECK: bool = true;
    #[inline(always)]
    fn scaled(x: f64, a: f64) -> f64 {
        x / a
    }
    fn multiplier(scale: f64) -> f64 {
        scale
    }
    #[inline(always)]
    fn multiplier_of<P: Params>(p: &P, i: usize) -> f64 {
        p.s(i)
    }
}

/// x · fl32(1/s) in float32 (torch's `quantize_per_channel`, torchao's
/// `quantize_affine`).
#[derive(Clone, Copy)]
pub struct Reciprocal32;
impl Scaled for Reciprocal32 {
    const CHECK: bool = false;
    #[inline(always)]
    fn scaled(x: f64, a: f64) -> f64 {
        ((x as f32) * (a as f32)) as f64
    }
    fn multiplier(scale: f64) -> f64 {
        (1.0 / scale as f32) as f64
    }
    #[inline(always)]
    fn multiplier_of<P: Params>(p: &P, i: usize) -> f64 {
        p.a32(i) as f64
    }
}

// ---------------------------------------------------------------------------
// Parameter sources: one part for the whole block, or gathered per element.
// ---------------------------------------------------------------------------

/// Per-element parameters of a block.
pub trait Params {
    /// Zero-point b_j.
    fn zp(&self, i: usize) -> f64;
    /// Lower clip bound.
    fn lo(&self, i: usize) -> f64;
    /// Upper clip bound.
    fn hi(&self, i: usize) -> f64;
    /// Scale s_j.
    fn s(&self, i: usize) -> f64;
    /// fl32(1/s_j).
    fn a32(&self, i: usize) -> f32;
    /// b_j as float32.
    fn zp32(&self, i: usize) -> f32;
    /// Lower bound as float32.
    fn lo32(&self, i: usize) -> f32;
    /// Upper bound as float32.
    fn hi32(&self, i: usize) -> f32;
    /// s_j as float32.
    fn s32(&self, i: usize) -> f32;
    /// [`tolerance32`] of the part.
    fn tol32(&self, i: usize) -> f32;
}

/// A bound on |x·fl32(1/s) − x/s| (two float32 roundings: relative error
/// under 2^−22, doubled for margin) wherever the rounding direction
/// matters: for |x/s| < B = max(|lo − b|, |hi − b|) + 2. Beyond B both
/// integers next to x/s clip to the same bound, so a wrong direction there
/// changes nothing; a constant bound per part costs the loop less than a
/// relative one per element.
#[inline(always)]
fn tolerance32(lo: i32, hi: i32, zp: i32) -> f32 {
    let (lo, hi, zp) = (lo as i64, hi as i64, zp as i64);
    let b = (lo - zp).abs().max((hi - zp).abs()) + 2;
    b as f32 * (1.0 / 2_097_152.0)
}

/// One part's parameters for every element.
#[derive(Clone, Copy)]
pub struct Const {
    zp: f64,
    lo: f64,
    hi: f64,
    s: f64,
    a32: f32,
    zp32: f32,
    lo32: f32,
    hi32: f32,
    s32: f32,
    tol32: f32,
}

impl Const {
    #[inline(always)]
    fn of(r: &Resolved<'_>, j: usize) -> Const {
        let (s, zp) = (r.s(j), r.zp(j));
        let (lo, hi) = r.bounds(j);
        Const {
            zp: zp as f64,
            lo: lo as f64,
            hi: hi as f64,
            s,
            a32: r.a32(j),
            zp32: zp as f32,
            lo32: lo as f32,
            hi32: hi as f32,
            s32: s as f32,
            tol32: tolerance32(lo, hi, zp),
        }
    }
}

impl Params for Const {
    #[inline(always)]
    fn zp(&self, _: usize) -> f64 {
        self.zp
    }
    #[inline(always)]
    fn lo(&self, _: usize) -> f64 {
        self.lo
    }
    #[inline(always)]
    fn hi(&self, _: usize) -> f64 {
        self.hi
    }
    #[inline(always)]
    fn s(&self, _: usize) -> f64 {
        self.s
    }
    #[inline(always)]
    fn a32(&self, _: usize) -> f32 {
        self.a32
    }
    #[inline(always)]
    fn zp32(&self, _: usize) -> f32 {
        self.zp32
    }
    #[inline(always)]
    fn lo32(&self, _: usize) -> f32 {
        self.lo32
    }
    #[inline(always)]
    fn hi32(&self, _: usize) -> f32 {
        self.hi32
    }
    #[inline(always)]
    fn s32(&self, _: usize) -> f32 {
        self.s32
    }
    #[inline(always)]
    fn tol32(&self, _: usize) -> f32 {
        self.tol32
    }
}

/// Parameters gathered through part ids (plans without runs, for which
/// [`Resolved`] keeps fl32(1/s) per part).
pub struct Gather<'a> {
    ids: &'a [u32],
    r: &'a Resolved<'a>,
    a32: &'a [f32],
}

impl<'a> Gather<'a> {
    #[inline(always)]
    fn new(ids: &'a [u32], r: &'a Resolved<'a>) -> Gather<'a> {
        Gather {
            ids,
            r,
            a32: r.a32_table(),
        }
    }
    #[inline(always)]
    fn j(&self, i: usize) -> usize {
        self.ids[i] as usize
    }
}

impl Params for Gather<'_> {
    #[inline(always)]
    fn zp(&self, i: usize) -> f64 {
        self.r.zp(self.j(i)) as f64
    }
    #[inline(always)]
    fn lo(&self, i: usize) -> f64 {
        self.r.bounds(self.j(i)).0 as f64
    }
    #[inline(always)]
    fn hi(&self, i: usize) -> f64 {
        self.r.bounds(self.j(i)).1 as f64
    }
    #[inline(always)]
    fn s(&self, i: usize) -> f64 {
        self.r.s(self.j(i))
    }
    #[inline(always)]
    fn a32(&self, i: usize) -> f32 {
        self.a32[self.j(i)]
    }
    #[inline(always)]
    fn zp32(&self, i: usize) -> f32 {
        self.r.zp(self.j(i)) as f32
    }
    #[inline(always)]
    fn lo32(&self, i: usize) -> f32 {
        self.r.bounds(self.j(i)).0 as f32
    }
    #[inline(always)]
    fn hi32(&self, i: usize) -> f32 {
        self.r.bounds(self.j(i)).1 as f32
    }
    #[inline(always)]
    fn s32(&self, i: usize) -> f32 {
        self.r.s(self.j(i)) as f32
    }
    #[inline(always)]
    fn tol32(&self, i: usize) -> f32 {
        let j = self.j(i);
        let (lo, hi) = self.r.bounds(j);
        tolerance32(lo, hi, self.r.zp(j))
    }
}

// ---------------------------------------------------------------------------
// Element loops
// ---------------------------------------------------------------------------

/// Def 3.2, eq. (9): q = clip(round(x/s) + b, lo, hi) for each element of
/// a block; NaN gives b (which dequantizes to 0). Returns how many elements
/// were clipped.
#[inline(always)]
fn quantize_block<R: Round, A: Scaled, P: Params>(
    x: &[f64],
    p: &P,
    key: [u32; 2],
    index0: u64,
    codes: &mut [i32],
) -> u64 {
    let mut clipped = 0u32;
    let n = x.len().min(codes.len());
    for i in 0..n {
        let t = A::scaled(x[i], A::multiplier_of(p, i));
        let q = R::round(t, key, index0 + i as u64) + p.zp(i);
        let (lo, hi) = (p.lo(i), p.hi(i));
        clipped += ((q < lo) | (q > hi)) as u32;
        let c = if q < lo {
            lo
        } else if q > hi {
            hi
        } else {
            q
        };
        #[allow(clippy::eq_op)]
        let c = if c == c { c } else { p.zp(i) };
        // SAFETY: c is lo, hi, the zero-point or an integer-valued float
        // between lo and hi, all of which are i32 values.
        codes[i] = unsafe { c.to_int_unchecked::<i32>() };
    }
    clipped as u64
}

/// The float32 fast path of [`quantize_block`]: x·fl32(1/s) in float32.
/// Returns the clipped count and whether the caller must redo the run in
/// float64: with `check`, when any element lies so near a rounding
/// boundary that the exact x/s might round otherwise; always, when an
/// element is NaN or its quotient infinite (rare inputs that
/// [`quantize_block`] handles). Without `check` this is the reciprocal
/// arithmetic itself. Valid when scales, their reciprocals and the integer
/// parameters are exact normal float32 values (`Resolved::fast32`).
///
/// `CLIP = false` leaves out the clip and its count, for runs whose
/// every code is known to lie within bounds (see [`within_bounds`]): a
/// third fewer instructions per vector.
#[inline(always)]
fn quantize_block32<R: Round, P: Params, const CLIP: bool>(
    x: &[f32],
    p: &P,
    check: bool,
    codes: &mut [i32],
) -> (u64, bool) {
    let mut clipped = 0u32;
    // How many quotients were near a boundary or NaN: counted like
    // `clipped` (a compare and an integer subtract per vector), since an
    // or-ed flag gets narrowed lane by lane.
    let mut redo = 0u32;
    let n = x.len().min(codes.len());
    for i in 0..n {
        let t = x[i] * p.a32(i);
        let r = R::round32(t);
        // NaN (from a NaN or infinite t) answers false.
        #[allow(clippy::eq_op)]
        let ok = if check {
            R::margin32(t, r, x[i], p.tol32(i)) > 0.0
        } else {
            t - t == 0.0
        };
        redo += !ok as u32;
        let q = r + p.zp32(i);
        let c = if CLIP {
            // Compare-and-select, one instruction each; q is not NaN here
            // unless the run is redone.
            let c = if q > p.lo32(i) { q } else { p.lo32(i) };
            let c = if c < p.hi32(i) { c } else { p.hi32(i) };
            clipped += (c != q) as u32;
            c
        } else if ok {
            q
        } else {
            // Any integer: the run is redone.
            0.0
        };
        // SAFETY: c is lo, hi, 0 or an integer-valued float between lo and
        // hi (without CLIP, the caller's bound on the run's codes), all
        // integers of magnitude ≤ 2^24.
        codes[i] = unsafe { c.to_int_unchecked::<i32>() };
    }
    (clipped as u64, redo != 0)
}

/// Whether every element of a part whose finite values span `range`
/// quantizes within the part's bounds on the float32 path, so that the
/// clip can be left out: x·fl32(1/s) and the rounding are monotone in x,
/// so the codes of the extremes bound all others. Non-finite elements
/// need no bound: their quotients send the run to float64, which clips.
#[inline(always)]
fn within_bounds<R: Round>(range: Option<[f32; 2]>, p: &Const) -> bool {
    let Some([min, max]) = range else {
        return false;
    };
    let low = R::round32(min * p.a32) + p.zp32;
    let high = R::round32(max * p.a32) + p.zp32;
    // false for an empty range (min > max) and for NaN codes
    min <= max && low >= p.lo32 && high <= p.hi32
}

/// Eq. (10) in float32: exact (n − b) times s in one float32 rounding,
/// which equals the float64 product rounded to float32 when |n − b| < 2^24
/// and s is a float32.
#[inline(always)]
fn dequantize_block32<P: Params, F: OutFloat>(codes: &[i32], p: &P, out: &mut [F]) {
    let n = codes.len().min(out.len());
    for i in 0..n {
        out[i] = F::from_f32((codes[i] as f32 - p.zp32(i)) * p.s32(i));
    }
}

/// [`dequantize_block32`] for one part's codes, written to memory with
/// non-temporal stores straight from registers (where `out` is 32-byte
/// aligned; plain stores for an unaligned head and tail). Staging the values
/// in a stack block and copying them out, as [`simd::stream_copy_f32`]
/// does, ran at half the speed: the loads from the stack block were held
/// up behind the streamed stores whenever their addresses matched in the
/// low 12 bits.
/// Only where [`can_stream_direct`] holds.
#[inline(always)]
fn dequantize_stream32(codes: &[i32], zp: f32, s: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: can_stream_direct() found AVX2.
    unsafe {
        dequantize_stream32_avx2(codes, zp, s, out)
    };
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (codes, zp, s, out);
        unreachable!("can_stream_direct() is false off x86-64");
    }
}

/// Whether [`dequantize_stream32`] runs on this CPU (AVX2).
fn can_stream_direct() -> bool {
    #[cfg(target_arch = "x86_64")]
    return simd::has_avx2();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_stream32_avx2(codes: &[i32], zp: f32, s: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = codes.len().min(out.len());
    let head = out.as_ptr().align_offset(32).min(n);
    let one = |i: usize, out: &mut [f32]| out[i] = (codes[i] as f32 - zp) * s;
    for i in 0..head {
        one(i, out);
    }
    let (zv, sv) = (_mm256_set1_ps(zp), _mm256_set1_ps(s));
    let mut i = head;
    while i + 8 <= n {
        // SAFETY: i + 8 ≤ n bounds both accesses; out + i is 32-byte
        // aligned (aligned at head, then moved by 32 bytes).
        unsafe {
            let c = _mm256_cvtepi32_ps(_mm256_loadu_si256(codes.as_ptr().add(i) as *const __m256i));
            // The same two roundings as dequantize_block32: (n − b), then ·s.
            _mm256_stream_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(_mm256_sub_ps(c, zv), sv),
            );
        }
        i += 8;
    }
    for i in i..n {
        one(i, out);
    }
}

/// Def 3.2, eq. (10): s·(n − b).
#[inline(always)]
fn dequantize_block<P: Params, F: OutFloat>(codes: &[i32], p: &P, out: &mut [F]) {
    let n = codes.len().min(out.len());
    for i in 0..n {
        out[i] = F::from_f64((codes[i] as f64 - p.zp(i)) * p.s(i));
    }
}

/// An output float type.
pub trait OutFloat: Copy + Default + Send + Sync {
    /// Whether this is float32 (which the float32 fast paths may write).
    const IS_F32: bool;
    /// From float64, rounded to nearest even.
    fn from_f64(v: f64) -> Self;
    /// From float32 (only called when `IS_F32`).
    fn from_f32(v: f32) -> Self;
    /// The values as float32, when this is float32.
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;
    /// The values as float32, when this is float32.
    fn as_f32(values: &[Self]) -> Option<&[f32]>;
}
impl OutFloat for f32 {
    const IS_F32: bool = true;
    #[inline(always)]
    fn as_f32_mut(values: &mut [f32]) -> Option<&mut [f32]> {
        Some(values)
    }
    #[inline(always)]
    fn as_f32(values: &[f32]) -> Option<&[f32]> {
        Some(values)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    #[inline(always)]
    fn from_f32(v: f32) -> f32 {
        v
    }
}
impl OutFloat for f64 {
    const IS_F32: bool = false;
    #[inline(always)]
    fn as_f32_mut(_: &mut [f64]) -> Option<&mut [f32]> {
        None
    }
    #[inline(always)]
    fn as_f32(_: &[f64]) -> Option<&[f32]> {
        None
    }
    #[inline(always)]
    fn from_f64(v: f64) -> f64 {
        v
    }
    #[inline(always)]
    fn from_f32(v: f32) -> f64 {
        v as f64
    }
}

/// Loads `out.len()` elements of `x` (not float64) from `start` as float32.
#[inline(always)]
pub(crate) fn load32(x: &Values<'_>, start: usize, out: &mut [f32]) {
    let n = out.len();
    match x {
        Values::F32(v) => out.copy_from_slice(&v[start..start + n]),
        Values::Bf16(v) => {
            let v = &v[start..start + n];
            for i in 0..n {
                out[i] = f32::from_bits((v[i] as u32) << 16);
            }
        }
        Values::F16(v) => {
            let v = &v[start..start + n];
            for i in 0..n {
                out[i] = f16_to_f32(v[i]);
            }
        }
        Values::F64(v) => {
            let v = &v[start..start + n];
            for i in 0..n {
                out[i] = v[i] as f32;
            }
        }
    }
}

/// Loads `out.len()` elements of `x` from `start` as float64.
#[inline(always)]
pub(crate) fn load(x: &Values<'_>, start: usize, out: &mut [f64]) {
    let n = out.len();
    match x {
        Values::F32(v) => {
            let v = &v[start..start + n];
            for i in 0..n {
                out[i] = v[i] as f64;
            }
        }
        Values::F64(v) => out.copy_from_slice(&v[start..start + n]),
        Values::Bf16(v) => {
            let v = &v[start..start + n];
            for i in 0..n {
                out[i] = f32::from_bits((v[i] as u32) << 16) as f64;
            }
        }
        Values::F16(v) => {
            let v = &v[start..start + n];
            for i in 0..n {
                out[i] = f16_to_f32(v[i]) as f64;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Sinks: where a block's codes go.
// ---------------------------------------------------------------------------

/// Receives codes: per run of one part (`segment`) and per block
/// (`block`); offsets are element offsets within the chunk.
pub trait Sink {
    /// Codes of one run of elements sharing the parameters `p`.
    #[inline(always)]
    fn segment<P: Params>(&mut self, _offset: usize, _codes: &[i32], _p: &P) {}
    /// All codes of a block (called after its segments).
    #[inline(always)]
    fn block(&mut self, _offset: usize, _codes: &[i32]) {}
}

/// A code container type.
pub trait CodeInt: Copy + Default + Send + Sync {
    /// For byte containers, whether they are signed (`None` otherwise):
    /// blocks of byte codes are narrowed in vector registers.
    const BYTE_SIGNED: Option<bool> = None;
    /// Truncating conversion (the caller guarantees the range).
    fn from_i32(v: i32) -> Self;
    /// Widening conversion.
    fn to_i32(self) -> i32;
}
macro_rules! code_int {
    ($($t:ty: $byte:expr),*) => {$(
        impl CodeInt for $t {
            const BYTE_SIGNED: Option<bool> = $byte;
            #[inline(always)]
            fn from_i32(v: i32) -> $t { v as $t }
            #[inline(always)]
            fn to_i32(self) -> i32 { self as i32 }
        }
    )*};
}
code_int!(i8: Some(true), u8: Some(false), i16: None, u16: None, i32: None);

struct IntSink<'a, T>(&'a mut [T]);
impl<T: CodeInt> Sink for IntSink<'_, T> {
    #[inline(always)]
    fn segment<P: Params>(&mut self, offset: usize, codes: &[i32], _p: &P) {
        let out = &mut self.0[offset..offset + codes.len()];
        let done = match T::BYTE_SIGNED {
            // SAFETY: T is a one-byte integer (i8 or u8) here, so its slice
            // is a byte slice of the same length.
            Some(signed) => pack::narrow_to_bytes(codes, signed, unsafe {
                std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, out.len())
            }),
            None => 0,
        };
        for i in done..codes.len() {
            out[i] = T::from_i32(codes[i]);
        }
    }
}

struct PackSink<'a> {
    out: &'a mut [u8],
    bits: u32,
}
impl Sink for PackSink<'_> {
    #[inline(always)]
    fn block(&mut self, offset: usize, codes: &[i32]) {
        let w = self.bits as usize;
        let byte0 = offset * w / 8;
        let nbytes = (codes.len() * w).div_ceil(8);
        pack::pack_into(codes, self.bits, &mut self.out[byte0..byte0 + nbytes]);
    }
}

struct DeqSink<'a, F> {
    out: &'a mut [F],
    fast: bool,
    /// Write runs of one part with non-temporal stores (large float32
    /// outputs; see [`STREAM_MIN_BYTES`]).
    stream: bool,
}
impl<F: OutFloat> Sink for DeqSink<'_, F> {
    #[inline(always)]
    fn segment<P: Params>(&mut self, offset: usize, codes: &[i32], p: &P) {
        let out = &mut self.out[offset..offset + codes.len()];
        if self.fast {
            if let (true, Some(out)) = (self.stream, F::as_f32_mut(out)) {
                return dequantize_stream32(codes, p.zp32(0), p.s32(0), out);
            }
            dequantize_block32(codes, p, out);
        } else {
            dequantize_block(codes, p, out);
        }
    }
}

// ---------------------------------------------------------------------------
// Chunk jobs
// ---------------------------------------------------------------------------

/// A block of codes, aligned so that packing can read pairs as u64.
#[repr(C, align(64))]
struct CodeBlock([i32; BLOCK]);

struct QuantChunk<'a, R, A, S> {
    x: Values<'a>,
    plan: &'a Plan<'a>,
    r: &'a Resolved<'a>,
    key: [u32; 2],
    start: usize,
    end: usize,
    sink: S,
    /// The next task's input, fetched block by block in step with this one.
    ahead: Ahead,
    _m: std::marker::PhantomData<(R, A)>,
}

impl<R: Round, A: Scaled, S: Sink> Kernel for QuantChunk<'_, R, A, S> {
    type Output = u64;
    #[inline(always)]
    fn run(mut self) -> u64 {
        let mut xb = [0f64; BLOCK];
        let mut xb32 = [0f32; BLOCK];
        let mut cb = CodeBlock([0; BLOCK]);
        let cb = &mut cb.0;
        let mut ids = [0u32; BLOCK];
        let mut clipped = 0u64;
        let fast = R::FAST32 && self.r.fast32 && !matches!(self.x, Values::F64(_));
        let mut pos = self.start;
        let mut segments = self.plan.has_segments().then(|| self.plan.segments(pos));
        while pos < self.end {
            let n = BLOCK.min(self.end - pos);
            // float32 input is read in place; 16-bit input is widened.
            let x32: &[f32] = match self.x {
                Values::F32(v) if fast => &v[pos..pos + n],
                _ if fast => {
                    load32(&self.x, pos, &mut xb32[..n]);
                    &xb32[..n]
                }
                _ => {
                    load(&self.x, pos, &mut xb[..n]);
                    &[]
                }
            };
            let off = pos - self.start;
            if let Some(segments) = &mut segments {
                let mut done = 0;
                while done < n {
                    let (j, len) = segments.next(n - done);
                    let p = Const::of(self.r, j);
                    let seg = done..done + len;
                    let clip = !(fast && within_bounds::<R>(self.r.range32(j), &p));
                    clipped += self.codes(
                        fast,
                        clip,
                        pos + done,
                        if fast { &x32[seg.clone()] } else { &[] },
                        &mut xb[seg.clone()],
                        &p,
                        &mut cb[seg.clone()],
                    );
                    self.sink.segment(off + done, &cb[seg], &p);
                    done += len;
                }
            } else {
                self.plan.parts_of(pos, &mut ids[..n]);
                let p = Gather::new(&ids[..n], self.r);
                clipped += self.codes(fast, true, pos, x32, &mut xb[..n], &p, &mut cb[..n]);
                self.sink.segment(off, &cb[..n], &p);
            }
            self.sink.block(off, &cb[..n]);
            self.ahead.fetch(pos, n);
            pos += n;
        }
        clipped
    }
}

impl<R: Round, A: Scaled, S: Sink> QuantChunk<'_, R, A, S> {
    /// Codes of a run starting at flat index `start`: the float32 path when
    /// `fast` (redone in float64 if a quotient is near a boundary), else
    /// float64 from `x64` (already loaded unless `fast`). Without `clip`
    /// the float32 path leaves out the clip (see [`within_bounds`]).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn codes<P: Params>(
        &self,
        fast: bool,
        clip: bool,
        start: usize,
        x32: &[f32],
        x64: &mut [f64],
        p: &P,
        codes: &mut [i32],
    ) -> u64 {
        if fast {
            // Runs of the common group lengths with their length known at
            // compile time: the loop unrolls whole, without a remainder path
            // or a second round of its accumulators (a tenth of the time of
            // an int4 quantization in groups of 128).
            macro_rules! fixed {
                ($clip:literal: $($n:literal),*) => {
                    match x32.len().min(codes.len()) {
                        $($n => quantize_block32::<R, P, $clip>(&x32[..$n], p, A::CHECK, &mut codes[..$n]),)*
                        _ => quantize_block32::<R, P, $clip>(x32, p, A::CHECK, codes),
                    }
                };
            }
            let (clipped, redo) = if clip {
                fixed!(true: 32, 64, 128)
            } else {
                fixed!(false: 32, 64, 128)
            };
            if !redo {
                return clipped;
            }
            load(&self.x, start, x64);
        }
        quantize_block::<R, A, P>(x64, p, self.key, start as u64, codes)
    }
}

#[allow(clippy::too_many_arguments)]
fn run_chunk<S: Sink>(
    opts: &Options,
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved<'_>,
    start: usize,
    end: usize,
    sink: S,
    ahead: Ahead,
) -> u64 {
    macro_rules! go {
        ($R:ty, $A:ty) => {
            simd::dispatch(QuantChunk::<$R, $A, S> {
                x,
                plan,
                r,
                key: seed_key(opts.seed),
                start,
                end,
                sink,
                ahead,
                _m: std::marker::PhantomData,
            })
        };
    }
    macro_rules! arith {
        ($R:ty) => {
            match opts.arith {
                Arith::Divide => go!($R, Divide),
                Arith::Reciprocal32 => go!($R, Reciprocal32),
            }
        };
    }
    match opts.rounding {
        Rounding::NearestEven => arith!(NearestEven),
        Rounding::NearestAway => arith!(NearestAway),
        Rounding::TowardZero => arith!(TowardZero),
        Rounding::Down => arith!(Down),
        Rounding::Up => arith!(Up),
        Rounding::Stochastic => arith!(Stochastic),
    }
}

/// Which container the codes go into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeType {
    /// int8.
    I8,
    /// uint8.
    U8,
    /// int16.
    I16,
    /// uint16.
    U16,
    /// int32.
    I32,
    /// `bits` (2–8) per code, packed LSB-first (see [`pack`]); `signed`
    /// says whether unpacking sign-extends.
    Packed {
        /// Bits per code.
        bits: u32,
        /// Two's complement codes.
        signed: bool,
    },
}

fn ints_into<T: CodeInt>(
    opts: &Options,
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved<'_>,
    out: &mut [T],
    ahead: Ahead,
) -> u64 {
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(k, o)| {
            let start = k * CHUNK;
            run_chunk(opts, x, plan, r, start, start + o.len(), IntSink(o), ahead)
        })
        .sum()
}

/// Quantizes into `out`, whose length fits `x` (checked by the caller);
/// returns the number of clipped elements.
pub fn quantize_into(
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved<'_>,
    opts: &Options,
    out: CodesMut<'_>,
) -> u64 {
    quantize_into_ahead(x, plan, r, opts, out, Ahead::NONE)
}

/// [`quantize_into`], prefetching `ahead` (as long as `x`, or shorter) in
/// step: element i of it as element i of x is quantized.
pub fn quantize_into_ahead(
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved<'_>,
    opts: &Options,
    out: CodesMut<'_>,
    ahead: Ahead,
) -> u64 {
    crate::threads::init_pool();
    match out {
        CodesMut::I8(o) => ints_into(opts, x, plan, r, o, ahead),
        CodesMut::U8(o) => ints_into(opts, x, plan, r, o, ahead),
        CodesMut::I16(o) => ints_into(opts, x, plan, r, o, ahead),
        CodesMut::U16(o) => ints_into(opts, x, plan, r, o, ahead),
        CodesMut::I32(o) => ints_into(opts, x, plan, r, o, ahead),
        CodesMut::Packed { data, bits, .. } => {
            let n = x.len();
            let chunk_bytes = CHUNK * bits as usize / 8;
            data.par_chunks_mut(chunk_bytes.max(1))
                .enumerate()
                .map(|(k, o)| {
                    let start = k * CHUNK;
                    let end = (start + CHUNK).min(n);
                    run_chunk(
                        opts,
                        x,
                        plan,
                        r,
                        start,
                        end,
                        PackSink { out: o, bits },
                        ahead,
                    )
                })
                .sum()
        }
    }
}

/// Quantizes and dequantizes in one pass (no codes in memory).
pub fn fake_quantize<F: OutFloat>(
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved<'_>,
    opts: &Options,
) -> (Vec<F>, u64) {
    let mut out = crate::lowp::output::<F>(x.len());
    let clipped = fake_quantize_into(x, plan, r, opts, &mut out);
    (out, clipped)
}

/// [`fake_quantize`] into `out` (`x.len()` values); returns the number of
/// clipped elements.
pub fn fake_quantize_into<F: OutFloat>(
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved<'_>,
    opts: &Options,
    out: &mut [F],
) -> u64 {
    let stream = std::mem::size_of_val(out) >= STREAM_MIN_BYTES;
    fake_quantize_into_ahead(x, plan, r, opts, out, stream, Ahead::NONE)
}

/// [`fake_quantize_into`], with non-temporal stores where `stream` says
/// and the output allows, prefetching `ahead` as [`quantize_into_ahead`]
/// does.
pub fn fake_quantize_into_ahead<F: OutFloat>(
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved<'_>,
    opts: &Options,
    out: &mut [F],
    stream: bool,
    ahead: Ahead,
) -> u64 {
    crate::threads::init_pool();
    // Runs of one part (segments) stream straight from registers, as in
    // dequantization; gathered parameters are written plainly.
    let stream = stream && F::IS_F32 && r.fast32 && plan.has_segments() && can_stream_direct();
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(k, o)| {
            let start = k * CHUNK;
            let end = start + o.len();
            let sink = DeqSink {
                out: o,
                fast: F::IS_F32 && r.fast32,
                stream,
            };
            let clipped = run_chunk(opts, x, plan, r, start, end, sink, ahead);
            if stream {
                // Non-temporal stores are weakly ordered: fence them before
                // the pool hands the chunk to another thread.
                simd::store_fence();
            }
            clipped
        })
        .sum()
}

struct DeqChunk<'a, F> {
    codes: CodesRef<'a>,
    plan: &'a Plan<'a>,
    r: &'a Resolved<'a>,
    start: usize,
    out: &'a mut [F],
    /// Write float32 output with non-temporal stores (large outputs).
    stream: bool,
}

/// float32 outputs from this size on are written past the cache: they do
/// not stay in it anyway, and non-temporal stores skip reading each line
/// before overwriting it (measured: 64 MiB in 2.5 ms instead of 5.6 ms).
pub(super) const STREAM_MIN_BYTES: usize = 8 << 20;

#[inline(always)]
fn load_codes(codes: &CodesRef<'_>, start: usize, out: &mut [i32]) {
    #[inline(always)]
    fn widen<T: CodeInt>(v: &[T], out: &mut [i32]) {
        for i in 0..out.len() {
            out[i] = v[i].to_i32();
        }
    }
    let n = out.len();
    match codes {
        CodesRef::I8(v) => widen(&v[start..start + n], out),
        CodesRef::U8(v) => widen(&v[start..start + n], out),
        CodesRef::I16(v) => widen(&v[start..start + n], out),
        CodesRef::U16(v) => widen(&v[start..start + n], out),
        CodesRef::I32(v) => out.copy_from_slice(&v[start..start + n]),
        CodesRef::Packed {
            data, bits, signed, ..
        } => {
            let w = *bits as usize;
            let byte0 = start * w / 8;
            let nbytes = (n * w).div_ceil(8);
            pack::unpack_from(&data[byte0..byte0 + nbytes], *bits, *signed, out);
        }
    }
}

impl<F: OutFloat> Kernel for DeqChunk<'_, F> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let mut cb = [0i32; BLOCK];
        let mut ids = [0u32; BLOCK];
        let mut staged = [F::default(); BLOCK];
        let end = self.start + self.out.len();
        // Codes of up to 16 bits minus a zero-point within 2^23 are exact
        // in float32.
        let fast = F::IS_F32 && self.r.fast32 && !matches!(self.codes, CodesRef::I32(_));
        let stream = self.stream && F::IS_F32;
        // Blocks of one part at a time stream straight from registers.
        let direct = stream && fast && can_stream_direct();
        let mut pos = self.start;
        let mut segments = self.plan.has_segments().then(|| self.plan.segments(pos));
        while pos < end {
            let n = BLOCK.min(end - pos);
            load_codes(&self.codes, pos, &mut cb[..n]);
            let off = pos - self.start;
            if let (true, Some(segments)) = (direct, &mut segments) {
                let mut done = 0;
                while done < n {
                    let (j, len) = segments.next(n - done);
                    let p = Const::of(self.r, j);
                    let to = &mut self.out[off + done..off + done + len];
                    let to = F::as_f32_mut(to).expect("float32 output");
                    dequantize_stream32(&cb[done..done + len], p.zp32(0), p.s32(0), to);
                    done += len;
                }
                pos += n;
                continue;
            }
            // Other streamed blocks are computed in a stack block, then stored.
            let dst: &mut [F] = if stream {
                &mut staged[..n]
            } else {
                &mut self.out[off..off + n]
            };
            if let Some(segments) = &mut segments {
                let mut done = 0;
                while done < n {
                    let (j, len) = segments.next(n - done);
                    let out = &mut dst[done..done + len];
                    let p = Const::of(self.r, j);
                    if fast {
                        dequantize_block32(&cb[done..done + len], &p, out);
                    } else {
                        dequantize_block(&cb[done..done + len], &p, out);
                    }
                    done += len;
                }
            } else {
                self.plan.parts_of(pos, &mut ids[..n]);
                let p = Gather::new(&ids[..n], self.r);
                if fast {
                    dequantize_block32(&cb[..n], &p, dst);
                } else {
                    dequantize_block(&cb[..n], &p, dst);
                }
            }
            if stream {
                if let (Some(to), Some(from)) = (
                    F::as_f32_mut(&mut self.out[off..off + n]),
                    F::as_f32(&staged[..n]),
                ) {
                    simd::stream_copy_f32(to, from);
                }
            }
            pos += n;
        }
        if stream {
            // Non-temporal stores are weakly ordered: fence them before the
            // pool hands the chunk to another thread.
            simd::store_fence();
        }
    }
}

/// s·(n − b) for every code.
pub fn dequantize<F: OutFloat>(codes: CodesRef<'_>, plan: &Plan<'_>, r: &Resolved<'_>) -> Vec<F> {
    let mut out = crate::lowp::output::<F>(plan.len);
    dequantize_into(codes, plan, r, &mut out);
    out
}

/// [`dequantize`] into `out` (`plan.len` values).
pub fn dequantize_into<F: OutFloat>(
    codes: CodesRef<'_>,
    plan: &Plan<'_>,
    r: &Resolved<'_>,
    out: &mut [F],
) {
    crate::threads::init_pool();
    let stream = std::mem::size_of_val(out) >= STREAM_MIN_BYTES;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(k, o)| {
        simd::dispatch(DeqChunk {
            codes,
            plan,
            r,
            start: k * CHUNK,
            out: o,
            stream,
        })
    });
}
