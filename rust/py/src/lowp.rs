//! Low-precision formats, MX, NVFP4 and error statistics.
//!
//! Python flattens every array to a C-contiguous 1-D view (plus a row length
//! where blocks run along rows) and names what uint16 data holds; these
//! wrappers borrow it, release the GIL, and hand results back without a copy.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use quantdrift_core::buffers::Buffer;
use quantdrift_core::lowp::{
    self, mx, nvfp4, Codes, CodesMut, Format, Options, Overflow, Rounded, Rounding, Special, Values,
};
use quantdrift_core::{stats, CoreError};

use crate::array::buffer_into_pyarray;
use crate::errors::Error;
use crate::gpu::{on_gpu, to_py as gpu_error};

/// A 1-D input array: float32, float64, or uint16 holding float16/bfloat16.
#[derive(FromPyObject)]
pub enum Input<'py> {
    F32(PyReadonlyArray1<'py, f32>),
    F64(PyReadonlyArray1<'py, f64>),
    U16(PyReadonlyArray1<'py, u16>),
}

impl Input<'_> {
    pub fn values(&self, dtype16: &str, arg: &str) -> Result<Values<'_>, Error> {
        let contiguous = |e: numpy::AsSliceError| Error(CoreError::Value(format!("{arg}: {e}")));
        Ok(match self {
            Input::F32(a) => Values::F32(a.as_slice().map_err(contiguous)?),
            Input::F64(a) => Values::F64(a.as_slice().map_err(contiguous)?),
            Input::U16(a) => {
                let s = a.as_slice().map_err(contiguous)?;
                match dtype16 {
                    "float16" => Values::F16(s),
                    "bfloat16" => Values::Bf16(s),
                    other => {
                        return Err(Error(CoreError::Dtype(format!(
                            "{arg}: uint16 data must be named float16 or bfloat16, got {other:?}"
                        ))))
                    }
                }
            }
        })
    }
}

/// A 1-D array of codes.
#[derive(FromPyObject)]
pub enum CodeArray<'py> {
    U8(PyReadonlyArray1<'py, u8>),
    U16(PyReadonlyArray1<'py, u16>),
}

/// Element codes and scale codes, both uint8.
type CodesAndScales<'py> = (Bound<'py, PyArray1<u8>>, Bound<'py, PyArray1<u8>>);

/// A format as Python passes it: (exponent_bits, mantissa_bits, bias, special, nan_payload).
type FormatSpec = (u32, u32, i32, String, bool);

fn format_of(spec: &FormatSpec) -> Result<Format, Error> {
    let (e, m, bias, special, nan_payload) = spec;
    let mut f = Format::new(*e, *m, Some(*bias), Special::parse(special)?)?;
    f.nan_payload = *nan_payload;
    Ok(f)
}

fn options(rounding: &str, overflow: Option<&str>, seed: u64) -> Result<Options, Error> {
    Ok(Options {
        rounding: Rounding::parse(rounding)?,
        overflow: overflow.map(Overflow::parse).transpose()?,
        seed,
    })
}

fn slice<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray1<'_, T>,
    arg: &str,
) -> Result<&'a [T], Error> {
    a.as_slice()
        .map_err(|e| Error(CoreError::Value(format!("{arg}: {e}"))))
}

// ---------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------

/// The predefined formats: (name, exponent_bits, mantissa_bits, bias, special).
#[pyfunction]
pub fn lowp_formats() -> Vec<(&'static str, u32, u32, i32, &'static str)> {
    lowp::format::PREDEFINED
        .iter()
        .map(|&(name, e, m, bias, special)| (name, e, m, bias, special.name()))
        .collect()
}

/// Validates a format and returns its derived constants as a dict.
#[pyfunction]
#[pyo3(signature = (exponent_bits, mantissa_bits, bias, special))]
pub fn lowp_format_info<'py>(
    py: Python<'py>,
    exponent_bits: u32,
    mantissa_bits: u32,
    bias: Option<i32>,
    special: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let f = Format::new(
        exponent_bits,
        mantissa_bits,
        bias,
        Special::parse(special).map_err(Error)?,
    )
    .map_err(Error)?;
    let d = PyDict::new(py);
    d.set_item("bias", f.bias)?;
    d.set_item("bits", f.bits())?;
    d.set_item("max", f.max())?;
    d.set_item("min_normal", f.min_normal())?;
    d.set_item("min_subnormal", f.min_subnormal())?;
    d.set_item("has_inf", f.has_inf())?;
    d.set_item("has_nan", f.has_nan())?;
    d.set_item("nan_code", f.nan_code())?;
    d.set_item("inf_code", f.inf_code())?;
    d.set_item("max_code", f.max_code())?;
    Ok(d)
}

