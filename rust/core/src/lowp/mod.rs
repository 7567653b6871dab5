//! Low-precision floating-point formats (lecture Def 3.1): a finite format F
//! and a rounding operator R: ℝ → F, for the formats ML uses (float16,
//! bfloat16, the float8 family, float6, float4, e8m0) and any custom format
//! of up to 16 bits; and the block-scaled formats built on them
//! ([`mx`], [`nvfp4`]). Their error statistics are in [`crate::stats`].
//!
//! * [`format`]: the format table ([`Format`], [`Special`]).
//! * [`codec`]: rounding/overflow options resolved into a [`Codec`].
//! * [`reference`]: the exact scalar codec — the specification.
//! * [`fast`]: the same algorithm over u32 lanes, SIMD + rayon.
//! * [`nearest`]: faster lane encoders for the nearest modes.
//!
//! With default options every encoding is bit-exact with ml_dtypes'
//! `astype` (numpy's for float16) on float32/float16/bfloat16 input.
//! float64 input is rounded once, directly, by the reference codec
//! (ml_dtypes goes through float32 and can round twice).

pub mod codec;
pub mod fast;
pub mod format;
pub mod mx;
pub mod nearest;
pub mod nvfp4;
pub mod reference;

use rayon::prelude::*;

pub use codec::{Codec, Options, Overflow, Rounding};
pub use format::{Format, Special};

use crate::error::{CoreError, Result};
use fast::{DecodeArith, DecodeTable, LoadBf16, LoadF16, LoadF32, StoreU16, StoreU8};

/// Borrowed input values in one of the supported dtypes.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    /// float32.
    F32(&'a [f32]),
    /// float64.
    F64(&'a [f64]),
    /// float16 bit patterns.
    F16(&'a [u16]),
    /// bfloat16 bit patterns.
    Bf16(&'a [u16]),
}

impl Values<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::F16(v) | Values::Bf16(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as float32 (exact except for float64 input).
    #[inline(always)]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            Values::F32(v) => v[i],
            Values::F64(v) => v[i] as f32,
            Values::F16(v) => crate::rows::f16_to_f32(v[i]),
            Values::Bf16(v) => crate::rows::bf16_to_f32(v[i]),
        }
    }

    /// Element `i` as float64 (exact).
    #[inline(always)]
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Values::F64(v) => v[i],
            _ => self.get_f32(i) as f64,
        }
    }
}

/// Codes of a format: u8 for ≤ 8 bits, u16 above.
#[derive(Debug, Clone, PartialEq)]
pub enum Codes {
    /// Codes of ≤ 8-bit formats (one per byte, unpacked).
    U8(Vec<u8>),
    /// Codes of 9–16-bit formats.
    U16(Vec<u16>),
}

/// A caller's buffer for codes: the mutable counterpart of [`Codes`].
#[derive(Debug)]
pub enum CodesMut<'a> {
    /// Codes of ≤ 8-bit formats (one per byte, unpacked).
    U8(&'a mut [u8]),
    /// Codes of 9–16-bit formats.
    U16(&'a mut [u16]),
}

impl Codes {
    /// The codes as a mutable buffer.
    pub fn as_mut(&mut self) -> CodesMut<'_> {
        match self {
            Codes::U8(c) => CodesMut::U8(c),
            Codes::U16(c) => CodesMut::U16(c),
        }
    }
}

/// Rounded values: float32, or float64 for float64 input.
#[derive(Debug, Clone, PartialEq)]
pub enum Rounded {
    /// float32 values.
    F32(Vec<f32>),
    /// float64 values.
    F64(Vec<f64>),
}

/// ml_dtypes turns a bfloat16 NaN into the canonical NaN even for float16,
/// where numpy keeps float32/float16 payloads: drop the payload rule there
/// (and keep it for bfloat16 → bfloat16, which ml_dtypes leaves unchanged).
pub fn for_input(format: &Format, x: &Values<'_>) -> Format {
    let mut f = *format;
    if matches!(x, Values::Bf16(_)) {
        // bfloat16 → bfloat16 is the identity in ml_dtypes, payload and all.
        let bf16 =
            (f.exponent_bits, f.mantissa_bits, f.bias, f.special) == (8, 7, 127, Special::Ieee);
        f.nan_payload = bf16;
    }
    f
}

