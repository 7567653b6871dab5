//! Divergence row kernels on the GPU: the twin of
//! [`quantdrift_core::diverge::divergence_rows`], with the same options,
//! the same errors, and values within 1e-5 relative (1e-7 absolute) of the
//! CPU's.
//!
//! One workgroup computes one row pair (`shaders/diverge.wgsl`): a scan
//! pass (maxima, NaN/+inf and support flags, probability sums), then the
//! passes of exponentials that the CPU's fast kernel takes, in the same
//! cancellation-free forms with ports of the same float32 elementwise
//! functions. Each invocation keeps compensated float32 sums, merged across
//! the workgroup as double-float pairs; the host reads a few sums per row
//! back and finishes the row in float64 with the CPU's own formulas
//! ([`quantdrift_core::diverge::finish`]).
//!
//! What runs on the host instead, and why (GPUs have no float64):
//!
//! * float64 inputs (either side): the whole call runs on the CPU kernels,
//!   which evaluate float64 rows with the float64 reference.
//! * rows the CPU, too, sends to its float64 reference (a form that left
//!   float32 range or became ill-conditioned): the reference, on the host.
//! * probability rows whose scan looks invalid (NaN, negative, a sum near
//!   or past the tolerance, all zeros): re-checked on the host exactly as
//!   the CPU checks them, so that errors, and the sum they quote, match.
//! * a single row larger than the device's largest binding: the CPU kernel
//!   for that row (every real device binds at least 128 MiB, 32M float32
//!   scores per row).

use quantdrift_core::diverge::{
    self, fast, finish, probs_tolerance, reference, renyi_reach, renyi_series, Inputs, Kind,
    Options, RowIssue, RowResult, Side,
};
use quantdrift_core::{simd, CoreError, Dtype, Rows};

use crate::context::{context, Gpu};
use crate::error::Result;
use crate::shaders::{Shader, ROUND_MAGIC};

const SHADER: Shader = Shader::new(
    "diverge",
    concat!(
        include_str!("shaders/math32.wgsl"),
        include_str!("shaders/diverge.wgsl")
    ),
);

/// Floats the shader writes per row.
const SLOTS: usize = 16;
const FLAG_P_BAD: u32 = 1;
const FLAG_Q_BAD: u32 = 2;
const FLAG_P_OUTSIDE_Q: u32 = 4;
const FLAG_P_SHIFT_OVERFLOW: u32 = 16;
const FLAG_Q_SHIFT_OVERFLOW: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    p_dtype: u32,
    q_dtype: u32,
    p_offset: u32,
    q_offset: u32,
    probs: u32,
    _pad0: u32,
    inv_t: f32,
    alpha: f32,
    beta: f32,
    one: f32,
    magic_a: f32,
    magic_b: f32,
    reach: f32,
    small_alpha: u32,
    renyi_series: [[f32; 4]; 3],
}

/// One divergence value per row, in nats, computed on the GPU: the same
/// contract as [`quantdrift_core::diverge::divergence_rows`] (same
/// errors, naming the same first invalid row; values within 1e-5
/// relative or 1e-7 absolute). See the module docs for the rows that the host computes.
///
/// ```no_run
/// use quantdrift_core::{diverge::*, Rows};
/// let (p, q) = ([0.0f32, 0.0], [0.0f32, 1.0]);
/// let opts = Options { kind: Kind::Kl, inputs: Inputs::Logits, temperature: 1.0 };
/// let p = Rows::new_f32(&p, 2).unwrap();
/// let q = Rows::new_f32(&q, 2).unwrap();
/// let kl = quantdrift_gpu::diverge::divergence_rows(p, Some(q), &opts).unwrap();
/// ```
pub fn divergence_rows(p: Rows<'_>, q: Option<Rows<'_>>, opts: &Options) -> Result<Vec<f64>> {
    opts.validate()?;
    let q = match (opts.kind.needs_q(), q) {
        (true, None) => {
            return Err(
                CoreError::Value("q is required for every kind but 'entropy'".into()).into(),
            )
        }
        (true, Some(q)) => Some(q),
        (false, _) => None,
    };
    diverge::check_pair(&p, q.as_ref())?;
    let any_f64 = p.dtype() == Dtype::F64 || q.is_some_and(|q| q.dtype() == Dtype::F64);
    if any_f64 {
        // No float64 on GPUs: float64 rows take the CPU's float64 reference.
        return Ok(diverge::divergence_rows(p, q, opts)?);
    }
    if p.rows() == 0 {
        return Ok(Vec::new());
    }
    let gpu = context()?;
    let results = Job::new(gpu, p, q, opts)?.run()?;
    let mut out = Vec::with_capacity(results.len());
    for (r, res) in results.into_iter().enumerate() {
        match res {
            Ok(v) => out.push(v),
            Err((side, issue)) => {
                let dtype = match side {
                    Side::P => p.dtype(),
                    Side::Q => q.map_or(p.dtype(), |q| q.dtype()),
                };
                let tol = probs_tolerance(dtype);
                return Err(diverge::issue_error(r, side, issue, opts.inputs, tol).into());
            }
        }
    }
    Ok(out)
}