// ---------------------------------------------------------------------------
// Rounding, encoding, decoding
// ---------------------------------------------------------------------------

/// Codes of R(x) (uint8 for ≤ 8-bit formats, uint16 above).
///
/// With `packed_row=n`, 4-bit codes come back packed two per byte along
/// rows of n (as `lowp_pack` packs them; fused into the kernel on the GPU).
#[pyfunction]
#[pyo3(signature = (x, format, *, rounding, overflow, seed, x16, device="cpu", packed_row=None))]
#[allow(clippy::too_many_arguments)]
pub fn lowp_encode<'py>(
    py: Python<'py>,
    x: Input<'py>,
    format: FormatSpec,
    rounding: &str,
    overflow: Option<&str>,
    seed: u64,
    x16: &str,
    device: &str,
    packed_row: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let f = format_of(&format)?;
    let opts = options(rounding, overflow, seed)?;
    let values = x.values(x16, "x")?;
    let gpu = on_gpu(device)?;
    if let Some(row_len) = packed_row {
        let packed = if gpu {
            py.detach(|| quantdrift_gpu::lowp::encode_packed(values, row_len, &f, opts))
                .map_err(gpu_error)?
        } else {
            py.detach(|| lowp::encode_packed(values, row_len, &f, opts))
                .map_err(Error)?
        };
        return Ok(packed.into_pyarray(py).into_any());
    }
    if gpu {
        let codes = py
            .detach(|| quantdrift_gpu::lowp::encode(values, &f, opts))
            .map_err(gpu_error)?;
        return Ok(match codes {
            Codes::U8(c) => c.into_pyarray(py).into_any(),
            Codes::U16(c) => c.into_pyarray(py).into_any(),
        });
    }
    // Into a recycled buffer: converting tensor after tensor then skips
    // the page faults of fresh memory.
    let n = values.len();
    if f.bits() <= 8 {
        let mut out = Buffer::<u8>::new(n);
        py.detach(|| lowp::encode_into(values, &f, opts, CodesMut::U8(&mut out)))
            .map_err(Error)?;
        Ok(buffer_into_pyarray(py, out)?.into_any())
    } else {
        let mut out = Buffer::<u16>::new(n);
        py.detach(|| lowp::encode_into(values, &f, opts, CodesMut::U16(&mut out)))
            .map_err(Error)?;
        Ok(buffer_into_pyarray(py, out)?.into_any())
    }
}

/// R(x) as float32 (float64 for float64 input).
#[pyfunction]
#[pyo3(signature = (x, format, *, rounding, overflow, seed, x16, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn lowp_round<'py>(
    py: Python<'py>,
    x: Input<'py>,
    format: FormatSpec,
    rounding: &str,
    overflow: Option<&str>,
    seed: u64,
    x16: &str,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let f = format_of(&format)?;
    let opts = options(rounding, overflow, seed)?;
    let values = x.values(x16, "x")?;
    let rounded = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::lowp::round(values, &f, opts))
            .map_err(gpu_error)?
    } else if matches!(values, Values::F64(_)) {
        py.detach(|| lowp::round(values, &f, opts)).map_err(Error)?
    } else {
        let mut out = Buffer::<f32>::new(values.len());
        py.detach(|| lowp::round_into(values, &f, opts, &mut out))
            .map_err(Error)?;
        return Ok(buffer_into_pyarray(py, out)?.into_any());
    };
    Ok(rounded_to_py(py, rounded))
}

