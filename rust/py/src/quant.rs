//! Integer quantization (Def 3.2): calibration, quantize, dequantize,
//! fake-quantize and bit packing.
//!
//! Python hands over flat C-contiguous arrays, the partition as
//! `(shape, tile, labels, parts)` and per-part parameter arrays of length
//! k; these wrappers borrow them, release the GIL, and move results back.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use quantdrift_core::buffers::{Buffer, Plain};
use quantdrift_core::lowp::{Rounded, Rounding, Values};
use quantdrift_core::quant::{
    self, pack, Arith, Calibration, CodeType, Codes, CodesMut, CodesRef, Method, Options,
    Partition, QParams, Ranges, Style,
};
use quantdrift_core::{stats, CoreError};

use crate::array::buffer_into_pyarray;
use crate::errors::Error;
use crate::gpu::{on_gpu, to_py as gpu_error};
use crate::lowp::Input;

/// A partition as Python passes it: (shape, tile, labels, parts). With
/// labels, shape and tile are ignored.
type PartSpec<'py> = (
    Vec<usize>,
    Vec<usize>,
    Option<PyReadonlyArray1<'py, i64>>,
    usize,
);

/// Per-part scales (float64) and zero-points (int32).
type ScalesAndZeros<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<i32>>);
type CodesScalesZeros<'py> = (
    Bound<'py, PyAny>,
    Bound<'py, PyAny>,
    Bound<'py, PyArray1<i32>>,
    u64,
);

fn style(name: &str, eps: f32) -> Result<Style, Error> {
    match name {
        "lecture" => Ok(Style::Lecture),
        "torchao" => Ok(Style::Torchao { eps }),
        other => Err(Error(CoreError::Value(format!(
            "style must be lecture or torchao, got {other:?}"
        )))),
    }
}

fn slice<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray1<'_, T>,
    arg: &str,
) -> Result<&'a [T], Error> {
    a.as_slice()
        .map_err(|e| Error(CoreError::Value(format!("{arg}: {e}"))))
}

fn partition<'a>(spec: &'a PartSpec<'_>) -> Result<Partition<'a>, Error> {
    let (shape, tile, labels, parts) = spec;
    Ok(match labels {
        Some(ids) => Partition::Labels {
            ids: slice(ids, "labels")?,
            parts: *parts,
        },
        None => Partition::Tiles {
            shape: shape.clone(),
            tile: tile.clone(),
        },
    })
}

fn arith(name: &str) -> Result<Arith, Error> {
    match name {
        "divide" => Ok(Arith::Divide),
        "reciprocal32" => Ok(Arith::Reciprocal32),
        other => Err(Error(CoreError::Value(format!(
            "arith must be \"divide\" or \"reciprocal32\", got {other:?}"
        )))),
    }
}

fn options(rounding: &str, seed: u64, arith_name: &str) -> Result<Options, Error> {
    Ok(Options {
        rounding: Rounding::parse(rounding)?,
        seed,
        arith: arith(arith_name)?,
    })
}

fn code_type(name: &str) -> Result<CodeType, Error> {
    Ok(match name {
        "int8" => CodeType::I8,
        "uint8" => CodeType::U8,
        "int16" => CodeType::I16,
        "uint16" => CodeType::U16,
        "int32" => CodeType::I32,
        _ => {
            let (signed, rest) = match name.strip_prefix("packed_s") {
                Some(r) => (true, r),
                None => (
                    false,
                    name.strip_prefix("packed_u").ok_or_else(|| {
                        Error(CoreError::Value(format!(
                            "code_type must be int8, uint8, int16, uint16, int32, packed_sN or packed_uN, got {name:?}"
                        )))
                    })?,
                ),
            };
            let bits = rest.parse::<u32>().map_err(|_| {
                Error(CoreError::Value(format!(
                    "code_type {name:?}: bits must be a number"
                )))
            })?;
            CodeType::Packed { bits, signed }
        }
    })
}