/// The reference codec on element `i` (float64 input read exactly).
#[inline]
fn reference_code(codec: &Codec, x: &Values<'_>, i: usize) -> u32 {
    match x {
        Values::F64(v) => reference::encode_f64(codec, v[i], i as u64),
        other => reference::encode_f32(codec, other.get_f32(i), i as u64),
    }
}

fn reference_codes<T: Send + Default + Clone>(
    codec: &Codec,
    x: Values<'_>,
    put: impl Fn(u32) -> T + Sync,
) -> Vec<T> {
    crate::threads::init_pool();
    let mut out = vec![T::default(); x.len()];
    reference_codes_into(codec, x, &mut out, put);
    out
}

fn reference_codes_into<T: Send>(
    codec: &Codec,
    x: Values<'_>,
    out: &mut [T],
    put: impl Fn(u32) -> T + Sync,
) {
    out.par_chunks_mut(fast::CHUNK)
        .enumerate()
        .for_each(|(chunk, o)| {
            let base = chunk * fast::CHUNK;
            for (j, slot) in o.iter_mut().enumerate() {
                *slot = put(reference_code(codec, &x, base + j));
            }
        });
}

/// Encodes with the exact scalar reference codec only (the specification;
/// tests compare [`encode`] against it).
pub fn encode_reference(x: Values<'_>, format: &Format, options: Options) -> Result<Codes> {
    let format = &for_input(format, &x);
    let codec = Codec::new(*format, options)?;
    Ok(if format.bits() <= 8 {
        Codes::U8(reference_codes(&codec, x, |c| c as u8))
    } else {
        Codes::U16(reference_codes(&codec, x, |c| c as u16))
    })
}

/// R(x) as codes of `format`.
///
/// ```
/// use quantdrift_core::lowp::{encode, Codes, Format, Options, Values};
/// let f = Format::by_name("float8_e4m3fn").unwrap();
/// let codes = encode(Values::F32(&[1.0, 464.0, 500.0]), &f, Options::default()).unwrap();
/// assert_eq!(codes, Codes::U8(vec![0x38, 0x7e, 0x7f]));
/// ```
pub fn encode(x: Values<'_>, format: &Format, options: Options) -> Result<Codes> {
    let format = &for_input(format, &x);
    let mut codes = if format.bits() <= 8 {
        Codes::U8(output::<u8>(x.len()))
    } else {
        Codes::U16(output::<u16>(x.len()))
    };
    encode_into(x, format, options, codes.as_mut())?;
    Ok(codes)
}

/// [`encode`] into a buffer the caller owns: `out` must hold `x.len()`
/// codes of the width [`encode`] returns (uint8 up to 8 bits, uint16
/// above). Callers that convert many arrays of one size reuse one buffer
/// instead of paying for a fresh allocation and its page faults each time.
pub fn encode_into(
    x: Values<'_>,
    format: &Format,
    options: Options,
    out: CodesMut<'_>,
) -> Result<()> {
    let format = &for_input(format, &x);
    let codec = Codec::new(*format, options)?;
    let wide = format.bits() > 8;
    let (len, out_wide) = match &out {
        CodesMut::U8(o) => (o.len(), false),
        CodesMut::U16(o) => (o.len(), true),
    };
    if out_wide != wide {
        return Err(CoreError::Dtype(format!(
            "codes of a {}-bit format need a {} output buffer, got {}",
            format.bits(),
            if wide { "uint16" } else { "uint8" },
            if out_wide { "uint16" } else { "uint8" },
        )));
    }
    if len != x.len() {
        return Err(CoreError::Shape(format!(
            "the output buffer holds {len} codes, the input has {} values",
            x.len()
        )));
    }
    if matches!(x, Values::F64(_)) || !fast::supports(format) {
        crate::threads::init_pool();
        match out {
            CodesMut::U8(o) => reference_codes_into(&codec, x, o, |c| c as u8),
            CodesMut::U16(o) => reference_codes_into(&codec, x, o, |c| c as u16),
        }
        return Ok(());
    }
    match out {
        CodesMut::U8(o) => fast_encode(&codec, x, o, StoreU8),
        CodesMut::U16(o) => fast_encode(&codec, x, o, StoreU16),
    }
    Ok(())
}

