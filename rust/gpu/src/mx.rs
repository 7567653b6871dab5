//! Block-scaled formats on the GPU: OCP MX (every element type and scale
//! mode) and NVFP4 (with or without a per-tensor scale), encode and decode,
//! bit-exact with `quantdrift_core::lowp::{mx, nvfp4}`.
//!
//! One invocation per block finds the block's amax and scale and encodes
//! its elements; the float32 arithmetic of the CPU kernels (RCEIL's and
//! NVFP4's divisions, the scaling multiplies) is done by a soft-float in
//! the shader, so subnormals, rounding and NaNs follow the CPU (x86 SSE)
//! exactly. Work is chunked by whole blocks.
//!
//! Falls back to the CPU: MX with float64 input (its scales and element
//! codes are computed in float64), and blocks too large for one binding.

use quantdrift_core::lowp::{
    codec::{describe, Overflow, Rounding},
    mx::{self, Element, ScaleMode},
    nvfp4, Codec, Format, Options, Values,
};
use quantdrift_core::CoreError;

use crate::context::{context, Gpu, WORKGROUP};
use crate::error::Result;
use crate::lowp::{chunk_elements, input_bytes, input_kind, value_table, GpuCodec};
use crate::shaders::Shader;

const BLOCK_ENCODE: Shader = Shader::new(
    "block_encode",
    concat!(
        include_str!("shaders/bits.wgsl"),
        include_str!("shaders/lowp_codec.wgsl"),
        include_str!("shaders/block_encode.wgsl")
    ),
);
const BLOCK_DECODE: Shader = Shader::new(
    "block_decode",
    concat!(
        include_str!("shaders/bits.wgsl"),
        include_str!("shaders/lowp_codec.wgsl"),
        include_str!("shaders/block_decode.wgsl")
    ),
);

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct EncodeParams {
    blocks: u32,
    row_len: u32,
    block: u32,
    blocks_per_row: u32,
    first_block_col: u32,
    in_kind: u32,
    int8: u32,
    emax: i32,
    mbits: u32,
    scale_mode: u32,
    elem_max: u32,
    pts: u32,
    has_pts: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct DecodeParams {
    count: u32,
    row_len: u32,
    block: u32,
    blocks_per_row: u32,
    first_block_col: u32,
    pts: u32,
    has_pts: u32,
    _pad: u32,
}

/// Rows of `row_len` elements in blocks of `block`: where blocks start.
#[derive(Clone, Copy)]
struct Layout {
    len: usize,
    row_len: usize,
    block: usize,
    blocks_per_row: usize,
    blocks: usize,
}

impl Layout {
    fn new(len: usize, row_len: usize, block: usize, arg: &str) -> Result<Layout> {
        if row_len == 0 && len != 0 {
            return Err(CoreError::Shape(format!(
                "{arg}: row length 0 cannot hold {len} elements"
            ))
            .into());
        }
        if row_len != 0 && !len.is_multiple_of(row_len) {
            return Err(CoreError::Shape(format!(
                "{arg}: {len} elements are not whole rows of {row_len}"
            ))
            .into());
        }
        let rows = len.checked_div(row_len).unwrap_or(0);
        let blocks_per_row = row_len.div_ceil(block);
        Ok(Layout {
            len,
            row_len,
            block,
            blocks_per_row,
            blocks: rows * blocks_per_row,
        })
    }

    /// The first element of block `b` (`len` past the last block).
    fn element(&self, b: usize) -> usize {
        if b >= self.blocks {
            self.len
        } else {
            b / self.blocks_per_row * self.row_len + b % self.blocks_per_row * self.block
        }
    }

    /// Chunks of whole blocks with at most `cap` elements each (a block
    /// larger than `cap` is its own chunk): (first block, end block).
    fn chunks(&self, cap: usize) -> Vec<(usize, usize)> {
        let per_chunk = (cap / self.block.max(1)).max(1);
        (0..self.blocks)
            .step_by(per_chunk)
            .map(|b0| (b0, (b0 + per_chunk).min(self.blocks)))
            .collect()
    }
}

fn rne_saturate(name: &str) -> Codec {
    rne_saturate_format(Format::by_name(name).expect("predefined format"))
}

fn rne_saturate_format(format: Format) -> Codec {
    Codec::new(
        format,
        Options {
            rounding: Rounding::NearestEven,
            overflow: Some(Overflow::Saturate),
            seed: 0,
        },
    )
    .expect("saturation is valid for every format")
}

/// Runs a block encoder over every chunk; returns (codes, scales).
fn encode_blocks(
    gpu: &Gpu,
    entry: &'static str,
    x: Values<'_>,
    layout: Layout,
    codecs: &[GpuCodec],
    table: Option<&[u32]>,
    base: EncodeParams,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let (in_kind, in_bytes) = input_kind(&x);
    let pipeline = gpu.pipeline(&BLOCK_ENCODE, entry)?;
    let codecs = gpu.upload(codecs);
    let table = table.map(|t| gpu.upload(t));
    let mut codes = Vec::with_capacity(layout.len);
    let mut scales = Vec::with_capacity(layout.blocks);
    for (b0, b1) in layout.chunks(chunk_elements(gpu, in_bytes)) {
        let (e0, e1) = (layout.element(b0), layout.element(b1));
        let input = gpu.upload(input_bytes(&x, e0, e1));
        let params = gpu.uniform(&EncodeParams {
            blocks: (b1 - b0) as u32,
            row_len: layout.row_len as u32,
            block: layout.block as u32,
            blocks_per_row: layout.blocks_per_row as u32,
            first_block_col: (b0 % layout.blocks_per_row) as u32,
            in_kind,
            ..base
        });
        let code_words = gpu.storage(((e1 - e0).div_ceil(4) * 4) as u64);
        let scale_words = gpu.storage(((b1 - b0).div_ceil(4) * 4) as u64);
        let mut buffers = vec![&params, &input, &codecs, &code_words, &scale_words];
        buffers.extend(table.as_ref());
        gpu.run(&pipeline, &buffers, ((b1 - b0) as u32).div_ceil(WORKGROUP));
        let c = gpu.read::<u32>(&code_words, (e1 - e0).div_ceil(4))?;
        codes.extend_from_slice(&bytemuck::cast_slice::<u32, u8>(&c)[..e1 - e0]);
        let s = gpu.read::<u32>(&scale_words, (b1 - b0).div_ceil(4))?;
        scales.extend_from_slice(&bytemuck::cast_slice::<u32, u8>(&s)[..b1 - b0]);
    }
    Ok((codes, scales))
}

/// Runs a block decoder over every chunk.
fn decode_blocks(
    gpu: &Gpu,
    entry: &'static str,
    codes: &[u8],
    scales: &[u8],
    layout: Layout,
    table: &[u32],
    base: DecodeParams,
) -> Result<Vec<f32>> {
    let pipeline = gpu.pipeline(&BLOCK_DECODE, entry)?;
    let table = gpu.upload(table);
    let mut out = Vec::with_capacity(layout.len);
    for (b0, b1) in layout.chunks(chunk_elements(gpu, 4)) {
        let (e0, e1) = (layout.element(b0), layout.element(b1));
        let code_buf = gpu.upload(&codes[e0..e1]);
        let scale_buf = gpu.upload(&scales[b0..b1]);
        let params = gpu.uniform(&DecodeParams {
            count: (e1 - e0) as u32,
            row_len: layout.row_len as u32,
            block: layout.block as u32,
            blocks_per_row: layout.blocks_per_row as u32,
            first_block_col: (b0 % layout.blocks_per_row) as u32,
            ..base
        });
        let values = gpu.storage(4 * (e1 - e0) as u64);
        gpu.run(
            &pipeline,
            &[&params, &code_buf, &scale_buf, &table, &values],
            ((e1 - e0) as u32).div_ceil(WORKGROUP),
        );
        out.extend(gpu.read::<f32>(&values, e1 - e0)?);
    }
    Ok(out)
}

/// Whether one block fits a binding (else the CPU takes the call).
fn block_fits(gpu: &Gpu, block: usize, bytes: usize) -> bool {
    block.saturating_mul(bytes) <= gpu.max_binding_bytes() as usize
}

// ---------------------------------------------------------------------------
// MX
// ---------------------------------------------------------------------------

/// [`mx::mx_encode`] on the GPU: element codes (one per byte) and E8M0
/// scale codes. float64 input runs on the CPU.
pub fn mx_encode(
    x: Values<'_>,
    row_len: usize,
    block: usize,
    elem: Element,
    mode: ScaleMode,
) -> Result<(Vec<u8>, Vec<u8>)> {
    if block == 0 {
        return Err(CoreError::Value("block must be at least 1".into()).into());
    }
    let layout = Layout::new(x.len(), row_len, block, "x")?;
    let gpu = context()?;
    if matches!(x, Values::F64(_)) || !block_fits(gpu, block, input_kind(&x).1) {
        return Ok(mx::mx_encode(x, row_len, block, elem, mode)?);
    }
    if layout.blocks == 0 {
        return Ok((vec![0; x.len()], Vec::new()));
    }
    // int8 elements need no codec; any valid one fills the binding.
    let codec = rne_saturate_format(
        elem.format()
            .unwrap_or(Format::by_name("float8_e4m3fn").expect("predefined format")),
    );
    let codecs = [GpuCodec::new(&codec, 0)];
    let base = EncodeParams {
        int8: u32::from(elem == Element::Int8),
        emax: elem.emax(),
        mbits: elem.mbits(),
        scale_mode: match mode {
            ScaleMode::Floor => 0,
            ScaleMode::Ceil => 1,
            ScaleMode::Even => 2,
            ScaleMode::Rceil => 3,
        },
        elem_max: (elem.max() as f32).to_bits(),
        ..Default::default()
    };
    encode_blocks(gpu, "mx_encode", x, layout, &codecs, None, base)
}

/// float32 bits of every element code (256 entries).
fn element_table(elem: Element) -> Vec<u32> {
    match elem.format() {
        Some(f) => {
            let mut t = value_table(&f);
            t.resize(256, 0);
            t
        }
        None => (0..=255u8)
            .map(|c| (f32::from(c as i8) * (1.0 / 64.0)).to_bits())
            .collect(),
    }
}

/// [`mx::mx_decode`] on the GPU.
pub fn mx_decode(
    codes: &[u8],
    scales: &[u8],
    row_len: usize,
    block: usize,
    elem: Element,
) -> Result<Vec<f32>> {
    if block == 0 {
        return Err(CoreError::Value("block must be at least 1".into()).into());
    }
    let layout = Layout::new(codes.len(), row_len, block, "x")?;
    let rows = codes.len().checked_div(row_len).unwrap_or(0);
    let bpr = layout.blocks_per_row;
    if scales.len() != rows * bpr {
        return Err(CoreError::Shape(format!(
            "scales has {} elements but {rows} rows of {row_len} in blocks of {block} need {} ({bpr} per row)",
            scales.len(),
            rows * bpr
        ))
        .into());
    }
    if let Some(f) = elem.format() {
        if f.bits() < 8 {
            if let Some(i) = codes.iter().position(|&c| u32::from(c) >> f.bits() != 0) {
                return Err(CoreError::Value(format!(
                    "codes: code {} at flat index {i} is out of range for {} elements (0..{})",
                    codes[i],
                    describe(&f),
                    (1u32 << f.bits()) - 1
                ))
                .into());
            }
        }
    }
    let gpu = context()?;
    if !block_fits(gpu, block, 4) {
        return Ok(mx::mx_decode(codes, scales, row_len, block, elem)?);
    }
    if codes.is_empty() {
        return Ok(Vec::new());
    }
    decode_blocks(
        gpu,
        "mx_decode",
        codes,
        scales,
        layout,
        &element_table(elem),
        DecodeParams::default(),
    )
}

// ---------------------------------------------------------------------------
// NVFP4
// ---------------------------------------------------------------------------

fn check_scale(pts: Option<f32>) -> Result<()> {
    match pts {
        Some(s) if !(s.is_finite() && s > 0.0) => Err(CoreError::Value(format!(
            "per_tensor_scale must be a positive finite float32, got {s}"
        ))
        .into()),
        _ => Ok(()),
    }
}

fn e4m3_default() -> Codec {
    let f = Format::by_name("float8_e4m3fn").expect("predefined format");
    Codec::new(f, Options::default()).expect("default options")
}

fn nvfp4_table() -> Vec<u32> {
    let mut t = value_table(&Format::by_name("float8_e4m3fn").expect("predefined format"));
    t.extend(value_table(
        &Format::by_name("float4_e2m1fn").expect("predefined format"),
    ));
    t
}

/// [`nvfp4::nvfp4_encode`] on the GPU (float64 input is rounded to float32
/// in the shader first, as on the CPU).
pub fn nvfp4_encode(
    x: Values<'_>,
    row_len: usize,
    per_tensor_scale: Option<f32>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    check_scale(per_tensor_scale)?;
    let layout = Layout::new(x.len(), row_len, nvfp4::BLOCK, "x")?;
    let gpu = context()?;
    if layout.blocks == 0 {
        return Ok((vec![0; x.len()], Vec::new()));
    }
    let codecs = [
        GpuCodec::new(&e4m3_default(), 0),
        GpuCodec::new(&rne_saturate("float4_e2m1fn"), 0),
    ];
    let base = EncodeParams {
        pts: per_tensor_scale.unwrap_or(1.0).to_bits(),
        has_pts: u32::from(per_tensor_scale.is_some()),
        ..Default::default()
    };
    encode_blocks(
        gpu,
        "nvfp4_encode",
        x,
        layout,
        &codecs,
        Some(&nvfp4_table()),
        base,
    )
}

/// [`nvfp4::nvfp4_decode`] on the GPU.
pub fn nvfp4_decode(
    codes: &[u8],
    scales: &[u8],
    row_len: usize,
    per_tensor_scale: Option<f32>,
) -> Result<Vec<f32>> {
    check_scale(per_tensor_scale)?;
    let layout = Layout::new(codes.len(), row_len, nvfp4::BLOCK, "codes")?;
    let rows = codes.len().checked_div(row_len).unwrap_or(0);
    let bpr = layout.blocks_per_row;
    if scales.len() != rows * bpr {
        return Err(CoreError::Shape(format!(
            "scales has {} elements but {rows} rows of {row_len} need {} ({bpr} blocks of 16 per row)",
            scales.len(),
            rows * bpr
        ))
        .into());
    }
    if let Some(i) = codes.iter().position(|&c| c > 15) {
        return Err(CoreError::Value(format!(
            "codes: code {} at flat index {i} is out of range for float4_e2m1fn (0..15)",
            codes[i]
        ))
        .into());
    }
    let gpu = context()?;
    if codes.is_empty() {
        return Ok(Vec::new());
    }
    let base = DecodeParams {
        pts: per_tensor_scale.unwrap_or(1.0).to_bits(),
        has_pts: u32::from(per_tensor_scale.is_some()),
        ..Default::default()
    };
    decode_blocks(
        gpu,
        "nvfp4_decode",
        codes,
        scales,
        layout,
        &nvfp4_table(),
        base,
    )
}