fn rounded_to_py(py: Python<'_>, r: Rounded) -> Bound<'_, PyAny> {
    match r {
        Rounded::F32(v) => v.into_pyarray(py).into_any(),
        Rounded::F64(v) => v.into_pyarray(py).into_any(),
    }
}

/// Scale (float64) and zero-point (int32) of every part.
#[pyfunction]
#[pyo3(signature = (x, partition, qmin, qmax, *, symmetric, method, percentile, style, eps, scale_f32, importance, rounding, seed, arith, x16, w16, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn quant_calibrate<'py>(
    py: Python<'py>,
    x: Input<'py>,
    partition: PartSpec<'py>,
    qmin: PyReadonlyArray1<'py, i32>,
    qmax: PyReadonlyArray1<'py, i32>,
    symmetric: bool,
    method: &str,
    percentile: f64,
    style: &str,
    eps: f32,
    scale_f32: bool,
    importance: Option<Input<'py>>,
    rounding: &str,
    seed: u64,
    arith: &str,
    x16: &str,
    w16: &str,
    device: &str,
) -> PyResult<ScalesAndZeros<'py>> {
    let part = self::partition(&partition)?;
    let values = x.values(x16, "x")?;
    let weights = match &importance {
        Some(w) => Some(w.values(w16, "importance")?),
        None => None,
    };
    let method = match method {
        "range" => Method::Range,
        "percentile" => Method::Percentile(percentile),
        "mse" => Method::Mse,
        other => {
            return Err(Error(CoreError::Value(format!(
                "calibration method must be range, percentile or mse, got {other:?}"
            )))
            .into())
        }
    };
    let style = self::style(style, eps)?;
    let cal = Calibration {
        method,
        style,
        symmetric,
        scale_f32,
        weights,
        options: options(rounding, seed, arith)?,
    };
    let ranges = Ranges {
        qmin: slice(&qmin, "qmin")?,
        qmax: slice(&qmax, "qmax")?,
    };
    let (s, b) = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::quant::calibrate(values, &part, &ranges, &cal))
            .map_err(gpu_error)?
    } else {
        py.detach(|| quant::calibrate(values, &part, &ranges, &cal))
            .map_err(Error)?
    };
    Ok((s.into_pyarray(py), b.into_pyarray(py)))
}

/// Codes of x (in `code_type`) and the number of clipped elements.
#[pyfunction]
#[pyo3(signature = (x, partition, scale, zero_point, qmin, qmax, *, code_type, rounding, seed, arith, x16, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn quant_quantize<'py>(
    py: Python<'py>,
    x: Input<'py>,
    partition: PartSpec<'py>,
    scale: PyReadonlyArray1<'py, f64>,
    zero_point: PyReadonlyArray1<'py, i32>,
    qmin: PyReadonlyArray1<'py, i32>,
    qmax: PyReadonlyArray1<'py, i32>,
    code_type: &str,
    rounding: &str,
    seed: u64,
    arith: &str,
    x16: &str,
    device: &str,
) -> PyResult<(Bound<'py, PyAny>, u64)> {
    let part = self::partition(&partition)?;
    let values = x.values(x16, "x")?;
    let params = QParams {
        scale: slice(&scale, "scale")?,
        zero_point: slice(&zero_point, "zero_point")?,
        qmin: slice(&qmin, "qmin")?,
        qmax: slice(&qmax, "qmax")?,
    };
    let ct = self::code_type(code_type)?;
    let opts = options(rounding, seed, arith)?;
    if !on_gpu(device)? {
        return codes_into_buffer(py, values.len(), ct, |out| {
            quant::quantize_into(values, &part, &params, &opts, out)
        });
    }
    let (codes, clipped) = py
        .detach(|| quantdrift_gpu::quant::quantize(values, &part, &params, ct, &opts))
        .map_err(gpu_error)?;
    let arr = match codes {
        Codes::I8(v) => v.into_pyarray(py).into_any(),
        Codes::U8(v) => v.into_pyarray(py).into_any(),
        Codes::I16(v) => v.into_pyarray(py).into_any(),
        Codes::U16(v) => v.into_pyarray(py).into_any(),
        Codes::I32(v) => v.into_pyarray(py).into_any(),
        Codes::Packed { data, .. } => data.into_pyarray(py).into_any(),
    };
    Ok((arr, clipped))
}