/// A zeroed buffer for a fast kernel's output. Large ones are fresh
/// zero-filled mappings that the kernel faults in page by page on first
/// write; with 4 KiB pages those faults cost more than the encoding itself,
/// so ask for 2 MiB pages before anything touches it.
pub(crate) fn output<T: Copy + Default>(len: usize) -> Vec<T> {
    let mut v = vec![T::default(); len];
    crate::buffers::advise_huge_pages(v.as_mut_ptr().cast(), std::mem::size_of_val(&v[..]));
    v
}

fn fast_encode<S: fast::Store>(codec: &Codec, x: Values<'_>, out: &mut [S::Out], store: S) {
    match x {
        Values::F32(v) => fast::encode_into::<LoadF32, S>(codec, v, out, store, 0),
        Values::F16(v) => fast::encode_into::<LoadF16, S>(codec, v, out, store, 0),
        Values::Bf16(v) => fast::encode_into::<LoadBf16, S>(codec, v, out, store, 0),
        Values::F64(_) => unreachable!("float64 input takes the reference codec"),
    }
}

/// R(x): the values of the codes [`encode`] gives, as float32 (float64 for
/// float64 input). NaN inputs stay NaN; see [`reference::decode_f32_bits`].
pub fn round(x: Values<'_>, format: &Format, options: Options) -> Result<Rounded> {
    let Values::F64(v) = x else {
        let mut out = output::<f32>(x.len());
        round_into(x, format, options, &mut out)?;
        return Ok(Rounded::F32(out));
    };
    // float64 input keeps its format (for_input only changes bfloat16's).
    let codec = Codec::new(*format, options)?;
    crate::threads::init_pool();
    let mut out = vec![0f64; v.len()];
    out.par_chunks_mut(fast::CHUNK)
        .enumerate()
        .for_each(|(chunk, o)| {
            let base = chunk * fast::CHUNK;
            for (j, slot) in o.iter_mut().enumerate() {
                let code = reference::encode_f64(&codec, v[base + j], (base + j) as u64);
                *slot = decode_f64(format, code);
            }
        });
    Ok(Rounded::F64(out))
}

/// [`round`] of float32, float16 or bfloat16 input into a float32 buffer
/// the caller owns (of `x.len()` values; see [`encode_into`] for why).
/// float64 input is rounded by [`round`] only.
pub fn round_into(x: Values<'_>, format: &Format, options: Options, out: &mut [f32]) -> Result<()> {
    let format = &for_input(format, &x);
    let codec = Codec::new(*format, options)?;
    if matches!(x, Values::F64(_)) {
        return Err(CoreError::Dtype(
            "round_into takes float32, float16 or bfloat16 input; float64 rounds into float64 through round"
                .into(),
        ));
    }
    if out.len() != x.len() {
        return Err(CoreError::Shape(format!(
            "the output buffer holds {} values, the input has {}",
            out.len(),
            x.len()
        )));
    }
    if !fast::supports(format) {
        crate::threads::init_pool();
        reference_codes_into(&codec, x, out, |c| {
            f32::from_bits(reference::decode_f32_bits(format, c))
        });
    } else if format.bits() <= 8 {
        fast_encode(&codec, x, out, DecodeTable::new(format));
    } else {
        fast_encode(&codec, x, out, DecodeArith::new(format));
    }
    Ok(())
}

