//! Integer quantization over any partition (lecture Def 3.2).
//!
//! Given an ordered partition (I_1 … I_k) of a tensor's elements, and per
//! part j a scale s_j > 0, an integer zero-point b_j and an integer range
//! [qmin_j, qmax_j] (the lecture's [−M_j, M_j]):
//!
//! * Q_j(x) = clip(round(x / s_j) + b_j, qmin_j, qmax_j)  — eq. (9)
//! * Q̃_j(n) = s_j · (n − b_j)                             — eq. (10)
//!
//! * [`partition`]: tiles (per-tensor, per-axis, groups, 2-D blocks, all with
//!   ragged edges) and arbitrary labels.
//! * [`calibrate`]: s_j and b_j from the data (full range, percentile, MSE
//!   search with optional importance weights; torchao's formulas).
//! * [`kernel`]: the quantize / dequantize / fake-quantize loops (SIMD +
//!   rayon), rounding nearest-even, nearest-away, toward zero, down, up, or
//!   stochastic (seeded, counter-based: independent of the thread count).
//! * [`pack`]: 1…8-bit codes packed LSB-first.
//!
//! Arithmetic: by default x/s is one float64 division (what a float64
//! oracle computes); [`Arith::Reciprocal32`] multiplies by the float32
//! reciprocal as torch's `quantize_per_channel` and torchao's
//! `quantize_affine` do. Dequantization is s·(n − b) in float64, rounded
//! once to the output type. NaN quantizes to b_j (dequantizes to 0); ±Inf
//! clips to the range ends.
//!
//! ```
//! use quantdrift_core::lowp::Values;
//! use quantdrift_core::quant::{self, Codes, CodeType, Options, Partition, QParams};
//! // Example 3.1: parts {1,2} and {3,4}, M = (127, 7), s = (0.01, 0.1), b = (0, 1).
//! let x = [1.20, -0.55, 0.07, 2.31];
//! let part = Partition::Labels { ids: &[0, 0, 1, 1], parts: 2 };
//! let qp = QParams { scale: &[0.01, 0.1], zero_point: &[0, 1], qmin: &[-127, -7], qmax: &[127, 7] };
//! let (codes, clipped) =
//!     quant::quantize(Values::F64(&x), &part, &qp, CodeType::I8, &Options::default()).unwrap();
//! assert_eq!(codes, Codes::I8(vec![120, -55, 2, 7]));
//! assert_eq!(clipped, 1);
//! ```

pub mod calibrate;
pub mod kernel;
pub mod pack;
pub mod partition;

pub use calibrate::{Calibration, Method, Ranges, Style};
pub use kernel::CodeType;
pub use partition::{Partition, Plan};

use crate::error::{CoreError, Result};
use crate::lowp::codec::Rounding;
use crate::lowp::{Rounded, Values};
use rayon::prelude::*;

/// How x/s is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    /// float64 division x / s.
    Divide,
    /// float32 product x · fl32(1 / s) (torch, torchao).
    Reciprocal32,
}

/// Rounding and arithmetic of a quantization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// round(·) of eq. (9).
    pub rounding: Rounding,
    /// Seed of stochastic rounding.
    pub seed: u64,
    /// How x/s is formed.
    pub arith: Arith,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rounding: Rounding::NearestEven,
            seed: 0,
            arith: Arith::Divide,
        }
    }
}

/// Per-part parameters, each of length k (the number of parts).
#[derive(Debug, Clone, Copy)]
pub struct QParams<'a> {
    /// s_j > 0.
    pub scale: &'a [f64],
    /// b_j.
    pub zero_point: &'a [i32],
    /// Lower clip bound (−M_j in the lecture).
    pub qmin: &'a [i32],
    /// Upper clip bound (M_j).
    pub qmax: &'a [i32],
}

/// Per-part parameters as the kernels read them: the caller's arrays,
/// checked, read in place (a copy per part costs more than the kernel for
/// 10^5 small groups), plus fl32(1/s) per part where the kernels gather
/// parameters element by element.
#[derive(Debug, Clone)]
pub struct Resolved<'a> {
    scale: &'a [f64],
    zero_point: &'a [i32],
    /// Clip bounds per part; both empty when unbounded (dequantization).
    qmin: &'a [i32],
    qmax: &'a [i32],
    /// fl32(1/s) per part when the plan has no runs of one part (labels,
    /// one part per column); otherwise empty, and each run divides once.
    a32: Vec<f32>,
    /// Whether the float32 fast paths apply: every scale is a float32 in
    /// [2^−126, 2^126] (so its reciprocal is a normal float32 too) and every
    /// zero-point and bound lies within ±2^23.
    pub fast32: bool,
    /// Each part's finite [min, max] where a calibration has just found
    /// them (min > max: none); otherwise empty. They let the kernels skip
    /// the clip for parts whose extremes already quantize within bounds.
    ranges32: &'a [[f32; 2]],
}

