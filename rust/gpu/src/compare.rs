//! The comparison kernel (`quantdrift.compare`) on the GPU.
//!
//! [`compare_rows`] takes the arguments of the CPU kernel
//! ([`quantdrift_core::diverge::compare::compare_rows`]) and returns the
//! same per-token columns. Dense float32 / float16 / bfloat16 rows (any mix
//! of the two sides) run on the GPU, one workgroup per row pair, in chunks
//! that fit the device's bindings:
//!
//! 1. `scan`: both maxima and first argmax indices, the NaN/+inf and support
//!    flags, and per 4096-element block the sums of the exponentials
//!    w = e^((p − max)/τ) and v alike (float32 within a block, as the CPU
//!    sums float32 lanes over 16 groups); `overlap`: the top-k overlap
//!    counts, by radix select with the CPU's tie order.
//! 2. The host adds the block sums in float64 and derives, exactly as the
//!    CPU does, the per-row shift, e^(∓shift) and the float32 reciprocals of
//!    the totals.
//! 3. `sums`: per block the five sums of the CPU's cancellation-free forms
//!    of KL, reverse KL and JS; the host finishes each row in float64.
//!
//! Chunks are double-buffered: chunk i+1 is written into the second set of
//! input buffers (queued with chunk i's work) before chunk i's results are
//! read back, and chunk i's second pass is submitted together with chunk
//! i+1's first.
//!
//! Rows the CPU kernel sends to its float64 reference (a token with P > 0
//! and Q = 0 or the reverse, values past float32's range) and rows that are
//! invalid (NaN, +inf, all −inf) are recomputed by the CPU kernel, so their
//! values and error messages are the CPU's. Whole blocks go to the CPU when
//! the GPU cannot take them: float64 rows (WGSL has no float64), llama.cpp
//! and top-k bases (llama.cpp's own KL formula and the coarsened top-k
//! divergences are small, row-local work on decoded data), vocabularies of
//! 2^24 or more (argmax indices travel as float32), and rows larger than one
//! binding.

use std::borrow::Cow;

use quantdrift_core::diverge::compare::{self as cpu, Block, CompareOptions, TokenStats};
use quantdrift_core::rows::{bf16_to_f32, f16_to_f32};
use quantdrift_core::{simd, Dtype, Rows};

use crate::context::{context, Gpu};
use crate::error::Result;
use crate::shaders::{Shader, ROUND_MAGIC};

const SCAN: Shader = Shader::new(
    "compare_scan",
    concat!(
        include_str!("shaders/math32.wgsl"),
        include_str!("shaders/compare_common.wgsl"),
        include_str!("shaders/compare_scan.wgsl")
    ),
);
const SUMS: Shader = Shader::new(
    "compare_sums",
    concat!(
        include_str!("shaders/math32.wgsl"),
        include_str!("shaders/compare_common.wgsl"),
        include_str!("shaders/compare_sums.wgsl")
    ),
);
const TOPK: Shader = Shader::new(
    "compare_topk",
    concat!(
        include_str!("shaders/compare_common.wgsl"),
        include_str!("shaders/compare_topk.wgsl")
    ),
);

/// Elements per block of the shaders' sums (`BLK`).
const BLK: usize = 4096;
/// Words per row of the scan output before the block sums.
const HEAD: usize = 6;
/// Input bytes per side and chunk, at most: large enough to keep the device
/// busy, small enough that the next chunk's upload overlaps this one.
const CHUNK_BYTES: u64 = 64 << 20;
/// Scan flags (see compare_scan.wgsl).
const FLAG_ANY: u32 = 0b1111;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    off_p: u32,
    off_q: u32,
    dtype_p: u32,
    dtype_q: u32,
    nb: u32,
    n_sizes: u32,
    inv_t: f32,
    /// 1, 1.5·2^23, 1.5·2^23 (see shaders/math32.wgsl).
    one: f32,
    magic_a: f32,
    magic_b: f32,
    sizes: [u32; 8],
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    max_p: f32,
    max_q: f32,
    shift: f32,
    k: f32,
    k_r: f32,
    inv_sp: f32,
    inv_sq: f32,
    _pad: f32,
}

/// Whether the GPU kernel takes this block pair (the rest goes to the CPU
/// kernel; see the module documentation for why).
pub fn supported(base: &Block<'_>, other: &Block<'_>) -> bool {
    let dense = |b: &Block<'_>| matches!(b, Block::Dense(r) if r.dtype() != Dtype::F64);
    dense(base) && dense(other) && base.vocab() < (1 << 24)
}