/// One call's rows, split into chunks that fit the device's bindings.
struct Job<'a> {
    gpu: &'static Gpu,
    pipeline: std::sync::Arc<wgpu::ComputePipeline>,
    p: Rows<'a>,
    q: Option<Rows<'a>>,
    /// What the shader binds as p and q: swapped for reverse KL, p twice
    /// for entropy.
    first: Rows<'a>,
    second: Rows<'a>,
    swapped: bool,
    opts: Options,
}

/// The shader entry point of a kind.
fn entry(kind: Kind) -> &'static str {
    match kind {
        Kind::Kl | Kind::ReverseKl => "kl",
        Kind::Entropy => "entropy",
        Kind::CrossEntropy => "cross_entropy",
        Kind::Js => "js",
        Kind::Tv => "tv",
        Kind::Hellinger => "hellinger",
        Kind::Chi2 => "chi2",
        Kind::Renyi(_) => "renyi",
    }
}

/// The shader's dtype code and the bytes per element.
fn dtype_code(rows: &Rows<'_>) -> (u32, usize) {
    match rows.dtype() {
        Dtype::F32 => (0, 4),
        Dtype::F16 => (1, 2),
        Dtype::Bf16 => (2, 2),
        Dtype::F64 => unreachable!("float64 rows run on the CPU"),
    }
}

/// Rows `start..end` as a storage buffer and the element offset of row
/// `start` in it (16-bit rows are uploaded from an even element, so that
/// the shader's pairs line up).
fn upload_rows(gpu: &Gpu, rows: &Rows<'_>, start: usize, end: usize) -> (wgpu::Buffer, u32) {
    let v = rows.vocab();
    match *rows {
        Rows::F32(d, _) => (gpu.upload(&d[start * v..end * v]), 0),
        Rows::F16(d, _) | Rows::Bf16(d, _) => {
            let from = start * v;
            let even = from & !1;
            (gpu.upload(&d[even..end * v]), (from - even) as u32)
        }
        Rows::F64(..) => unreachable!("float64 rows run on the CPU"),
    }
}

impl<'a> Job<'a> {
    fn new(gpu: &'static Gpu, p: Rows<'a>, q: Option<Rows<'a>>, opts: &Options) -> Result<Self> {
        let pipeline = gpu.pipeline(&SHADER, entry(opts.kind))?;
        let (first, second, swapped) = match (opts.kind, q) {
            (Kind::ReverseKl, Some(q)) => (q, p, true),
            (_, Some(q)) => (p, q, false),
            (_, None) => (p, p, false),
        };
        Ok(Job {
            gpu,
            pipeline,
            p,
            q,
            first,
            second,
            swapped,
            opts: *opts,
        })
    }

    /// Every row's outcome, in order; stops after the chunk holding the
    /// first invalid row (later rows cannot change the error).
    fn run(&self) -> Result<Vec<RowResult>> {
        let rows = self.p.rows();
        let vocab = self.p.vocab();
        let widest = dtype_code(&self.first).1.max(dtype_code(&self.second).1);
        let row_bytes = (vocab * widest) as u64;
        // Room for the even-element alignment and 4-byte padding.
        let room = self.gpu.max_binding_bytes().saturating_sub(8);
        let mut results = Vec::with_capacity(rows);
        if row_bytes > room {
            // A row beyond one binding: the CPU kernel, row by row.
            let mut scratch = fast::Scratch::default();
            for r in 0..rows {
                let res = self.host_row(r, &mut scratch);
                let stop = res.is_err();
                results.push(res);
                if stop {
                    break;
                }
            }
            return Ok(results);
        }
        let out_rows = (self.gpu.max_binding_bytes() / (4 * SLOTS as u64)) as usize;
        let chunk = ((room / row_bytes) as usize).min(out_rows).max(1);
        let mut start = 0;
        while start < rows {
            let end = (start + chunk).min(rows);
            let slots = self.dispatch(start, end)?;
            let before = results.len();
            for (i, row_slots) in slots.chunks_exact(SLOTS).enumerate() {
                results.push(self.finish_row(start + i, row_slots));
            }
            if results[before..].iter().any(|r| r.is_err()) {
                break;
            }
            start = end;
        }
        Ok(results)
    }

