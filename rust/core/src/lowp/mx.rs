//! OCP Microscaling (MX v1.0) block formats: blocks of `block` elements along
//! a row share one E8M0 scale X = 2^e; element i stores P_i = R(V_i / X) in
//! fp8/fp6/fp4 or int8, rounded to nearest-even and saturated to ±max.
//!
//! The shared exponent follows the spec's §6.3 conversion (FLOOR) or one of
//! torchao's variants (CEIL, EVEN, RCEIL), then is clamped to [−127, 127]; a
//! block whose amax is NaN or ±Inf gets the NaN scale 0xFF (the whole block
//! decodes to NaN) and zero element codes.
//!
//! A row whose length is not a multiple of `block` ends in a shorter block
//! whose scale comes from its own elements: the result equals zero-padding
//! the row to whole blocks (zeros never change amax), with no padding stored.

use rayon::prelude::*;

use super::codec::{Codec, Options, Overflow, Rounding};
use super::fast::{self, DecodeTable, Lanes};
use super::format::{exp2i, Format};
use super::{reference, rows_of, Values};
use crate::error::{CoreError, Result};

/// The element type of an MX format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// FP8 E4M3 (float8_e4m3fn), emax 8.
    Fp8E4m3,
    /// FP8 E5M2, emax 15.
    Fp8E5m2,
    /// FP6 E2M3, emax 2.
    Fp6E2m3,
    /// FP6 E3M2, emax 4.
    Fp6E3m2,
    /// FP4 E2M1, emax 2.
    Fp4E2m1,
    /// INT8 read as a fixed-point number q · 2^−6 (emax 0), clamped to ±127.
    Int8,
}

impl Element {
    /// Parses an element name (`fp8_e4m3`, …, `int8`; the ml_dtypes names
    /// of the float elements are accepted too).
    pub fn parse(name: &str) -> Result<Element> {
        Ok(match name {
            "fp8_e4m3" | "float8_e4m3fn" => Element::Fp8E4m3,
            "fp8_e5m2" | "float8_e5m2" => Element::Fp8E5m2,
            "fp6_e2m3" | "float6_e2m3fn" => Element::Fp6E2m3,
            "fp6_e3m2" | "float6_e3m2fn" => Element::Fp6E3m2,
            "fp4_e2m1" | "float4_e2m1fn" => Element::Fp4E2m1,
            "int8" => Element::Int8,
            other => {
                return Err(CoreError::Value(format!(
                    "elem must be one of \"fp8_e4m3\", \"fp8_e5m2\", \"fp6_e2m3\", \"fp6_e3m2\", \"fp4_e2m1\", \"int8\", got {other:?}"
                )))
            }
        })
    }

    /// The float element's format (`None` for int8).
    pub fn format(self) -> Option<Format> {
        let name = match self {
            Element::Fp8E4m3 => "float8_e4m3fn",
            Element::Fp8E5m2 => "float8_e5m2",
            Element::Fp6E2m3 => "float6_e2m3fn",
            Element::Fp6E3m2 => "float6_e3m2fn",
            Element::Fp4E2m1 => "float4_e2m1fn",
            Element::Int8 => return None,
        };
        Format::by_name(name).ok()
    }

    /// Exponent of the element's largest binade (`emax_elem`).
    pub fn emax(self) -> i32 {
        match self {
            Element::Fp8E4m3 => 8,
            Element::Fp8E5m2 => 15,
            Element::Fp6E2m3 | Element::Fp4E2m1 => 2,
            Element::Fp6E3m2 => 4,
            Element::Int8 => 0,
        }
    }

    /// Fraction bits of the element's largest binade (6 for int8: 127/64 = 1.111111b).
    pub fn mbits(self) -> u32 {
        match self.format() {
            Some(f) => f.mantissa_bits,
            None => 6,
        }
    }

    /// The largest element value.
    pub fn max(self) -> f64 {
        match self.format() {
            Some(f) => f.max(),
            None => 127.0 / 64.0,
        }
    }

    /// The element's value for `code` as float32 bits (NaN codes: NaN).
    fn decoder(self) -> ElementDecoder {
        match self.format() {
            Some(f) => ElementDecoder::Table(Box::new(DecodeTable::new(&f))),
            None => ElementDecoder::Int8,
        }
    }
}

enum ElementDecoder {
    Table(Box<DecodeTable>),
    Int8,
}

impl ElementDecoder {
    #[inline(always)]
    fn value(&self, code: u8) -> f32 {
        match self {
            ElementDecoder::Table(t) => f32::from_bits(t.get(code as u32)),
            ElementDecoder::Int8 => (code as i8) as f32 * (1.0 / 64.0),
        }
    }
}

/// How the shared exponent is chosen from the block's amax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleMode {
    /// `floor(log2 amax) − emax_elem` (OCP MX v1.0 §6.3; may clip the top element).
    Floor,
    /// `ceil(log2 amax) − emax_elem`.
    Ceil,
    /// amax first rounded (half up) to the element's mantissa width, then FLOOR.
    Even,
    /// `ceil(log2(amax / max_elem))`, the division rounded in the input's
    /// precision (float32, or float64 for float64 input) as cuBLAS/torchao do.
    Rceil,
}

