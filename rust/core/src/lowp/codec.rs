//! Rounding and overflow options, resolved once per call into a [`Codec`]
//! that both the reference and the fast encoder read.

use super::format::{Format, Special};
use crate::error::{CoreError, Result};

/// The rounding operator R: ℝ → F of Def 3.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// Nearest, ties to the even code (IEEE default; what ml_dtypes does).
    NearestEven,
    /// Nearest, ties away from zero.
    NearestAway,
    /// Truncate the magnitude.
    TowardZero,
    /// Toward −∞.
    Down,
    /// Toward +∞.
    Up,
    /// Up with probability (|x| − lo)/(hi − lo), quantised to 32 bits, from
    /// a counter-based hash of (seed, element index): unbiased to 2^−32 of a
    /// quantum and the same whatever the thread count.
    Stochastic,
}

impl Rounding {
    /// Parses the `rounding=` option.
    pub fn parse(name: &str) -> Result<Rounding> {
        Ok(match name {
            "nearest_even" => Rounding::NearestEven,
            "nearest_away" => Rounding::NearestAway,
            "toward_zero" => Rounding::TowardZero,
            "down" => Rounding::Down,
            "up" => Rounding::Up,
            "stochastic" => Rounding::Stochastic,
            other => {
                return Err(CoreError::Value(format!(
                    "rounding must be one of \"nearest_even\", \"nearest_away\", \"toward_zero\", \"down\", \"up\", \"stochastic\", got {other:?}"
                )))
            }
        })
    }
}

/// What a finite value beyond the largest finite one becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// ±max.
    Saturate,
    /// ±Inf (formats with Inf only).
    Inf,
    /// NaN (formats with NaN only).
    Nan,
}

impl Overflow {
    /// Parses the `overflow=` option (`None` is the format's ml_dtypes default).
    pub fn parse(name: &str) -> Result<Overflow> {
        Ok(match name {
            "saturate" => Overflow::Saturate,
            "inf" => Overflow::Inf,
            "nan" => Overflow::Nan,
            other => {
                return Err(CoreError::Value(format!(
                    "overflow must be \"saturate\", \"inf\", \"nan\" or None, got {other:?}"
                )))
            }
        })
    }

    /// What ml_dtypes' `astype` does for `format`: Inf where the format has
    /// it, else NaN where it has one, else saturation.
    pub fn default_for(format: &Format) -> Overflow {
        match format.special {
            Special::Ieee => Overflow::Inf,
            Special::Fn | Special::Fnuz | Special::E8m0 => Overflow::Nan,
            Special::None => Overflow::Saturate,
        }
    }
}

/// Options of one encode/round call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// The rounding operator.
    pub rounding: Rounding,
    /// Overflow behaviour; `None` is the format's ml_dtypes default.
    pub overflow: Option<Overflow>,
    /// Seed of stochastic rounding (ignored by the other modes).
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rounding: Rounding::NearestEven,
            overflow: None,
            seed: 0,
        }
    }
}

/// A format with its options resolved into the codes each special case
/// produces. Arrays indexed `[sign]` hold the code for a positive (0) and a
/// negative (1) input.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    /// The target format.
    pub format: Format,
    /// The rounding operator.
    pub rounding: Rounding,
    /// The resolved overflow behaviour.
    pub overflow: Overflow,
    /// Stochastic-rounding key derived from the seed.
    pub key: [u32; 2],
    /// Shift of the sign bit within a code (0 for unsigned formats).
    pub sign_shift: u32,
    /// Magnitude code of the largest finite value.
    pub max_mag: u32,
    /// Code of a finite value that overflows.
    pub overflow_code: [u32; 2],
    /// Code of ±Inf input.
    pub inf_code: [u32; 2],
    /// Code of NaN input (unless the format keeps payloads).
    pub nan_code: [u32; 2],
    /// Code of a negative value that rounds to zero (+0 in fnuz formats).
    pub neg_zero: u32,
}

