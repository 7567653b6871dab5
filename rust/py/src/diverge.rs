//! Divergences and the distillation loss.

use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::prelude::*;
use quantdrift_core::diverge::{self, Inputs, Kind, Options};
use quantdrift_core::Dtype;

use crate::array::Matrix;
use crate::errors::{Error, Result};
use crate::gpu::{on_gpu, to_py as gpu_error};

/// One divergence value per row of ``p`` and ``q`` (2-D, C-contiguous,
/// float32/float64, or uint16 holding ``p16``/``q16``), in nats, on the CPU
/// or (``device="gpu"``) the GPU.
#[pyfunction]
#[pyo3(signature = (p, q, kind, *, inputs, temperature, alpha=None, p16="bfloat16", q16="bfloat16", device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn divergence<'py>(
    py: Python<'py>,
    p: Matrix<'py>,
    q: Option<Matrix<'py>>,
    kind: &str,
    inputs: &str,
    temperature: f64,
    alpha: Option<f64>,
    p16: &str,
    q16: &str,
    device: &str,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let gpu = on_gpu(device)?;
    let opts = Options {
        kind: Kind::parse(kind, alpha).map_err(Error)?,
        inputs: Inputs::parse(inputs).map_err(Error)?,
        temperature,
    };
    let p_rows = p.rows("p", p16).map_err(Error)?;
    let q_rows = match &q {
        Some(q) => Some(q.rows("q", q16).map_err(Error)?),
        None => None,
    };
    let values = if gpu {
        py.detach(|| quantdrift_gpu::diverge::divergence_rows(p_rows, q_rows, &opts))
            .map_err(gpu_error)?
    } else {
        py.detach(|| diverge::divergence_rows(p_rows, q_rows, &opts))
            .map_err(Error)?
    };
    Ok(values.into_pyarray(py))
}

/// Distillation loss per row and its gradient with respect to the student.
#[pyfunction]
#[pyo3(signature = (teacher, student, *, temperature, alpha, labels=None, teacher16="bfloat16", student16="bfloat16"))]
#[allow(clippy::too_many_arguments)]
pub fn distill_loss<'py>(
    py: Python<'py>,
    teacher: Matrix<'py>,
    student: Matrix<'py>,
    temperature: f64,
    alpha: f64,
    labels: Option<PyReadonlyArray1<'py, i64>>,
    teacher16: &str,
    student16: &str,
) -> Result<(Bound<'py, PyArray1<f64>>, Bound<'py, PyAny>)> {
    let t = teacher.rows("teacher", teacher16)?;
    let s = student.rows("student", student16)?;
    let labels = match &labels {
        Some(l) => Some(
            l.as_slice()
                .map_err(|e| quantdrift_core::CoreError::Value(format!("labels: {e}")))?,
        ),
        None => None,
    };
    let (rows, vocab, wide) = (s.rows(), s.vocab(), s.dtype() == Dtype::F64);
    let out = py.detach(|| diverge::distill::distill_rows(t, s, labels, temperature, alpha))?;
    let shape = [rows, vocab];
    let grad = if wide {
        out.grad
            .into_pyarray(py)
            .reshape(shape)
            .map_err(to_core)?
            .into_any()
    } else {
        let narrow: Vec<f32> = out.grad.iter().map(|&g| g as f32).collect();
        narrow
            .into_pyarray(py)
            .reshape(shape)
            .map_err(to_core)?
            .into_any()
    };
    Ok((out.loss.into_pyarray(py), grad))
}

fn to_core(e: PyErr) -> quantdrift_core::CoreError {
    quantdrift_core::CoreError::Value(e.to_string())
}
