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
use super::{Arith, Codes, CodesRef, Options, Resolved};
use crate::lowp::codec::{random_u32, seed_key, Rounding};
use crate::lowp::Values;
use crate::rows::f16_to_f32;
use crate::simd::{self, Kernel};

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
}

macro_rules! simple_round {
    ($name:ident, $doc:literal, $f:ident) => {
        #[doc = $doc]
        #[derive(Clone, Copy)]
        pub struct $name;
        impl Round for $name {
            #[inline(always)]
            fn round(t: f64, _key: [u32; 2], _index: u64) -> f64 {
                t.$f()
            }
        }
    };
}
simple_round!(NearestEven, "Nearest, ties to even.", round_ties_even);
simple_round!(NearestAway, "Nearest, ties away from zero.", round);
simple_round!(TowardZero, "Truncation.", trunc);
simple_round!(Down, "Toward −∞.", floor);
simple_round!(Up, "Toward +∞.", ceil);

/// Up with probability frac(t) (quantised to 32 bits), from a
/// counter-based hash of (seed, index): the same whatever the threads.
#[derive(Clone, Copy)]
pub struct Stochastic;
impl Round for Stochastic {
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
}

/// x / s in float64 (the lecture's eq. (9); exact for float32 inputs and
/// scales up to one float64 rounding, as a float64 numpy oracle computes it).
#[derive(Clone, Copy)]
pub struct Divide;
impl Scaled for Divide {
    #[inline(always)]
    fn scaled(x: f64, a: f64) -> f64 {
        x / a
    }
    fn multiplier(scale: f64) -> f64 {
        scale
    }
}

/// x · fl32(1/s) in float32 (torch's `quantize_per_channel`, torchao's
/// `quantize_affine`).
#[derive(Clone, Copy)]
pub struct Reciprocal32;
impl Scaled for Reciprocal32 {
    #[inline(always)]
    fn scaled(x: f64, a: f64) -> f64 {
        ((x as f32) * (a as f32)) as f64
    }
    fn multiplier(scale: f64) -> f64 {
        (1.0 / scale as f32) as f64
    }
}

// ---------------------------------------------------------------------------
// Parameter sources: one part for the whole block, or gathered per element.
// ---------------------------------------------------------------------------

/// Per-element parameters of a block.
pub trait Params {
    /// Multiplier of x (see [`Scaled`]).
    fn a(&self, i: usize) -> f64;
    /// Zero-point b_j.
    fn zp(&self, i: usize) -> f64;
    /// Lower clip bound.
    fn lo(&self, i: usize) -> f64;
    /// Upper clip bound.
    fn hi(&self, i: usize) -> f64;
    /// Scale s_j (for dequantization).
    fn s(&self, i: usize) -> f64;
}

/// One part's parameters for every element.
#[derive(Clone, Copy)]
pub struct Const {
    a: f64,
    zp: f64,
    lo: f64,
    hi: f64,
    s: f64,
}

impl Const {
    #[inline(always)]
    fn of(r: &Resolved, j: usize) -> Const {
        Const {
            a: r.a[j],
            zp: r.zp[j],
            lo: r.lo[j],
            hi: r.hi[j],
            s: r.s[j],
        }
    }
}

impl Params for Const {
    #[inline(always)]
    fn a(&self, _: usize) -> f64 {
        self.a
    }
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
}

/// Parameters gathered through part ids.
pub struct Gather<'a> {
    ids: &'a [u32],
    r: &'a Resolved,
}

