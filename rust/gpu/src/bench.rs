//! Measurements for benchmarks: the device's memory-read bandwidth.

use crate::context::{context, WORKGROUP};
use crate::error::Result;
use crate::shaders::Shader;

const BANDWIDTH: Shader = Shader::new("bandwidth", include_str!("shaders/bandwidth.wgsl"));

/// Bytes per second at which a kernel reads a resident buffer of `bytes`
/// bytes (capped at one binding), the best of `repeats` timed reads.
pub fn read_bandwidth(bytes: u64, repeats: usize) -> Result<f64> {
    let gpu = context()?;
    let bytes = bytes.min(gpu.max_binding_bytes()).max(4096) & !15;
    let words = vec![0x5a5a_5a5au32; (bytes / 4) as usize];
    let data = gpu.upload(&words);
    let sink = gpu.storage(4);
    let pipeline = gpu.pipeline(&BANDWIDTH, "read_all")?;
    let groups = (bytes / 16).div_ceil(u64::from(WORKGROUP) * 16) as u32;
    gpu.wait()?;
    gpu.profile(true);
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        gpu.run(&pipeline, &[&data, &sink], groups);
        best = best.min(gpu.profile(true));
    }
    gpu.profile(false);
    Ok(bytes as f64 / best)
}
