//! The nearest-rounding encoders: the default mode, and the one whose
//! speed matters. Unlike the general lane encoder in `fast.rs` they need no
//! per-lane shift amounts, sign-indexed tables or mode flags, so each is a
//! couple of dozen vector ops per lane group and the codec is memory-bound.

use rayon::prelude::*;

use super::codec::{Codec, Rounding};
use super::fast::{supports, Load, Store, CHUNK};
use super::format::Special;
use crate::simd::{self, Kernel};

/// Lane constants of the round-to-nearest-even encoder, the default mode
/// and the one that matters for speed: it needs no per-lane shift amounts,
/// so it is a dozen plain vector ops per lane group.
#[derive(Clone, Copy)]
pub struct Rne {
    s: u32,
    round_bias: u32,
    tie_bit: u32,
    rebias: u32,
    normal_min: u32,
    magic: f32,
    m: u32,
    max_mag: u32,
    sign_shift: u32,
    overflow_code: [u32; 2],
    inf_code: [u32; 2],
    nan_code: [u32; 2],
    neg_zero: u32,
    payload_nan: bool,
    exp_ones: u32,
}

impl Rne {
    /// The constants of `codec`, or `None` unless it rounds to nearest-even
    /// into a format other than e8m0 that [`supports`] takes.
    pub fn new(codec: &Codec) -> Option<Rne> {
        let f = &codec.format;
        if codec.rounding != Rounding::NearestEven
            || f.special == Special::E8m0
            || !supports(f)
            || f.mantissa_bits > 22
        {
            return None;
        }
        let m = f.mantissa_bits;
        let s = 23 - m;
        // A tie goes up when the lowest kept significand bit is odd. With
        // m ≥ 1 that is bit s of the float32 bits; with m = 0 the only
        // significand bit is the implicit leading 1, so every normal tie goes
        // up (to the larger power of two, as the reference codec and
        // ml_dtypes' float8_e8m0fnu do). Bit s is then float32's lowest
        // exponent bit, whose parity says nothing about the significand, so
        // it is masked out and the bias made a full half.
        let (round_bias, tie_bit) = if m == 0 {
            (1 << (s - 1), 0)
        } else {
            ((1 << (s - 1)) - 1, 1)
        };
        Some(Rne {
            s,
            round_bias,
            tie_bit,
            rebias: ((127 - f.bias) as u32).wrapping_shl(m),
            normal_min: ((127 + f.emin()) as u32) << 23,
            // Its ulp is the format's subnormal quantum 2^(emin−m).
            magic: f32::from_bits(((127 + f.emin() - m as i32 + 23) as u32) << 23),
            m,
            max_mag: codec.max_mag,
            sign_shift: codec.sign_shift,
            overflow_code: codec.overflow_code,
            inf_code: codec.inf_code,
            nan_code: codec.nan_code,
            neg_zero: codec.neg_zero,
            payload_nan: f.nan_payload,
            exp_ones: f.magnitude_mask() & !((1 << m) - 1),
        })
    }
}

/// The code magnitude of the float32 magnitude bits `a` rounded to nearest
/// even, before overflow, Inf and NaN are sorted out (see
/// [`encode_lane_rne`]).
#[inline(always)]
fn rounded_magnitude(c: &Rne, a: u32) -> u32 {
    let normal = (a + c.round_bias + ((a >> c.s) & c.tie_bit)) >> c.s;
    let normal = normal.wrapping_sub(c.rebias);
    let sub = (f32::from_bits(a) + c.magic)
        .to_bits()
        .wrapping_sub(c.magic.to_bits());
    if a < c.normal_min {
        sub
    } else {
        normal
    }
}

