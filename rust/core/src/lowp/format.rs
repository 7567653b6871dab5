//! The finite formats F of the lecture's Def 3.1: sign, exponent and mantissa
//! widths, bias, and which codes are special (Inf, NaN).
//!
//! Names, biases and special encodings follow ml_dtypes (and numpy for
//! `float16`); see `shared/reference/quant-formats.md` §3.

use crate::error::{CoreError, Result};

/// Which codes of a format are not finite numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// IEEE 754 style: the all-ones exponent holds ±Inf (mantissa 0) and NaN.
    Ieee,
    /// "Finite, NaN": no Inf; only S.1…1.1…1 is NaN (float8_e4m3fn).
    Fn,
    /// "Finite, NaN, unsigned zero": no Inf, no −0; the code 1000…0 is the
    /// only NaN (float8_e4m3fnuz and friends).
    Fnuz,
    /// Every code is a finite number (float6/float4).
    None,
    /// float8_e8m0fnu: unsigned powers of two 2^(c−127), no zero, 0xFF = NaN.
    E8m0,
}

impl Special {
    /// Parses the `special=` option of a custom format.
    pub fn parse(name: &str) -> Result<Special> {
        match name {
            "ieee" => Ok(Special::Ieee),
            "fn" => Ok(Special::Fn),
            "fnuz" => Ok(Special::Fnuz),
            "none" => Ok(Special::None),
            "e8m0" => Ok(Special::E8m0),
            other => Err(CoreError::Value(format!(
                "special must be \"ieee\", \"fn\", \"fnuz\" or \"none\", got {other:?}"
            ))),
        }
    }

    /// The option's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Special::Ieee => "ieee",
            Special::Fn => "fn",
            Special::Fnuz => "fnuz",
            Special::None => "none",
            Special::E8m0 => "e8m0",
        }
    }
}

/// A binary floating-point format of at most 16 bits whose every value is
/// exactly representable in float32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Width of the exponent field.
    pub exponent_bits: u32,
    /// Width of the mantissa (fraction) field.
    pub mantissa_bits: u32,
    /// Exponent bias: a normal code with exponent field `E` is `1.M · 2^(E − bias)`.
    pub bias: i32,
    /// Which codes are Inf/NaN.
    pub special: Special,
    /// NaN inputs keep their top payload bits (numpy's float16 conversion)
    /// instead of becoming the canonical quiet NaN (ml_dtypes).
    pub nan_payload: bool,
}

/// The predefined formats: (name, exponent bits, mantissa bits, bias, special).
pub const PREDEFINED: [(&str, u32, u32, i32, Special); 13] = [
    ("float16", 5, 10, 15, Special::Ieee),
    ("bfloat16", 8, 7, 127, Special::Ieee),
    ("float8_e4m3fn", 4, 3, 7, Special::Fn),
    ("float8_e4m3fnuz", 4, 3, 8, Special::Fnuz),
    ("float8_e4m3b11fnuz", 4, 3, 11, Special::Fnuz),
    ("float8_e4m3", 4, 3, 7, Special::Ieee),
    ("float8_e5m2", 5, 2, 15, Special::Ieee),
    ("float8_e5m2fnuz", 5, 2, 16, Special::Fnuz),
    ("float8_e3m4", 3, 4, 3, Special::Ieee),
    ("float8_e8m0fnu", 8, 0, 127, Special::E8m0),
    ("float6_e2m3fn", 2, 3, 1, Special::None),
    ("float6_e3m2fn", 3, 2, 3, Special::None),
    ("float4_e2m1fn", 2, 1, 1, Special::None),
];

