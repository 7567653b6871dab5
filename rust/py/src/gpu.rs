//! The GPU backend's face: availability, adapter information, and the
//! conversion of its errors. Kernels take `device="gpu"` in their own
//! binding functions.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use quantdrift_gpu::GpuError;

use crate::errors::{python_error, Error};

/// Whether a GPU adapter can be used (creates the GPU context on first call).
#[pyfunction]
pub fn gpu_available(py: Python<'_>) -> bool {
    py.detach(quantdrift_gpu::available)
}

/// The adapter in use: name, backend, type, driver, features and limits.
#[pyfunction]
pub fn gpu_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = py.detach(quantdrift_gpu::info).map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("adapter", info.adapter)?;
    d.set_item("backend", info.backend)?;
    d.set_item("device_type", info.device_type)?;
    d.set_item("driver", info.driver)?;
    d.set_item("features", info.features)?;
    let limits = PyDict::new(py);
    for (name, value) in info.limits {
        limits.set_item(name, value)?;
    }
    d.set_item("limits", limits)?;
    Ok(d)
}

/// A GPU backend error as the matching quantdrift exception.
pub fn to_py(e: GpuError) -> PyErr {
    match e {
        GpuError::Core(core) => Error(core).into(),
        GpuError::Unavailable(_) => python_error("GpuUnavailableError", e.to_string()),
        GpuError::Device(_) => python_error("GpuError", e.to_string()),
    }
}

/// Whether `device` (``"cpu"`` or ``"gpu"``; Python resolves ``"auto"``)
/// names the GPU.
pub fn on_gpu(device: &str) -> PyResult<bool> {
    match device {
        "cpu" => Ok(false),
        "gpu" => Ok(true),
        other => Err(python_error(
            "InputError",
            format!("device must be 'cpu', 'gpu' or 'auto', got {other:?}"),
        )),
    }
}

/// Turns GPU profiling on or off; returns the device-resident kernel
/// seconds counted since the last call (each dispatch runs alone while on).
#[pyfunction]
pub fn gpu_profile(py: Python<'_>, on: bool) -> PyResult<f64> {
    let gpu = py.detach(quantdrift_gpu::context).map_err(to_py)?;
    Ok(gpu.profile(on))
}

/// Bytes per second at which a GPU kernel reads a resident buffer (the
/// device's memory-read roofline), best of `repeats`.
#[pyfunction]
#[pyo3(signature = (nbytes, repeats=5))]
pub fn gpu_read_bandwidth(py: Python<'_>, nbytes: u64, repeats: usize) -> PyResult<f64> {
    py.detach(|| quantdrift_gpu::bench::read_bandwidth(nbytes, repeats))
        .map_err(to_py)
}