/// [`encode_lane`] for round-to-nearest-even, as plain bit manipulation:
/// in the format's normal range, adding half a quantum minus one plus the
/// lowest kept significand bit and shifting rounds ties to even (a carry
/// moves into the exponent as it should; with no mantissa bits the kept bit
/// is the implicit 1, see [`Rne::new`]); below it, adding `magic` (whose ulp is the
/// subnormal quantum) makes the FPU round, and the difference of the bit
/// patterns counts quanta. Everything else is compare-and-select.
#[inline(always)]
pub fn encode_lane_rne(c: &Rne, x: u32) -> u32 {
    let neg = x >> 31;
    let a = x & 0x7fff_ffff;
    let mag = rounded_magnitude(c, a);
    let zero = if neg != 0 { c.neg_zero } else { 0 };
    let signed = mag | (neg << c.sign_shift);
    let code = if mag == 0 { zero } else { signed };
    let overflow = if neg != 0 {
        c.overflow_code[1]
    } else {
        c.overflow_code[0]
    };
    let code = if mag > c.max_mag { overflow } else { code };
    let inf = if neg != 0 {
        c.inf_code[1]
    } else {
        c.inf_code[0]
    };
    let nan = if c.payload_nan {
        (neg << c.sign_shift) | c.exp_ones | ((a & 0x7f_ffff) >> (23 - c.m)).max(1)
    } else if neg != 0 {
        c.nan_code[1]
    } else {
        c.nan_code[0]
    };
    let code = if a == 0x7f80_0000 { inf } else { code };
    if a > 0x7f80_0000 {
        nan
    } else {
        code
    }
}

/// [`Rne`] for formats whose codes are sign-symmetric: negating x flips
/// the sign bit of its code and nothing else, for zero, overflow, Inf and
/// NaN alike (every signed format except the fnuz ones; ml_dtypes' NaN of a
/// format without NaN, a zero of the opposite sign, is symmetric too). The
/// lane then finds the code of |x| and XORs the sign in once, instead of
/// choosing each special code by sign.
#[derive(Clone, Copy)]
pub struct RneSymmetric(Rne);

impl RneSymmetric {
    /// The lane of `codec`, or `None` unless [`Rne::new`] takes it and its
    /// codes are sign-symmetric.
    pub fn new(codec: &Codec) -> Option<RneSymmetric> {
        let rne = Rne::new(codec)?;
        let sign = codec.format.sign_bit();
        let flips = |pair: [u32; 2]| pair[1] == pair[0] ^ sign && pair[0] & sign == 0;
        let symmetric = codec.format.signed()
            && codec.neg_zero == sign
            && flips(codec.overflow_code)
            && flips(codec.inf_code)
            && (rne.payload_nan || codec.nan_code[1] == codec.nan_code[0] ^ sign);
        symmetric.then_some(RneSymmetric(rne))
    }
}

impl LaneCode for RneSymmetric {
    #[inline(always)]
    fn code(&self, x: u32) -> u32 {
        let c = &self.0;
        let a = x & 0x7fff_ffff;
        let mag = rounded_magnitude(c, a);
        let mag = if mag > c.max_mag {
            c.overflow_code[0]
        } else {
            mag
        };
        let mag = if a == 0x7f80_0000 { c.inf_code[0] } else { mag };
        let nan = if c.payload_nan {
            c.exp_ones | ((a & 0x7f_ffff) >> (23 - c.m)).max(1)
        } else {
            c.nan_code[0]
        };
        let mag = if a > 0x7f80_0000 { nan } else { mag };
        mag ^ ((x >> 31) << c.sign_shift)
    }
}

/// Round-to-nearest-even into bfloat16 with overflow to Inf: the upper half
/// of float32, rounded. The exponent ranges coincide, so subnormals round
/// like normals and the largest values carry into Inf by themselves; only
/// NaN needs a case (the quiet NaN 0x7fc0 with x's sign, as ml_dtypes).
#[derive(Clone, Copy)]
pub struct Bf16Rne;

impl Bf16Rne {
    /// The lane of `codec`, or `None` unless it rounds to nearest-even into
    /// bfloat16 (float32's exponent and bias, 7 mantissa bits, IEEE
    /// specials) with overflow to Inf.
    pub fn new(codec: &Codec) -> Option<Bf16Rne> {
        let f = &codec.format;
        let bf16 = f.exponent_bits == 8
            && f.mantissa_bits == 7
            && f.bias == 127
            && f.special == Special::Ieee
            && !f.nan_payload;
        (bf16
            && codec.rounding == Rounding::NearestEven
            && codec.overflow_code == codec.inf_code
            && codec.nan_code == [0x7fc0, 0xffc0])
        .then_some(Bf16Rne)
    }
}

