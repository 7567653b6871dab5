//! `quantdrift._core`: thin PyO3 wrappers over `quantdrift-core`.
//!
//! Each wrapper borrows its numpy inputs, releases the GIL around the core
//! call (`py.detach`), and moves the result into a numpy array without a
//! copy. The public, documented API is the Python package `quantdrift`.

mod array;
mod compare;
mod diverge;
mod errors;
mod gpu;
mod io;
mod llv;
mod lowp;
mod quant;

use pyo3::prelude::*;

/// The compiled core of quantdrift.
#[pymodule]
mod _core {
    #[pymodule_export]
    use super::compare::compare_block;
    #[pymodule_export]
    use super::diverge::{distill_loss, divergence};
    #[pymodule_export]
    use super::gpu::{gpu_available, gpu_info, gpu_profile, gpu_read_bandwidth};
    #[pymodule_export]
    use super::io::{llamacpp_decode, llamacpp_encode};
    #[pymodule_export]
    use super::llv::{llv_double_centre, llv_kl_matrix, llv_squared_distance};
    #[pymodule_export]
    use super::lowp::{
        error_stats, lowp_decode, lowp_encode, lowp_format_info, lowp_formats, lowp_pack,
        lowp_round, lowp_round_mixed, lowp_unpack, mx_decode, mx_encode, nvfp4_decode,
        nvfp4_encode, nvfp4_scale,
    };
    #[pymodule_export]
    use super::quant::{
        quant_calibrate, quant_dequantize, quant_error_sums, quant_fake, quant_fake_calibrated,
        quant_pack, quant_quantize, quant_quantize_calibrated, quant_unpack,
    };

    use pyo3::prelude::*;

    /// The instruction set the kernels dispatch to on this CPU
    /// (``"avx512"``, ``"avx2+fma"``, ``"sse2"``, ``"neon"`` or ``"scalar"``).
    #[pyfunction]
    fn isa() -> &'static str {
        quantdrift_core::simd::isa_name()
    }

    /// The number of threads kernels run on (``QUANTDRIFT_NUM_THREADS``
    /// sets it before the first call).
    #[pyfunction]
    fn num_threads() -> usize {
        quantdrift_core::threads::num_threads()
    }

    /// Reads every byte of a contiguous uint8 array on all threads and
    /// returns a checksum; benchmarks time it as the memory-read roofline.
    #[pyfunction]
    fn read_all(py: Python<'_>, data: numpy::PyReadonlyArray1<'_, u8>) -> PyResult<u64> {
        let bytes = data.as_slice()?;
        Ok(py.detach(|| quantdrift_core::roofline::read_all(bytes)))
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}

#[allow(unused_imports)]
use _core as _;
