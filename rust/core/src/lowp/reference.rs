//! The scalar reference codec: exact integer arithmetic on the input's
//! significand, one element at a time. It is the specification the fast
//! codec is tested against; float64 input is always encoded here, so it is
//! rounded once, directly (no detour through float32).

use super::codec::{Codec, Rounding};
use super::format::Special;

/// Encodes one float32 (NaN payloads read from its own bits).
pub fn encode_f32(codec: &Codec, x: f32, index: u64) -> u32 {
    if x.is_nan() {
        let bits = x.to_bits();
        return nan_code(codec, bits >> 31 != 0, (bits & 0x7f_ffff) as u64, 23);
    }
    encode_f64_inner(codec, x as f64, index)
}

/// Encodes one float64.
pub fn encode_f64(codec: &Codec, x: f64, index: u64) -> u32 {
    if x.is_nan() {
        let bits = x.to_bits();
        return nan_code(codec, bits >> 63 != 0, bits & ((1 << 52) - 1), 52);
    }
    encode_f64_inner(codec, x, index)
}

/// The NaN code for a NaN input with the given sign and payload (a
/// `payload_bits`-wide mantissa).
fn nan_code(codec: &Codec, negative: bool, payload: u64, payload_bits: u32) -> u32 {
    let f = &codec.format;
    if f.nan_payload {
        // numpy's float16: keep the top payload bits, but stay a NaN.
        let m = f.mantissa_bits;
        let kept = ((payload >> (payload_bits - m)) as u32).max(1);
        let exp_ones = f.magnitude_mask() & !((1 << m) - 1);
        return ((negative as u32) << codec.sign_shift) | exp_ones | kept;
    }
    codec.nan_code[negative as usize]
}

fn encode_f64_inner(codec: &Codec, v: f64, index: u64) -> u32 {
    let f = &codec.format;
    let neg = v.is_sign_negative();
    let s = neg as usize;
    if v.is_infinite() {
        return codec.inf_code[s];
    }
    let e8m0 = f.special == Special::E8m0;
    if e8m0 && (neg || v == 0.0) {
        return codec.nan_code[0]; // no zero and no sign: ml_dtypes gives NaN
    }
    if v == 0.0 {
        return if neg { codec.neg_zero } else { 0 };
    }
    // |v| = sig · 2^k exactly.
    let bits = v.abs().to_bits();
    let biased = (bits >> 52) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (sig, k) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    let e_x = k + 63 - sig.leading_zeros() as i32; // floor(log2 |v|)
    let m = f.mantissa_bits as i32;
    let emin = f.emin();
    // The binade that sets the quantum: the value's own, or the subnormal
    // one (e8m0 has no subnormals: every binade has its own quantum).
    let top = if e8m0 { e_x } else { e_x.max(emin) };
    let shift = top - m - k; // bits of sig below the quantum
    let mut n;
    if shift <= 0 {
        n = sig << (-shift) as u32; // exact; n < 2^(m+1)
    } else {
        let (q, rem) = if shift >= 64 {
            (0, sig)
        } else {
            (sig >> shift, sig & ((1u64 << shift) - 1))
        };
        n = q;
        let rand = if codec.rounding == Rounding::Stochastic {
            codec.random(index)
        } else {
            0
        };
        n += increment(codec.rounding, q, rem, shift as u32, neg, rand) as u64;
    }
    if e8m0 {
        // n is 1, or 2 after rounding up into the next power of two.
        let code = (top + 127) as i64 + n as i64 - 1;
        if code < 0 {
            return 0; // below 2^-127 there is nothing smaller: ml_dtypes gives 2^-127
        }
        if code > codec.max_mag as i64 {
            return codec.overflow_code[0];
        }
        return code as u32;
    }
    // Normal: code = (biased exponent << m) + n − 2^m; a carry of n to
    // 2^(m+1) moves into the exponent on its own. Subnormal: code = n.
    let mag = n + (((top - emin) as u64) << m);
    if mag > codec.max_mag as u64 {
        return codec.overflow_code[s];
    }
    if mag == 0 {
        return if neg { codec.neg_zero } else { 0 };
    }
    (mag as u32) | ((neg as u32) << codec.sign_shift)
}

/// Whether to add one quantum to the truncated magnitude `q`, given the
/// remainder `rem` of `shift` bits that was cut off.
#[inline]
fn increment(rounding: Rounding, q: u64, rem: u64, shift: u32, neg: bool, rand: u32) -> bool {
    // rem < 2^shift; compare with half = 2^(shift−1) without overflowing.
    let (above, tie) = if shift > 64 {
        (false, false)
    } else {
        let half = 1u128 << (shift - 1);
        ((rem as u128) > half, (rem as u128) == half)
    };
    match rounding {
        Rounding::NearestEven => above || (tie && q & 1 == 1),
        Rounding::NearestAway => above || tie,
        Rounding::TowardZero => false,
        Rounding::Up => rem != 0 && !neg,
        Rounding::Down => rem != 0 && neg,
        Rounding::Stochastic => (rand as u64) < fraction32(rem, shift),
    }
}

/// floor(rem / 2^shift · 2^32): the probability of rounding up, in 32 bits.
#[inline]
pub fn fraction32(rem: u64, shift: u32) -> u64 {
    if shift <= 32 {
        rem << (32 - shift)
    } else if shift - 32 >= 64 {
        0
    } else {
        rem >> (shift - 32)
    }
}

/// Decodes one code to float32 bits. NaN codes of formats of ≤ 8 bits give
/// the canonical quiet NaN with the code's sign (as ml_dtypes does); wider
/// IEEE formats keep the payload (as numpy's float16 and ml_dtypes' bfloat16
/// do), other wide formats give the canonical NaN.
pub fn decode_f32_bits(codec_format: &super::format::Format, code: u32) -> u32 {
    let f = codec_format;
    if f.is_nan_code(code) {
        let sign = if code & f.sign_bit() != 0 {
            0x8000_0000
        } else {
            0
        };
        if f.bits() <= 8 || f.special != Special::Ieee {
            return sign | 0x7fc0_0000;
        }
        let payload = code & ((1 << f.mantissa_bits) - 1);
        return sign | 0x7f80_0000 | (payload << (23 - f.mantissa_bits));
    }
    (f.value(code) as f32).to_bits()
}