impl<'a> Resolved<'a> {
    /// Checks `p` against `plan` and resolves it.
    pub fn new(plan: &Plan<'_>, p: &QParams<'a>) -> Result<Resolved<'a>> {
        check_lengths(
            plan,
            &[
                ("scale", p.scale.len()),
                ("zero_point", p.zero_point.len()),
                ("qmin", p.qmin.len()),
                ("qmax", p.qmax.len()),
            ],
        )?;
        Resolved::build(plan, p.scale, p.zero_point, (p.qmin, p.qmax))
    }

    /// Scales and zero-points without clip bounds (dequantization).
    pub fn unbounded(
        plan: &Plan<'_>,
        scale: &'a [f64],
        zero_point: &'a [i32],
    ) -> Result<Resolved<'a>> {
        check_lengths(
            plan,
            &[("scale", scale.len()), ("zero_point", zero_point.len())],
        )?;
        Resolved::build(plan, scale, zero_point, (&[], &[]))
    }

    fn build(
        plan: &Plan<'_>,
        scale: &'a [f64],
        zero_point: &'a [i32],
        (qmin, qmax): (&'a [i32], &'a [i32]),
    ) -> Result<Resolved<'a>> {
        // The checks run as branch-free folds, vectorised (they see every
        // part of 10^5-group tensors on every call); a failure is then
        // located for its message.
        let (lo, hi) = (f32::MIN_POSITIVE as f64, 2f64.powi(126));
        let (bad_scale, crossed, fast32) = crate::simd::dispatch(crate::simd::Fold(|| {
            (
                !all_of(scale, |s| *s > 0.0 && s.is_finite()),
                qmin.iter()
                    .zip(qmax)
                    .fold(false, |any, (a, b)| any | (a > b)),
                all_of(qmin, within_f32_integers)
                    & all_of(qmax, within_f32_integers)
                    & all_of(zero_point, within_f32_integers)
                    & all_of(scale, |s| {
                        (*s as f32 as f64 == *s) & (*s >= lo) & (*s <= hi)
                    }),
            )
        }));
        if bad_scale {
            let j = scale
                .iter()
                .position(|s| !(*s > 0.0 && s.is_finite()))
                .unwrap_or(0);
            return Err(CoreError::Value(format!(
                "scale of part {j} is {}; scales must be positive and finite",
                scale[j]
            )));
        }
        if crossed {
            let j = (0..qmin.len()).find(|&j| qmin[j] > qmax[j]).unwrap_or(0);
            return Err(CoreError::Value(format!(
                "part {j}: qmin {} > qmax {}",
                qmin[j], qmax[j]
            )));
        }
        let a32 = if plan.has_segments() {
            Vec::new()
        } else {
            scale.iter().map(|&s| 1.0f32 / s as f32).collect()
        };
        Ok(Resolved {
            scale,
            zero_point,
            qmin,
            qmax,
            a32,
            fast32,
            ranges32: &[],
        })
    }

    /// The same parameters, with each part's finite [min, max] (one per
    /// part) as a calibration found them.
    pub(crate) fn with_ranges(self, ranges32: &'a [[f32; 2]]) -> Resolved<'a> {
        debug_assert_eq!(ranges32.len(), self.scale.len());
        Resolved { ranges32, ..self }
    }

    /// Part j's finite [min, max], where known.
    #[inline(always)]
    pub(crate) fn range32(&self, j: usize) -> Option<[f32; 2]> {
        self.ranges32.get(j).copied()
    }

    /// s_j.
    #[inline(always)]
    pub fn s(&self, j: usize) -> f64 {
        self.scale[j]
    }

    /// b_j.
    #[inline(always)]
    pub fn zp(&self, j: usize) -> i32 {
        self.zero_point[j]
    }

    /// (qmin_j, qmax_j); the whole int32 range when unbounded.
    #[inline(always)]
    pub fn bounds(&self, j: usize) -> (i32, i32) {
        if self.qmin.is_empty() {
            (i32::MIN, i32::MAX)
        } else {
            (self.qmin[j], self.qmax[j])
        }
    }

    /// fl32(1/s_j): the float32 multiplier of the reciprocal arithmetic and
    /// of the float32 fast path.
    #[inline(always)]
    pub fn a32(&self, j: usize) -> f32 {
        match self.a32.get(j) {
            Some(&a) => a,
            None => 1.0f32 / self.scale[j] as f32,
        }
    }

    /// fl32(1/s_j) from the per-part table, which exists exactly where the
    /// plan has no runs (see [`Plan::has_segments`]).
    #[inline(always)]
    pub(crate) fn a32_table(&self) -> &[f32] {
        &self.a32
    }
}

/// Whether `ok` holds for every value, without an early exit (so that the
/// loop vectorises).
fn all_of<T>(values: &[T], ok: impl Fn(&T) -> bool) -> bool {
    values.iter().fold(true, |all, v| all & ok(v))
}

/// An integer that float32 holds exactly with room to add another such
/// (|v| ≤ 2^23).
fn within_f32_integers(v: &i32) -> bool {
    v.unsigned_abs() <= 1 << 23
}

fn check_lengths(plan: &Plan<'_>, arrays: &[(&str, usize)]) -> Result<()> {
    let k = plan.parts;
    for &(name, len) in arrays {
        if len != k {
            return Err(CoreError::Shape(format!(
                "{name} has {len} values but the partition has {k} parts (grid {:?})",
                plan.grid()
            )));
        }
    }
    Ok(())
}

/// Quantized codes in their container.
#[derive(Debug, Clone, PartialEq)]
pub enum Codes {
    /// int8 codes.
    I8(Vec<i8>),
    /// uint8 codes.
    U8(Vec<u8>),
    /// int16 codes.
    I16(Vec<i16>),
    /// uint16 codes.
    U16(Vec<u16>),
    /// int32 codes.
    I32(Vec<i32>),
    /// Bit-packed codes (see [`pack`]).
    Packed {
        /// The bytes.
        data: Vec<u8>,
        /// Bits per code.
        bits: u32,
        /// Two's complement.
        signed: bool,
        /// Number of codes.
        len: usize,
    },
}

impl Codes {
    /// Zeroed codes of `code_type` for `n` elements (large ones with a
    /// huge-page hint, see `lowp::output`).
    pub fn zeroed(code_type: CodeType, n: usize) -> Codes {
        use crate::lowp::output;
        match code_type {
            CodeType::I8 => Codes::I8(output(n)),
            CodeType::U8 => Codes::U8(output(n)),
            CodeType::I16 => Codes::I16(output(n)),
            CodeType::U16 => Codes::U16(output(n)),
            CodeType::I32 => Codes::I32(output(n)),
            CodeType::Packed { bits, signed } => Codes::Packed {
                data: output((n * bits as usize).div_ceil(8)),
                bits,
                signed,
                len: n,
            },
        }
    }

    /// The codes as a mutable buffer.
    pub fn as_mut(&mut self) -> CodesMut<'_> {
        match self {
            Codes::I8(v) => CodesMut::I8(v),
            Codes::U8(v) => CodesMut::U8(v),
            Codes::I16(v) => CodesMut::I16(v),
            Codes::U16(v) => CodesMut::U16(v),
            Codes::I32(v) => CodesMut::I32(v),
            Codes::Packed {
                data, bits, signed, ..
            } => CodesMut::Packed {
                data,
                bits: *bits,
                signed: *signed,
            },
        }
    }
}