    /// Runs the kernel over rows `start..end` and reads their slots back.
    fn dispatch(&self, start: usize, end: usize) -> Result<Vec<f32>> {
        let gpu = self.gpu;
        let (first_code, _) = dtype_code(&self.first);
        let (second_code, _) = dtype_code(&self.second);
        let (first_buf, first_offset) = upload_rows(gpu, &self.first, start, end);
        let same = self.q.is_none();
        let second = if same {
            None
        } else {
            Some(upload_rows(gpu, &self.second, start, end))
        };
        let (second_buf, second_offset) = match &second {
            Some((b, o)) => (b, *o),
            None => (&first_buf, first_offset),
        };
        let alpha = match self.opts.kind {
            Kind::Renyi(a) => a,
            _ => 2.0,
        };
        let params = gpu.uniform(&Params {
            rows: (end - start) as u32,
            vocab: self.p.vocab() as u32,
            p_dtype: first_code,
            q_dtype: second_code,
            p_offset: first_offset,
            q_offset: second_offset,
            probs: u32::from(self.opts.inputs == Inputs::Probs),
            _pad0: 0,
            inv_t: (1.0 / self.opts.temperature) as f32,
            alpha: alpha as f32,
            beta: (1.0 - alpha) as f32,
            one: 1.0,
            magic_a: ROUND_MAGIC,
            magic_b: ROUND_MAGIC,
            reach: renyi_reach(alpha),
            small_alpha: u32::from(alpha <= 0.5),
            renyi_series: {
                let c = renyi_series(alpha);
                [
                    [c[0], c[1], c[2], c[3]],
                    [c[4], c[5], c[6], c[7]],
                    [c[8], c[9], c[10], c[11]],
                ]
            },
        });
        let count = (end - start) * SLOTS;
        let out = gpu.storage(4 * count as u64);
        gpu.run(
            &self.pipeline,
            &[&params, &first_buf, second_buf, &out],
            (end - start) as u32,
        );
        gpu.read::<f32>(&out, count)
    }

    /// Row `r` by the CPU kernels (fast, else the reference).
    fn host_row(&self, r: usize, scratch: &mut fast::Scratch) -> RowResult {
        if let Some(v) = fast::row(&self.p, self.q.as_ref(), r, &self.opts, scratch)? {
            return Ok(v);
        }
        self.reference_row(r)
    }

    /// Row `r` by the float64 reference.
    fn reference_row(&self, r: usize) -> RowResult {
        let (mut p64, mut q64) = (Vec::new(), Vec::new());
        self.p.row_f64(r, &mut p64);
        let qs = self.q.map(|q| {
            q.row_f64(r, &mut q64);
            &q64[..]
        });
        let tolerances = (
            probs_tolerance(self.p.dtype()),
            self.q.map_or(0.0, |q| probs_tolerance(q.dtype())),
        );
        reference::row(&p64, qs, &self.opts, tolerances)
    }

    /// Row `r` of a probability matrix checked exactly as the CPU checks
    /// it (element order, float64 sum).
    fn check_probs(rows: &Rows<'_>, r: usize) -> std::result::Result<(), RowIssue> {
        let mut values = Vec::new();
        rows.row_f64(r, &mut values);
        let mut sum = 0.0f64;
        for &x in &values {
            if x.is_nan() || x == f64::INFINITY {
                return Err(RowIssue::NotFinite);
            }
            if x < 0.0 {
                return Err(RowIssue::Negative);
            }
            sum += x;
        }
        if sum == 0.0 {
            return Err(RowIssue::Empty);
        }
        let tol = probs_tolerance(rows.dtype());
        if (sum - 1.0).abs() > tol {
            return Err(RowIssue::BadSum(sum));
        }
        Ok(())
    }

