//! Integer quantization on the GPU: quantize, fake-quantize, dequantize and
//! range calibration, bit for bit as `quantdrift_core::quant` computes them.
//!
//! The functions take the core's arguments and make the core's checks
//! first (same errors, same messages). The shader (`shaders/quant.wgsl`)
//! works on bit patterns in integer arithmetic, reproducing the CPU's
//! float64 quotient, float32 reciprocal product, every rounding mode
//! (stochastic included: the same counter-based draws) and the float64 →
//! float32 rounding of dequantized values; see the shader's header.
//!
//! What runs on the CPU instead (the core's kernels, same results):
//!
//! * float64 inputs, float64 scales that are not float32 values, scales
//!   outside [2^−126, 2^126] and zero-points or ranges beyond ±2^23 for
//!   quantize / fake-quantize (the parameters the core's `fast32` flag
//!   rejects): their x/s would need float64 significands, which WGSL lacks;
//! * dequantization with scales that are not normal float32 values;
//! * percentile and MSE calibration (sorting and an 80-step search per
//!   part; absmax/minmax calibration runs on the GPU as a min/max reduction);
//! * tensors of 2^32 elements or more, and chunks whose parts' parameters
//!   would not fit one binding (labels scattered over a huge number of parts).
//!
//! [`runs_on_gpu`] tells which path a quantize call takes.

use quantdrift_core::lowp::{Rounded, Rounding, Values};
use quantdrift_core::quant::calibrate::{self as cal, Calibration, Method, Ranges, Style};
use quantdrift_core::quant::{
    self, Arith, CodeType, Codes, CodesRef, Options, Partition, Plan, QParams, Resolved,
};

use crate::context::{context, Gpu, WORKGROUP};
use crate::error::Result;
use crate::shaders::Shader;

const SHADER: Shader = Shader::new(
    "quant",
    concat!(
        include_str!("shaders/bits.wgsl"),
        include_str!("shaders/quant.wgsl")
    ),
);

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    start_lo: u32,
    start_hi: u32,
    part_lo: u32,
    mode: u32,
    arith: u32,
    input: u32,
    width: u32,
    signed: u32,
    labels: u32,
    ndim: u32,
    row_len: u32,
    key0: u32,
    key1: u32,
    f64_out: u32,
    _pad: u32,
}

/// The partition as the shader walks it.
struct Layout<'a> {
    plan: &'a Plan<'a>,
    /// (extent, tile, part stride, 0) per axis, for tiles.
    axes: Vec<[u32; 4]>,
    row_len: usize,
    grid_last: usize,
}

impl<'a> Layout<'a> {
    /// None when an extent does not fit 32 bits.
    fn new(plan: &'a Plan<'a>) -> Option<Layout<'a>> {
        if plan.len > u32::MAX as usize || plan.parts > u32::MAX as usize {
            return None;
        }
        match plan.tiles() {
            Some((shape, tile, stride)) => {
                let mut axes = Vec::with_capacity(shape.len());
                for a in 0..shape.len() {
                    axes.push([
                        u32::try_from(shape[a]).ok()?,
                        u32::try_from(tile[a]).ok()?,
                        u32::try_from(stride[a]).ok()?,
                        0,
                    ]);
                }
                let row_len = *shape.last().unwrap_or(&1);
                let grid_last = row_len.div_ceil(*tile.last().unwrap_or(&1));
                Some(Layout {
                    plan,
                    axes,
                    row_len,
                    grid_last,
                })
            }
            None => Some(Layout {
                plan,
                axes: vec![[1, 1, 1, 0]],
                row_len: 1,
                grid_last: 1,
            }),
        }
    }

    fn row_base(&self, mut row: usize) -> usize {
        let mut base = 0;
        for ax in self.axes[..self.axes.len() - 1].iter().rev() {
            let (extent, tile, stride) = (ax[0] as usize, ax[1] as usize, ax[2] as usize);
            base += (row % extent) / tile * stride;
            row /= extent;
        }
        base
    }

    /// Parts `[lo, hi)` that elements `start..end` (non-empty) touch.
    fn part_range(&self, start: usize, end: usize) -> (usize, usize) {
        match self.plan.labels() {
            Some(ids) => {
                let s = &ids[start..end];
                let lo = s.iter().copied().min().unwrap_or(0) as usize;
                let hi = s.iter().copied().max().unwrap_or(0) as usize;
                (lo, hi + 1)
            }
            None => {
                let lo = self.row_base(start / self.row_len);
                let hi = self.row_base((end - 1) / self.row_len) + self.grid_last;
                (lo, hi)
            }
        }
    }

    /// The part-id buffer of a chunk (labels), relative ids being formed
    /// in the shader.
    fn ids(&self, gpu: &Gpu, start: usize, end: usize) -> wgpu::Buffer {
        match self.plan.labels() {
            Some(ids) => {
                let v: Vec<u32> = ids[start..end].iter().map(|&l| l as u32).collect();
                gpu.upload(&v)
            }
            None => gpu.upload(&[0u32]),
        }
    }

    fn params(&self, start: usize, count: usize, part_lo: usize) -> Params {
        Params {
            count: count as u32,
            start_lo: start as u32,
            start_hi: (start as u64 >> 32) as u32,
            part_lo: part_lo as u32,
            labels: self.plan.labels().is_some() as u32,
            ndim: self.axes.len() as u32,
            row_len: self.row_len as u32,
            ..Params::default()
        }
    }
}