/// Per-token statistics of rows `select` (all when `None`) of a block pair:
/// [`quantdrift_core::diverge::compare::compare_rows`] on the GPU, with the
/// same arguments, results (within 1e-5 relative, or 1e-7 absolute, for the
/// divergences and NLLs, equal for top-1 tokens and top-k overlaps) and errors.
pub fn compare_rows(
    base: Block<'_>,
    other: Block<'_>,
    select: Option<&[u32]>,
    tokens: Option<&[i32]>,
    opts: &CompareOptions,
) -> Result<TokenStats> {
    // The CPU kernel's own validation, on no rows.
    cpu::compare_rows(base, other, Some(&[][..]), tokens, opts)?;
    let gpu = context()?;
    let (Block::Dense(p), Block::Dense(q)) = (base, other) else {
        return Ok(cpu::compare_rows(base, other, select, tokens, opts)?);
    };
    let vocab = p.vocab();
    let widest = elem_bytes(p).max(elem_bytes(q)) as u64;
    let binding = gpu.max_binding_bytes();
    if !supported(&base, &other) || vocab as u64 * widest + 4 > binding {
        return Ok(cpu::compare_rows(base, other, select, tokens, opts)?);
    }
    let all: Vec<u32>;
    let rows: &[u32] = match select {
        Some(s) => s,
        None => {
            all = (0..p.rows() as u32).collect();
            &all
        }
    };
    let mut sizes = opts.topk.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let nb = vocab.div_ceil(BLK).max(1);
    let job = Job {
        gpu,
        p,
        q,
        rows,
        tokens,
        opts,
        sizes,
        vocab,
        nb,
        inv_t: (1.0 / opts.temperature) as f32,
    };
    job.run(binding)
}

fn elem_bytes(rows: Rows<'_>) -> usize {
    match rows {
        Rows::F32(..) => 4,
        Rows::F64(..) => 8,
        Rows::F16(..) | Rows::Bf16(..) => 2,
    }
}

fn dtype_code(rows: Rows<'_>) -> u32 {
    match rows {
        Rows::F16(..) => 1,
        Rows::Bf16(..) => 2,
        _ => 0,
    }
}

/// Element `i` of row `r` as float32.
fn value(rows: Rows<'_>, r: usize, i: usize) -> f32 {
    let at = r * rows.vocab() + i;
    match rows {
        Rows::F32(d, _) => d[at],
        Rows::F16(d, _) => f16_to_f32(d[at]),
        Rows::Bf16(d, _) => bf16_to_f32(d[at]),
        Rows::F64(d, _) => d[at] as f32,
    }
}

/// The bytes of rows `rows` (consecutive when `contiguous`) of one side,
/// and the element offset of the first row in them.
fn side_bytes<'a>(side: Rows<'a>, rows: &[u32], contiguous: bool) -> (Cow<'a, [u8]>, u32) {
    let v = side.vocab();
    let (first, last) = (rows[0] as usize, rows[rows.len() - 1] as usize + 1);
    match side {
        Rows::F32(d, _) => {
            if contiguous {
                (
                    Cow::Borrowed(bytemuck::cast_slice(&d[first * v..last * v])),
                    0,
                )
            } else {
                let mut out = Vec::with_capacity(rows.len() * v);
                for &r in rows {
                    out.extend_from_slice(&d[r as usize * v..(r as usize + 1) * v]);
                }
                (Cow::Owned(bytemuck::cast_slice(&out).to_vec()), 0)
            }
        }
        Rows::F16(d, _) | Rows::Bf16(d, _) => {
            if contiguous {
                // 16-bit codes travel two per word: start on an even element.
                let start = first * v;
                let even = start & !1;
                let bytes: &[u16] = &d[even..last * v];
                (
                    Cow::Borrowed(bytemuck::cast_slice(bytes)),
                    (start - even) as u32,
                )
            } else {
                let mut out: Vec<u16> = Vec::with_capacity(rows.len() * v);
                for &r in rows {
                    out.extend_from_slice(&d[r as usize * v..(r as usize + 1) * v]);
                }
                (Cow::Owned(bytemuck::cast_slice(&out).to_vec()), 0)
            }
        }
        Rows::F64(..) => unreachable!("float64 rows stay on the CPU"),
    }
}

/// Device buffers of one chunk slot.
struct Slot {
    data_p: wgpu::Buffer,
    data_q: wgpu::Buffer,
    scan: wgpu::Buffer,
    topk: wgpu::Buffer,
    row_params: wgpu::Buffer,
    sums: wgpu::Buffer,
    params: Option<wgpu::Buffer>,
}