/// The CPU's codes in a recycled buffer (see quantdrift_core::buffers), as
/// a numpy array of the code type's dtype, and what `fill` returns.
fn codes_into_buffer<'py, R: Send>(
    py: Python<'py>,
    n: usize,
    ct: CodeType,
    fill: impl FnOnce(CodesMut<'_>) -> quantdrift_core::Result<R> + Send,
) -> PyResult<(Bound<'py, PyAny>, R)> {
    macro_rules! ints {
        ($T:ty, $variant:ident) => {{
            let mut out = Buffer::<$T>::new(n);
            let r = py
                .detach(|| fill(CodesMut::$variant(&mut out)))
                .map_err(Error)?;
            Ok((buffer_into_pyarray(py, out)?.into_any(), r))
        }};
    }
    match ct {
        CodeType::I8 => ints!(i8, I8),
        CodeType::U8 => ints!(u8, U8),
        CodeType::I16 => ints!(i16, I16),
        CodeType::U16 => ints!(u16, U16),
        CodeType::I32 => ints!(i32, I32),
        CodeType::Packed { bits, signed } => {
            let mut out = Buffer::<u8>::new((n * bits as usize).div_ceil(8));
            let r = py
                .detach(|| {
                    fill(CodesMut::Packed {
                        data: &mut out,
                        bits,
                        signed,
                    })
                })
                .map_err(Error)?;
            Ok((buffer_into_pyarray(py, out)?.into_any(), r))
        }
    }
}

/// Full-range (absmax/minmax) calibration and the options it quantizes
/// with: what the fused functions below run.
fn range_calibration(
    style: &str,
    eps: f32,
    symmetric: bool,
    scale_f32: bool,
    (rounding, seed, arith): (&str, u64, &str),
) -> PyResult<(Calibration<'static>, Options)> {
    let opts = options(rounding, seed, arith)?;
    let cal = Calibration {
        method: Method::Range,
        style: self::style(style, eps)?,
        symmetric,
        scale_f32,
        weights: None,
        options: opts,
    };
    Ok((cal, opts))
}

/// Full-range calibration and quantization in one pass (see
/// `quant::quantize_calibrated_into`): (codes, scale, zero_point, clipped),
/// or None where it does not apply (the caller calibrates, then quantizes).
/// The scales are float32 with `scale_f32` (their values are), else
/// float64.
#[pyfunction]
#[pyo3(signature = (x, partition, qmin, qmax, *, code_type, symmetric, style, eps, scale_f32, rounding, seed, arith, x16))]
#[allow(clippy::too_many_arguments)]
pub fn quant_quantize_calibrated<'py>(
    py: Python<'py>,
    x: Input<'py>,
    partition: PartSpec<'py>,
    qmin: PyReadonlyArray1<'py, i32>,
    qmax: PyReadonlyArray1<'py, i32>,
    code_type: &str,
    symmetric: bool,
    style: &str,
    eps: f32,
    scale_f32: bool,
    rounding: &str,
    seed: u64,
    arith: &str,
    x16: &str,
) -> PyResult<Option<CodesScalesZeros<'py>>> {
    let part = self::partition(&partition)?;
    let values = x.values(x16, "x")?;
    let (cal, opts) = range_calibration(style, eps, symmetric, scale_f32, (rounding, seed, arith))?;
    if !quant::fuses(&values, &part, &cal, &opts).map_err(Error)? {
        return Ok(None);
    }
    let ranges = Ranges {
        qmin: slice(&qmin, "qmin")?,
        qmax: slice(&qmax, "qmax")?,
    };
    let ct = self::code_type(code_type)?;
    // Per-part outputs in recycled buffers too: 10^5–10^6 groups make
    // megabytes, and fresh pages cost a fault each.
    let k = ranges.qmin.len();
    let (mut s, mut b) = (Buffer::<f64>::new(k), Buffer::<i32>::new(k));
    let mut s32 = Buffer::<f32>::new(if scale_f32 { k } else { 0 });
    let (codes, clipped) = codes_into_buffer(py, values.len(), ct, |out| {
        let clipped = quant::quantize_calibrated_into(
            values, &part, &ranges, &cal, &opts, out, &mut s, &mut b,
        )?;
        // float32 scales are float32 values: returned as such, they need
        // no conversion in Python.
        s32.iter_mut()
            .zip(s.iter())
            .for_each(|(t, &v)| *t = v as f32);
        Ok(clipped)
    })?;
    let scale = if scale_f32 {
        buffer_into_pyarray(py, s32)?.into_any()
    } else {
        buffer_into_pyarray(py, s)?.into_any()
    };
    Ok(Some((codes, scale, buffer_into_pyarray(py, b)?, clipped)))
}

