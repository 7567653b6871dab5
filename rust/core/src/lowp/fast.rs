//! The fast codec: the reference algorithm rewritten over lanes of u32 so
//! that LLVM vectorises it (see `simd.rs`), run by rayon over chunks.
//!
//! It covers float32/float16/bfloat16 input for every format whose normal
//! range lies in float32's normal range (all predefined formats); other
//! inputs fall back to the reference codec (see `mod.rs`).

use rayon::prelude::*;

use super::codec::{random_u32, Codec, Rounding};
use super::format::{Format, Special};
use super::nearest::{self, Bf16Rne, E8m0Nearest, Rne, RneSymmetric};
use super::reference;
use crate::rows::f16_to_f32;
use crate::simd::{self, Kernel, LANES};

/// Elements per rayon task: large enough to amortise scheduling, small
/// enough to balance 2–64 threads.
pub const CHUNK: usize = 1 << 15;

/// Whether the fast codec handles `format` (its normal range must lie in
/// float32's normal range, so that one shift decides the quantum).
pub fn supports(format: &Format) -> bool {
    format.special == Special::E8m0 || format.emin() >= -126
}

/// Lane constants of an encoder; the rounding mode is spread into masks so
/// that one branch-free formula serves every deterministic mode.
#[derive(Clone, Copy)]
pub struct Lanes {
    m: u32,
    emin: i32,
    max_mag: u32,
    sign_shift: u32,
    overflow_code: [u32; 2],
    inf_code: [u32; 2],
    nan_code: [u32; 2],
    neg_zero: u32,
    payload_nan: bool,
    exp_ones: u32,
    e8m0: bool,
    nearest: bool,
    ties_away: bool,
    directed: bool,
    directed_neg: u32,
    stochastic: bool,
    key: [u32; 2],
}

impl Lanes {
    /// Lane constants of `codec`.
    pub fn new(codec: &Codec) -> Lanes {
        let f = &codec.format;
        let r = codec.rounding;
        Lanes {
            m: f.mantissa_bits,
            emin: f.emin(),
            max_mag: codec.max_mag,
            sign_shift: codec.sign_shift,
            overflow_code: codec.overflow_code,
            inf_code: codec.inf_code,
            nan_code: codec.nan_code,
            neg_zero: codec.neg_zero,
            payload_nan: f.nan_payload,
            exp_ones: f.magnitude_mask() & !((1 << f.mantissa_bits) - 1),
            e8m0: f.special == Special::E8m0,
            nearest: matches!(r, Rounding::NearestEven | Rounding::NearestAway),
            ties_away: r == Rounding::NearestAway,
            directed: matches!(r, Rounding::Up | Rounding::Down),
            directed_neg: (r == Rounding::Down) as u32,
            stochastic: r == Rounding::Stochastic,
            key: codec.key,
        }
    }
}

