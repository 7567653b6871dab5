//! NVFP4 with torchao's semantics (`nvfp4_tensor.py`, see
//! `shared/reference/quant-formats.md` §1): blocks of 16 along a row,
//! E2M1 elements, float8_e4m3fn block scales, optional float32 per-tensor
//! scale. Everything is float32 arithmetic, in this order:
//!
//! * single level: `bs = e4m3(clamp(amax/6, 2^-6, 448))`, `y = x·(1/bs)`;
//! * two level:    `bs = e4m3(clamp((amax/6)/pts, 2^-6, 448))`,
//!   `y = x·((1/pts)/bs)`;
//!
//! then `clamp(y, −6, 6)` rounded to E2M1 (nearest-even). NaN anywhere in a
//! block makes amax NaN, hence the NaN scale 0x7F; as in torchao's bit
//! tricks a NaN element gets the code ±6. Decoding is `e2m1 · (bs · pts)`.
//! float64 input is converted to float32 first, as torchao does.
//!
//! Unlike torchao, a row length that is not a multiple of 16 is allowed:
//! the last block is shorter and its scale comes from its own elements.

use rayon::prelude::*;

use super::codec::{Codec, Options, Overflow, Rounding};
use super::fast::{self, DecodeTable, Lanes};
use super::format::Format;
use super::{rows_of, Values};
use crate::error::{CoreError, Result};

/// Elements per NVFP4 block.
pub const BLOCK: usize = 16;
const E2M1_MAX: f32 = 6.0;
const E4M3_MAX: f32 = 448.0;
const E4M3_TINY: f32 = 0.015_625; // 2^-6, torch.finfo(float8_e4m3fn).tiny

struct Codecs {
    e4m3: Lanes,
    e2m1: Lanes,
    e4m3_values: DecodeTable,
    e2m1_values: DecodeTable,
}

impl Codecs {
    fn new() -> Codecs {
        let rne = |name: &str, overflow: Option<Overflow>| {
            let f = Format::by_name(name).expect("predefined");
            let c = Codec::new(
                f,
                Options {
                    rounding: Rounding::NearestEven,
                    overflow,
                    seed: 0,
                },
            )
            .expect("valid options");
            (Lanes::new(&c), DecodeTable::new(&f))
        };
        let (e4m3, e4m3_values) = rne("float8_e4m3fn", None);
        let (e2m1, e2m1_values) = rne("float4_e2m1fn", Some(Overflow::Saturate));
        Codecs {
            e4m3,
            e2m1,
            e4m3_values,
            e2m1_values,
        }
    }
}

/// torchao's dynamic per-tensor scale `amax / (448·6)` in float32. Errors
/// if x holds NaN or Inf; an all-zero tensor gets 1.0 (torchao would
/// divide by zero).
pub fn per_tensor_scale(x: Values<'_>) -> Result<f32> {
    crate::threads::init_pool();
    let amax = (0..x.len())
        .into_par_iter()
        .with_min_len(fast::CHUNK)
        .map(|i| x.get_f32(i).abs())
        .reduce(
            || 0.0f32,
            |a, b| {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.max(b)
                }
            },
        );
    if !amax.is_finite() {
        return Err(CoreError::Value(
            "x holds NaN or Inf (or float64 values beyond float32's range, where the encoding works), \
             so per_tensor_scale=\"auto\" (amax/2688) is undefined; pass a float"
                .into(),
        ));
    }
    let scale = amax / (E4M3_MAX * E2M1_MAX);
    Ok(if scale > 0.0 { scale } else { 1.0 })
}

fn check_scale(pts: Option<f32>) -> Result<()> {
    match pts {
        Some(s) if !(s.is_finite() && s > 0.0) => Err(CoreError::Value(format!(
            "per_tensor_scale must be a positive finite float32, got {s}"
        ))),
        _ => Ok(()),
    }
}

