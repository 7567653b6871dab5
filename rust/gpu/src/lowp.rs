//! Float-format kernels on the GPU.

use quantdrift_core::lowp::{self, Format};

use crate::context::{context, WORKGROUP};
use crate::error::Result;
use crate::shaders::Shader;

const DECODE: Shader = Shader::new("lowp_decode", include_str!("shaders/lowp_decode.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DecodeParams {
    count: u32,
    code_bytes: u32,
    _pad: [u32; 2],
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
    let chunk = ((gpu.max_binding_bytes() / 4) as usize / 1024 * 1024).max(1024);
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