impl Params for Gather<'_> {
    #[inline(always)]
    fn a(&self, i: usize) -> f64 {
        self.r.a[self.ids[i] as usize]
    }
    #[inline(always)]
    fn zp(&self, i: usize) -> f64 {
        self.r.zp[self.ids[i] as usize]
    }
    #[inline(always)]
    fn lo(&self, i: usize) -> f64 {
        self.r.lo[self.ids[i] as usize]
    }
    #[inline(always)]
    fn hi(&self, i: usize) -> f64 {
        self.r.hi[self.ids[i] as usize]
    }
    #[inline(always)]
    fn s(&self, i: usize) -> f64 {
        self.r.s[self.ids[i] as usize]
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
        let t = A::scaled(x[i], p.a(i));
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
    /// From float64, rounded to nearest even.
    fn from_f64(v: f64) -> Self;
}
impl OutFloat for f32 {
    #[inline(always)]
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}
impl OutFloat for f64 {
    #[inline(always)]
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// Loads `out.len()` elements of `x` from `start` as float64.
#[inline(always)]
fn load(x: &Values<'_>, start: usize, out: &mut [f64]) {
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

/// Receives each block's codes (offset = element offset within the chunk).
pub trait Sink {
    /// Stores `codes` (of part parameters `p`) at element `offset`.
    fn put<P: Params>(&mut self, offset: usize, codes: &[i32], p: &P);
}

/// A code container type.
pub trait CodeInt: Copy + Default + Send + Sync {
    /// Truncating conversion (the caller guarantees the range).
    fn from_i32(v: i32) -> Self;
    /// Widening conversion.
    fn to_i32(self) -> i32;
}
macro_rules! code_int {
    ($($t:ty),*) => {$(
        impl CodeInt for $t {
            #[inline(always)]
            fn from_i32(v: i32) -> $t { v as $t }
            #[inline(always)]
            fn to_i32(self) -> i32 { self as i32 }
        }
    )*};
}
code_int!(i8, u8, i16, u16, i32);

struct IntSink<'a, T>(&'a mut [T]);
impl<T: CodeInt> Sink for IntSink<'_, T> {
    #[inline(always)]
    fn put<P: Params>(&mut self, offset: usize, codes: &[i32], _p: &P) {
        let out = &mut self.0[offset..offset + codes.len()];
        for i in 0..codes.len() {
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
    fn put<P: Params>(&mut self, offset: usize, codes: &[i32], _p: &P) {
        let w = self.bits as usize;
        let byte0 = offset * w / 8;
        let nbytes = (codes.len() * w).div_ceil(8);
        pack::pack_into(codes, self.bits, &mut self.out[byte0..byte0 + nbytes]);
    }
}

struct DeqSink<'a, F>(&'a mut [F]);
impl<F: OutFloat> Sink for DeqSink<'_, F> {
    #[inline(always)]
    fn put<P: Params>(&mut self, offset: usize, codes: &[i32], p: &P) {
        dequantize_block(codes, p, &mut self.0[offset..offset + codes.len()]);
    }
}

// ---------------------------------------------------------------------------
// Chunk jobs
// ---------------------------------------------------------------------------

struct QuantChunk<'a, R, A, S> {
    x: Values<'a>,
    plan: &'a Plan<'a>,
    r: &'a Resolved,
    key: [u32; 2],
    start: usize,
    end: usize,
    sink: S,
    _m: std::marker::PhantomData<(R, A)>,
}

impl<R: Round, A: Scaled, S: Sink> Kernel for QuantChunk<'_, R, A, S> {
    type Output = u64;
    #[inline(always)]
    fn run(mut self) -> u64 {
        let mut xb = [0f64; BLOCK];
        let mut cb = [0i32; BLOCK];
        let mut ids = [0u32; BLOCK];
        let mut clipped = 0u64;
        let mut pos = self.start;
        while pos < self.end {
            let n = BLOCK.min(self.end - pos);
            load(&self.x, pos, &mut xb[..n]);
            let off = pos - self.start;
            if let Some(j) = self.plan.uniform(pos, n) {
                let p = Const::of(self.r, j);
                clipped += quantize_block::<R, A, _>(&xb[..n], &p, self.key, pos as u64, &mut cb);
                self.sink.put(off, &cb[..n], &p);
            } else {
                self.plan.parts_of(pos, &mut ids[..n]);
                let p = Gather {
                    ids: &ids[..n],
                    r: self.r,
                };
                clipped += quantize_block::<R, A, _>(&xb[..n], &p, self.key, pos as u64, &mut cb);
                self.sink.put(off, &cb[..n], &p);
            }
            pos += n;
        }
        clipped
    }
}