/// Elements per chunk: every binding (4 bytes per element in, 8 out at
/// most) within the device's limit; a multiple of 32 (one invocation's codes).
fn chunk_len(gpu: &Gpu) -> usize {
    ((gpu.max_binding_bytes() / 8) as usize / 32 * 32).max(32)
}

/// The chunks of `n` elements with their part ranges, or None when some
/// chunk's parameters (32 bytes a part) would not fit one binding.
fn chunks(gpu: &Gpu, layout: &Layout<'_>, n: usize) -> Option<Vec<(usize, usize, usize, usize)>> {
    let step = chunk_len(gpu);
    let max_parts = (gpu.max_binding_bytes() / 32) as usize;
    let mut out = Vec::new();
    for start in (0..n).step_by(step) {
        let end = (start + step).min(n);
        let (lo, hi) = layout.part_range(start, end);
        if hi - lo > max_parts {
            return None;
        }
        out.push((start, end, lo, hi));
    }
    Some(out)
}

fn normal_f32(s: f64) -> bool {
    s as f32 as f64 == s && (f32::MIN_POSITIVE as f64..=f32::MAX as f64).contains(&s)
}

/// Per-part parameters `[lo, hi)` as the shader reads them.
fn part_table(r: &Resolved<'_>, arith: Arith, lo: usize, hi: usize) -> Vec<[u32; 8]> {
    (lo..hi)
        .map(|j| {
            let mult = match arith {
                Arith::Divide => (r.s(j) as f32).to_bits(),
                Arith::Reciprocal32 => r.a32(j).to_bits(),
            };
            let (qmin, qmax) = r.bounds(j);
            [
                mult,
                r.zp(j) as u32,
                qmin as u32,
                qmax as u32,
                (r.s(j) as f32).to_bits(),
                0,
                0,
                0,
            ]
        })
        .collect()
}

fn rounding_mode(r: Rounding) -> u32 {
    match r {
        Rounding::NearestEven => 0,
        Rounding::NearestAway => 1,
        Rounding::TowardZero => 2,
        Rounding::Down => 3,
        Rounding::Up => 4,
        Rounding::Stochastic => 5,
    }
}

/// The input's words (float32 bits, or 16-bit codes two per word) for
/// elements `start..end`, and the shader's input kind.
fn input_words(x: &Values<'_>, start: usize, end: usize) -> (Vec<u32>, u32) {
    match x {
        Values::F32(v) => (v[start..end].iter().map(|f| f.to_bits()).collect(), 0),
        Values::F16(v) => (pairs(&v[start..end]), 1),
        Values::Bf16(v) => (pairs(&v[start..end]), 2),
        Values::F64(_) => unreachable!("float64 input runs on the CPU"),
    }
}

fn pairs(v: &[u16]) -> Vec<u32> {
    v.chunks(2)
        .map(|p| p[0] as u32 | (*p.get(1).unwrap_or(&0) as u32) << 16)
        .collect()
}