impl ScaleMode {
    /// Parses `scale_mode=`.
    pub fn parse(name: &str) -> Result<ScaleMode> {
        Ok(match name {
            "floor" => ScaleMode::Floor,
            "ceil" => ScaleMode::Ceil,
            "even" => ScaleMode::Even,
            "rceil" => ScaleMode::Rceil,
            other => {
                return Err(CoreError::Value(format!(
                    "scale_mode must be \"floor\", \"ceil\", \"even\" or \"rceil\", got {other:?}"
                )))
            }
        })
    }
}

/// floor(log2 v) and whether v is a power of two, for finite v > 0.
fn log2_parts(v: f64) -> (i32, bool) {
    let bits = v.to_bits();
    let biased = (bits >> 52) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if biased == 0 {
        let e = -1074 + 63 - frac.leading_zeros() as i32;
        (e, frac.is_power_of_two())
    } else {
        (biased - 1023, frac == 0)
    }
}

/// The shared exponent of a block with finite `amax` ≥ 0, clamped to
/// [−127, 127]. `f32_input` selects float32 rounding of RCEIL's division.
pub fn shared_exponent(amax: f64, elem: Element, mode: ScaleMode, f32_input: bool) -> i32 {
    if amax == 0.0 {
        return -127;
    }
    let e = match mode {
        ScaleMode::Floor => log2_parts(amax).0 - elem.emax(),
        ScaleMode::Ceil => {
            let (fl, pow2) = log2_parts(amax);
            fl + (!pow2) as i32 - elem.emax()
        }
        ScaleMode::Even => {
            let (fl, _) = log2_parts(amax);
            // significand t = amax / 2^fl in [1, 2); it rounds up to 2 at
            // mbits fraction bits (half up) iff t ≥ 2 − 2^−(mbits+1).
            let t = amax / exp2i(fl);
            let bump = t >= 2.0 - exp2i(-(elem.mbits() as i32) - 1);
            fl + bump as i32 - elem.emax()
        }
        ScaleMode::Rceil => {
            let q = if f32_input {
                (amax as f32 / elem.max() as f32) as f64
            } else {
                amax / elem.max()
            };
            if q == 0.0 {
                -127
            } else {
                let (fl, pow2) = log2_parts(q);
                fl + (!pow2) as i32
            }
        }
    };
    e.clamp(-127, 127)
}

/// Block amax with NaN propagation (`f64::max` would drop NaNs).
fn block_amax(x: &Values<'_>, start: usize, end: usize) -> f64 {
    let mut amax = 0.0f64;
    for i in start..end {
        let a = x.get_f64(i).abs();
        if a.is_nan() {
            return f64::NAN;
        }
        amax = amax.max(a);
    }
    amax
}

fn element_codec(elem: Element) -> Option<Codec> {
    elem.format().map(|f| {
        Codec::new(
            f,
            Options {
                rounding: Rounding::NearestEven,
                overflow: Some(Overflow::Saturate),
                seed: 0,
            },
        )
        .expect("saturation is valid for every format")
    })
}

/// Encodes one block `start..end` into its codes and returns its scale code.
type BlockFn<'f> = dyn Fn(&Values<'_>, usize, usize, &mut [u8]) -> u8 + Sync + 'f;

/// The per-row driver: splits `codes`/`scales` into rows and blocks and
/// calls `block_fn(values, start, end, codes_out) -> scale_code` for each.
fn for_each_block(
    x: Values<'_>,
    row_len: usize,
    block: usize,
    codes: &mut [u8],
    scales: &mut [u8],
    block_fn: &BlockFn<'_>,
) {
    crate::threads::init_pool();
    let blocks_per_row = row_len.div_ceil(block);
    codes
        .par_chunks_mut(row_len)
        .zip(scales.par_chunks_mut(blocks_per_row))
        .enumerate()
        .for_each(|(row, (code_row, scale_row))| {
            let base = row * row_len;
            code_row
                .par_chunks_mut(block)
                .zip(scale_row.par_iter_mut())
                .enumerate()
                .with_min_len(64)
                .for_each(|(j, (out, scale))| {
                    let start = base + j * block;
                    *scale = block_fn(&x, start, start + out.len(), out);
                });
        });
}

fn check_layout(len: usize, row_len: usize, block: usize) -> Result<usize> {
    if block == 0 {
        return Err(CoreError::Value("block must be at least 1".into()));
    }
    rows_of(len, row_len, "x")
}

