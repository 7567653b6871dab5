//! Row codecs of logit file formats: llama.cpp's KL-divergence base rows.

use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use quantdrift_core::io::llamacpp;
use quantdrift_core::CoreError;

use crate::array::Matrix;
use crate::errors::Result;

/// Packs ``rows × vocab`` logits (float32/float64, or uint16 holding
/// ``logits16``) into ``rows × row_len`` uint16 rows of a llama.cpp base file,
/// bit-exactly as llama.cpp's writer does.
#[pyfunction]
#[pyo3(signature = (logits, *, gap=16.0, logits16="bfloat16"))]
pub fn llamacpp_encode<'py>(
    py: Python<'py>,
    logits: Matrix<'py>,
    gap: f32,
    logits16: &str,
) -> Result<Bound<'py, PyArray2<u16>>> {
    let rows = logits.rows("logits", logits16)?;
    let (n, width) = (rows.rows(), llamacpp::row_len(rows.vocab()));
    let packed = py.detach(|| llamacpp::encode_rows(rows, gap))?;
    Ok(packed
        .into_pyarray(py)
        .reshape([n, width])
        .map_err(to_core)?)
}

/// Decodes ``rows × row_len(vocab)`` packed uint16 rows into float32
/// log-probabilities ``rows × vocab``.
#[pyfunction]
pub fn llamacpp_decode<'py>(
    py: Python<'py>,
    packed: PyReadonlyArray2<'py, u16>,
    vocab: usize,
) -> Result<Bound<'py, PyArray2<f32>>> {
    let width = llamacpp::row_len(vocab);
    if packed.shape()[1] != width {
        return Err(CoreError::Shape(format!(
            "packed rows have {} columns; vocab {vocab} needs {width}",
            packed.shape()[1]
        ))
        .into());
    }
    let n = packed.shape()[0];
    let data = packed
        .as_slice()
        .map_err(|e| CoreError::Value(format!("packed: {e}")))?;
    let logp = py.detach(|| llamacpp::decode_rows(data, vocab))?;
    Ok(logp.into_pyarray(py).reshape([n, vocab]).map_err(to_core)?)
}

fn to_core(e: PyErr) -> CoreError {
    CoreError::Value(e.to_string())
}