impl LaneCode for Bf16Rne {
    #[inline(always)]
    fn code(&self, x: u32) -> u32 {
        let high = x >> 16;
        let rounded = x.wrapping_add(0x7fff + (high & 1)) >> 16;
        let nan = (high & 0x8000) | 0x7fc0;
        if x & 0x7fff_ffff > 0x7f80_0000 {
            nan
        } else {
            rounded
        }
    }
}

/// A branch-free per-lane encoder for [`encode_into`].
pub trait LaneCode: Copy + Send + Sync {
    /// The code of the float32 bits `x`.
    fn code(&self, x: u32) -> u32;
}

impl LaneCode for Rne {
    #[inline(always)]
    fn code(&self, x: u32) -> u32 {
        encode_lane_rne(self, x)
    }
}

/// Nearest rounding into float8_e8m0fnu (ties go up in both nearest modes,
/// since q = 1 is odd): [`encode_lane_e8m0`] with the mode fixed, so that
/// no mode flag is left in the loop.
#[derive(Clone, Copy)]
pub struct E8m0Nearest {
    max_mag: u32,
    overflow: u32,
    inf: u32,
    nan: u32,
}

impl E8m0Nearest {
    /// The constants of `codec`, or `None` unless it is a nearest mode into e8m0.
    pub fn new(codec: &Codec) -> Option<E8m0Nearest> {
        let nearest = matches!(
            codec.rounding,
            Rounding::NearestEven | Rounding::NearestAway
        );
        (nearest && codec.format.special == Special::E8m0).then_some(E8m0Nearest {
            max_mag: codec.max_mag,
            overflow: codec.overflow_code[0],
            inf: codec.inf_code[0],
            nan: codec.nan_code[0],
        })
    }
}

impl LaneCode for E8m0Nearest {
    #[inline(always)]
    fn code(&self, x: u32) -> u32 {
        let a = x & 0x7fff_ffff;
        let field = a >> 23;
        let frac = a & 0x7f_ffff;
        // Subnormal input: code 1 (2^-126) from the midpoint 1.5 · 2^-127
        // (frac = 3 · 2^21) up, else code 0 (2^-127, the smallest there is);
        // normal input rounds up from half.
        let sub = (frac >= 3 << 21) as u32;
        let normal = field + (frac >= 1 << 22) as u32;
        let code = if field == 0 { sub } else { normal };
        let code = if code > self.max_mag {
            self.overflow
        } else {
            code
        };
        let code = if a == 0x7f80_0000 { self.inf } else { code };
        // NaN, zero and negatives (−Inf included) are NaN.
        if a > 0x7f80_0000 || x >> 31 != 0 || a == 0 {
            self.nan
        } else {
            code
        }
    }
}

struct NearestKernel<'a, L: Load, S: Store, E: LaneCode> {
    src: &'a [L::Elem],
    out: &'a mut [S::Out],
    rne: &'a E,
    store: S,
}

impl<L: Load, S: Store, E: LaneCode> Kernel for NearestKernel<'_, L, S, E> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let c = *self.rne;
        let store = self.store;
        let mut src = self.src.chunks_exact(RNE_BLOCK);
        let mut out = self.out.chunks_exact_mut(RNE_BLOCK);
        // Fixed-size blocks: one elementwise loop with no bounds checks,
        // which the loop vectoriser takes whole.
        for (s, o) in (&mut src).zip(&mut out) {
            let s: &[L::Elem; RNE_BLOCK] = s.try_into().unwrap();
            let o: &mut [S::Out; RNE_BLOCK] = o.try_into().unwrap();
            for i in 0..RNE_BLOCK {
                o[i] = store.put(c.code(L::bits(s[i])));
            }
        }
        for (s, o) in src.remainder().iter().zip(out.into_remainder()) {
            *o = store.put(c.code(L::bits(*s)));
        }
    }
}

/// Elements per block of the nearest-even kernel.
const RNE_BLOCK: usize = 256;

/// Encodes `src` into `out` (same length) with `lane`, in parallel.
pub fn encode_into<L: Load, S: Store, E: LaneCode>(
    lane: &E,
    src: &[L::Elem],
    out: &mut [S::Out],
    store: S,
) {
    out.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(o, s)| {
            simd::dispatch(NearestKernel::<L, S, E> {
                src: s,
                out: o,
                rne: lane,
                store,
            })
        });
}