/// Whether [`quantize`] / [`fake_quantize`] with these arguments run on
/// the GPU (otherwise they run the CPU kernels); errors are the core's.
pub fn runs_on_gpu(x: Values<'_>, partition: &Partition<'_>, params: &QParams<'_>) -> Result<bool> {
    let plan = Plan::new(partition, x.len())?;
    let r = Resolved::new(&plan, params)?;
    Ok(quant_plan(&x, &plan, &r).is_some())
}

/// The layout and chunks when the GPU path applies.
#[allow(clippy::type_complexity)]
fn quant_plan<'a>(
    x: &Values<'_>,
    plan: &'a Plan<'a>,
    r: &Resolved<'_>,
) -> Option<(Layout<'a>, Vec<(usize, usize, usize, usize)>)> {
    if matches!(x, Values::F64(_)) || !r.fast32 {
        return None;
    }
    let gpu = context().ok()?;
    let layout = Layout::new(plan)?;
    let chunks = chunks(gpu, &layout, x.len())?;
    Some((layout, chunks))
}

/// What one chunk's kernel needs besides the per-call parameters.
struct Chunk {
    params: wgpu::Buffer,
    data: wgpu::Buffer,
    ids: wgpu::Buffer,
    parts: wgpu::Buffer,
}

#[allow(clippy::too_many_arguments)]
fn quant_chunk(
    gpu: &Gpu,
    layout: &Layout<'_>,
    x: &Values<'_>,
    r: &Resolved<'_>,
    opts: &Options,
    (start, end, lo, hi): (usize, usize, usize, usize),
    width: u32,
) -> Chunk {
    let (words, input) = input_words(x, start, end);
    let key = quantdrift_core::lowp::codec::seed_key(opts.seed);
    let p = Params {
        mode: rounding_mode(opts.rounding),
        arith: (opts.arith == Arith::Reciprocal32) as u32,
        input,
        width,
        key0: key[0],
        key1: key[1],
        ..layout.params(start, end - start, lo)
    };
    Chunk {
        params: gpu.uniform(&p),
        data: gpu.upload(&words),
        ids: layout.ids(gpu, start, end),
        parts: gpu.upload(&part_table(r, opts.arith, lo, hi)),
    }
}