fn rounded_to_py(py: Python<'_>, r: Rounded) -> Bound<'_, PyAny> {
    match r {
        Rounded::F32(v) => v.into_pyarray(py).into_any(),
        Rounded::F64(v) => v.into_pyarray(py).into_any(),
    }
}

/// float32 values of codes.
#[pyfunction]
#[pyo3(signature = (codes, format, *, device="cpu"))]
pub fn lowp_decode<'py>(
    py: Python<'py>,
    codes: CodeArray<'py>,
    format: FormatSpec,
    device: &str,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let f = format_of(&format)?;
    if on_gpu(device)? {
        let (bytes, width): (&[u8], usize) = match &codes {
            CodeArray::U8(a) => (slice(a, "codes")?, 1),
            CodeArray::U16(a) => (bytemuck_bytes(slice(a, "codes")?), 2),
        };
        let out = py
            .detach(|| quantdrift_gpu::lowp::decode(bytes, width, &f))
            .map_err(gpu_error)?;
        return Ok(out.into_pyarray(py));
    }
    let out = match &codes {
        CodeArray::U8(a) => {
            let s = slice(a, "codes")?;
            let mut out = Buffer::<f32>::new(s.len());
            py.detach(|| lowp::decode_u8_into(s, &f, &mut out))
                .map_err(Error)?;
            out
        }
        CodeArray::U16(a) => {
            let s = slice(a, "codes")?;
            let mut out = Buffer::<f32>::new(s.len());
            py.detach(|| lowp::decode_u16_into(s, &f, &mut out))
                .map_err(Error)?;
            out
        }
    };
    buffer_into_pyarray(py, out)
}

/// Packs 4-bit codes two per byte along rows of `row_len`.
#[pyfunction]
pub fn lowp_pack<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, u8>,
    row_len: usize,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let s = slice(&codes, "codes")?;
    let out = py
        .detach(|| lowp::pack_nibbles(s, row_len))
        .map_err(Error)?;
    Ok(out.into_pyarray(py))
}

/// Unpacks bytes into rows of `row_len` 4-bit codes.
#[pyfunction]
pub fn lowp_unpack<'py>(
    py: Python<'py>,
    packed: PyReadonlyArray1<'py, u8>,
    row_len: usize,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let s = slice(&packed, "codes")?;
    let out = py
        .detach(|| lowp::unpack_nibbles(s, row_len))
        .map_err(Error)?;
    Ok(out.into_pyarray(py))
}

/// Element i rounded to formats[labels[i]].
#[pyfunction]
#[pyo3(signature = (x, labels, formats, *, rounding, overflow, seed, x16, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn lowp_round_mixed<'py>(
    py: Python<'py>,
    x: Input<'py>,
    labels: PyReadonlyArray1<'py, i64>,
    formats: Vec<FormatSpec>,
    rounding: &str,
    overflow: Option<&str>,
    seed: u64,
    x16: &str,
    device: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let fmts = formats
        .iter()
        .map(format_of)
        .collect::<Result<Vec<_>, _>>()?;
    let opts = options(rounding, overflow, seed)?;
    let values = x.values(x16, "x")?;
    let l = slice(&labels, "labels")?;
    let rounded = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::lowp::round_mixed(values, l, &fmts, opts))
            .map_err(gpu_error)?
    } else {
        py.detach(|| lowp::round_mixed(values, l, &fmts, opts))
            .map_err(Error)?
    };
    Ok(rounded_to_py(py, rounded))
}

// ---------------------------------------------------------------------------
// MX and NVFP4
// ---------------------------------------------------------------------------

/// MX codes and E8M0 scales of rows of `row_len`.
#[pyfunction]
#[pyo3(signature = (x, row_len, *, block, elem, scale_mode, x16, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn mx_encode<'py>(
    py: Python<'py>,
    x: Input<'py>,
    row_len: usize,
    block: usize,
    elem: &str,
    scale_mode: &str,
    x16: &str,
    device: &str,
) -> PyResult<CodesAndScales<'py>> {
    let e = mx::Element::parse(elem).map_err(Error)?;
    let m = mx::ScaleMode::parse(scale_mode).map_err(Error)?;
    let values = x.values(x16, "x")?;
    let (codes, scales) = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::mx::mx_encode(values, row_len, block, e, m))
            .map_err(gpu_error)?
    } else {
        py.detach(|| mx::mx_encode(values, row_len, block, e, m))
            .map_err(Error)?
    };
    Ok((codes.into_pyarray(py), scales.into_pyarray(py)))
}