/// A caller's buffer for codes: the mutable counterpart of [`Codes`].
#[derive(Debug)]
pub enum CodesMut<'a> {
    /// int8 codes.
    I8(&'a mut [i8]),
    /// uint8 codes.
    U8(&'a mut [u8]),
    /// int16 codes.
    I16(&'a mut [i16]),
    /// uint16 codes.
    U16(&'a mut [u16]),
    /// int32 codes.
    I32(&'a mut [i32]),
    /// Bit-packed codes: `ceil(n·bits/8)` bytes for n codes.
    Packed {
        /// The bytes.
        data: &'a mut [u8],
        /// Bits per code.
        bits: u32,
        /// Two's complement.
        signed: bool,
    },
}

impl<'a> CodesMut<'a> {
    /// The container these codes go into.
    pub fn code_type(&self) -> CodeType {
        match self {
            CodesMut::I8(_) => CodeType::I8,
            CodesMut::U8(_) => CodeType::U8,
            CodesMut::I16(_) => CodeType::I16,
            CodesMut::U16(_) => CodeType::U16,
            CodesMut::I32(_) => CodeType::I32,
            CodesMut::Packed { bits, signed, .. } => CodeType::Packed {
                bits: *bits,
                signed: *signed,
            },
        }
    }

    /// Consecutive pieces of `codes` codes each (the last may be shorter);
    /// `codes` must be a multiple of 8 so that packed pieces are whole bytes.
    fn split(self, codes: usize) -> Vec<CodesMut<'a>> {
        debug_assert!(codes.is_multiple_of(8));
        match self {
            CodesMut::I8(o) => o.chunks_mut(codes).map(CodesMut::I8).collect(),
            CodesMut::U8(o) => o.chunks_mut(codes).map(CodesMut::U8).collect(),
            CodesMut::I16(o) => o.chunks_mut(codes).map(CodesMut::I16).collect(),
            CodesMut::U16(o) => o.chunks_mut(codes).map(CodesMut::U16).collect(),
            CodesMut::I32(o) => o.chunks_mut(codes).map(CodesMut::I32).collect(),
            CodesMut::Packed { data, bits, signed } => data
                .chunks_mut(codes * bits as usize / 8)
                .map(|data| CodesMut::Packed { data, bits, signed })
                .collect(),
        }
    }

    /// Errors unless the buffer holds exactly `n` codes.
    fn check_holds(&self, n: usize) -> Result<()> {
        let holds = match self {
            CodesMut::I8(o) => o.len() == n,
            CodesMut::U8(o) => o.len() == n,
            CodesMut::I16(o) => o.len() == n,
            CodesMut::U16(o) => o.len() == n,
            CodesMut::I32(o) => o.len() == n,
            CodesMut::Packed { data, bits, .. } => data.len() == (n * *bits as usize).div_ceil(8),
        };
        if !holds {
            return Err(CoreError::Shape(format!(
                "the output buffer does not hold {n} codes of {:?}",
                self.code_type()
            )));
        }
        Ok(())
    }
}

/// Borrowed codes.
#[derive(Debug, Clone, Copy)]
pub enum CodesRef<'a> {
    /// int8 codes.
    I8(&'a [i8]),
    /// uint8 codes.
    U8(&'a [u8]),
    /// int16 codes.
    I16(&'a [i16]),
    /// uint16 codes.
    U16(&'a [u16]),
    /// int32 codes.
    I32(&'a [i32]),
    /// Bit-packed codes.
    Packed {
        /// The bytes.
        data: &'a [u8],
        /// Bits per code.
        bits: u32,
        /// Two's complement.
        signed: bool,
        /// Number of codes.
        len: usize,
    },
}

impl CodesRef<'_> {
    /// Number of codes.
    pub fn len(&self) -> usize {
        match self {
            CodesRef::I8(v) => v.len(),
            CodesRef::U8(v) => v.len(),
            CodesRef::I16(v) => v.len(),
            CodesRef::U16(v) => v.len(),
            CodesRef::I32(v) => v.len(),
            CodesRef::Packed { len, .. } => *len,
        }
    }

    /// Whether there are no codes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The integer range a code type holds.
fn container_range(t: CodeType) -> Result<(i64, i64)> {
    Ok(match t {
        CodeType::I8 => (i8::MIN as i64, i8::MAX as i64),
        CodeType::U8 => (0, u8::MAX as i64),
        CodeType::I16 => (i16::MIN as i64, i16::MAX as i64),
        CodeType::U16 => (0, u16::MAX as i64),
        CodeType::I32 => (i32::MIN as i64, i32::MAX as i64),
        CodeType::Packed { bits, signed } => {
            if !(1..=8).contains(&bits) || (signed && bits < 2) {
                return Err(CoreError::Value(format!(
                    "packed codes need 1..8 bits (2..8 signed), got {bits}"
                )));
            }
            if signed {
                (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
            } else {
                (0, (1i64 << bits) - 1)
            }
        }
    })
}

/// Q(x): codes of every element and the number of clipped elements.
///
/// Errors: parameters that do not match the partition, a non-positive
/// scale, or an integer range the code type cannot hold.
pub fn quantize(
    x: Values<'_>,
    partition: &Partition<'_>,
    params: &QParams<'_>,
    code_type: CodeType,
    opts: &Options,
) -> Result<(Codes, u64)> {
    let mut codes = Codes::zeroed(code_type, x.len());
    let clipped = quantize_into(x, partition, params, opts, codes.as_mut())?;
    Ok((codes, clipped))
}

/// [`quantize`] into a buffer the caller owns, whose variant is the code
/// type (callers converting tensor after tensor reuse one buffer). Returns
/// the number of clipped elements.
pub fn quantize_into(
    x: Values<'_>,
    partition: &Partition<'_>,
    params: &QParams<'_>,
    opts: &Options,
    out: CodesMut<'_>,
) -> Result<u64> {
    let plan = Plan::new(partition, x.len())?;
    let r = Resolved::new(&plan, params)?;
    check_code_type(params, out.code_type())?;
    out.check_holds(x.len())?;
    Ok(kernel::quantize_into(x, &plan, &r, opts, out))
}

/// Whether [`quantize_calibrated_into`] applies: full-range calibration
/// (absmax/minmax) of float32 or 16-bit input whose parts are equal runs
/// (rows, or groups along rows that divide them), rounded without
/// stochastic draws.
pub fn fuses(
    x: &Values<'_>,
    partition: &Partition<'_>,
    c: &Calibration<'_>,
    opts: &Options,
) -> Result<bool> {
    let plan = Plan::new(partition, x.len())?;
    Ok(fused_run(x, &plan, c, opts).is_some())
}

/// The run length of `plan`'s parts where [`fuses`] holds.
fn fused_run(
    x: &Values<'_>,
    plan: &Plan<'_>,
    c: &Calibration<'_>,
    opts: &Options,
) -> Option<usize> {
    let applies = c.method == Method::Range
        && c.weights.is_none()
        && !matches!(x, Values::F64(_))
        && opts.rounding != Rounding::Stochastic;
    plan.uniform_runs().filter(|_| applies)
}

/// [`calibrate`] and then [`quantize_into`], in one pass over x: each task
/// takes a batch of whole parts, finds their ranges and quantizes them while
/// they are still in cache, instead of reading x twice. The same scales,
/// zero-points, codes and clipped count; only where [`fuses`] says so.
/// Writes one scale and zero-point per part into `scale` and `zero` (the
/// caller's buffers: fresh ones of 10^5 parts cost a page fault per 4 KiB)
/// and returns the clipped count.
#[allow(clippy::too_many_arguments)]
pub fn quantize_calibrated_into(
    x: Values<'_>,
    partition: &Partition<'_>,
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
    opts: &Options,
    out: CodesMut<'_>,
    scale: &mut [f64],
    zero: &mut [i32],
) -> Result<u64> {
    let (plan, run) = fused_plan(&x, partition, ranges, c, opts, "quantize_calibrated_into")?;
    // Calibrated zero-points lie in [qmin, qmax], so the ranges decide
    // whether the container holds every code.
    check_code_type(
        &QParams {
            scale: &[],
            zero_point: ranges.qmin,
            qmin: ranges.qmin,
            qmax: ranges.qmax,
        },
        out.code_type(),
    )?;
    out.check_holds(x.len())?;
    // Whole bytes of packed codes per task: a multiple of 8 codes.
    let parts_per_task = (kernel::CHUNK / run).max(1).next_multiple_of(8);
    let pieces = out.split(parts_per_task * run);
    calibrated_tasks(
        (x, &plan, run),
        ranges,
        c,
        (parts_per_task, pieces),
        (scale, zero),
        |xs, sub, r, piece, ahead| kernel::quantize_into_ahead(xs, sub, r, opts, piece, ahead),
    )
}

/// [`calibrate`] and then [`fake_quantize_into`], in one pass over x, as
/// [`quantize_calibrated_into`] does for codes: the same scales,
/// zero-points, values and clipped count; only where [`fuses`] says so.
#[allow(clippy::too_many_arguments)]
pub fn fake_quantize_calibrated_into(
    x: Values<'_>,
    partition: &Partition<'_>,
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
    opts: &Options,
    out: &mut [f32],
    scale: &mut [f64],
    zero: &mut [i32],
) -> Result<u64> {
    let (plan, run) = fused_plan(
        &x,
        partition,
        ranges,
        c,
        opts,
        "fake_quantize_calibrated_into",
    )?;
    if out.len() != x.len() {
        return Err(CoreError::Shape(format!(
            "the output buffer holds {} values, the input has {}",
            out.len(),
            x.len()
        )));
    }
    let parts_per_task = (kernel::CHUNK / run).max(1);
    // Large outputs stream past the cache, as one fake_quantize_into call
    // over the whole tensor would decide.
    let stream = std::mem::size_of_val(out) >= kernel::STREAM_MIN_BYTES;
    let pieces: Vec<&mut [f32]> = out.chunks_mut(parts_per_task * run).collect();
    calibrated_tasks(
        (x, &plan, run),
        ranges,
        c,
        (parts_per_task, pieces),
        (scale, zero),
        |xs, sub, r, piece, ahead| {
            kernel::fake_quantize_into_ahead(xs, sub, r, opts, piece, stream, ahead)
        },
    )
}

/// The plan and run length of a fused calibration, after the checks both
/// fused functions make.
fn fused_plan<'a>(
    x: &Values<'_>,
    partition: &Partition<'a>,
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
    opts: &Options,
    name: &str,
) -> Result<(Plan<'a>, usize)> {
    let plan = Plan::new(partition, x.len())?;
    let Some(run) = fused_run(x, &plan, c, opts) else {
        return Err(CoreError::Value(format!(
            "{name} needs full-range calibration of float32/16 input over equal runs, without stochastic rounding"
        )));
    };
    calibrate::check(x.len(), &plan, ranges, c)?;
    Ok((plan, run))
}

/// Runs `job` on batches of `parts_per_task` whole parts in parallel, each
/// after calibrating its parts into `scale` and `zero`; `pieces` are the
/// batches' outputs. Returns the summed clipped count.
fn calibrated_tasks<O: Send>(
    (x, plan, run): (Values<'_>, &Plan<'_>, usize),
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
    (parts_per_task, pieces): (usize, Vec<O>),
    (scale, zero): (&mut [f64], &mut [i32]),
    job: impl Fn(Values<'_>, &Plan<'_>, &Resolved<'_>, O, crate::simd::Ahead) -> u64 + Sync,
) -> Result<u64> {
    check_lengths(plan, &[("scale", scale.len()), ("zero_point", zero.len())])?;
    crate::threads::init_pool();
    let clipped = pieces
        .into_par_iter()
        .zip(scale.par_chunks_mut(parts_per_task))
        .zip(zero.par_chunks_mut(parts_per_task))
        .enumerate()
        .map(|(t, ((piece, s), b))| -> Result<u64> {
            let (first, parts) = (t * parts_per_task, s.len());
            let xs = x.slice(first * run, (first + parts) * run);
            let (qmin, qmax) = (
                &ranges.qmin[first..first + parts],
                &ranges.qmax[first..first + parts],
            );
            let ranges32 = calibrate::calibrate_batch(xs, run, qmin, qmax, c, s, b)?;
            let rows = Partition::Tiles {
                shape: vec![parts, run],
                tile: vec![1, run],
            };
            let sub = Plan::new(&rows, xs.len())?;
            let params = QParams {
                scale: s,
                zero_point: b,
                qmin,
                qmax,
            };
            let r = Resolved::new(&sub, &params)?.with_ranges(&ranges32);
            // The calibration of the next task (likely this thread's) reads
            // x from memory; fetching it while this one quantizes from
            // cache overlaps the two (a quarter less time for int8 rows).
            let next = (first + parts) * run;
            let ahead = x.ahead(next, next + xs.len());
            Ok(job(xs, &sub, &r, piece, ahead))
        })
        .collect::<Result<Vec<u64>>>()?
        .into_iter()
        .sum();
    Ok(clipped)
}

/// Checks that `code_type` holds every part's integer range and
/// zero-point (the check [`quantize`] makes).
pub fn check_code_type(params: &QParams<'_>, code_type: CodeType) -> Result<()> {
    let (lo, hi) = container_range(code_type)?;
    // Plain folds in i32, compiled per instruction set so that they
    // vectorise (this sees every part of 10^5-group tensors on every call).
    let least = |v: &[i32]| v.iter().fold(i32::MAX, |m, &x| m.min(x)) as i64;
    let most = |v: &[i32]| v.iter().fold(i32::MIN, |m, &x| m.max(x)) as i64;
    let zp = params.zero_point;
    let (lo_min, hi_max, zp_min, zp_max) = crate::simd::dispatch(crate::simd::Fold(|| {
        (least(params.qmin), most(params.qmax), least(zp), most(zp))
    }));
    let (lo_min, hi_max) = if params.qmin.is_empty() {
        (0, 0)
    } else {
        (lo_min, hi_max)
    };
    let zp_bad = !zp.is_empty() && (zp_min < lo || zp_max > hi);
    if lo_min < lo || hi_max > hi || zp_bad {
        return Err(CoreError::Value(format!(
            "the integer range [{lo_min}, {hi_max}] (and zero-points) do not fit the code type {code_type:?}, which holds [{lo}, {hi}]"
        )));
    }
    Ok(())
}

/// Q̃(Q(x)) without materialising codes: float32 (float64 for float64
/// input), and the number of clipped elements.
pub fn fake_quantize(
    x: Values<'_>,
    partition: &Partition<'_>,
    params: &QParams<'_>,
    opts: &Options,
) -> Result<(Rounded, u64)> {
    let plan = Plan::new(partition, x.len())?;
    let r = Resolved::new(&plan, params)?;
    Ok(match x {
        Values::F64(_) => {
            let (y, k) = kernel::fake_quantize::<f64>(x, &plan, &r, opts);
            (Rounded::F64(y), k)
        }
        _ => {
            let (y, k) = kernel::fake_quantize::<f32>(x, &plan, &r, opts);
            (Rounded::F32(y), k)
        }
    })
}

/// [`fake_quantize`] of float32/16 input into a float32 buffer the caller
/// owns (`x.len()` values): callers that convert tensor after tensor reuse
/// one buffer instead of faulting in fresh pages each time. Returns the
/// number of clipped elements.
pub fn fake_quantize_into(
    x: Values<'_>,
    partition: &Partition<'_>,
    params: &QParams<'_>,
    opts: &Options,
    out: &mut [f32],
) -> Result<u64> {
    if matches!(x, Values::F64(_)) {
        return Err(CoreError::Dtype(
            "fake_quantize_into takes float32, float16 or bfloat16 input; float64 goes through fake_quantize".into(),
        ));
    }
    if out.len() != x.len() {
        return Err(CoreError::Shape(format!(
            "the output buffer holds {} values, the input has {}",
            out.len(),
            x.len()
        )));
    }
    let plan = Plan::new(partition, x.len())?;
    let r = Resolved::new(&plan, params)?;
    Ok(kernel::fake_quantize_into::<f32>(x, &plan, &r, opts, out))
}

/// [`dequantize`] to float32 into a buffer the caller owns (one value per
/// code).
pub fn dequantize_into(
    codes: CodesRef<'_>,
    partition: &Partition<'_>,
    scale: &[f64],
    zero_point: &[i32],
    out: &mut [f32],
) -> Result<()> {
    let (plan, r) = dequantize_plan(codes, partition, scale, zero_point)?;
    if out.len() != plan.len {
        return Err(CoreError::Shape(format!(
            "the output buffer holds {} values, there are {} codes",
            out.len(),
            plan.len
        )));
    }
    kernel::dequantize_into::<f32>(codes, &plan, &r, out);
    Ok(())
}

/// Q̃(codes) = s·(n − b) as float32, or float64 with `f64_out`: the
/// float64 product rounded once (the scales as given; how codes were
/// formed does not matter here).
pub fn dequantize(
    codes: CodesRef<'_>,
    partition: &Partition<'_>,
    scale: &[f64],
    zero_point: &[i32],
    f64_out: bool,
) -> Result<Rounded> {
    let (plan, r) = dequantize_plan(codes, partition, scale, zero_point)?;
    Ok(if f64_out {
        Rounded::F64(kernel::dequantize::<f64>(codes, &plan, &r))
    } else {
        Rounded::F32(kernel::dequantize::<f32>(codes, &plan, &r))
    })
}

/// The checks [`dequantize`] makes and the plan and per-part parameters it
/// runs on (shared with the GPU kernel). Dequantization has no code range,
/// so the parts' ranges are unbounded.
pub fn dequantize_plan<'a, 'p>(
    codes: CodesRef<'_>,
    partition: &Partition<'a>,
    scale: &'p [f64],
    zero_point: &'p [i32],
) -> Result<(Plan<'a>, Resolved<'p>)> {
    let plan = Plan::new(partition, codes.len())?;
    let r = Resolved::unbounded(&plan, scale, zero_point)?;
    check_codes(codes)?;
    Ok((plan, r))
}

/// Checks packed codes' width and byte count (the check [`dequantize`]
/// makes).
pub fn check_codes(codes: CodesRef<'_>) -> Result<()> {
    if let CodesRef::Packed {
        data,
        bits,
        len,
        signed,
    } = codes
    {
        container_range(CodeType::Packed { bits, signed })?;
        let need = (len * bits as usize).div_ceil(8);
        if data.len() != need {
            return Err(CoreError::Shape(format!(
                "codes: {len} packed codes of {bits} bits need {need} bytes, got {}",
                data.len()
            )));
        }
    }
    Ok(())
}

/// Scale and zero-point per part chosen from the data (see [`calibrate`]).
pub fn calibrate(
    x: Values<'_>,
    partition: &Partition<'_>,
    ranges: &Ranges<'_>,
    c: &Calibration<'_>,
) -> Result<(Vec<f64>, Vec<i32>)> {
    let plan = Plan::new(partition, x.len())?;
    calibrate::calibrate(x, &plan, ranges, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exercise_3_1() {
        // parts {1,3} and {2}; M = (15, 127); s = (0.02, 0.01); b = (2, 0).
        let x = [0.34, -1.26, 0.51];
        let part = Partition::Labels {
            ids: &[0, 1, 0],
            parts: 2,
        };
        let qp = QParams {
            scale: &[0.02, 0.01],
            zero_point: &[2, 0],
            qmin: &[-15, -127],
            qmax: &[15, 127],
        };
        let (codes, clipped) = quantize(
            Values::F64(&x),
            &part,
            &qp,
            CodeType::I8,
            &Options::default(),
        )
        .unwrap();
        assert_eq!(codes, Codes::I8(vec![15, -126, 15]));
        assert_eq!(clipped, 2);
        let Rounded::F64(y) = fake_quantize(Values::F64(&x), &part, &qp, &Options::default())
            .unwrap()
            .0
        else {
            panic!()
        };
        assert_eq!(y, vec![0.02 * 13.0, 0.01 * -126.0, 0.02 * 13.0]);
    }

    /// The parameter checks (one vectorised pass, then the failing part
    /// located): each bad value named with its part, past the first lanes
    /// and in a remainder lane; and when the float32 fast path applies.
    #[test]
    fn parameter_checks_name_the_part_and_decide_the_fast_path() {
        let k = 37;
        let plan = Plan::new(
            &Partition::Tiles {
                shape: vec![k, 2],
                tile: vec![1, 2],
            },
            2 * k,
        )
        .unwrap();
        let (s, zp, lo, hi) = (vec![0.5; k], vec![0; k], vec![-8; k], vec![7; k]);
        fn params<'a>(
            scale: &'a [f64],
            zero_point: &'a [i32],
            qmin: &'a [i32],
            qmax: &'a [i32],
        ) -> QParams<'a> {
            QParams {
                scale,
                zero_point,
                qmin,
                qmax,
            }
        }
        let r = Resolved::new(&plan, &params(&s, &zp, &lo, &hi)).unwrap();
        assert!(r.fast32);
        for (j, bad) in [(9, 0.0), (36, -1.0), (20, f64::NAN), (33, f64::INFINITY)] {
            let mut sb = s.clone();
            sb[j] = bad;
            let e = Resolved::new(&plan, &params(&sb, &zp, &lo, &hi))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(&format!("scale of part {j} is")), "{e}");
        }
        let mut crossed = lo.clone();
        crossed[35] = 8;
        let e = Resolved::new(&plan, &params(&s, &zp, &crossed, &hi))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("part 35: qmin 8 > qmax 7"), "{e}");
        // not a float32 value, beyond 2^126, a zero-point beyond 2^23: exact
        // but not fast
        let mut not32 = s.clone();
        not32[17] = 0.1;
        let mut huge = s.clone();
        huge[3] = 2f64.powi(127);
        let mut far = zp.clone();
        far[36] = 1 << 24;
        for (sc, z) in [(&not32, &zp), (&huge, &zp), (&s, &far)] {
            let r = Resolved::new(&plan, &params(sc, z, &lo, &hi)).unwrap();
            assert!(!r.fast32);
        }
        // the code-type check sees the zero-points and bounds of every part
        let e = check_code_type(&params(&s, &far, &lo, &hi), CodeType::I8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not fit the code type"), "{e}");
        let mut wide = hi.clone();
        wide[36] = 300;
        assert!(check_code_type(&params(&s, &zp, &lo, &wide), CodeType::I8).is_err());
        assert!(check_code_type(&params(&s, &zp, &lo, &hi), CodeType::I8).is_ok());
    }

    #[test]
    fn packed_matches_unpacked() {
        let x: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let part = Partition::Tiles {
            shape: vec![17, 59],
            tile: vec![1, 8],
        };
        let k = 17 * 8;
        let scale = vec![7.0; k];
        let zp = vec![0; k];
        let (lo, hi) = (vec![-8; k], vec![7; k]);
        let qp = QParams {
            scale: &scale,
            zero_point: &zp,
            qmin: &lo,
            qmax: &hi,
        };
        let o = Options::default();
        let (a, _) = quantize(Values::F32(&x), &part, &qp, CodeType::I32, &o).unwrap();
        let (b, _) = quantize(
            Values::F32(&x),
            &part,
            &qp,
            CodeType::Packed {
                bits: 4,
                signed: true,
            },
            &o,
        )
        .unwrap();
        let (Codes::I32(a), Codes::Packed { data, .. }) = (a, b) else {
            panic!()
        };
        assert_eq!(pack::unpack(&data, 4, true, a.len()).unwrap(), a);
    }

    #[test]
    fn batched_run_calibration_equals_the_per_part_path() {
        // Groups of 8 along rows of 64 take the batched path; the same parts
        // as labels take the per-part one. NaN, ±inf and an all-inf group.
        let (rows, cols, g) = (9, 64, 8);
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 1013) as f32 / 37.0 - 13.0)
            .collect();
        x[5] = f32::NAN;
        x[70] = f32::INFINITY;
        x[71] = f32::NEG_INFINITY;
        x[16..24].fill(f32::INFINITY);
        let k = rows * cols / g;
        let ids: Vec<i64> = (0..rows * cols).map(|i| (i / g) as i64).collect();
        let tiles = Partition::Tiles {
            shape: vec![rows, cols],
            tile: vec![1, g],
        };
        let labels = Partition::Labels {
            ids: &ids,
            parts: k,
        };
        let (lo, hi) = (vec![-8; k], vec![7; k]);
        let ranges = Ranges {
            qmin: &lo,
            qmax: &hi,
        };
        for symmetric in [true, false] {
            let c = Calibration {
                method: Method::Range,
                style: Style::Lecture,
                symmetric,
                scale_f32: false,
                weights: None,
                options: Options::default(),
            };
            let a = calibrate(Values::F32(&x), &tiles, &ranges, &c).unwrap();
            let b = calibrate(Values::F32(&x), &labels, &ranges, &c).unwrap();
            assert_eq!(a, b);
            assert_eq!((a.0[2], a.1[2]), (1.0, if symmetric { 0 } else { -8 }));
        }
    }

    /// One case of a fused calibration: the codes, parameters, clipped
    /// count and fake-quantized values of [`quantize_calibrated_into`] and
    /// [`fake_quantize_calibrated_into`] equal calibrating, then quantizing;
    /// returns the clipped count.
    fn fused_equals_two_steps(
        x: &[f32],
        (rows, cols): (usize, usize),
        (group, bits, symmetric, style, arith, packed): (usize, i32, bool, Style, Arith, bool),
        rounding: Rounding,
    ) -> u64 {
        let part = Partition::Tiles {
            shape: vec![rows, cols],
            tile: vec![1, group],
        };
        let k = rows * cols / group;
        let (qlo, qhi) = if symmetric {
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        } else {
            (0, (1 << bits) - 1)
        };
        let (lo, hi) = (vec![qlo; k], vec![qhi; k]);
        let ranges = Ranges {
            qmin: &lo,
            qmax: &hi,
        };
        let opts = Options {
            arith,
            rounding,
            ..Options::default()
        };
        let c = Calibration {
            method: Method::Range,
            style,
            symmetric,
            scale_f32: true,
            weights: None,
            options: opts,
        };
        let xs = Values::F32(x);
        assert!(fuses(&xs, &part, &c, &opts).unwrap());
        let (scale, zero) = calibrate(xs, &part, &ranges, &c).unwrap();
        let qp = QParams {
            scale: &scale,
            zero_point: &zero,
            qmin: &lo,
            qmax: &hi,
        };
        let ct = if packed {
            CodeType::Packed {
                bits: bits as u32,
                signed: symmetric,
            }
        } else if symmetric {
            CodeType::I8
        } else {
            CodeType::U8
        };
        let (mut want, want_clipped) = quantize(xs, &part, &qp, ct, &opts).unwrap();
        let mut got = want.clone();
        match got.as_mut() {
            CodesMut::I8(o) => o.fill(0x55),
            CodesMut::U8(o) | CodesMut::Packed { data: o, .. } => o.fill(0x55),
            _ => unreachable!(),
        }
        let (mut s2, mut z2) = (vec![-1.0; scale.len()], vec![-1; zero.len()]);
        let clipped = quantize_calibrated_into(
            xs,
            &part,
            &ranges,
            &c,
            &opts,
            got.as_mut(),
            &mut s2,
            &mut z2,
        )
        .unwrap();
        assert_eq!((&s2, &z2, clipped), (&scale, &zero, want_clipped));
        assert_eq!(got, want);
        let _ = want.as_mut();
        // The fake-quantized values: the same as fake_quantize_into
        // with the calibrated parameters, bit for bit.
        let mut fake_want = vec![0f32; x.len()];
        let fake_clipped = fake_quantize_into(xs, &part, &qp, &opts, &mut fake_want).unwrap();
        let mut fake_got = vec![-1f32; x.len()];
        let (mut s3, mut z3) = (vec![-1.0; scale.len()], vec![-1; zero.len()]);
        let clipped = fake_quantize_calibrated_into(
            xs,
            &part,
            &ranges,
            &c,
            &opts,
            &mut fake_got,
            &mut s3,
            &mut z3,
        )
        .unwrap();
        assert_eq!((&s3, &z3, clipped), (&scale, &zero, fake_clipped));
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&fake_got), bits(&fake_want));
        want_clipped
    }

    #[test]
    fn fused_paths_leave_out_the_clip_only_where_no_code_clips() {
        // Runs of the lengths the kernel unrolls (32, 64, 128) and others
        // (256, 48), every deterministic rounding, symmetric and asymmetric
        // ranges: the parts whose extremes quantize within bounds skip the
        // clip, the rest (asymmetric zero-points, upward rounding of the
        // symmetric maximum) clip and count as the two steps do.
        let (rows, cols) = (300, 768);
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let r = (i / cols) as f32;
                (((i * 7919) % 4001) as f32 / 200.0 - 10.0 + r / 7.0) * (1.0 + r / 3.0)
            })
            .collect();
        x[5] = f32::NAN;
        x[cols + 300] = f32::INFINITY;
        x[2 * cols + 10] = f32::NEG_INFINITY;
        x[3 * cols..4 * cols].fill(0.25);
        x[4 * cols..4 * cols + 64].fill(f32::NAN);
        let mut clipped = 0;
        for case in [
            (128, 4, false, Style::Lecture, Arith::Divide, true),
            (128, 4, true, Style::Lecture, Arith::Divide, true),
            (64, 8, false, Style::Lecture, Arith::Divide, false),
            (32, 3, false, Style::Lecture, Arith::Divide, true),
            (256, 8, false, Style::Lecture, Arith::Divide, false),
            (48, 8, true, Style::Lecture, Arith::Divide, false),
            (
                128,
                4,
                false,
                Style::Torchao { eps: f32::EPSILON },
                Arith::Reciprocal32,
                true,
            ),
        ] {
            for rounding in [
                Rounding::NearestEven,
                Rounding::NearestAway,
                Rounding::TowardZero,
                Rounding::Down,
                Rounding::Up,
            ] {
                clipped += fused_equals_two_steps(&x, (rows, cols), case, rounding);
            }
        }
        assert!(clipped > 0, "some parts clip");
    }

    #[test]
    fn fused_calibrate_and_quantize_equals_the_two_steps() {
        let (rows, cols) = (700, 96); // two tasks for every group size
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 7919) % 2003) as f32 / 97.0 - 10.0) * (1.0 + (i / cols) as f32))
            .collect();
        x[3] = f32::NAN;
        x[200] = f32::NEG_INFINITY;
        x[96..192].fill(f32::INFINITY);
        for case in [
            (96, 8, true, Style::Lecture, Arith::Divide, false),
            (32, 4, false, Style::Lecture, Arith::Divide, true),
            (
                8,
                4,
                true,
                Style::Torchao { eps: f32::EPSILON },
                Arith::Reciprocal32,
                true,
            ),
            (
                16,
                3,
                false,
                Style::Torchao { eps: f32::EPSILON },
                Arith::Reciprocal32,
                true,
            ),
            (96, 8, false, Style::Lecture, Arith::Divide, false),
        ] {
            fused_equals_two_steps(&x, (rows, cols), case, Rounding::NearestEven);
        }
        // Stochastic rounding and labels do not fuse.
        let part = Partition::Tiles {
            shape: vec![rows, cols],
            tile: vec![1, 32],
        };
        let c = Calibration {
            method: Method::Range,
            style: Style::Lecture,
            symmetric: true,
            scale_f32: true,
            weights: None,
            options: Options::default(),
        };
        let stochastic = Options {
            rounding: Rounding::Stochastic,
            ..Options::default()
        };
        assert!(!fuses(&Values::F32(&x), &part, &c, &stochastic).unwrap());
        let (lo, hi) = (vec![-8; rows * cols / 32], vec![7; rows * cols / 32]);
        let ranges = Ranges {
            qmin: &lo,
            qmax: &hi,
        };
        let mut out = vec![0i8; x.len()];
        let err = quantize_calibrated_into(
            Values::F32(&x),
            &part,
            &ranges,
            &c,
            &stochastic,
            CodesMut::I8(&mut out),
            &mut vec![0.0; lo.len()],
            &mut vec![0; lo.len()],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("needs full-range calibration"),
            "{err}"
        );
        let err = quantize_calibrated_into(
            Values::F32(&x),
            &part,
            &ranges,
            &c,
            &Options::default(),
            CodesMut::I8(&mut out[1..]),
            &mut vec![0.0; lo.len()],
            &mut vec![0; lo.len()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("does not hold"), "{err}");
        let err = quantize_calibrated_into(
            Values::F32(&x),
            &part,
            &ranges,
            &c,
            &Options::default(),
            CodesMut::I8(&mut out),
            &mut vec![0.0; lo.len() - 1],
            &mut vec![0; lo.len()],
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("scale has {} values", lo.len() - 1)),
            "{err}"
        );
        // The fake-quantizing twin checks the same, and its output's length.
        let mut y = vec![0f32; x.len()];
        let (mut s, mut z) = (vec![0.0; lo.len()], vec![0; lo.len()]);
        let err = fake_quantize_calibrated_into(
            Values::F32(&x),
            &part,
            &ranges,
            &c,
            &stochastic,
            &mut y,
            &mut s,
            &mut z,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("fake_quantize_calibrated_into needs full-range calibration"),
            "{err}"
        );
        let err = fake_quantize_calibrated_into(
            Values::F32(&x),
            &part,
            &ranges,
            &c,
            &Options::default(),
            &mut y[1..],
            &mut s,
            &mut z,
        )
        .unwrap_err();
        assert!(err.to_string().contains("the output buffer holds"), "{err}");
        let err = fake_quantize_calibrated_into(
            Values::F32(&x),
            &part,
            &ranges,
            &c,
            &Options::default(),
            &mut y,
            &mut s,
            &mut z[1..],
        )
        .unwrap_err();
        assert!(err.to_string().contains("zero_point has"), "{err}");
        assert!(!fuses(
            &Values::F64(&[1.0; 64]),
            &Partition::Tiles {
                shape: vec![64],
                tile: vec![64]
            },
            &c,
            &Options::default()
        )
        .unwrap());
    }

    #[test]
    fn large_float32_dequantize_streams_the_same_values() {
        // 3·2^20 codes: a 12 MiB float32 output, written with non-temporal
        // stores, against the float64 path rounded to float32; groups of 128
        // (whole vectors) and of 100 (ragged, parts starting mid-vector), into an
        // aligned buffer and one shifted by a float (unaligned heads).
        let n = 3 << 20;
        let codes: Vec<i8> = (0..n).map(|i| ((i * 7919) % 255) as i8).collect();
        let nibbles: Vec<u8> = (0..n / 2).map(|i| ((i * 7919) % 256) as u8).collect();
        let mut buffer = vec![0f32; n + 1];
        for (group, cols) in [(128, 384), (100, 384)] {
            let part = Partition::Tiles {
                shape: vec![n / cols, cols],
                tile: vec![1, group],
            };
            let k = n / cols * cols.div_ceil(group);
            let scale: Vec<f64> = (0..k)
                .map(|j| ((1 + j % 97) as f32 / 64.0) as f64)
                .collect();
            let zp: Vec<i32> = (0..k).map(|j| (j % 5) as i32 - 2).collect();
            let packed = CodesRef::Packed {
                data: &nibbles,
                bits: 4,
                signed: true,
                len: n,
            };
            for c in [CodesRef::I8(&codes), packed] {
                let Rounded::F32(y) = dequantize(c, &part, &scale, &zp, false).unwrap() else {
                    panic!()
                };
                let Rounded::F64(y64) = dequantize(c, &part, &scale, &zp, true).unwrap() else {
                    panic!()
                };
                assert!(y.iter().zip(&y64).all(|(a, b)| *a == *b as f32));
                for shift in [0, 1] {
                    let out = &mut buffer[shift..shift + n];
                    dequantize_into(c, &part, &scale, &zp, out).unwrap();
                    assert!(out.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
                }
            }
        }
        // Unaligned destinations: the head and tail take plain stores.
        for shift in 0..4 {
            let src: Vec<f32> = (0..1000).map(|i| i as f32).collect();
            let mut dst = vec![0f32; 1004];
            crate::simd::stream_copy_f32(&mut dst[shift..shift + 997], &src[..997]);
            crate::simd::store_fence();
            assert_eq!(&dst[shift..shift + 997], &src[..997]);
            assert!(dst[..shift]
                .iter()
                .chain(&dst[shift + 997..])
                .all(|&v| v == 0.0));
        }
    }

    #[test]
    fn into_forms_equal_the_allocating_ones_and_check_their_buffers() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 / 9.0 - 5.0)
            .collect();
        let part = Partition::Tiles {
            shape: vec![10, 100],
            tile: vec![1, 32],
        };
        let k = 10 * 4;
        let scale: Vec<f64> = (0..k).map(|j| 0.05 + j as f64 / 400.0).collect();
        let zp = vec![1; k];
        let (lo, hi) = (vec![-8; k], vec![7; k]);
        let qp = QParams {
            scale: &scale,
            zero_point: &zp,
            qmin: &lo,
            qmax: &hi,
        };
        let o = Options::default();
        let xs = Values::F32(&x);
        let (want, clipped) = quantize(xs, &part, &qp, CodeType::I8, &o).unwrap();
        let mut got = vec![99i8; x.len()];
        assert_eq!(
            quantize_into(xs, &part, &qp, &o, CodesMut::I8(&mut got)).unwrap(),
            clipped
        );
        assert_eq!(Codes::I8(got.clone()), want);
        let packed = CodeType::Packed {
            bits: 4,
            signed: true,
        };
        let (Codes::Packed { data, .. }, _) = quantize(xs, &part, &qp, packed, &o).unwrap() else {
            panic!()
        };
        let mut bytes = vec![0xffu8; 500];
        let out = CodesMut::Packed {
            data: &mut bytes,
            bits: 4,
            signed: true,
        };
        quantize_into(xs, &part, &qp, &o, out).unwrap();
        assert_eq!(bytes, data);
        let mut short = vec![0u8; 499];
        let out = CodesMut::Packed {
            data: &mut short,
            bits: 4,
            signed: true,
        };
        let err = quantize_into(xs, &part, &qp, &o, out).unwrap_err();
        assert!(
            err.to_string().contains("does not hold 1000 codes"),
            "{err}"
        );

        let (Rounded::F32(want), _) = fake_quantize(xs, &part, &qp, &o).unwrap() else {
            panic!()
        };
        let mut y = vec![f32::NAN; x.len()];
        fake_quantize_into(xs, &part, &qp, &o, &mut y).unwrap();
        assert_eq!(y, want);
        assert!(fake_quantize_into(xs, &part, &qp, &o, &mut y[1..]).is_err());

        let Rounded::F32(want) = dequantize(CodesRef::I8(&got), &part, &scale, &zp, false).unwrap()
        else {
            panic!()
        };
        let mut y = vec![f32::NAN; x.len()];
        dequantize_into(CodesRef::I8(&got), &part, &scale, &zp, &mut y).unwrap();
        assert_eq!(y, want);
        let err = dequantize_into(CodesRef::I8(&got), &part, &scale, &zp, &mut y[1..]).unwrap_err();
        assert!(
            err.to_string()
                .contains("holds 999 values, there are 1000 codes"),
            "{err}"
        );
    }
}