/// The values of one row, filled by the GPU or the CPU kernel.
#[derive(Clone, Copy, Default)]
struct RowOut {
    kl: f32,
    reverse_kl: f32,
    js: f32,
    top1: [i32; 2],
    nll: [f32; 2],
}

struct Job<'a> {
    gpu: &'static Gpu,
    p: Rows<'a>,
    q: Rows<'a>,
    rows: &'a [u32],
    tokens: Option<&'a [i32]>,
    opts: &'a CompareOptions,
    /// Sorted, distinct top-k sizes.
    sizes: Vec<usize>,
    vocab: usize,
    nb: usize,
    inv_t: f32,
}

impl Job<'_> {
    fn scan_words(&self) -> usize {
        HEAD + 2 * self.nb
    }

    fn run(&self, binding: u64) -> Result<TokenStats> {
        let gpu = self.gpu;
        let v = self.vocab as u64;
        let n_sizes = self.sizes.len().max(1) as u64;
        // Bytes per row of every per-chunk buffer; each must fit a binding.
        let per_row = [
            v * elem_bytes(self.p) as u64,
            v * elem_bytes(self.q) as u64,
            4 * self.scan_words() as u64,
            4 * 5 * self.nb as u64,
            4 * n_sizes,
            std::mem::size_of::<RowParams>() as u64,
        ];
        let limit = binding.min(CHUNK_BYTES);
        let chunk_rows = per_row
            .iter()
            .map(|&b| ((limit - 4) / b.max(1)).max(1))
            .min()
            .unwrap_or(1)
            .min(self.rows.len().max(1) as u64) as usize;
        let slot = || Slot {
            data_p: gpu.storage(chunk_rows as u64 * per_row[0] + 4),
            data_q: gpu.storage(chunk_rows as u64 * per_row[1] + 4),
            scan: gpu.storage(chunk_rows as u64 * per_row[2]),
            sums: gpu.storage(chunk_rows as u64 * per_row[3]),
            topk: gpu.storage(chunk_rows as u64 * per_row[4]),
            row_params: gpu.storage(chunk_rows as u64 * per_row[5]),
            params: None,
        };
        let mut slots = [slot(), slot()];
        let scan = gpu.pipeline(&SCAN, "scan")?;
        let sums = gpu.pipeline(&SUMS, "sums")?;
        let topk = gpu.pipeline(&TOPK, "overlap")?;

        let chunks: Vec<&[u32]> = self.rows.chunks(chunk_rows).collect();
        let n = self.rows.len();
        let mut out = vec![RowOut::default(); n];
        let mut overlap = vec![vec![0.0f32; n]; self.opts.topk.len()];
        if chunks.is_empty() {
            return Ok(self.assemble(out, overlap));
        }
        self.upload(&mut slots[0], chunks[0]);
        let mut enc = gpu.encoder();
        self.first_pass(&mut enc, &slots[0], chunks[0].len(), &scan, &topk);
        gpu.submit(enc);
        let mut done = 0;
        for (c, chunk) in chunks.iter().enumerate() {
            let m = chunk.len();
            let (cur, next) = split(&mut slots, c % 2);
            if let Some(following) = chunks.get(c + 1) {
                self.upload(next, following);
            }
            let words = gpu.read::<u32>(&cur.scan, m * self.scan_words())?;
            let (params, mut cpu_rows) = self.row_params(chunk, &words);
            gpu.write(&cur.row_params, 0, &params);
            let mut enc = gpu.encoder();
            gpu.dispatch(
                &mut enc,
                &sums,
                &[
                    cur.params.as_ref().expect("params of a submitted chunk"),
                    &cur.data_p,
                    &cur.data_q,
                    &cur.row_params,
                    &cur.sums,
                ],
                m as u32,
            );
            if let Some(following) = chunks.get(c + 1) {
                self.first_pass(&mut enc, next, following.len(), &scan, &topk);
            }
            gpu.submit(enc);
            let totals = gpu.read::<f32>(&cur.sums, m * 5 * self.nb)?;
            let counts = gpu.read::<u32>(&cur.topk, m * self.sizes.len())?;
            self.finish(
                chunk,
                &words,
                &params,
                &totals,
                &counts,
                &mut cpu_rows,
                &mut out[done..done + m],
                &mut overlap,
                done,
            );
            if !cpu_rows.is_empty() {
                self.on_cpu(
                    chunk,
                    &cpu_rows,
                    &mut out[done..done + m],
                    &mut overlap,
                    done,
                )?;
            }
            done += m;
        }
        Ok(self.assemble(out, overlap))
    }

    /// Writes chunk `rows` of both sides into `slot`'s input buffers and its
    /// parameters into a fresh uniform buffer.
    fn upload(&self, slot: &mut Slot, rows: &[u32]) {
        let contiguous = rows.windows(2).all(|w| w[1] == w[0] + 1);
        let (bytes_p, off_p) = side_bytes(self.p, rows, contiguous);
        let (bytes_q, off_q) = side_bytes(self.q, rows, contiguous);
        self.gpu.write(&slot.data_p, 0, &bytes_p);
        self.gpu.write(&slot.data_q, 0, &bytes_q);
        let mut sizes = [0u32; 8];
        for (s, &k) in sizes.iter_mut().zip(&self.sizes) {
            *s = k as u32;
        }
        slot.params = Some(self.gpu.uniform(&Params {
            rows: rows.len() as u32,
            vocab: self.vocab as u32,
            off_p,
            off_q,
            dtype_p: dtype_code(self.p),
            dtype_q: dtype_code(self.q),
            nb: self.nb as u32,
            n_sizes: self.sizes.len() as u32,
            inv_t: self.inv_t,
            one: 1.0,
            magic_a: ROUND_MAGIC,
            magic_b: ROUND_MAGIC,
            sizes,
        }));
    }

    fn first_pass(
        &self,
        enc: &mut wgpu::CommandEncoder,
        slot: &Slot,
        m: usize,
        scan: &wgpu::ComputePipeline,
        topk: &wgpu::ComputePipeline,
    ) {
        let params = slot.params.as_ref().expect("params of an uploaded chunk");
        let inputs = [params, &slot.data_p, &slot.data_q];
        self.gpu.dispatch(
            enc,
            scan,
            &[inputs[0], inputs[1], inputs[2], &slot.scan],
            m as u32,
        );
        if self.sizes.iter().any(|&k| k > 1 && k < self.vocab) {
            self.gpu.dispatch(
                enc,
                topk,
                &[inputs[0], inputs[1], inputs[2], &slot.topk],
                m as u32,
            );
        }
    }

    /// Per-row parameters of the second pass, derived from the scan as the
    /// CPU kernel derives them, and the chunk rows (indices into `chunk`)
    /// that the CPU kernel must take.
    fn row_params(&self, chunk: &[u32], words: &[u32]) -> (Vec<RowParams>, Vec<usize>) {
        let stride = self.scan_words();
        let mut params = vec![RowParams::default(); chunk.len()];
        let mut cpu_rows = Vec::new();
        for (j, &r) in chunk.iter().enumerate() {
            let h = &words[j * stride..(j + 1) * stride];
            let (max_p, max_q) = (f32::from_bits(h[0]), f32::from_bits(h[1]));
            let flags = h[4];
            if flags & FLAG_ANY != 0 || max_p == f32::NEG_INFINITY || max_q == f32::NEG_INFINITY {
                cpu_rows.push(j);
                continue;
            }
            let (sp, sq) = self.exp_totals(h);
            let top_p = h[2] as usize;
            let shift = (value(self.q, r as usize, top_p) - max_q) * self.inv_t;
            let (k, k_r) = (simd::exp(-shift), simd::exp(shift));
            if !(k.is_finite() && k_r > 0.0) {
                cpu_rows.push(j);
                continue;
            }
            params[j] = RowParams {
                max_p,
                max_q,
                shift,
                k,
                k_r,
                inv_sp: (1.0 / sp) as f32,
                inv_sq: (1.0 / sq) as f32,
                _pad: 0.0,
            };
        }
        (params, cpu_rows)
    }

    /// Σw and Σv of a row from its block sums.
    fn exp_totals(&self, head: &[u32]) -> (f64, f64) {
        let nb = self.nb;
        let sum = |s: &[u32]| s.iter().map(|&b| f32::from_bits(b) as f64).sum::<f64>();
        (
            sum(&head[HEAD..HEAD + nb]),
            sum(&head[HEAD + nb..HEAD + 2 * nb]),
        )
    }

    /// Finishes the GPU rows of a chunk in float64.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        chunk: &[u32],
        words: &[u32],
        params: &[RowParams],
        totals: &[f32],
        counts: &[u32],
        cpu_rows: &mut Vec<usize>,
        out: &mut [RowOut],
        overlap: &mut [Vec<f32>],
        done: usize,
    ) {
        let stride = self.scan_words();
        let nb = self.nb;
        let mut next_cpu = cpu_rows.iter().peekable();
        let mut more_cpu = Vec::new();
        for (j, &r) in chunk.iter().enumerate() {
            if next_cpu.peek() == Some(&&j) {
                next_cpu.next();
                continue;
            }
            let h = &words[j * stride..(j + 1) * stride];
            let (sp, sq) = self.exp_totals(h);
            let t = &totals[j * 5 * nb..(j + 1) * 5 * nb];
            let sum = |s: usize| {
                t[s * nb..(s + 1) * nb]
                    .iter()
                    .map(|&x| x as f64)
                    .sum::<f64>()
            };
            let kl = log_ratio_mean(sum(0), sum(1), sp);
            let reverse_kl = log_ratio_mean(sum(2), sum(3), sq);
            let (Some(kl), Some(reverse_kl)) = (kl, reverse_kl) else {
                more_cpu.push(j);
                continue;
            };
            let js = (sum(4) / 4.0).clamp(0.0, std::f64::consts::LN_2);
            let (top_p, top_q) = (h[2], h[3]);
            let rp = params[j];
            let token = self
                .tokens
                .and_then(|t| usize::try_from(t[r as usize]).ok());
            let nll = match token {
                Some(t) => {
                    let r = r as usize;
                    [
                        (sp.ln() - ((value(self.p, r, t) - rp.max_p) * self.inv_t) as f64) as f32,
                        (sq.ln() - ((value(self.q, r, t) - rp.max_q) * self.inv_t) as f64) as f32,
                    ]
                }
                None => [f32::NAN; 2],
            };
            out[j] = RowOut {
                kl: kl as f32,
                reverse_kl: reverse_kl as f32,
                js: js as f32,
                top1: [top_p as i32, top_q as i32],
                nll,
            };
            for (col, &k) in overlap.iter_mut().zip(&self.opts.topk) {
                col[done + j] = if k == 1 {
                    (top_p == top_q) as u32 as f32
                } else if k >= self.vocab {
                    1.0
                } else {
                    let s = self.sizes.binary_search(&k).expect("every size is listed");
                    counts[j * self.sizes.len() + s] as f32 / k as f32
                };
            }
        }
        if !more_cpu.is_empty() {
            cpu_rows.extend(more_cpu);
            cpu_rows.sort_unstable();
        }
    }

    /// Rows `cpu_rows` of a chunk computed by the CPU kernel (its values and
    /// its errors).
    fn on_cpu(
        &self,
        chunk: &[u32],
        cpu_rows: &[usize],
        out: &mut [RowOut],
        overlap: &mut [Vec<f32>],
        done: usize,
    ) -> Result<()> {
        let select: Vec<u32> = cpu_rows.iter().map(|&j| chunk[j]).collect();
        let stats = cpu::compare_rows(
            Block::Dense(self.p),
            Block::Dense(self.q),
            Some(&select),
            self.tokens,
            self.opts,
        )?;
        for (i, &j) in cpu_rows.iter().enumerate() {
            out[j] = RowOut {
                kl: stats.kl[i],
                reverse_kl: stats.reverse_kl[i],
                js: stats.js[i],
                top1: [stats.top1[0][i], stats.top1[1][i]],
                nll: [stats.nll[0][i], stats.nll[1][i]],
            };
            for (col, src) in overlap.iter_mut().zip(&stats.overlap) {
                col[done + j] = src[i];
            }
        }
        Ok(())
    }

    fn assemble(&self, out: Vec<RowOut>, overlap: Vec<Vec<f32>>) -> TokenStats {
        TokenStats {
            kl: out.iter().map(|o| o.kl).collect(),
            reverse_kl: out.iter().map(|o| o.reverse_kl).collect(),
            js: out.iter().map(|o| o.js).collect(),
            top1: [
                out.iter().map(|o| o.top1[0]).collect(),
                out.iter().map(|o| o.top1[1]).collect(),
            ],
            overlap,
            nll: [
                out.iter().map(|o| o.nll[0]).collect(),
                out.iter().map(|o| o.nll[1]).collect(),
            ],
        }
    }
}

/// The two slots as (slot `i`, the other one).
fn split(slots: &mut [Slot; 2], i: usize) -> (&mut Slot, &mut Slot) {
    let [a, b] = slots;
    if i == 0 {
        (a, b)
    } else {
        (b, a)
    }
}

/// KL = E[u] + ln(1 + E[e^(−u) − 1]) from Σw·u, Σw·(e^(−u) − 1 + u) and Σw,
/// as the CPU kernel finishes it (None: the CPU's float64 reference takes
/// the row).
fn log_ratio_mean(su: f64, sr: f64, sw: f64) -> Option<f64> {
    let mean_u = su / sw;
    let excess = (sr - su) / sw;
    if !(excess.is_finite() && excess > -0.5) {
        return None;
    }
    let value = mean_u + excess.ln_1p();
    value.is_finite().then_some(value.max(0.0))
}