/// Full-range calibration and fake quantization in one pass (see
/// `quant::fake_quantize_calibrated_into`): (float32 values, clipped), or
/// None where it does not apply (the caller calibrates, then fake-quantizes).
#[pyfunction]
#[pyo3(signature = (x, partition, qmin, qmax, *, symmetric, style, eps, scale_f32, rounding, seed, arith, x16))]
#[allow(clippy::too_many_arguments)]
pub fn quant_fake_calibrated<'py>(
    py: Python<'py>,
    x: Input<'py>,
    partition: PartSpec<'py>,
    qmin: PyReadonlyArray1<'py, i32>,
    qmax: PyReadonlyArray1<'py, i32>,
    symmetric: bool,
    style: &str,
    eps: f32,
    scale_f32: bool,
    rounding: &str,
    seed: u64,
    arith: &str,
    x16: &str,
) -> PyResult<Option<(Bound<'py, PyAny>, u64)>> {
    let part = self::partition(&partition)?;
    let values = x.values(x16, "x")?;
    let (cal, opts) = range_calibration(style, eps, symmetric, scale_f32, (rounding, seed, arith))?;
    if !quant::fuses(&values, &part, &cal, &opts).map_err(Error)? {
        return Ok(None);
    }
    let ranges = Ranges {
        qmin: slice(&qmin, "qmin")?,
        qmax: slice(&qmax, "qmax")?,
    };
    let k = ranges.qmin.len();
    let (mut s, mut b) = (Buffer::<f64>::new(k), Buffer::<i32>::new(k));
    let mut out = Buffer::<f32>::new(values.len());
    let clipped = py
        .detach(|| {
            quant::fake_quantize_calibrated_into(
                values, &part, &ranges, &cal, &opts, &mut out, &mut s, &mut b,
            )
        })
        .map_err(Error)?;
    Ok(Some((buffer_into_pyarray(py, out)?.into_any(), clipped)))
}

