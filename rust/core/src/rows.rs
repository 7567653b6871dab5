//! Borrowed row-major matrices of next-token scores in any supported dtype.

use crate::error::{CoreError, Result};
use crate::simd::F16c;

/// Storage type of a row matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// IEEE binary16, stored as its bit pattern.
    F16,
    /// bfloat16, stored as its bit pattern.
    Bf16,
}

impl Dtype {
    /// The numpy-style name of the dtype.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }
}

/// A borrowed C-contiguous `rows × vocab` matrix.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// float32 data.
    F32(&'a [f32], usize),
    /// float64 data.
    F64(&'a [f64], usize),
    /// float16 bit patterns.
    F16(&'a [u16], usize),
    /// bfloat16 bit patterns.
    Bf16(&'a [u16], usize),
}

impl<'a> Rows<'a> {
    /// Wraps `data` as rows of `vocab` elements, checking the length.
    pub fn new_f32(data: &'a [f32], vocab: usize) -> Result<Self> {
        check_len(data.len(), vocab)?;
        Ok(Rows::F32(data, vocab))
    }
    /// Wraps float64 `data` as rows of `vocab` elements.
    pub fn new_f64(data: &'a [f64], vocab: usize) -> Result<Self> {
        check_len(data.len(), vocab)?;
        Ok(Rows::F64(data, vocab))
    }
    /// Wraps 16-bit patterns (`dtype` must be F16 or Bf16) as rows.
    pub fn new_u16(data: &'a [u16], vocab: usize, dtype: Dtype) -> Result<Self> {
        check_len(data.len(), vocab)?;
        match dtype {
            Dtype::F16 => Ok(Rows::F16(data, vocab)),
            Dtype::Bf16 => Ok(Rows::Bf16(data, vocab)),
            other => Err(CoreError::Dtype(format!(
                "16-bit data must be float16 or bfloat16, not {}",
                other.name()
            ))),
        }
    }
    /// Elements per row.
    pub fn vocab(&self) -> usize {
        match *self {
            Rows::F32(_, v) | Rows::F64(_, v) | Rows::F16(_, v) | Rows::Bf16(_, v) => v,
        }
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        let len = match *self {
            Rows::F32(d, _) => d.len(),
            Rows::F64(d, _) => d.len(),
            Rows::F16(d, _) | Rows::Bf16(d, _) => d.len(),
        };
        if self.vocab() == 0 {
            0
        } else {
            len / self.vocab()
        }
    }
    /// The storage dtype.
    pub fn dtype(&self) -> Dtype {
        match self {
            Rows::F32(..) => Dtype::F32,
            Rows::F64(..) => Dtype::F64,
            Rows::F16(..) => Dtype::F16,
            Rows::Bf16(..) => Dtype::Bf16,
        }
    }
    /// Row `r` widened to float64 (used by the reference kernels).
    pub fn row_f64(&self, r: usize, out: &mut Vec<f64>) {
        let v = self.vocab();
        out.clear();
        match *self {
            Rows::F32(d, _) => out.extend(d[r * v..(r + 1) * v].iter().map(|&x| x as f64)),
            Rows::F64(d, _) => out.extend_from_slice(&d[r * v..(r + 1) * v]),
            Rows::F16(d, _) => {
                out.extend(d[r * v..(r + 1) * v].iter().map(|&x| f16_to_f32(x) as f64))
            }
            Rows::Bf16(d, _) => {
                out.extend(d[r * v..(r + 1) * v].iter().map(|&x| bf16_to_f32(x) as f64))
            }
        }
    }
}

fn check_len(len: usize, vocab: usize) -> Result<()> {
    if vocab == 0 {
        if len == 0 {
            return Ok(());
        }
        return Err(CoreError::Shape(format!(
            "vocab size is 0 but data has {len} elements"
        )));
    }
    if !len.is_multiple_of(vocab) {
        return Err(CoreError::Shape(format!(
            "data of {len} elements is not a whole number of rows of {vocab}"
        )));
    }
    Ok(())
}

/// bfloat16 bits to float32 (exact).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// float16 bits to float32 (exact), branch-free so that it vectorises.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    // Shift exponent and mantissa into float32 position, then rescale by
    // 2^112 so the exponent bias 15 becomes 127. Subnormals come out right
    // from the multiply; inf/NaN (exponent 31) are patched to exponent 255.
    let h = bits as u32;
    let sign = (h & 0x8000) << 16;
    let magnitude = (h & 0x7fff) << 13;
    let scaled = f32::from_bits(magnitude) * f32::from_bits(0x7780_0000); // 2^112
    let is_special = (h & 0x7c00) == 0x7c00;
    let special = magnitude | 0x7f80_0000;
    let body = if is_special {
        special
    } else {
        scaled.to_bits()
    };
    f32::from_bits(sign | body)
}

/// Widens `N` float16 values (bit patterns) to float32, exactly: with the
/// F16C conversion instruction when given the proof that it may run, else
/// with [`f16_to_f32`]. The caller detects once ([`F16c::detect`]), per row
/// rather than per lane group: a check inside a hot loop is a load that
/// keeps LLVM from holding the loop's accumulators in registers. Call it
/// from code that [`crate::simd::dispatch`] inlines, so that the
/// instruction is compiled in.
#[inline(always)]
pub fn f16_array_to_f32<const N: usize>(src: &[u16; N], out: &mut [f32; N], f16c: Option<F16c>) {
    #[cfg(target_arch = "x86_64")]
    {
        if N.is_multiple_of(8) && f16c.is_some() {
            use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
            for c in 0..N / 8 {
                // SAFETY: the CPU has AVX2 and F16C (an F16c exists only
                // where F16c::detect found them); c·8 + 8 ≤ N, so
                // both the 16-byte load and the 32-byte store stay inside
                // the arrays.
                unsafe {
                    let bits = _mm_loadu_si128(src.as_ptr().add(c * 8) as *const __m128i);
                    _mm256_storeu_ps(out.as_mut_ptr().add(c * 8), _mm256_cvtph_ps(bits));
                }
            }
            return;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = f16c;
    for i in 0..N {
        out[i] = f16_to_f32(src[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_reference(bits: u16) -> f64 {
        let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
        let exp = ((bits >> 10) & 0x1f) as i32;
        let man = (bits & 0x3ff) as f64;
        if exp == 0 {
            sign * man * 2f64.powi(-24)
        } else if exp == 31 {
            if man == 0.0 {
                sign * f64::INFINITY
            } else {
                f64::NAN
            }
        } else {
            sign * (1.0 + man / 1024.0) * 2f64.powi(exp - 15)
        }
    }

    #[test]
    fn f16_conversion_is_exact_for_every_pattern() {
        for bits in 0..=u16::MAX {
            let got = f16_to_f32(bits) as f64;
            let want = f16_reference(bits);
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got, want, "{bits:#06x}");
                assert_eq!(
                    got.is_sign_negative(),
                    want.is_sign_negative(),
                    "{bits:#06x}"
                );
            }
        }
    }

    #[test]
    fn f16_arrays_widen_like_single_values() {
        let mut src = [0u16; 64];
        for start in (0..=u16::MAX as usize).step_by(64) {
            for (i, s) in src.iter_mut().enumerate() {
                *s = (start + i) as u16;
            }
            // both the instruction (where the CPU has it) and the portable path
            for f16c in [F16c::detect(), None] {
                let mut out = [0.0f32; 64];
                f16_array_to_f32(&src, &mut out, f16c);
                for i in 0..64 {
                    let want = f16_to_f32(src[i]);
                    assert!(
                        out[i].to_bits() == want.to_bits() || (out[i].is_nan() && want.is_nan()),
                        "{:#06x} (f16c: {})",
                        src[i],
                        f16c.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_is_the_top_half() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xff80), f32::NEG_INFINITY);
    }
}
