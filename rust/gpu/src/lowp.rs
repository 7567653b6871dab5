//! Float-format kernels on the GPU: rounding, encoding (optionally packed
//! two 4-bit codes per byte), mixed formats per element, and decoding.
//!
//! The encoder is the CPU's reference codec (`quantdrift_core::lowp::
//! reference`) written in WGSL integer arithmetic on the input's bit
//! pattern, so codes are the CPU's bit for bit: every format, rounding mode
//! and overflow mode, float32/float16/bfloat16 input, and float64 input
//! rounded once, directly, from the two 32-bit words of its bit pattern.
//! Stochastic rounding uses the CPU's counter-based draws of the global
//! element index, so a seed gives the CPU's codes whatever the chunking.
//! Rounded values and decoded codes go through a table that the host fills
//! from the CPU decoder.
//!
//! Validation (formats, options, labels, codes) runs the core's own checks
//! on the host first, so errors are the CPU's.

use quantdrift_core::lowp::{
    self, codec::Rounding, for_input, reference, Codec, Codes, Format, Options, Rounded, Special,
    Values,
};
use quantdrift_core::CoreError;

use crate::context::{context, Gpu, WORKGROUP};
use crate::error::Result;
use crate::shaders::Shader;

const DECODE: Shader = Shader::new("lowp_decode", include_str!("shaders/lowp_decode.wgsl"));
const ENCODE: Shader = Shader::new(
    "lowp_encode",
    concat!(
        include_str!("shaders/bits.wgsl"),
        include_str!("shaders/lowp_codec.wgsl"),
        include_str!("shaders/lowp_encode.wgsl")
    ),
);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DecodeParams {
    count: u32,
    code_bytes: u32,
    _pad: [u32; 2],
}

/// A [`Codec`] as the shaders read it (`struct Codec` in lowp_codec.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GpuCodec {
    m: u32,
    emin: i32,
    max_mag: u32,
    sign_shift: u32,
    overflow: [u32; 2],
    inf: [u32; 2],
    nan: [u32; 2],
    neg_zero: u32,
    flags: u32,
    exp_ones: u32,
    rounding: u32,
    table_offset: u32,
    _pad: u32,
}

impl GpuCodec {
    pub(crate) fn new(codec: &Codec, table_offset: u32) -> GpuCodec {
        let f = &codec.format;
        let m = f.mantissa_bits;
        GpuCodec {
            m,
            emin: f.emin(),
            max_mag: codec.max_mag,
            sign_shift: codec.sign_shift,
            overflow: codec.overflow_code,
            inf: codec.inf_code,
            nan: codec.nan_code,
            neg_zero: codec.neg_zero,
            flags: u32::from(f.special == Special::E8m0) | (u32::from(f.nan_payload) << 1),
            exp_ones: f.magnitude_mask() & !((1 << m) - 1),
            rounding: match codec.rounding {
                Rounding::NearestEven => 0,
                Rounding::NearestAway => 1,
                Rounding::TowardZero => 2,
                Rounding::Down => 3,
                Rounding::Up => 4,
                Rounding::Stochastic => 5,
            },
            table_offset,
            _pad: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct EncodeParams {
    count: u32,
    in_kind: u32,
    out_kind: u32,
    mixed: u32,
    base: [u32; 2],
    key: [u32; 2],
    row_len: u32,
    packed_len: u32,
    first_byte_col: u32,
    elements: u32,
}

/// What the encode kernel writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    U8 = 0,
    U16 = 1,
    Values = 2,
    Packed = 3,
}

/// The shader's input kind and bytes per element of `x`.
pub(crate) fn input_kind(x: &Values<'_>) -> (u32, usize) {
    match x {
        Values::F32(_) => (0, 4),
        Values::F16(_) => (1, 2),
        Values::Bf16(_) => (2, 2),
        Values::F64(_) => (3, 8),
    }
}

/// The raw bytes of elements `start..end` of `x`.
pub(crate) fn input_bytes<'a>(x: &Values<'a>, start: usize, end: usize) -> &'a [u8] {
    match *x {
        Values::F32(v) => bytemuck::cast_slice(&v[start..end]),
        Values::F64(v) => bytemuck::cast_slice(&v[start..end]),
        Values::F16(v) | Values::Bf16(v) => bytemuck::cast_slice(&v[start..end]),
    }
}

/// float32 bits of every code of `format` (the CPU's reference decoder).
pub(crate) fn value_table(format: &Format) -> Vec<u32> {
    (0..1u32 << format.bits())
        .map(|code| reference::decode_f32_bits(format, code))
        .collect()
}

/// Elements per chunk for `bytes_per_element` bytes in the widest binding,
/// a multiple of 1024 so packed words never straddle chunks.
pub(crate) fn chunk_elements(gpu: &Gpu, bytes_per_element: usize) -> usize {
    ((gpu.max_binding_bytes() as usize / bytes_per_element) / 1024 * 1024).max(1024)
}