/// Q̃(Q(x)) (float32, float64 for float64 x) and the number of clipped elements.
#[pyfunction]
#[pyo3(signature = (x, partition, scale, zero_point, qmin, qmax, *, rounding, seed, arith, x16, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn quant_fake<'py>(
    py: Python<'py>,
    x: Input<'py>,
    partition: PartSpec<'py>,
    scale: PyReadonlyArray1<'py, f64>,
    zero_point: PyReadonlyArray1<'py, i32>,
    qmin: PyReadonlyArray1<'py, i32>,
    qmax: PyReadonlyArray1<'py, i32>,
    rounding: &str,
    seed: u64,
    arith: &str,
    x16: &str,
    device: &str,
) -> PyResult<(Bound<'py, PyAny>, u64)> {
    let part = self::partition(&partition)?;
    let values = x.values(x16, "x")?;
    let params = QParams {
        scale: slice(&scale, "scale")?,
        zero_point: slice(&zero_point, "zero_point")?,
        qmin: slice(&qmin, "qmin")?,
        qmax: slice(&qmax, "qmax")?,
    };
    let opts = options(rounding, seed, arith)?;
    let (y, clipped) = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::quant::fake_quantize(values, &part, &params, &opts))
            .map_err(gpu_error)?
    } else if matches!(values, Values::F64(_)) {
        py.detach(|| quant::fake_quantize(values, &part, &params, &opts))
            .map_err(Error)?
    } else {
        // Into a recycled buffer (see quantdrift_core::buffers).
        let mut out = Buffer::<f32>::new(values.len());
        let clipped = py
            .detach(|| quant::fake_quantize_into(values, &part, &params, &opts, &mut out))
            .map_err(Error)?;
        return Ok((buffer_into_pyarray(py, out)?.into_any(), clipped));
    };
    Ok((rounded_to_py(py, y), clipped))
}

/// Scales as a QuantizedTensor stores them.
#[derive(FromPyObject)]
pub enum ScaleArray<'py> {
    F64(PyReadonlyArray1<'py, f64>),
    F32(PyReadonlyArray1<'py, f32>),
}

impl ScaleArray<'_> {
    /// The scales in float64: float64 ones in place, float32 ones widened
    /// into a recycled buffer (a fresh array per call of 10^5–10^6 groups
    /// would fault in its pages one by one).
    fn widen(&self) -> Result<Wide<'_, f64>, Error> {
        Ok(match self {
            ScaleArray::F64(a) => Wide::Borrowed(slice(a, "scale")?),
            ScaleArray::F32(a) => Wide::widened(slice(a, "scale")?, f64::from),
        })
    }
}

/// Per-part values in place or widened into a recycled buffer.
pub enum Wide<'a, T: Plain> {
    Borrowed(&'a [T]),
    Owned(Buffer<T>),
}

impl<T: Plain> Wide<'_, T> {
    fn widened<S: Copy>(from: &[S], widen: impl Fn(S) -> T) -> Self {
        let mut out = Buffer::<T>::new(from.len());
        out.iter_mut().zip(from).for_each(|(o, &v)| *o = widen(v));
        Wide::Owned(out)
    }
}

impl<T: Plain> std::ops::Deref for Wide<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Wide::Borrowed(s) => s,
            Wide::Owned(b) => b,
        }
    }
}

/// Integers of any code dtype as int32 (see [`ScaleArray::widen`]).
fn widen_ints<'a>(a: &'a CodeArray<'_>, arg: &str) -> Result<Wide<'a, i32>, Error> {
    Ok(match a {
        CodeArray::I32(v) => Wide::Borrowed(slice(v, arg)?),
        CodeArray::I8(v) => Wide::widened(slice(v, arg)?, i32::from),
        CodeArray::U8(v) => Wide::widened(slice(v, arg)?, i32::from),
        CodeArray::I16(v) => Wide::widened(slice(v, arg)?, i32::from),
        CodeArray::U16(v) => Wide::widened(slice(v, arg)?, i32::from),
    })
}

