//! quantdrift's GPU backend, on wgpu (Vulkan, Metal, DX12).
//!
//! Every kernel here has a CPU twin in `quantdrift-core` and takes the same
//! options; results agree bit for bit for codes and rounding, and within
//! 1e-5 relative (1e-7 absolute) for divergences. The context ([`context::context`]) is
//! created on first use: the best adapter (discrete > integrated > virtual >
//! software), the optional features it offers (`shader-f16`, subgroups),
//! and a pipeline cache. Inputs larger than the device's binding limits are
//! processed in chunks.

pub mod bench;
pub mod compare;
pub mod context;
pub mod diverge;
pub mod error;
pub mod lowp;
pub mod mx;
pub mod quant;
pub mod shaders;

pub use context::{available, context, Capabilities, Gpu};
pub use error::{GpuError, Result};

/// What `quantdrift.gpu.info()` reports.
#[derive(Debug, Clone)]
pub struct Info {
    /// Adapter name, e.g. "NVIDIA H100" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub adapter: String,
    /// "vulkan", "metal", "dx12" or "gl".
    pub backend: String,
    /// "discrete", "integrated", "virtual", "cpu" (software) or "other".
    pub device_type: String,
    /// The driver's name and version.
    pub driver: String,
    /// Optional features in use.
    pub features: Vec<String>,
    /// Limits that decide chunk sizes, by name.
    pub limits: Vec<(String, u64)>,
}

/// The adapter in use, its features and limits.
pub fn info() -> Result<Info> {
    let gpu = context()?;
    let a = gpu.info();
    let caps = gpu.capabilities();
    let mut features = Vec::new();
    if caps.shader_f16 {
        features.push("shader-f16".to_string());
    }
    if caps.subgroups {
        features.push("subgroups".to_string());
    }
    let l = gpu.limits();
    Ok(Info {
        adapter: a.name.clone(),
        backend: a.backend.to_str().to_string(),
        device_type: match a.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        }
        .to_string(),
        driver: format!("{} {}", a.driver, a.driver_info).trim().to_string(),
        features,
        limits: vec![
            ("max_buffer_size".into(), l.max_buffer_size),
            (
                "max_storage_buffer_binding_size".into(),
                l.max_storage_buffer_binding_size,
            ),
            (
                "max_compute_workgroups_per_dimension".into(),
                u64::from(l.max_compute_workgroups_per_dimension),
            ),
            (
                "max_compute_workgroup_storage_size".into(),
                u64::from(l.max_compute_workgroup_storage_size),
            ),
        ],
    })
}