/// One run of the encode kernel over all of `x`: returns the output words.
struct Job<'a> {
    x: Values<'a>,
    codecs: Vec<GpuCodec>,
    table: Vec<u32>,
    labels: Option<&'a [i64]>,
    key: [u32; 2],
}

impl Job<'_> {
    fn new<'a>(x: Values<'a>, codecs: &[Codec], labels: Option<&'a [i64]>) -> Job<'a> {
        let mut table = Vec::new();
        let mut gpu_codecs = Vec::new();
        for c in codecs {
            gpu_codecs.push(GpuCodec::new(c, table.len() as u32));
            table.extend(value_table(&c.format));
        }
        Job {
            x,
            codecs: gpu_codecs,
            table,
            labels,
            key: codecs[0].key,
        }
    }

    /// Elementwise output (`Out::U8`, `U16`, `Values`) as little-endian words.
    fn run(&self, out: Out) -> Result<Vec<u32>> {
        let gpu = context()?;
        let n = self.x.len();
        let (in_kind, in_bytes) = input_kind(&self.x);
        let widest = in_bytes
            .max(if self.labels.is_some() { 8 } else { 0 })
            .max(4);
        let chunk = chunk_elements(gpu, widest);
        let pipeline = gpu.pipeline(&ENCODE, "encode")?;
        let codecs = gpu.upload(&self.codecs);
        let table = gpu.upload(&self.table);
        let no_labels = gpu.storage(4);
        let mut words = Vec::new();
        for start in (0..n).step_by(chunk) {
            let count = chunk.min(n - start);
            let input = gpu.upload(input_bytes(&self.x, start, start + count));
            let chunk_labels;
            let labels = match self.labels {
                Some(l) => {
                    chunk_labels = gpu.upload(&l[start..start + count]);
                    &chunk_labels
                }
                None => &no_labels,
            };
            let out_words = match out {
                Out::U8 => count.div_ceil(4),
                Out::U16 => count.div_ceil(2),
                _ => count,
            };
            let params = gpu.uniform(&EncodeParams {
                count: count as u32,
                in_kind,
                out_kind: out as u32,
                mixed: u32::from(self.labels.is_some()),
                base: split64(start as u64),
                key: self.key,
                ..Default::default()
            });
            let output = gpu.storage(4 * out_words as u64);
            gpu.run(
                &pipeline,
                &[&params, &input, &codecs, labels, &table, &output],
                (out_words as u32).div_ceil(WORKGROUP),
            );
            words.extend(gpu.read::<u32>(&output, out_words)?);
        }
        Ok(words)
    }

    /// 4-bit codes packed two per byte along rows of `row_len`.
    fn run_packed(&self, row_len: usize) -> Result<Vec<u8>> {
        let gpu = context()?;
        let n = self.x.len();
        let rows = rows_of(n, row_len)?;
        let packed_len = row_len.div_ceil(2);
        let total = rows * packed_len;
        let (in_kind, in_bytes) = input_kind(&self.x);
        // A chunk of b bytes reads at most 2b elements.
        let chunk = chunk_elements(gpu, 2 * in_bytes.max(2));
        let pipeline = gpu.pipeline(&ENCODE, "encode")?;
        let codecs = gpu.upload(&self.codecs);
        let table = gpu.upload(&self.table);
        let labels = gpu.storage(4);
        // The element where packed byte b starts.
        let element_of = |b: usize| {
            if b >= total {
                n
            } else {
                b / packed_len * row_len + 2 * (b % packed_len)
            }
        };
        let mut out = Vec::with_capacity(total);
        for start in (0..total).step_by(chunk) {
            let count = chunk.min(total - start);
            let (e0, e1) = (element_of(start), element_of(start + count));
            let input = gpu.upload(input_bytes(&self.x, e0, e1));
            let params = gpu.uniform(&EncodeParams {
                count: count as u32,
                in_kind,
                out_kind: Out::Packed as u32,
                base: split64(e0 as u64),
                key: self.key,
                row_len: row_len as u32,
                packed_len: packed_len as u32,
                first_byte_col: (start % packed_len) as u32,
                elements: (e1 - e0) as u32,
                ..Default::default()
            });
            let words = count.div_ceil(4);
            let output = gpu.storage(4 * words as u64);
            gpu.run(
                &pipeline,
                &[&params, &input, &codecs, &labels, &table, &output],
                (words as u32).div_ceil(WORKGROUP),
            );
            let got = gpu.read::<u32>(&output, words)?;
            out.extend_from_slice(&bytemuck::cast_slice::<u32, u8>(&got)[..count]);
        }
        Ok(out)
    }
}

