//! Log-likelihood vectors: double centring and the KL estimate matrix.

use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use quantdrift_core::{llv, CoreError};

use crate::errors::Result;

fn borrow<'a>(a: &'a PyReadonlyArray2<'_, f64>, arg: &str) -> Result<(&'a [f64], usize, usize)> {
    if !a.is_c_contiguous() {
        return Err(CoreError::Value(format!("{arg} must be C-contiguous")).into());
    }
    let (k, n) = (a.shape()[0], a.shape()[1]);
    let data = a
        .as_slice()
        .map_err(|e| CoreError::Value(format!("{arg}: {e}")))?;
    Ok((data, k, n))
}

fn to_core(e: PyErr) -> CoreError {
    CoreError::Value(e.to_string())
}

/// ``Q = H_K · L · H_N`` of a K×N float64 matrix ``L`` (C-contiguous).
#[pyfunction]
pub fn llv_double_centre<'py>(
    py: Python<'py>,
    l: PyReadonlyArray2<'py, f64>,
) -> Result<Bound<'py, PyArray2<f64>>> {
    let (data, k, n) = borrow(&l, "L")?;
    let q = py.detach(|| llv::double_centre(data, k, n))?;
    Ok(q.into_pyarray(py).reshape([k, n]).map_err(to_core)?)
}

/// K×K matrix ``‖q_i − q_j‖² / (2N)`` between the rows of a K×N float64
/// matrix ``Q`` (C-contiguous), in nats per text.
#[pyfunction]
pub fn llv_kl_matrix<'py>(
    py: Python<'py>,
    q: PyReadonlyArray2<'py, f64>,
) -> Result<Bound<'py, PyArray2<f64>>> {
    let (data, k, n) = borrow(&q, "Q")?;
    let kl = py.detach(|| llv::kl_matrix(data, k, n))?;
    Ok(kl.into_pyarray(py).reshape([k, k]).map_err(to_core)?)
}

/// A flat float tensor as numpy hands it over; 16-bit floats arrive as
/// uint16 views with their dtype named separately.
#[derive(FromPyObject)]
pub enum FlatArg<'py> {
    F32(numpy::PyReadonlyArray1<'py, f32>),
    F64(numpy::PyReadonlyArray1<'py, f64>),
    U16(numpy::PyReadonlyArray1<'py, u16>),
}

impl FlatArg<'_> {
    fn flat(&self, arg: &str, dtype16: &str) -> std::result::Result<llv::Flat<'_>, CoreError> {
        let err = |e: numpy::AsSliceError| CoreError::Value(format!("{arg}: {e}"));
        Ok(match self {
            FlatArg::F32(a) => llv::Flat::F32(a.as_slice().map_err(err)?),
            FlatArg::F64(a) => llv::Flat::F64(a.as_slice().map_err(err)?),
            FlatArg::U16(a) => match crate::array::dtype16(dtype16, arg)? {
                quantdrift_core::Dtype::F16 => llv::Flat::F16(a.as_slice().map_err(err)?),
                _ => llv::Flat::Bf16(a.as_slice().map_err(err)?),
            },
        })
    }
}

/// ‖a − b‖² of two flat float tensors (float32, float64, or uint16 holding
/// ``a16``/``b16``), in float64, multi-threaded; the GIL is released.
#[pyfunction]
#[pyo3(signature = (a, b, *, a16="bfloat16", b16="bfloat16"))]
pub fn llv_squared_distance(
    py: Python<'_>,
    a: FlatArg<'_>,
    b: FlatArg<'_>,
    a16: &str,
    b16: &str,
) -> Result<f64> {
    let (fa, fb) = (a.flat("a", a16)?, b.flat("b", b16)?);
    Ok(py.detach(|| llv::squared_distance(fa, fb))?)
}