/// Encodes rows of `row_len` values: returns E2M1 codes (one per byte) and
/// float8_e4m3fn scale codes, `ceil(row_len/16)` per row.
pub fn nvfp4_encode(
    x: Values<'_>,
    row_len: usize,
    per_tensor_scale: Option<f32>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    check_scale(per_tensor_scale)?;
    let rows = rows_of(x.len(), row_len, "x")?;
    let blocks_per_row = row_len.div_ceil(BLOCK);
    let mut codes = vec![0u8; x.len()];
    let mut scales = vec![0u8; rows * blocks_per_row];
    let codecs = Codecs::new();
    crate::threads::init_pool();
    codes
        .par_chunks_mut(row_len.max(1))
        .zip(scales.par_chunks_mut(blocks_per_row.max(1)))
        .enumerate()
        .for_each(|(row, (code_row, scale_row))| {
            let base = row * row_len;
            for (j, (out, scale)) in code_row
                .chunks_mut(BLOCK)
                .zip(scale_row.iter_mut())
                .enumerate()
            {
                let start = base + j * BLOCK;
                *scale = encode_block(&codecs, &x, start, out, per_tensor_scale);
            }
        });
    Ok((codes, scales))
}

fn encode_block(c: &Codecs, x: &Values<'_>, start: usize, out: &mut [u8], pts: Option<f32>) -> u8 {
    let mut amax = 0.0f32;
    for i in 0..out.len() {
        let a = x.get_f32(start + i).abs();
        amax = if a.is_nan() || amax.is_nan() {
            f32::NAN
        } else {
            amax.max(a)
        };
    }
    let block_scale = amax / E2M1_MAX;
    let wanted = match pts {
        None => block_scale,
        Some(p) => block_scale / p,
    };
    // f32::clamp keeps NaN, as torch.clamp does.
    let scale_code = fast::encode_lane(&c.e4m3, wanted.clamp(E4M3_TINY, E4M3_MAX).to_bits(), 0);
    let scale = f32::from_bits(c.e4m3_values.get(scale_code));
    let multiplier = match pts {
        None => 1.0 / scale,
        Some(p) => (1.0 / p) / scale,
    };
    for (i, o) in out.iter_mut().enumerate() {
        let y = (x.get_f32(start + i) * multiplier).clamp(-E2M1_MAX, E2M1_MAX);
        *o = if y.is_nan() {
            0x7 | (((y.to_bits() >> 31) as u8) << 3)
        } else {
            fast::encode_lane(&c.e2m1, y.to_bits(), 0) as u8
        };
    }
    scale_code as u8
}

/// Decodes NVFP4 codes (one per byte) and e4m3 scale codes to float32.
pub fn nvfp4_decode(
    codes: &[u8],
    scales: &[u8],
    row_len: usize,
    per_tensor_scale: Option<f32>,
) -> Result<Vec<f32>> {
    check_scale(per_tensor_scale)?;
    let rows = rows_of(codes.len(), row_len, "codes")?;
    let blocks_per_row = row_len.div_ceil(BLOCK);
    if scales.len() != rows * blocks_per_row {
        return Err(CoreError::Shape(format!(
            "scales has {} elements but {rows} rows of {row_len} need {} ({blocks_per_row} blocks of 16 per row)",
            scales.len(),
            rows * blocks_per_row
        )));
    }
    if let Some(i) = codes.par_iter().position_first(|&c| c > 15) {
        return Err(CoreError::Value(format!(
            "codes: code {} at flat index {i} is out of range for float4_e2m1fn (0..15)",
            codes[i]
        )));
    }
    let c = Codecs::new();
    let mut out = vec![0f32; codes.len()];
    crate::threads::init_pool();
    out.par_chunks_mut(row_len.max(1))
        .zip(codes.par_chunks(row_len.max(1)))
        .zip(scales.par_chunks(blocks_per_row.max(1)))
        .for_each(|((o, cr), sr)| {
            for (j, (ob, cb)) in o.chunks_mut(BLOCK).zip(cr.chunks(BLOCK)).enumerate() {
                let mut scale = f32::from_bits(c.e4m3_values.get(sr[j] as u32));
                if let Some(p) = per_tensor_scale {
                    scale *= p;
                }
                for (v, &code) in ob.iter_mut().zip(cb) {
                    *v = f32::from_bits(c.e2m1_values.get(code as u32)) * scale;
                }
            }
        });
    Ok(out)
}
