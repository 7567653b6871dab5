//! The numpy boundary: 2-D arrays in any supported dtype, borrowed.

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use quantdrift_core::buffers::{Buffer, Plain};
use quantdrift_core::{CoreError, Dtype, Rows};

/// A C-contiguous 2-D array of scores as numpy hands it over. 16-bit
/// floats arrive as `uint16` views with their dtype named separately, since
/// numpy has no bfloat16 of its own.
#[derive(FromPyObject)]
pub enum Matrix<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
    U16(PyReadonlyArray2<'py, u16>),
}

/// Parses the name of a 16-bit dtype.
pub fn dtype16(name: &str, arg: &str) -> Result<Dtype, CoreError> {
    match name {
        "float16" => Ok(Dtype::F16),
        "bfloat16" => Ok(Dtype::Bf16),
        other => Err(CoreError::Dtype(format!(
            "{arg}: uint16 data must be named float16 or bfloat16, got {other:?}"
        ))),
    }
}

impl<'py> Matrix<'py> {
    /// Borrows the data as rows. `dtype16` names what uint16 data holds.
    pub fn rows(&self, arg: &str, dtype16_name: &str) -> Result<Rows<'_>, CoreError> {
        let contiguous = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(CoreError::Value(format!("{arg} must be C-contiguous")))
            }
        };
        match self {
            Matrix::F32(a) => {
                contiguous(a.is_c_contiguous())?;
                Rows::new_f32(
                    a.as_slice()
                        .map_err(|e| CoreError::Value(format!("{arg}: {e}")))?,
                    a.shape()[1],
                )
            }
            Matrix::F64(a) => {
                contiguous(a.is_c_contiguous())?;
                Rows::new_f64(
                    a.as_slice()
                        .map_err(|e| CoreError::Value(format!("{arg}: {e}")))?,
                    a.shape()[1],
                )
            }
            Matrix::U16(a) => {
                contiguous(a.is_c_contiguous())?;
                let dtype = dtype16(dtype16_name, arg)?;
                Rows::new_u16(
                    a.as_slice()
                        .map_err(|e| CoreError::Value(format!("{arg}: {e}")))?,
                    a.shape()[1],
                    dtype,
                )
            }
        }
    }
}

/// Owns a recycled output buffer for as long as a numpy array views it;
/// dropping it (when the array dies) returns the memory to core's cache.
#[pyclass(frozen, module = "quantdrift._core")]
pub struct OutputBuffer {
    _buffer: Box<dyn std::any::Any + Send + Sync>,
}

/// A 1-D numpy array over `buffer` without a copy; the buffer goes back to
/// the cache once numpy drops the array (see `quantdrift_core::buffers`).
pub fn buffer_into_pyarray<T: Plain + numpy::Element>(
    py: Python<'_>,
    buffer: Buffer<T>,
) -> PyResult<Bound<'_, PyArray1<T>>> {
    let (ptr, len) = (buffer.as_ptr(), buffer.len());
    let owner = Bound::new(
        py,
        OutputBuffer {
            _buffer: Box::new(buffer),
        },
    )?;
    // SAFETY: the buffer's memory moved into `owner` unchanged (a Buffer is
    // a pointer to a heap block, which moving does not touch), and `owner`
    // becomes the array's base object, so it outlives every view of it; no
    // one else can reach the block meanwhile.
    let view = unsafe { ArrayView1::from_shape_ptr(len, ptr) };
    Ok(unsafe { PyArray1::borrow_from_array(&view, owner.into_any()) })
}