/// Q(x) as [`quant::quantize`] computes it: codes and the number of
/// clipped elements.
pub fn quantize(
    x: Values<'_>,
    partition: &Partition<'_>,
    params: &QParams<'_>,
    code_type: CodeType,
    opts: &Options,
) -> Result<(Codes, u64)> {
    let gpu = context()?;
    let plan = Plan::new(partition, x.len())?;
    let r = Resolved::new(&plan, params)?;
    quant::check_code_type(params, code_type)?;
    let Some((layout, chunks)) = quant_plan(&x, &plan, &r) else {
        return Ok(quant::quantize(x, partition, params, code_type, opts)?);
    };
    let width = match code_type {
        CodeType::I8 | CodeType::U8 => 8,
        CodeType::I16 | CodeType::U16 => 16,
        CodeType::I32 => 32,
        CodeType::Packed { bits, .. } => bits,
    };
    let pipeline = gpu.pipeline(&SHADER, "quantize")?;
    let n = x.len();
    let mut bytes: Vec<u8> = Vec::with_capacity((n * width as usize).div_ceil(8));
    let mut clipped = 0u64;
    let axes = axes(gpu, &layout);
    for c in chunks {
        let (start, end) = (c.0, c.1);
        let ch = quant_chunk(gpu, &layout, &x, &r, opts, c, width);
        let count = end - start;
        let groups32 = count.div_ceil(32);
        let out = gpu.storage((groups32 * width as usize * 4) as u64);
        let counter = gpu.storage(4);
        gpu.run(
            &pipeline,
            &[
                &ch.params, &ch.data, &ch.ids, &axes, &ch.parts, &out, &counter,
            ],
            (groups32 as u32).div_ceil(WORKGROUP),
        );
        let words = gpu.read::<u32>(&out, groups32 * width as usize)?;
        let nbytes = (count * width as usize).div_ceil(8);
        bytes.extend(words.iter().flat_map(|w| w.to_le_bytes()).take(nbytes));
        clipped += gpu.read::<u32>(&counter, 1)?[0] as u64;
    }
    let codes = match code_type {
        CodeType::I8 => Codes::I8(bytes.iter().map(|&b| b as i8).collect()),
        CodeType::U8 => Codes::U8(bytes),
        CodeType::I16 => Codes::I16(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        CodeType::U16 => Codes::U16(
            bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        CodeType::I32 => Codes::I32(
            bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        CodeType::Packed { bits, signed } => Codes::Packed {
            data: bytes,
            bits,
            signed,
            len: n,
        },
    };
    Ok((codes, clipped))
}

fn axes(gpu: &Gpu, layout: &Layout<'_>) -> wgpu::Buffer {
    gpu.upload(&layout.axes)
}

/// Q̃(Q(x)) as [`quant::fake_quantize`] computes it (float32; float64
/// input runs on the CPU) and the number of clipped elements.
pub fn fake_quantize(
    x: Values<'_>,
    partition: &Partition<'_>,
    params: &QParams<'_>,
    opts: &Options,
) -> Result<(Rounded, u64)> {
    let gpu = context()?;
    let plan = Plan::new(partition, x.len())?;
    let r = Resolved::new(&plan, params)?;
    let Some((layout, chunks)) = quant_plan(&x, &plan, &r) else {
        return Ok(quant::fake_quantize(x, partition, params, opts)?);
    };
    let pipeline = gpu.pipeline(&SHADER, "fake")?;
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    let mut clipped = 0u64;
    let axes = axes(gpu, &layout);
    for c in chunks {
        let count = c.1 - c.0;
        let ch = quant_chunk(gpu, &layout, &x, &r, opts, c, 32);
        let out = gpu.storage(4 * count as u64);
        let counter = gpu.storage(4);
        gpu.run(
            &pipeline,
            &[
                &ch.params, &ch.data, &ch.ids, &axes, &ch.parts, &out, &counter,
            ],
            (count as u32).div_ceil(WORKGROUP),
        );
        y.extend(gpu.read::<f32>(&out, count)?);
        clipped += gpu.read::<u32>(&counter, 1)?[0] as u64;
    }
    Ok((Rounded::F32(y), clipped))
}

/// Q̃(codes) = s·(n − b) as [`quant::dequantize`] computes it.
pub fn dequantize(
    codes: CodesRef<'_>,
    partition: &Partition<'_>,
    scale: &[f64],
    zero_point: &[i32],
    f64_out: bool,
) -> Result<Rounded> {
    let gpu = context()?;
    let (plan, r) = quant::dequantize_plan(codes, partition, scale, zero_point)?;
    let cpu = || quant::dequantize(codes, partition, scale, zero_point, f64_out);
    if !scale.iter().all(|&s| normal_f32(s)) {
        return Ok(cpu()?);
    }
    let Some(layout) = Layout::new(&plan) else {
        return Ok(cpu()?);
    };
    let n = codes.len();
    let Some(chunks) = chunks(gpu, &layout, n) else {
        return Ok(cpu()?);
    };
    let (width, signed, bytes): (u32, bool, &[u8]) = match codes {
        CodesRef::I8(v) => (8, true, bytemuck::cast_slice(v)),
        CodesRef::U8(v) => (8, false, v),
        CodesRef::I16(v) => (16, true, bytemuck::cast_slice(v)),
        CodesRef::U16(v) => (16, false, bytemuck::cast_slice(v)),
        CodesRef::I32(v) => (32, true, bytemuck::cast_slice(v)),
        CodesRef::Packed {
            data, bits, signed, ..
        } => (bits, signed, data),
    };
    let pipeline = gpu.pipeline(&SHADER, "dequantize")?;
    let axes = axes(gpu, &layout);
    let words_out = if f64_out { 2 } else { 1 };
    let mut out_words: Vec<u32> = Vec::with_capacity(n * words_out);
    for (start, end, lo, hi) in chunks {
        let count = end - start;
        let w = width as usize;
        let data = &bytes[start * w / 8..(end * w).div_ceil(8)];
        let p = Params {
            width,
            signed: signed as u32,
            f64_out: f64_out as u32,
            ..layout.params(start, count, lo)
        };
        let out = gpu.storage((4 * words_out * count) as u64);
        let counter = gpu.storage(4);
        gpu.run(
            &pipeline,
            &[
                &gpu.uniform(&p),
                &gpu.upload(data),
                &layout.ids(gpu, start, end),
                &axes,
                // dequantization reads s and b only, not the multiplier
                &gpu.upload(&part_table(&r, Arith::Divide, lo, hi)),
                &out,
                &counter,
            ],
            (count as u32).div_ceil(WORKGROUP),
        );
        out_words.extend(gpu.read::<u32>(&out, words_out * count)?);
    }
    Ok(if f64_out {
        Rounded::F64(
            out_words
                .chunks_exact(2)
                .map(|w| f64::from_bits(w[0] as u64 | (w[1] as u64) << 32))
                .collect(),
        )
    } else {
        Rounded::F32(out_words.into_iter().map(f32::from_bits).collect())
    })
}

/// Scale and zero-point per part as [`quant::calibrate`] chooses them; the
/// absmax/minmax range of float32/float16/bfloat16 input is a GPU min/max
/// reduction, the rest runs on the CPU.
pub fn calibrate(
    x: Values<'_>,
    partition: &Partition<'_>,
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
) -> Result<(Vec<f64>, Vec<i32>)> {
    let gpu = context()?;
    let plan = Plan::new(partition, x.len())?;
    cal::check(x.len(), &plan, ranges, c)?;
    let cpu = || quant::calibrate(x, partition, ranges, c);
    if c.method != Method::Range || matches!(x, Values::F64(_)) {
        return Ok(cpu()?);
    }
    let Some(layout) = Layout::new(&plan) else {
        return Ok(cpu()?);
    };
    let Some(chunks) = chunks(gpu, &layout, x.len()) else {
        return Ok(cpu()?);
    };
    let k = plan.parts;
    let mut keys: Vec<[u32; 2]> = vec![[u32::MAX, 0]; k];
    let pipeline = gpu.pipeline(&SHADER, "minmax")?;
    let axes = axes(gpu, &layout);
    for (start, end, lo, hi) in chunks {
        let count = end - start;
        let (words, input) = input_words(&x, start, end);
        let p = Params {
            input,
            ..layout.params(start, count, lo)
        };
        let init: Vec<[u32; 2]> = vec![[u32::MAX, 0]; hi - lo];
        let acc = gpu.upload(&init);
        let groups32 = count.div_ceil(32);
        gpu.run(
            &pipeline,
            &[
                &gpu.uniform(&p),
                &gpu.upload(&words),
                &layout.ids(gpu, start, end),
                &axes,
                &gpu.upload(&[[0u32; 8]]),
                &gpu.storage(4),
                &acc,
            ],
            (groups32 as u32).div_ceil(WORKGROUP),
        );
        let got = gpu.read::<[u32; 2]>(&acc, hi - lo)?;
        for (j, g) in (lo..hi).zip(got) {
            keys[j][0] = keys[j][0].min(g[0]);
            keys[j][1] = keys[j][1].max(g[1]);
        }
    }
    let value = |key: u32| {
        let bits = if key & 0x8000_0000 != 0 {
            key & 0x7fff_ffff
        } else {
            !key
        };
        f32::from_bits(bits) as f64
    };
    let mut scale = Vec::with_capacity(k);
    let mut zero = Vec::with_capacity(k);
    for (j, [klo, khi]) in keys.into_iter().enumerate() {
        let (lo, hi) = if klo > khi {
            (0.0, 0.0)
        } else {
            (value(klo), value(khi))
        };
        let (qlo, qhi) = (ranges.qmin[j], ranges.qmax[j]);
        let (s, b) = match c.style {
            Style::Lecture => cal::lecture_params(lo, hi, qlo, qhi, c.symmetric, c.scale_f32),
            Style::Torchao { eps } => cal::torchao_params(lo, hi, qlo, qhi, c.symmetric, eps),
        };
        scale.push(s);
        zero.push(b);
    }
    Ok((scale, zero))
}