/// Encodes one float32 (given as bits) to a code. `rand` is used only by
/// stochastic rounding. This is the reference algorithm specialised to a
/// 24-bit significand; every step is a select, so 16 lanes vectorise.
#[inline(always)]
pub fn encode_lane(c: &Lanes, x: u32, rand: u32) -> u32 {
    let neg = x >> 31;
    let a = x & 0x7fff_ffff;
    let field = a >> 23;
    let frac = a & 0x7f_ffff;
    let field_eff = field.max(1) as i32;
    let sig = frac | ((field != 0) as u32) << 23;
    let e_x = field_eff - 127; // floor(log2) for normals; subnormals only need ≤ emin
    let top = e_x.max(c.emin);
    let shift = (top - c.m as i32 - field_eff + 150) as u32; // ≥ 8
    let sc = shift.min(31); // sig < 2^24, so 31 behaves as any larger shift
    let q = sig >> sc;
    let rem = sig & ((1u32 << sc) - 1);
    let half = 1u32 << (sc - 1);
    let above = rem > half;
    let tie = rem == half;
    let nearest_inc = above | (tie & (c.ties_away | (q & 1 == 1)));
    let directed_inc = (rem != 0) & (neg == c.directed_neg);
    let frac32 = if shift <= 32 {
        rem << (32 - shift).min(31)
    } else {
        sig >> (shift - 32).min(31)
    };
    // shift == 32 would need a shift by 0 of rem == sig: the min() above
    // would shift by 31 instead, so patch that one case.
    let frac32 = if shift == 32 { sig } else { frac32 };
    let stoch_inc = rand < frac32;
    let inc = (c.nearest & nearest_inc) | (c.directed & directed_inc) | (c.stochastic & stoch_inc);
    let mag = q + inc as u32 + (((top - c.emin) as u32) << c.m);
    let signed = mag | (neg << c.sign_shift);
    let zero = if neg != 0 { c.neg_zero } else { 0 };
    let mut code = if mag == 0 { zero } else { signed };
    code = if mag > c.max_mag {
        c.overflow_code[neg as usize]
    } else {
        code
    };
    let nan = if c.payload_nan {
        (neg << c.sign_shift) | c.exp_ones | (frac >> (23 - c.m)).max(1)
    } else {
        c.nan_code[neg as usize]
    };
    let special = if frac != 0 {
        nan
    } else {
        c.inf_code[neg as usize]
    };
    if field == 255 {
        special
    } else {
        code
    }
}

/// Encodes one float32 (bits) to float8_e8m0fnu: the exponent field, plus
/// one when rounding up to the next power of two.
#[inline(always)]
pub fn encode_lane_e8m0(c: &Lanes, x: u32, rand: u32) -> u32 {
    let neg = x >> 31;
    let a = x & 0x7fff_ffff;
    let field = a >> 23;
    let frac = a & 0x7f_ffff;
    // Normal input: quantum 2^e_x, q = 1 (odd), remainder = frac of 23 bits.
    // Subnormal input ≥ 2^-127 (frac ≥ 2^22): q = 1 at 2^-127, remainder =
    // frac − 2^22 of 22 bits. Anything smaller becomes code 0 (2^-127).
    let sub = field == 0;
    let rem = if sub {
        frac.wrapping_sub(1 << 22)
    } else {
        frac
    };
    let bits: u32 = if sub { 22 } else { 23 };
    let half = 1u32 << (bits - 1);
    // q = 1 is odd, so ties go up in both nearest modes.
    let nearest_inc = rem >= half;
    let directed_inc = (rem != 0) & (c.directed_neg == 0); // only positives get here
    let stoch_inc = rand < (rem << (32 - bits));
    let inc = (c.nearest & nearest_inc) | (c.directed & directed_inc) | (c.stochastic & stoch_inc);
    let normal = field + inc as u32;
    let subnormal = if frac >= 1 << 22 { inc as u32 } else { 0 };
    let code = if sub { subnormal } else { normal };
    let code = if code > c.max_mag {
        c.overflow_code[0]
    } else {
        code
    };
    let code = if field == 255 && frac == 0 {
        c.inf_code[0]
    } else {
        code
    };
    // NaN, zero and negatives (−Inf included) are NaN.
    if (field == 255 && frac != 0) || neg != 0 || a == 0 {
        c.nan_code[0]
    } else {
        code
    }
}

/// How input elements become float32 bits.
pub trait Load: Copy + Send + Sync {
    /// Storage type.
    type Elem: Copy + Send + Sync;
    /// The element's float32 bits (exact).
    fn bits(e: Self::Elem) -> u32;
}

/// float32 input.
#[derive(Clone, Copy)]
pub struct LoadF32;
impl Load for LoadF32 {
    type Elem = f32;
    #[inline(always)]
    fn bits(e: f32) -> u32 {
        e.to_bits()
    }
}

/// bfloat16 input (bit patterns).
#[derive(Clone, Copy)]
pub struct LoadBf16;
impl Load for LoadBf16 {
    type Elem = u16;
    #[inline(always)]
    fn bits(e: u16) -> u32 {
        (e as u32) << 16
    }
}