/// The float64 value of a code (NaN codes give a NaN with the code's sign).
fn decode_f64(format: &Format, code: u32) -> f64 {
    let bits = reference::decode_f32_bits(format, code);
    f32::from_bits(bits) as f64
}

/// Errors naming the first code that is out of range for `format`.
pub fn check_codes<C: Copy + Into<u32> + Sync>(
    codes: &[C],
    format: &Format,
    arg: &str,
) -> Result<()> {
    let bits = format.bits();
    let limit = 1u32 << bits;
    let container = 8 * std::mem::size_of::<C>() as u32;
    if bits >= container {
        return Ok(());
    }
    if let Some(i) = codes.par_iter().position_first(|&c| c.into() >= limit) {
        return Err(CoreError::Value(format!(
            "{arg}: code {} at flat index {i} is out of range for {} ({bits}-bit codes are 0..{})",
            codes[i].into(),
            codec::describe(format),
            limit - 1
        )));
    }
    Ok(())
}

/// Decodes u8 codes of a ≤ 8-bit format to float32; codes ≥ 2^bits are an error.
pub fn decode_u8(codes: &[u8], format: &Format) -> Result<Vec<f32>> {
    let mut out = output::<f32>(codes.len());
    decode_u8_into(codes, format, &mut out)?;
    Ok(out)
}

fn check_decode_len(codes: usize, out: usize) -> Result<()> {
    if codes != out {
        return Err(CoreError::Shape(format!(
            "the output buffer holds {out} values, there are {codes} codes"
        )));
    }
    Ok(())
}

/// [`decode_u8`] into a float32 buffer the caller owns (one value per code).
pub fn decode_u8_into(codes: &[u8], format: &Format, out: &mut [f32]) -> Result<()> {
    if format.bits() > 8 {
        return Err(CoreError::Dtype(format!(
            "codes: {} has {}-bit codes, which need uint16, got uint8",
            codec::describe(format),
            format.bits()
        )));
    }
    check_decode_len(codes.len(), out.len())?;
    check_codes(codes, format, "codes")?;
    fast::decode_into(codes, out, DecodeTable::new(format));
    Ok(())
}

/// Decodes u16 codes of a 9–16-bit format to float32.
pub fn decode_u16(codes: &[u16], format: &Format) -> Result<Vec<f32>> {
    let mut out = output::<f32>(codes.len());
    decode_u16_into(codes, format, &mut out)?;
    Ok(out)
}

/// [`decode_u16`] into a float32 buffer the caller owns (one value per code).
pub fn decode_u16_into(codes: &[u16], format: &Format, out: &mut [f32]) -> Result<()> {
    if format.bits() <= 8 {
        return Err(CoreError::Dtype(format!(
            "codes: {} has {}-bit codes, which are stored as uint8, got uint16",
            codec::describe(format),
            format.bits()
        )));
    }
    check_decode_len(codes.len(), out.len())?;
    check_codes(codes, format, "codes")?;
    if fast::supports(format) {
        fast::decode_into(codes, out, DecodeArith::new(format));
    } else {
        crate::threads::init_pool();
        out.par_iter_mut()
            .zip(codes.par_iter())
            .for_each(|(o, &c)| {
                *o = f32::from_bits(reference::decode_f32_bits(format, c as u32));
            });
    }
    Ok(())
}

/// Checks that `format`'s codes fit a nibble (what packing needs).
pub fn check_packable(format: &Format) -> Result<()> {
    if format.bits() > 4 {
        return Err(CoreError::Value(format!(
            "packed codes need a format of at most 4 bits; {} has {}",
            codec::describe(format),
            format.bits()
        )));
    }
    Ok(())
}

/// Codes of R(x) packed two per byte along rows of `row_len`
/// ([`pack_nibbles`] of [`encode`]), for formats of at most 4 bits.
pub fn encode_packed(
    x: Values<'_>,
    row_len: usize,
    format: &Format,
    options: Options,
) -> Result<Vec<u8>> {
    check_packable(format)?;
    match encode(x, format, options)? {
        Codes::U8(c) => pack_nibbles(&c, row_len),
        Codes::U16(_) => unreachable!("a format of at most 4 bits has 8-bit codes"),
    }
}