/// float32 values of MX codes and scales.
#[pyfunction]
#[pyo3(signature = (codes, scales, row_len, *, block, elem, device="cpu"))]
pub fn mx_decode<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, u8>,
    scales: PyReadonlyArray1<'py, u8>,
    row_len: usize,
    block: usize,
    elem: &str,
    device: &str,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let e = mx::Element::parse(elem).map_err(Error)?;
    let (c, s) = (slice(&codes, "codes")?, slice(&scales, "scales")?);
    let out = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::mx::mx_decode(c, s, row_len, block, e))
            .map_err(gpu_error)?
    } else {
        py.detach(|| mx::mx_decode(c, s, row_len, block, e))
            .map_err(Error)?
    };
    Ok(out.into_pyarray(py))
}

/// torchao's dynamic NVFP4 per-tensor scale amax/2688.
#[pyfunction]
pub fn nvfp4_scale(py: Python<'_>, x: Input<'_>, x16: &str) -> PyResult<f32> {
    let values = x.values(x16, "x")?;
    Ok(py
        .detach(|| nvfp4::per_tensor_scale(values))
        .map_err(Error)?)
}

/// NVFP4 codes and e4m3 scales of rows of `row_len`.
#[pyfunction]
#[pyo3(signature = (x, row_len, *, per_tensor_scale, x16, device="cpu"))]
pub fn nvfp4_encode<'py>(
    py: Python<'py>,
    x: Input<'py>,
    row_len: usize,
    per_tensor_scale: Option<f32>,
    x16: &str,
    device: &str,
) -> PyResult<CodesAndScales<'py>> {
    let values = x.values(x16, "x")?;
    let (codes, scales) = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::mx::nvfp4_encode(values, row_len, per_tensor_scale))
            .map_err(gpu_error)?
    } else {
        py.detach(|| nvfp4::nvfp4_encode(values, row_len, per_tensor_scale))
            .map_err(Error)?
    };
    Ok((codes.into_pyarray(py), scales.into_pyarray(py)))
}

/// float32 values of NVFP4 codes and scales.
#[pyfunction]
#[pyo3(signature = (codes, scales, row_len, *, per_tensor_scale, device="cpu"))]
pub fn nvfp4_decode<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray1<'py, u8>,
    scales: PyReadonlyArray1<'py, u8>,
    row_len: usize,
    per_tensor_scale: Option<f32>,
    device: &str,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (c, s) = (slice(&codes, "codes")?, slice(&scales, "scales")?);
    let out = if on_gpu(device)? {
        py.detach(|| quantdrift_gpu::mx::nvfp4_decode(c, s, row_len, per_tensor_scale))
            .map_err(gpu_error)?
    } else {
        py.detach(|| nvfp4::nvfp4_decode(c, s, row_len, per_tensor_scale))
            .map_err(Error)?
    };
    Ok(out.into_pyarray(py))
}

// ---------------------------------------------------------------------------
// Error statistics and the memory roofline
// ---------------------------------------------------------------------------

/// Error statistics of y against x as a dict.
#[pyfunction]
#[pyo3(signature = (x, y, *, clip, x16, y16))]
pub fn error_stats<'py>(
    py: Python<'py>,
    x: Input<'py>,
    y: Input<'py>,
    clip: Option<f64>,
    x16: &str,
    y16: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let (xv, yv) = (x.values(x16, "x")?, y.values(y16, "y")?);
    let s = py
        .detach(|| stats::error_stats(xv, yv, clip))
        .map_err(Error)?;
    let d = PyDict::new(py);
    d.set_item("n", s.n)?;
    d.set_item("n_finite", s.n_finite)?;
    d.set_item("mse", s.mse)?;
    d.set_item("rmse", s.rmse)?;
    d.set_item("max_abs", s.max_abs)?;
    d.set_item("sqnr_db", s.sqnr_db)?;
    d.set_item("cosine", s.cosine)?;
    d.set_item("n_saturated", s.n_saturated)?;
    d.set_item("n_flushed", s.n_flushed)?;
    d.set_item("n_nan", s.n_nan)?;
    d.set_item("n_inf", s.n_inf)?;
    Ok(d)
}

/// The bytes of a u16 slice, little-endian on every supported target.
fn bytemuck_bytes(codes: &[u16]) -> &[u8] {
    // SAFETY: u16 has no padding and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(codes.as_ptr().cast::<u8>(), std::mem::size_of_val(codes)) }
}