impl Format {
    /// A custom format `F(exponent_bits, mantissa_bits)`; `bias` defaults to
    /// `2^(e−1) − 1` (`2^(e−1)` for `fnuz`, as in ml_dtypes).
    ///
    /// Errors name the rule broken: at most 16 bits with the sign, at least
    /// one exponent bit, Ieee needs a mantissa bit (for NaN), and every value
    /// must be exactly representable in float32 (largest ≤ f32::MAX,
    /// smallest ≥ 2^−149).
    ///
    /// ```
    /// use quantdrift_core::lowp::{Format, Special};
    /// let f = Format::new(4, 3, None, Special::Fn).unwrap();
    /// assert_eq!(f.max(), 448.0);
    /// ```
    pub fn new(
        exponent_bits: u32,
        mantissa_bits: u32,
        bias: Option<i32>,
        special: Special,
    ) -> Result<Format> {
        let bad = |msg: String| Err(CoreError::Value(format!("invalid FloatFormat: {msg}")));
        if special == Special::E8m0 {
            if exponent_bits != 8 || mantissa_bits != 0 || bias.unwrap_or(127) != 127 {
                return bad("special=\"e8m0\" is only float8_e8m0fnu (8 exponent bits, 0 mantissa bits, bias 127)".into());
            }
            return Ok(Format {
                exponent_bits: 8,
                mantissa_bits: 0,
                bias: 127,
                special,
                nan_payload: false,
            });
        }
        if exponent_bits == 0 {
            return bad("exponent_bits must be at least 1 (use integer quantization for 0)".into());
        }
        if exponent_bits > 15 || mantissa_bits > 15 || 1 + exponent_bits + mantissa_bits > 16 {
            return bad(format!(
                "1 sign + {exponent_bits} exponent + {mantissa_bits} mantissa bits exceeds 16 bits"
            ));
        }
        if special == Special::Ieee && (exponent_bits < 2 || mantissa_bits < 1) {
            return bad(format!(
                "special=\"ieee\" needs exponent_bits >= 2 and mantissa_bits >= 1 (for Inf and NaN), got e{exponent_bits}m{mantissa_bits}"
            ));
        }
        if special == Special::Fn && exponent_bits + mantissa_bits < 2 {
            return bad("special=\"fn\" needs exponent_bits + mantissa_bits >= 2 so that a finite nonzero value remains".into());
        }
        let default_bias = if special == Special::Fnuz {
            1i32 << (exponent_bits - 1)
        } else {
            (1i32 << (exponent_bits - 1)) - 1
        };
        let fmt = Format {
            exponent_bits,
            mantissa_bits,
            bias: bias.unwrap_or(default_bias),
            special,
            nan_payload: false,
        };
        // Every value must be a float32 so that decode and round_to are exact.
        if fmt.max_exponent() > 127 {
            return bad(format!(
                "bias {} makes the largest value 2^{} exceed float32's range; use a bias >= {}",
                fmt.bias,
                fmt.max_exponent(),
                fmt.bias + fmt.max_exponent() - 127
            ));
        }
        if fmt.emin() - (mantissa_bits as i32) < -149 {
            return bad(format!(
                "bias {} makes the smallest subnormal 2^{} smaller than float32's 2^-149; use a bias <= {}",
                fmt.bias,
                fmt.emin() - mantissa_bits as i32,
                fmt.bias - (149 + fmt.emin() - mantissa_bits as i32)
            ));
        }
        Ok(fmt)
    }

    /// A predefined format by its ml_dtypes name.
    pub fn by_name(name: &str) -> Result<Format> {
        for (n, e, m, bias, special) in PREDEFINED {
            if n == name {
                let mut f = Format::new(e, m, Some(bias), special)?;
                f.nan_payload = n == "float16";
                return Ok(f);
            }
        }
        let names: Vec<&str> = PREDEFINED.iter().map(|p| p.0).collect();
        Err(CoreError::Value(format!(
            "unknown format {name:?}; valid names are {}",
            names.join(", ")
        )))
    }

    /// Total width of a code in bits (8 for e8m0, which has no sign bit).
    pub fn bits(&self) -> u32 {
        if self.special == Special::E8m0 {
            8
        } else {
            1 + self.exponent_bits + self.mantissa_bits
        }
    }

    /// Whether codes have a sign bit.
    pub fn signed(&self) -> bool {
        self.special != Special::E8m0
    }

    /// The sign bit of a code (0 for unsigned formats).
    pub fn sign_bit(&self) -> u32 {
        if self.signed() {
            1 << (self.bits() - 1)
        } else {
            0
        }
    }

    /// Mask of the magnitude bits of a code.
    pub fn magnitude_mask(&self) -> u32 {
        if self.signed() {
            (1 << (self.bits() - 1)) - 1
        } else {
            (1 << self.bits()) - 1
        }
    }

    /// Unbiased exponent of the smallest normal binade, `1 − bias`
    /// (`−127` for e8m0, which has no subnormals).
    pub fn emin(&self) -> i32 {
        if self.special == Special::E8m0 {
            -127
        } else {
            1 - self.bias
        }
    }

    /// The magnitude code of the largest finite value.
    pub fn max_code(&self) -> u32 {
        let all = self.magnitude_mask();
        match self.special {
            Special::Ieee => all - (1 << self.mantissa_bits), // exponent all-ones minus 1, mantissa all-ones
            Special::Fn => all - 1,
            Special::Fnuz | Special::None => all,
            Special::E8m0 => 0xFE,
        }
    }

    /// Unbiased exponent of the largest finite value.
    pub fn max_exponent(&self) -> i32 {
        if self.special == Special::E8m0 {
            return 127;
        }
        (self.max_code() >> self.mantissa_bits) as i32 - self.bias
    }

    /// Whether the format has ±Inf.
    pub fn has_inf(&self) -> bool {
        self.special == Special::Ieee
    }

    /// Whether the format has a NaN.
    pub fn has_nan(&self) -> bool {
        self.special != Special::None
    }