fn run_chunk<S: Sink>(
    opts: &Options,
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved,
    start: usize,
    end: usize,
    sink: S,
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

fn ints<T: CodeInt>(opts: &Options, x: Values<'_>, plan: &Plan<'_>, r: &Resolved) -> (Vec<T>, u64) {
    let n = x.len();
    let mut out = vec![T::default(); n];
    let clipped = out
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(k, o)| {
            let start = k * CHUNK;
            run_chunk(opts, x, plan, r, start, start + o.len(), IntSink(o))
        })
        .sum();
    (out, clipped)
}

/// Quantizes into `code_type`; returns the codes and the number of
/// clipped elements.
pub fn quantize(
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved,
    code_type: CodeType,
    opts: &Options,
) -> (Codes, u64) {
    crate::threads::init_pool();
    match code_type {
        CodeType::I8 => {
            let (c, k) = ints::<i8>(opts, x, plan, r);
            (Codes::I8(c), k)
        }
        CodeType::U8 => {
            let (c, k) = ints::<u8>(opts, x, plan, r);
            (Codes::U8(c), k)
        }
        CodeType::I16 => {
            let (c, k) = ints::<i16>(opts, x, plan, r);
            (Codes::I16(c), k)
        }
        CodeType::U16 => {
            let (c, k) = ints::<u16>(opts, x, plan, r);
            (Codes::U16(c), k)
        }
        CodeType::I32 => {
            let (c, k) = ints::<i32>(opts, x, plan, r);
            (Codes::I32(c), k)
        }
        CodeType::Packed { bits, signed } => {
            let n = x.len();
            let w = bits as usize;
            let mut out = vec![0u8; (n * w).div_ceil(8)];
            let chunk_bytes = CHUNK * w / 8;
            let clipped = out
                .par_chunks_mut(chunk_bytes.max(1))
                .enumerate()
                .map(|(k, o)| {
                    let start = k * CHUNK;
                    let end = (start + CHUNK).min(n);
                    run_chunk(opts, x, plan, r, start, end, PackSink { out: o, bits })
                })
                .sum();
            (
                Codes::Packed {
                    data: out,
                    bits,
                    signed,
                    len: n,
                },
                clipped,
            )
        }
    }
}

/// Quantizes and dequantizes in one pass (no codes in memory).
pub fn fake_quantize<F: OutFloat>(
    x: Values<'_>,
    plan: &Plan<'_>,
    r: &Resolved,
    opts: &Options,
) -> (Vec<F>, u64) {
    crate::threads::init_pool();
    let mut out = vec![F::default(); x.len()];
    let clipped = out
        .par_chunks_mut(CHUNK)
        .enumerate()
        .map(|(k, o)| {
            let start = k * CHUNK;
            run_chunk(opts, x, plan, r, start, start + o.len(), DeqSink(o))
        })
        .sum();
    (out, clipped)
}

struct DeqChunk<'a, F> {
    codes: CodesRef<'a>,
    plan: &'a Plan<'a>,
    r: &'a Resolved,
    start: usize,
    out: &'a mut [F],
}

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
        let end = self.start + self.out.len();
        let mut pos = self.start;
        while pos < end {
            let n = BLOCK.min(end - pos);
            load_codes(&self.codes, pos, &mut cb[..n]);
            let out = &mut self.out[pos - self.start..pos - self.start + n];
            if let Some(j) = self.plan.uniform(pos, n) {
                dequantize_block(&cb[..n], &Const::of(self.r, j), out);
            } else {
                self.plan.parts_of(pos, &mut ids[..n]);
                let p = Gather {
                    ids: &ids[..n],
                    r: self.r,
                };
                dequantize_block(&cb[..n], &p, out);
            }
            pos += n;
        }
    }
}

/// s·(n − b) for every code.
pub fn dequantize<F: OutFloat>(codes: CodesRef<'_>, plan: &Plan<'_>, r: &Resolved) -> Vec<F> {
    crate::threads::init_pool();
    let mut out = vec![F::default(); plan.len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(k, o)| {
        simd::dispatch(DeqChunk {
            codes,
            plan,
            r,
            start: k * CHUNK,
            out: o,
        })
    });
    out
}