/// float16 input (bit patterns).
#[derive(Clone, Copy)]
pub struct LoadF16;
impl Load for LoadF16 {
    type Elem = u16;
    #[inline(always)]
    fn bits(e: u16) -> u32 {
        f16_to_f32(e).to_bits()
    }
}

/// How codes are written out.
pub trait Store: Copy + Send + Sync {
    /// Output element type.
    type Out: Copy + Send + Sync + Default;
    /// The output for `code`.
    fn put(&self, code: u32) -> Self::Out;
}

/// Codes of ≤ 8-bit formats.
#[derive(Clone, Copy)]
pub struct StoreU8;
impl Store for StoreU8 {
    type Out = u8;
    #[inline(always)]
    fn put(&self, code: u32) -> u8 {
        code as u8
    }
}

/// Codes of 9–16-bit formats.
#[derive(Clone, Copy)]
pub struct StoreU16;
impl Store for StoreU16 {
    type Out = u16;
    #[inline(always)]
    fn put(&self, code: u32) -> u16 {
        code as u16
    }
}

/// Decoded float32 values of ≤ 8-bit formats, by table (built from the
/// reference decoder, so it is exact by construction).
#[derive(Clone, Copy)]
pub struct DecodeTable {
    table: [u32; 256],
}

impl DecodeTable {
    /// The table of `format` (≤ 8 bits); codes past 2^bits decode as 0.
    pub fn new(format: &Format) -> DecodeTable {
        let mut table = [0u32; 256];
        for (code, slot) in table.iter_mut().enumerate().take(1 << format.bits()) {
            *slot = reference::decode_f32_bits(format, code as u32);
        }
        DecodeTable { table }
    }

    /// The float32 bits of `code`.
    #[inline(always)]
    pub fn get(&self, code: u32) -> u32 {
        self.table[(code & 0xff) as usize]
    }
}

impl Store for DecodeTable {
    type Out = f32;
    #[inline(always)]
    fn put(&self, code: u32) -> f32 {
        f32::from_bits(self.get(code))
    }
}

/// Decoded float32 values of 9–16-bit formats, by arithmetic.
#[derive(Clone, Copy)]
pub struct DecodeArith {
    m: u32,
    sign_shift: u32,
    mag_mask: u32,
    field_ones: u32,
    rebias: i32,
    sub_scale: f32,
    special: Special,
    sign_bit: u32,
}

impl DecodeArith {
    /// The decoder of `format` (needs [`supports`] and more than 8 bits).
    pub fn new(format: &Format) -> DecodeArith {
        let m = format.mantissa_bits;
        DecodeArith {
            m,
            sign_shift: format.bits() - 1,
            mag_mask: format.magnitude_mask(),
            field_ones: format.magnitude_mask() >> m,
            rebias: 127 - format.bias,
            sub_scale: super::format::exp2i(format.emin() - m as i32) as f32,
            special: format.special,
            sign_bit: format.sign_bit(),
        }
    }

    /// The float32 bits of `code`.
    #[inline(always)]
    pub fn get(&self, code: u32) -> u32 {
        let sign = ((code >> self.sign_shift) & 1) << 31;
        let mag = code & self.mag_mask;
        let field = mag >> self.m;
        let mant = mag & ((1 << self.m) - 1);
        let normal = (((field as i32 + self.rebias) as u32) << 23) | (mant << (23 - self.m));
        let sub = (mant as f32 * self.sub_scale).to_bits();
        let value = if field == 0 { sub } else { normal };
        let (is_special, special) = match self.special {
            // Inf, or NaN with its payload kept.
            Special::Ieee => (
                field == self.field_ones,
                0x7f80_0000 | (mant << (23 - self.m)),
            ),
            Special::Fn => (mag == self.mag_mask, 0x7fc0_0000),
            Special::Fnuz => (code == self.sign_bit, 0x7fc0_0000),
            _ => (false, 0),
        };
        sign | if is_special { special } else { value }
    }
}