    /// The canonical NaN code (positive where the sign matters), if any.
    pub fn nan_code(&self) -> Option<u32> {
        match self.special {
            Special::Ieee => Some(
                self.magnitude_mask() - ((1 << self.mantissa_bits) - 1)
                    + (1 << (self.mantissa_bits - 1)),
            ),
            Special::Fn => Some(self.magnitude_mask()),
            Special::Fnuz => Some(self.sign_bit()),
            Special::E8m0 => Some(0xFF),
            Special::None => None,
        }
    }

    /// The code of +Inf, if any.
    pub fn inf_code(&self) -> Option<u32> {
        self.has_inf()
            .then(|| self.magnitude_mask() - ((1 << self.mantissa_bits) - 1))
    }

    /// Whether `code` (within `bits()`) is a NaN.
    pub fn is_nan_code(&self, code: u32) -> bool {
        let mag = code & self.magnitude_mask();
        let m = self.mantissa_bits;
        match self.special {
            Special::Ieee => {
                (mag >> m) == (self.magnitude_mask() >> m) && (mag & ((1 << m) - 1)) != 0
            }
            Special::Fn => mag == self.magnitude_mask(),
            Special::Fnuz => code == self.sign_bit(),
            Special::E8m0 => code == 0xFF,
            Special::None => false,
        }
    }

    /// The value of a code, exactly (the reference decoder; NaN for NaN codes).
    pub fn value(&self, code: u32) -> f64 {
        if self.is_nan_code(code) {
            return f64::NAN;
        }
        if self.special == Special::E8m0 {
            return exp2i(code as i32 - 127);
        }
        let sign = if code & self.sign_bit() != 0 {
            -1.0
        } else {
            1.0
        };
        let mag = code & self.magnitude_mask();
        if Some(mag) == self.inf_code() {
            return sign * f64::INFINITY;
        }
        let m = self.mantissa_bits;
        let field = (mag >> m) as i32;
        let mant = (mag & ((1 << m) - 1)) as f64;
        let v = if field == 0 {
            mant * exp2i(self.emin() - m as i32)
        } else {
            (mant + exp2i(m as i32)) * exp2i(field - self.bias - m as i32)
        };
        sign * v
    }

    /// Largest finite value.
    pub fn max(&self) -> f64 {
        self.value(self.max_code())
    }

    /// Smallest positive normal value.
    pub fn min_normal(&self) -> f64 {
        exp2i(self.emin())
    }

    /// Smallest positive subnormal value, if the format has subnormals.
    pub fn min_subnormal(&self) -> Option<f64> {
        (self.special != Special::E8m0 && self.mantissa_bits > 0)
            .then(|| exp2i(self.emin() - self.mantissa_bits as i32))
    }
}

/// `2^k` exactly for any k a float64 can hold.
pub fn exp2i(k: i32) -> f64 {
    if k >= -1022 {
        f64::from_bits(((k + 1023) as u64) << 52)
    } else {
        f64::from_bits(1u64 << (k + 1074))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predefined_constants_match_the_reference_table() {
        let f = Format::by_name("float8_e4m3fn").unwrap();
        assert_eq!(
            (f.max(), f.min_normal(), f.min_subnormal()),
            (448.0, 2f64.powi(-6), Some(2f64.powi(-9)))
        );
        let f = Format::by_name("float8_e4m3").unwrap();
        assert_eq!(f.max(), 240.0);
        assert_eq!(f.inf_code(), Some(0x78));
        let f = Format::by_name("float8_e5m2fnuz").unwrap();
        assert_eq!((f.max(), f.nan_code()), (57344.0, Some(0x80)));
        let f = Format::by_name("float8_e3m4").unwrap();
        assert_eq!(f.max(), 15.5);
        let f = Format::by_name("float8_e4m3b11fnuz").unwrap();
        assert_eq!(f.max(), 30.0);
        let f = Format::by_name("float6_e3m2fn").unwrap();
        assert_eq!(f.max(), 28.0);
        let f = Format::by_name("float4_e2m1fn").unwrap();
        assert_eq!(f.max(), 6.0);
        let f = Format::by_name("float8_e8m0fnu").unwrap();
        assert_eq!((f.max(), f.min_normal()), (2f64.powi(127), 2f64.powi(-127)));
        let f = Format::by_name("bfloat16").unwrap();
        assert_eq!(f.max() as f32, 3.389_531_4e38);
        assert!(Format::by_name("float8").is_err());
    }

    #[test]
    fn custom_format_validation_names_the_rule() {
        let e = Format::new(9, 7, None, Special::Ieee).unwrap_err();
        assert!(e.to_string().contains("16 bits"), "{e}");
        let e = Format::new(4, 3, Some(-200), Special::Fn).unwrap_err();
        assert!(e.to_string().contains("float32's range"), "{e}");
        let e = Format::new(8, 7, Some(200), Special::Ieee).unwrap_err();
        assert!(e.to_string().contains("2^-149"), "{e}");
        assert!(Format::new(1, 0, None, Special::Ieee).is_err());
        assert_eq!(Format::new(5, 2, None, Special::Fnuz).unwrap().bias, 16);
    }
}