    /// Row `r`'s value from the slots the shader wrote.
    fn finish_row(&self, r: usize, slots: &[f32]) -> RowResult {
        let flags = slots[0].to_bits();
        // A NaN sum (infinities of both signs met) goes to the reference.
        let mut nan = false;
        let mut pair = |hi: usize| {
            let v = slots[hi] as f64 + slots[hi + 4] as f64;
            nan |= v.is_nan();
            v
        };
        // The scan in the caller's orientation (p, q), as the CPU reports it.
        let (p_bad, q_bad) = if self.swapped {
            (flags & FLAG_Q_BAD != 0, flags & FLAG_P_BAD != 0)
        } else {
            (flags & FLAG_P_BAD != 0, flags & FLAG_Q_BAD != 0)
        };
        let (max_p, max_q) = if self.swapped {
            (slots[2], slots[1])
        } else {
            (slots[1], slots[2])
        };
        let needs_q = self.opts.kind.needs_q();
        if self.opts.inputs == Inputs::Probs {
            let (sum_p, sum_q) = {
                let first = slots[4] as f64 + slots[5] as f64;
                let second = slots[6] as f64 + slots[7] as f64;
                if self.swapped {
                    (second, first)
                } else {
                    (first, second)
                }
            };
            let suspicious = |bad: bool, max: f32, sum: f64, rows: &Rows<'_>| {
                let tol = probs_tolerance(rows.dtype());
                bad || max == f32::NEG_INFINITY || sum.is_nan() || (sum - 1.0).abs() > 0.5 * tol
            };
            if suspicious(p_bad, max_p, sum_p, &self.p) {
                Self::check_probs(&self.p, r).map_err(|e| (Side::P, e))?;
            }
            if let Some(q) = &self.q {
                if suspicious(q_bad, max_q, sum_q, q) {
                    Self::check_probs(q, r).map_err(|e| (Side::Q, e))?;
                }
            }
        }
        if p_bad {
            return Err((Side::P, RowIssue::NotFinite));
        }
        if needs_q && q_bad {
            return Err((Side::Q, RowIssue::NotFinite));
        }
        if max_p == f32::NEG_INFINITY {
            return Err((Side::P, RowIssue::Empty));
        }
        if needs_q && max_q == f32::NEG_INFINITY {
            return Err((Side::Q, RowIssue::Empty));
        }
        // A shifted score that overflowed to −inf reads as probability 0 in
        // the kernels: the reference, as on the CPU (`fast::row`). Only
        // entropy leaves q out, and it is never swapped.
        let q_overflow = needs_q && flags & FLAG_Q_SHIFT_OVERFLOW != 0;
        if flags & FLAG_P_SHIFT_OVERFLOW != 0 || q_overflow {
            return self.reference_row(r);
        }
        // From here on in the shader's orientation.
        let outside = flags & FLAG_P_OUTSIDE_Q != 0;
        let value = match self.opts.kind {
            Kind::Kl | Kind::ReverseKl => {
                if outside {
                    return Ok(f64::INFINITY);
                }
                let shift = slots[3];
                let robust = simd::exp(-shift).is_finite();
                finish::kl(pair(8), pair(9), pair(10), pair(11), shift, robust, true)
            }
            Kind::Entropy => Some(finish::entropy(pair(8), pair(9))),
            Kind::CrossEntropy => {
                if outside {
                    return Ok(f64::INFINITY);
                }
                finish::cross_entropy(pair(8), pair(9), pair(10))
            }
            Kind::Js => Some(finish::js(pair(8))),
            Kind::Tv => Some(finish::tv(pair(8))),
            Kind::Hellinger => Some(finish::hellinger(pair(8))),
            Kind::Chi2 => {
                if outside {
                    return Ok(f64::INFINITY);
                }
                Some(finish::chi2(pair(8)))
            }
            Kind::Renyi(alpha) => {
                if alpha > 1.0 && outside {
                    return Ok(f64::INFINITY);
                }
                finish::renyi(pair(8), alpha - 1.0)
            }
        };
        match value.filter(|v| v.is_finite() && !nan) {
            Some(v) => Ok(v),
            None => self.reference_row(r),
        }
    }
}