/// Packs 4-bit codes two to a byte along rows of `row_len` codes: element
/// `2j` of a row goes to the low nibble of byte `j`, element `2j+1` to the
/// high nibble (the layout of torch's `float4_e2m1fn_x2` and NVIDIA's FP4);
/// an odd row ends with a zero high nibble.
pub fn pack_nibbles(codes: &[u8], row_len: usize) -> Result<Vec<u8>> {
    if row_len == 0 {
        return Ok(Vec::new());
    }
    if !codes.len().is_multiple_of(row_len) {
        return Err(CoreError::Shape(format!(
            "codes: {} elements are not whole rows of {row_len}",
            codes.len()
        )));
    }
    let packed_len = row_len.div_ceil(2);
    let rows = codes.len() / row_len;
    let mut out = vec![0u8; rows * packed_len];
    out.par_chunks_mut(packed_len)
        .zip(codes.par_chunks(row_len))
        .for_each(|(o, row)| {
            for (j, byte) in o.iter_mut().enumerate() {
                let lo = row[2 * j] & 0x0f;
                let hi = row.get(2 * j + 1).copied().unwrap_or(0) & 0x0f;
                *byte = lo | (hi << 4);
            }
        });
    Ok(out)
}

/// Unpacks bytes written by [`pack_nibbles`] into rows of `row_len` codes.
/// `packed` must hold whole rows of `ceil(row_len / 2)` bytes.
pub fn unpack_nibbles(packed: &[u8], row_len: usize) -> Result<Vec<u8>> {
    let packed_len = row_len.div_ceil(2);
    if packed_len == 0 {
        if packed.is_empty() {
            return Ok(Vec::new());
        }
        return Err(CoreError::Shape(format!(
            "codes: a row length of 0 cannot hold {} packed bytes",
            packed.len()
        )));
    }
    if !packed.len().is_multiple_of(packed_len) {
        return Err(CoreError::Shape(format!(
            "codes: {} packed bytes are not whole rows of {packed_len} bytes (ceil({row_len}/2) for rows of {row_len} codes)",
            packed.len()
        )));
    }
    let rows = packed.len() / packed_len;
    let mut out = vec![0u8; rows * row_len];
    out.par_chunks_mut(row_len.max(1))
        .zip(packed.par_chunks(packed_len))
        .for_each(|(o, row)| {
            for (i, slot) in o.iter_mut().enumerate() {
                let byte = row[i / 2];
                *slot = if i % 2 == 0 { byte & 0x0f } else { byte >> 4 };
            }
        });
    Ok(out)
}

/// The checks of [`round_mixed`] (labels match x and index `formats`) and
/// one codec per format, adapted to x's dtype; the GPU kernel shares them.
pub fn mixed_codecs(
    x: &Values<'_>,
    labels: &[i64],
    formats: &[Format],
    options: Options,
) -> Result<Vec<Codec>> {
    if labels.len() != x.len() {
        return Err(CoreError::Shape(format!(
            "labels has {} elements but x has {}; they must match",
            labels.len(),
            x.len()
        )));
    }
    if formats.is_empty() {
        return Err(CoreError::Value(
            "formats must name at least one format".into(),
        ));
    }
    let n = formats.len() as i64;
    if let Some(i) = labels.par_iter().position_first(|&l| l < 0 || l >= n) {
        return Err(CoreError::Value(format!(
            "labels[{i}] = {} is not a valid index into formats [0, {n})",
            labels[i]
        )));
    }
    formats
        .iter()
        .map(|f| Codec::new(for_input(f, x), options))
        .collect()
}