impl Store for DecodeArith {
    type Out = f32;
    #[inline(always)]
    fn put(&self, code: u32) -> f32 {
        f32::from_bits(self.get(code))
    }
}

struct EncodeKernel<'a, L: Load, S: Store> {
    src: &'a [L::Elem],
    out: &'a mut [S::Out],
    base: u64,
    lanes: &'a Lanes,
    store: S,
}

impl<L: Load, S: Store> Kernel for EncodeKernel<'_, L, S> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let c = *self.lanes;
        let store = self.store;
        let mut index = self.base;
        let mut src = self.src.chunks_exact(LANES);
        let mut out = self.out.chunks_exact_mut(LANES);
        for (s, o) in (&mut src).zip(&mut out) {
            let mut rand = [0u32; LANES];
            if c.stochastic {
                for i in 0..LANES {
                    rand[i] = random_u32(c.key, index + i as u64);
                }
            }
            let mut codes = [0u32; LANES];
            if c.e8m0 {
                for i in 0..LANES {
                    codes[i] = encode_lane_e8m0(&c, L::bits(s[i]), rand[i]);
                }
            } else {
                for i in 0..LANES {
                    codes[i] = encode_lane(&c, L::bits(s[i]), rand[i]);
                }
            }
            for i in 0..LANES {
                o[i] = store.put(codes[i]);
            }
            index += LANES as u64;
        }
        for (s, o) in src.remainder().iter().zip(out.into_remainder()) {
            let rand = if c.stochastic {
                random_u32(c.key, index)
            } else {
                0
            };
            let code = if c.e8m0 {
                encode_lane_e8m0(&c, L::bits(*s), rand)
            } else {
                encode_lane(&c, L::bits(*s), rand)
            };
            *o = store.put(code);
            index += 1;
        }
    }
}

/// Encodes `src` into `out` (same length) with the fast codec, in parallel.
/// `first_index` is the element index of `src[0]` for stochastic rounding.
pub fn encode_into<L: Load, S: Store>(
    codec: &Codec,
    src: &[L::Elem],
    out: &mut [S::Out],
    store: S,
    first_index: u64,
) {
    debug_assert!(supports(&codec.format));
    crate::threads::init_pool();
    // The leanest lane that is exact for this codec.
    if let Some(bf16) = Bf16Rne::new(codec) {
        return nearest::encode_into::<L, S, Bf16Rne>(&bf16, src, out, store);
    }
    if let Some(rne) = RneSymmetric::new(codec) {
        return nearest::encode_into::<L, S, RneSymmetric>(&rne, src, out, store);
    }
    if let Some(rne) = Rne::new(codec) {
        return nearest::encode_into::<L, S, Rne>(&rne, src, out, store);
    }
    if let Some(e8m0) = E8m0Nearest::new(codec) {
        return nearest::encode_into::<L, S, E8m0Nearest>(&e8m0, src, out, store);
    }
    let lanes = Lanes::new(codec);
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (o, s))| {
            simd::dispatch(EncodeKernel::<L, S> {
                src: s,
                out: o,
                base: first_index + (chunk * CHUNK) as u64,
                lanes: &lanes,
                store,
            })
        });
}

struct DecodeKernel<'a, C: Copy, S: Store> {
    codes: &'a [C],
    out: &'a mut [f32],
    store: S,
}

impl<C: Copy + Into<u32>, S: Store<Out = f32>> Kernel for DecodeKernel<'_, C, S> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (o, &c) in self.out.iter_mut().zip(self.codes) {
            *o = self.store.put(c.into());
        }
    }
}

/// Decodes `codes` into `out` in parallel.
pub fn decode_into<C: Copy + Into<u32> + Send + Sync, S: Store<Out = f32>>(
    codes: &[C],
    out: &mut [f32],
    store: S,
) {
    crate::threads::init_pool();
    out.par_chunks_mut(CHUNK)
        .zip(codes.par_chunks(CHUNK))
        .for_each(|(o, c)| {
            simd::dispatch(DecodeKernel {
                codes: c,
                out: o,
                store,
            })
        });
}
