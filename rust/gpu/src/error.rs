//! Errors of the GPU backend.

use quantdrift_core::CoreError;

/// Why a GPU kernel did not run.
#[derive(Debug)]
pub enum GpuError {
    /// No adapter: the message says how to get one.
    Unavailable(String),
    /// The device failed (shader compilation, a lost device, a mapping error).
    Device(String),
    /// The input was invalid, exactly as the CPU kernel would say.
    Core(CoreError),
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuError::Unavailable(why) => write!(f, "no GPU available: {why}"),
            GpuError::Device(why) => write!(f, "GPU error: {why}"),
            GpuError::Core(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for GpuError {}

impl From<CoreError> for GpuError {
    fn from(e: CoreError) -> Self {
        GpuError::Core(e)
    }
}

/// `Result` of the GPU backend.
pub type Result<T> = std::result::Result<T, GpuError>;