fn split64(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

fn rows_of(len: usize, row_len: usize) -> Result<usize> {
    if row_len == 0 {
        if len == 0 {
            return Ok(0);
        }
        return Err(CoreError::Shape(format!(
            "codes: {len} elements are not whole rows of {row_len}"
        ))
        .into());
    }
    if !len.is_multiple_of(row_len) {
        return Err(CoreError::Shape(format!(
            "codes: {len} elements are not whole rows of {row_len}"
        ))
        .into());
    }
    Ok(len / row_len)
}

fn words_to_u8(words: &[u32], n: usize) -> Vec<u8> {
    bytemuck::cast_slice::<u32, u8>(words)[..n].to_vec()
}

fn words_to_u16(words: &[u32], n: usize) -> Vec<u16> {
    bytemuck::cast_slice::<u32, u16>(words)[..n].to_vec()
}

/// R(x) as codes of `format`, as [`lowp::encode`] gives them.
pub fn encode(x: Values<'_>, format: &Format, options: Options) -> Result<Codes> {
    let format = for_input(format, &x);
    let codec = Codec::new(format, options)?;
    let n = x.len();
    if n == 0 {
        return Ok(if format.bits() <= 8 {
            Codes::U8(Vec::new())
        } else {
            Codes::U16(Vec::new())
        });
    }
    let job = Job::new(x, &[codec], None);
    Ok(if format.bits() <= 8 {
        Codes::U8(words_to_u8(&job.run(Out::U8)?, n))
    } else {
        Codes::U16(words_to_u16(&job.run(Out::U16)?, n))
    })
}

/// 4-bit codes of R(x) packed two per byte along rows of `row_len`, as
/// [`lowp::encode`] followed by [`lowp::pack_nibbles`] gives them.
pub fn encode_packed(
    x: Values<'_>,
    row_len: usize,
    format: &Format,
    options: Options,
) -> Result<Vec<u8>> {
    lowp::check_packable(format)?;
    let format = for_input(format, &x);
    let codec = Codec::new(format, options)?;
    if x.is_empty() {
        rows_of(0, row_len)?;
        return Ok(Vec::new());
    }
    Job::new(x, &[codec], None).run_packed(row_len)
}

/// R(x): the values of the codes, float32 (float64 for float64 input), as
/// [`lowp::round`] gives them.
pub fn round(x: Values<'_>, format: &Format, options: Options) -> Result<Rounded> {
    let format = for_input(format, &x);
    let codec = Codec::new(format, options)?;
    let words = if x.is_empty() {
        Vec::new()
    } else {
        Job::new(x, &[codec], None).run(Out::Values)?
    };
    Ok(rounded(&x, words))
}

fn rounded(x: &Values<'_>, words: Vec<u32>) -> Rounded {
    if matches!(x, Values::F64(_)) {
        Rounded::F64(
            words
                .into_iter()
                .map(|b| f64::from(f32::from_bits(b)))
                .collect(),
        )
    } else {
        Rounded::F32(words.into_iter().map(f32::from_bits).collect())
    }
}

/// Element i rounded to `formats[labels[i]]`, as [`lowp::round_mixed`] gives it.
pub fn round_mixed(
    x: Values<'_>,
    labels: &[i64],
    formats: &[Format],
    options: Options,
) -> Result<Rounded> {
    let codecs = lowp::mixed_codecs(&x, labels, formats, options)?;
    let words = if x.is_empty() {
        Vec::new()
    } else {
        Job::new(x, &codecs, Some(labels)).run(Out::Values)?
    };
    Ok(rounded(&x, words))
}

/// Codes of ≤ 8-bit or 16-bit formats (`code_bytes` 1 or 2, little-endian
/// bytes) decoded to float32, exactly as [`lowp::decode_u8`] /
/// [`lowp::decode_u16`] decode them.
pub fn decode(code_bytes: &[u8], width: usize, format: &Format) -> Result<Vec<f32>> {
    let gpu = context()?;
    let n = code_bytes.len() / width;
    let codes_in_format = 1u32 << format.bits().min(16);
    // The table is the CPU decoder applied to every code: exact by construction.
    let table = if width == 1 {
        lowp::check_codes(code_bytes, format, "codes")?;
        let all: Vec<u8> = (0..codes_in_format.min(256)).map(|c| c as u8).collect();
        lowp::decode_u8(&all, format)?
    } else {
        let codes: &[u16] = bytemuck::cast_slice(code_bytes);
        lowp::check_codes(codes, format, "codes")?;
        let all: Vec<u16> = (0..codes_in_format).map(|c| c as u16).collect();
        lowp::decode_u16(&all, format)?
    };
    let table = gpu.upload(&table);
    let pipeline = gpu.pipeline(&DECODE, "decode")?;
    let mut out = Vec::with_capacity(n);
    // Chunks fit one binding on the output side (4 bytes per code).
    let chunk = chunk_elements(gpu, 4);
    for start in (0..n).step_by(chunk) {
        let count = chunk.min(n - start);
        let codes = gpu.upload(&code_bytes[start * width..(start + count) * width]);
        let params = gpu.uniform(&DecodeParams {
            count: count as u32,
            code_bytes: width as u32,
            _pad: [0; 2],
        });
        let values = gpu.storage(4 * count as u64);
        gpu.run(
            &pipeline,
            &[&params, &codes, &table, &values],
            (count as u32).div_ceil(WORKGROUP),
        );
        out.extend(gpu.read::<f32>(&values, count)?);
    }
    Ok(out)
}