/// MX encoding of rows of `row_len` values (row-major): returns the element
/// codes (one per byte; int8 as its two's-complement byte) and the E8M0
/// scale codes, `ceil(row_len / block)` per row. float32/16/bf16 input runs
/// the fast element encoder, float64 the reference one.
pub fn mx_encode(
    x: Values<'_>,
    row_len: usize,
    block: usize,
    elem: Element,
    mode: ScaleMode,
) -> Result<(Vec<u8>, Vec<u8>)> {
    if matches!(x, Values::F64(_)) {
        return mx_encode_reference(x, row_len, block, elem, mode);
    }
    let rows = check_layout(x.len(), row_len, block)?;
    let mut codes = vec![0u8; x.len()];
    let mut scales = vec![0u8; rows * row_len.div_ceil(block.max(1))];
    let lanes = element_codec(elem).map(|c| Lanes::new(&c));
    let block_fn = |x: &Values<'_>, start: usize, end: usize, out: &mut [u8]| -> u8 {
        let amax = block_amax(x, start, end);
        if !amax.is_finite() {
            out.fill(0);
            return 0xFF;
        }
        let e = shared_exponent(amax, elem, mode, true);
        // 2^−e is a float32 for e in [−127, 127]; x·2^−e is exact except
        // far below the element's smallest subnormal, where it rounds to 0
        // either way.
        let inv_scale = exp2i(-e) as f32;
        match &lanes {
            Some(lanes) => {
                for (i, o) in (start..end).zip(out.iter_mut()) {
                    let y = x.get_f32(i) * inv_scale;
                    *o = fast::encode_lane(lanes, y.to_bits(), 0) as u8;
                }
            }
            None => {
                for (i, o) in (start..end).zip(out.iter_mut()) {
                    let q = (x.get_f32(i) * inv_scale * 64.0).round_ties_even();
                    *o = (q.clamp(-127.0, 127.0) as i8) as u8;
                }
            }
        }
        (e + 127) as u8
    };
    for_each_block(x, row_len, block, &mut codes, &mut scales, &block_fn);
    Ok((codes, scales))
}

/// [`mx_encode`] with the exact reference codec on float64 values (the
/// specification; also what float64 input uses).
pub fn mx_encode_reference(
    x: Values<'_>,
    row_len: usize,
    block: usize,
    elem: Element,
    mode: ScaleMode,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let rows = check_layout(x.len(), row_len, block)?;
    let mut codes = vec![0u8; x.len()];
    let mut scales = vec![0u8; rows * row_len.div_ceil(block.max(1))];
    let codec = element_codec(elem);
    let f32_input = !matches!(x, Values::F64(_));
    let block_fn = |x: &Values<'_>, start: usize, end: usize, out: &mut [u8]| -> u8 {
        let amax = block_amax(x, start, end);
        if !amax.is_finite() {
            out.fill(0);
            return 0xFF;
        }
        let e = shared_exponent(amax, elem, mode, f32_input);
        for (i, o) in (start..end).zip(out.iter_mut()) {
            let v = x.get_f64(i) * exp2i(-e);
            *o = match &codec {
                Some(c) => reference::encode_f64(c, v, 0) as u8,
                None => ((v * 64.0).round_ties_even().clamp(-127.0, 127.0) as i8) as u8,
            };
        }
        (e + 127) as u8
    };
    for_each_block(x, row_len, block, &mut codes, &mut scales, &block_fn);
    Ok((codes, scales))
}

/// Decodes MX codes and E8M0 scales to float32: `P_i · 2^(scale − 127)`,
/// NaN for blocks whose scale is 0xFF.
pub fn mx_decode(
    codes: &[u8],
    scales: &[u8],
    row_len: usize,
    block: usize,
    elem: Element,
) -> Result<Vec<f32>> {
    let rows = check_layout(codes.len(), row_len, block)?;
    let blocks_per_row = row_len.div_ceil(block);
    if scales.len() != rows * blocks_per_row {
        return Err(CoreError::Shape(format!(
            "scales has {} elements but {rows} rows of {row_len} in blocks of {block} need {} ({blocks_per_row} per row)",
            scales.len(),
            rows * blocks_per_row
        )));
    }
    if let Some(f) = elem.format() {
        if f.bits() < 8 {
            if let Some(i) = codes
                .par_iter()
                .position_first(|&c| c as u32 >> f.bits() != 0)
            {
                return Err(CoreError::Value(format!(
                    "codes: code {} at flat index {i} is out of range for {} elements (0..{})",
                    codes[i],
                    super::codec::describe(&f),
                    (1u32 << f.bits()) - 1
                )));
            }
        }
    }
    let decoder = elem.decoder();
    let mut out = vec![0f32; codes.len()];
    crate::threads::init_pool();
    out.par_chunks_mut(row_len.max(1))
        .zip(codes.par_chunks(row_len.max(1)))
        .zip(scales.par_chunks(blocks_per_row.max(1)))
        .for_each(|((o, c), s)| {
            for (j, (ob, cb)) in o.chunks_mut(block).zip(c.chunks(block)).enumerate() {
                let scale = if s[j] == 0xFF {
                    f32::NAN
                } else {
                    exp2i(s[j] as i32 - 127) as f32
                };
                for (v, &code) in ob.iter_mut().zip(cb) {
                    *v = decoder.value(code) * scale;
                }
            }
        });
    Ok(out)
}