/// Integer codes as Python passes them.
#[derive(FromPyObject)]
pub enum CodeArray<'py> {
    I8(PyReadonlyArray1<'py, i8>),
    U8(PyReadonlyArray1<'py, u8>),
    I16(PyReadonlyArray1<'py, i16>),
    U16(PyReadonlyArray1<'py, u16>),
    I32(PyReadonlyArray1<'py, i32>),
}

/// s·(n − b) of codes (float32, or float64 with f64_out).
#[pyfunction]
#[pyo3(signature = (codes, partition, scale, zero_point, *, packed_bits, signed, length, f64_out, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn quant_dequantize<'py>(
    py: Python<'py>,
    codes: CodeArray<'py>,
    partition: PartSpec<'py>,
    scale: ScaleArray<'py>,
    zero_point: CodeArray<'py>,
    packed_bits: Option<u32>,
    signed: bool,
    length: usize,
    f64_out: bool,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let part = self::partition(&partition)?;
    let c = match (&codes, packed_bits) {
        (CodeArray::U8(a), Some(bits)) => CodesRef::Packed {
            data: slice(a, "codes")?,
            bits,
            signed,
            len: length,
        },
        (_, Some(_)) => {
            return Err(Error(CoreError::Dtype("codes: packed codes must be uint8".into())).into())
        }
        (CodeArray::I8(a), None) => CodesRef::I8(slice(a, "codes")?),
        (CodeArray::U8(a), None) => CodesRef::U8(slice(a, "codes")?),
        (CodeArray::I16(a), None) => CodesRef::I16(slice(a, "codes")?),
        (CodeArray::U16(a), None) => CodesRef::U16(slice(a, "codes")?),
        (CodeArray::I32(a), None) => CodesRef::I32(slice(a, "codes")?),
    };
    let (s, b) = (scale.widen()?, widen_ints(&zero_point, "zero_point")?);
    let (s, b) = (&s[..], &b[..]);
    let y = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::quant::dequantize(c, &part, s, b, f64_out))
            .map_err(gpu_error)?
    } else if f64_out {
        py.detach(|| quant::dequantize(c, &part, s, b, f64_out))
            .map_err(Error)?
    } else {
        let mut out = Buffer::<f32>::new(c.len());
        py.detach(|| quant::dequantize_into(c, &part, s, b, &mut out))
            .map_err(Error)?;
        return Ok(buffer_into_pyarray(py, out)?.into_any());
    };
    Ok(rounded_to_py(py, y))
}

/// Packs int32 codes into `bits` each, LSB-first.
#[pyfunction]
pub fn quant_pack<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, i32>,
    bits: u32,
    signed: bool,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let c = slice(&codes, "codes")?;
    let out = py.detach(|| pack::pack(c, bits, signed)).map_err(Error)?;
    Ok(out.into_pyarray(py))
}

/// Unpacks `length` codes of `bits` each to int32.
#[pyfunction]
pub fn quant_unpack<'py>(
    py: Python<'py>,
    packed: PyReadonlyArray1<'py, u8>,
    bits: u32,
    signed: bool,
    length: usize,
) -> PyResult<Bound<'py, PyArray1<i32>>> {
    let d = slice(&packed, "packed")?;
    let out = py
        .detach(|| pack::unpack(d, bits, signed, length))
        .map_err(Error)?;
    Ok(out.into_pyarray(py))
}

/// Mergeable error sums of y against x as a dict.
#[pyfunction]
#[pyo3(signature = (x, y, *, x16, y16))]
pub fn quant_error_sums<'py>(
    py: Python<'py>,
    x: Input<'py>,
    y: Input<'py>,
    x16: &str,
    y16: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let (xv, yv) = (x.values(x16, "x")?, y.values(y16, "y")?);
    let s = py
        .detach(|| stats::error_sums(xv, yv, f64::INFINITY))
        .map_err(Error)?;
    let d = PyDict::new(py);
    d.set_item("n", s.n)?;
    d.set_item("n_finite", s.n_finite)?;
    d.set_item("sum_err2", s.sum_err2)?;
    d.set_item("max_abs", s.max_abs)?;
    d.set_item("sum_x2", s.sum_x2)?;
    d.set_item("sum_y2", s.sum_y2)?;
    d.set_item("sum_xy", s.sum_xy)?;
    d.set_item("n_flushed", s.n_flushed)?;
    d.set_item("n_nan", s.n_nan)?;
    d.set_item("n_inf", s.n_inf)?;
    Ok(d)
}