/// Mixed formats per parameter (lecture Remark 3.1): element `i` is rounded
/// to `formats[labels[i]]` with the same options. Returns float32 (float64
/// for float64 input).
pub fn round_mixed(
    x: Values<'_>,
    labels: &[i64],
    formats: &[Format],
    options: Options,
) -> Result<Rounded> {
    let codecs = mixed_codecs(&x, labels, formats, options)?;
    crate::threads::init_pool();
    if let Values::F64(v) = x {
        let mut out = vec![0f64; v.len()];
        out.par_iter_mut().enumerate().for_each(|(i, o)| {
            let c = &codecs[labels[i] as usize];
            *o = decode_f64(&c.format, reference::encode_f64(c, v[i], i as u64));
        });
        return Ok(Rounded::F64(out));
    }
    let formats: Vec<Format> = codecs.iter().map(|c| c.format).collect();
    let formats = &formats[..];
    let all_fast = formats.iter().all(fast::supports);
    let lanes: Vec<fast::Lanes> = codecs.iter().map(fast::Lanes::new).collect();
    let decoders: Vec<MixedDecoder> = formats
        .iter()
        .map(|f| {
            if f.bits() <= 8 {
                MixedDecoder::Table(Box::new(DecodeTable::new(f)))
            } else if fast::supports(f) {
                MixedDecoder::Arith(DecodeArith::new(f))
            } else {
                MixedDecoder::Reference(*f)
            }
        })
        .collect();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(fast::CHUNK)
        .enumerate()
        .for_each(|(chunk, o)| {
            let base = chunk * fast::CHUNK;
            for (j, slot) in o.iter_mut().enumerate() {
                let i = base + j;
                let label = labels[i] as usize;
                let c = &codecs[label];
                let code = if all_fast {
                    let lane = &lanes[label];
                    let bits = x.get_f32(i).to_bits();
                    let rand = c.random(i as u64);
                    if c.format.special == Special::E8m0 {
                        fast::encode_lane_e8m0(lane, bits, rand)
                    } else {
                        fast::encode_lane(lane, bits, rand)
                    }
                } else {
                    reference::encode_f32(c, x.get_f32(i), i as u64)
                };
                *slot = f32::from_bits(decoders[label].get(code));
            }
        });
    Ok(Rounded::F32(out))
}

enum MixedDecoder {
    Table(Box<DecodeTable>),
    Arith(DecodeArith),
    Reference(Format),
}

impl MixedDecoder {
    #[inline]
    fn get(&self, code: u32) -> u32 {
        match self {
            MixedDecoder::Table(t) => t.get(code),
            MixedDecoder::Arith(a) => a.get(code),
            MixedDecoder::Reference(f) => reference::decode_f32_bits(f, code),
        }
    }
}

impl<'a> Values<'a> {
    /// Elements `start..end`.
    pub fn slice(&self, start: usize, end: usize) -> Values<'a> {
        match *self {
            Values::F32(v) => Values::F32(&v[start..end]),
            Values::F64(v) => Values::F64(&v[start..end]),
            Values::F16(v) => Values::F16(&v[start..end]),
            Values::Bf16(v) => Values::Bf16(&v[start..end]),
        }
    }

    /// Elements `start..end`, clipped to the data, as a prefetch hint.
    pub fn ahead(&self, start: usize, end: usize) -> crate::simd::Ahead {
        fn part<T>(v: &[T], start: usize, end: usize) -> crate::simd::Ahead {
            let end = end.min(v.len());
            crate::simd::Ahead::of(&v[start.min(end)..end])
        }
        match *self {
            Values::F32(v) => part(v, start, end),
            Values::F64(v) => part(v, start, end),
            Values::F16(v) | Values::Bf16(v) => part(v, start, end),
        }
    }
}

/// Checks that `len` elements are whole rows of `row_len` and returns the
/// number of rows.
pub(crate) fn rows_of(len: usize, row_len: usize, arg: &str) -> Result<usize> {
    if row_len == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(CoreError::Shape(format!(
                "{arg}: row length 0 cannot hold {len} elements"
            )))
        };
    }
    if !len.is_multiple_of(row_len) {
        return Err(CoreError::Shape(format!(
            "{arg}: {len} elements are not whole rows of {row_len}"
        )));
    }
    Ok(len / row_len)
}