impl Codec {
    /// Resolves `options` for `format`; an overflow mode the format cannot
    /// represent is an error.
    pub fn new(format: Format, options: Options) -> Result<Codec> {
        let overflow = options.overflow.unwrap_or(Overflow::default_for(&format));
        let name = describe(&format);
        match overflow {
            Overflow::Inf if !format.has_inf() => {
                return Err(CoreError::Value(format!(
                    "overflow=\"inf\" is impossible for {name}, which has no infinity; use \"saturate\"{}",
                    if format.has_nan() { " or \"nan\"" } else { "" }
                )))
            }
            Overflow::Nan if !format.has_nan() => {
                return Err(CoreError::Value(format!(
                    "overflow=\"nan\" is impossible for {name}, which has no NaN; use \"saturate\""
                )))
            }
            _ => {}
        }
        let sign_bit = format.sign_bit();
        let sign_shift = if format.signed() {
            format.bits() - 1
        } else {
            0
        };
        let max_mag = format.max_code();
        let with_sign = |code: u32| [code, code | sign_bit];
        let nan_code = match format.special {
            // ml_dtypes writes "no NaN" formats' NaN as a zero whose sign is
            // the opposite of the NaN's (a quirk kept for bit-exactness).
            Special::None => [sign_bit, 0],
            Special::Fnuz | Special::E8m0 => {
                let c = format.nan_code().unwrap_or(0);
                [c, c]
            }
            _ => with_sign(format.nan_code().unwrap_or(0)),
        };
        let overflow_code = match overflow {
            Overflow::Saturate => with_sign(max_mag),
            Overflow::Inf => with_sign(format.inf_code().unwrap_or(0)),
            Overflow::Nan => nan_code_signed(&format),
        };
        let overflow_code = if format.special == Special::E8m0 {
            [overflow_code[0], 0xFF] // negatives are NaN in an unsigned format
        } else {
            overflow_code
        };
        let inf_code = match format.inf_code() {
            Some(c) => with_sign(c),
            None => overflow_code,
        };
        let neg_zero = if format.special == Special::Fnuz {
            0
        } else {
            sign_bit
        };
        Ok(Codec {
            format,
            rounding: options.rounding,
            overflow,
            key: seed_key(options.seed),
            sign_shift,
            max_mag,
            overflow_code,
            inf_code,
            nan_code,
            neg_zero,
        })
    }

    /// The random 32-bit draw stochastic rounding uses for element `index`.
    #[inline(always)]
    pub fn random(&self, index: u64) -> u32 {
        random_u32(self.key, index)
    }
}

fn nan_code_signed(format: &Format) -> [u32; 2] {
    let c = format.nan_code().unwrap_or(0);
    match format.special {
        Special::Fnuz | Special::E8m0 => [c, c],
        _ => [c, c | format.sign_bit()],
    }
}

/// A short description of a format for error messages.
pub fn describe(format: &Format) -> String {
    for (name, e, m, bias, special) in super::format::PREDEFINED {
        if (e, m, bias, special)
            == (
                format.exponent_bits,
                format.mantissa_bits,
                format.bias,
                format.special,
            )
        {
            return name.to_string();
        }
    }
    format!(
        "FloatFormat(e{}m{}, bias={}, special={:?})",
        format.exponent_bits,
        format.mantissa_bits,
        format.bias,
        format.special.name()
    )
}

/// lowbias32 (C. Wellons' integer hash): a bijection on u32 with strong
/// avalanche, cheap enough to vectorise (two multiplies).
#[inline(always)]
pub fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The key stochastic rounding derives from a 64-bit seed.
pub fn seed_key(seed: u64) -> [u32; 2] {
    [
        lowbias32(seed as u32 ^ 0x243f_6a88),
        lowbias32((seed >> 32) as u32 ^ 0x85a3_08d3),
    ]
}

/// A uniform 32-bit draw that depends only on the key and the element index
/// (counter-based, so any split of the work over threads gives the same
/// numbers).
#[inline(always)]
pub fn random_u32(key: [u32; 2], index: u64) -> u32 {
    let hi = ((index >> 32) as u32).wrapping_mul(0x9e37_79b9);
    lowbias32(lowbias32(index as u32 ^ key[0]) ^ key[1] ^ hi)
}
