//! The one GPU context: adapter choice, feature negotiation, the pipeline
//! cache, and the buffer plumbing every kernel shares.
//!
//! The context is created on first use and lives for the process, so a
//! script that calls many kernels pays for adapter discovery and shader
//! compilation once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use crate::error::{GpuError, Result};
use crate::shaders::Shader;

/// Threads per workgroup in every 1-D kernel (the shaders' `WG`).
pub const WORKGROUP: u32 = 256;

/// Workgroups per dispatch dimension that every adapter accepts
/// (`max_compute_workgroups_per_dimension` is at least 65535).
const MAX_GROUPS_X: u32 = 65535;

/// What the adapter offers that the kernels use when present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// WGSL `f16` arithmetic and 16-bit storage (`shader-f16`).
    pub shader_f16: bool,
    /// Subgroup operations (`subgroupAdd`, `subgroupMax`, ...).
    pub subgroups: bool,
}

/// The GPU a process computes on.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    caps: Capabilities,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<wgpu::ComputePipeline>>>,
}

static CONTEXT: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();

/// The process's GPU context, created on the first call.
///
/// Errors with [`GpuError::Unavailable`] when no adapter exists (no GPU
/// driver, no Vulkan loader, or `QUANTDRIFT_GPU=off`).
pub fn context() -> Result<&'static Gpu> {
    CONTEXT
        .get_or_init(Gpu::new)
        .as_ref()
        .map_err(|why| GpuError::Unavailable(why.clone()))
}

/// Whether a GPU adapter can be used (creates the context if needed).
pub fn available() -> bool {
    context().is_ok()
}

/// Adapters are ranked so that real hardware wins over emulation.
fn rank(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    }
}

impl Gpu {
    fn new() -> std::result::Result<Gpu, String> {
        if std::env::var("QUANTDRIFT_GPU").is_ok_and(|v| v == "off" || v == "0") {
            return Err("QUANTDRIFT_GPU=off disables the GPU backend".into());
        }
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        if let Ok(want) = std::env::var("QUANTDRIFT_GPU_ADAPTER") {
            let want = want.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
        }
        // Stable order: best kind first, then Vulkan/Metal/DX12 before GL.
        adapters.sort_by_key(|a| {
            let info = a.get_info();
            let native = matches!(
                info.backend,
                wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12
            );
            std::cmp::Reverse((rank(info.device_type), native))
        });
        let adapter = adapters.into_iter().next().ok_or_else(|| {
            "no GPU adapter found. Install your GPU's driver (NVIDIA, AMD, Intel: Vulkan; Apple: \
             Metal is built in); for testing without a GPU, Mesa's software Vulkan driver lavapipe \
             works (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1)"
                .to_string()
        })?;
        let offered = adapter.features();
        let allow_extras = !std::env::var("QUANTDRIFT_GPU_FEATURES").is_ok_and(|v| v == "none");
        let mut wanted = wgpu::Features::empty();
        for feature in [wgpu::Features::SHADER_F16, wgpu::Features::SUBGROUP] {
            if allow_extras && offered.contains(feature) {
                wanted |= feature;
            }
        }
        // Ask for the adapter's own limits: large storage buffers mean fewer chunks.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("quantdrift"),
            required_features: wanted,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| format!("the GPU adapter refused a device: {e}"))?;
        let caps = Capabilities {
            shader_f16: wanted.contains(wgpu::Features::SHADER_F16),
            subgroups: wanted.contains(wgpu::Features::SUBGROUP),
        };
        let mut gpu = Gpu {
            device,
            queue,
            info: adapter.get_info(),
            limits,
            caps,
            pipelines: Mutex::new(HashMap::new()),
        };
        if gpu.caps.subgroups && !gpu.subgroups_are_contiguous() {
            gpu.caps.subgroups = false;
            gpu.pipelines.lock().expect("pipeline cache").clear();
        }
        Ok(gpu)
    }

    /// Whether subgroup k holds local indices [k·S, (k+1)·S), the layout
    /// the subgroup reductions rely on.
    fn subgroups_are_contiguous(&self) -> bool {
        let Ok(pipeline) = self.pipeline(&crate::shaders::PROBE, "subgroup_layout") else {
            return false;
        };
        let flags = self.storage(4 * u64::from(WORKGROUP));
        self.run(&pipeline, &[&flags], 1);
        self.read::<u32>(&flags, WORKGROUP as usize)
            .is_ok_and(|v| v.iter().all(|&f| f == 1))
    }

    /// The adapter's name, backend, type and driver.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The device's limits (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The optional features in use.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The largest storage buffer one binding may see, in bytes, rounded
    /// down to a multiple of 256 so chunk boundaries stay aligned.
    ///
    /// `QUANTDRIFT_GPU_MAX_BINDING=<bytes>` lowers it, so tests can make
    /// small inputs take the chunked paths that large ones take.
    pub fn max_binding_bytes(&self) -> u64 {
        let binding = u64::from(self.limits.max_storage_buffer_binding_size);
        let cap = std::env::var("QUANTDRIFT_GPU_MAX_BINDING")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX)
            .max(4096);
        binding.min(self.limits.max_buffer_size).min(cap) & !255
    }

    /// The compute pipeline for `entry` in `shader`, compiled once per process.
    pub fn pipeline(&self, shader: &Shader, entry: &'static str) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = (shader.name, entry);
        if let Some(p) = self.pipelines.lock().expect("pipeline cache").get(&key) {
            return Ok(p.clone());
        }
        let source = shader.source(self.caps);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(GpuError::Device(format!("shader {}::{entry}: {e}", shader.name)));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines
            .lock()
            .expect("pipeline cache")
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// A storage buffer holding `data` (read-only or read-write in shaders).
    /// Empty data gets a 4-byte buffer, since bindings cannot be empty.
    pub fn upload<T: Pod>(&self, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let padded;
        let contents = if bytes.len() % 4 == 0 && !bytes.is_empty() {
            bytes
        } else {
            padded = pad4(bytes);
            &padded
        };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Writes `data` into `buffer` from byte `offset` (queued before the next submit).
    pub fn write<T: Pod>(&self, buffer: &wgpu::Buffer, offset: u64, data: &[T]) {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() % 4 == 0 {
            self.queue.write_buffer(buffer, offset, bytes);
        } else {
            self.queue.write_buffer(buffer, offset, &pad4(bytes));
        }
    }

    /// A zeroed storage buffer of at least `bytes` bytes that kernels write.
    pub fn storage(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A uniform buffer holding one parameter struct.
    pub fn uniform<T: Pod>(&self, value: &T) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// Records one dispatch of `pipeline` over `groups` workgroups, with
    /// `buffers` bound to bindings 0, 1, 2... of group 0 in order.
    pub fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
        groups: u32,
    ) {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        let (x, y) = grid(groups);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// A command encoder for a batch of dispatches and copies.
    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default())
    }

    /// Submits `encoder`'s work without waiting.
    pub fn submit(&self, encoder: wgpu::CommandEncoder) -> wgpu::SubmissionIndex {
        self.queue.submit([encoder.finish()])
    }

    /// Runs one kernel to completion: a convenience for single dispatches.
    pub fn run(&self, pipeline: &wgpu::ComputePipeline, buffers: &[&wgpu::Buffer], groups: u32) {
        let mut encoder = self.encoder();
        self.dispatch(&mut encoder, pipeline, buffers, groups);
        self.submit(encoder);
    }

    /// Copies the first `count` elements of `buffer` back to the host,
    /// waiting for every submitted kernel that writes it.
    pub fn read<T: Pod>(&self, buffer: &wgpu::Buffer, count: usize) -> Result<Vec<T>> {
        let bytes = (count * std::mem::size_of::<T>()) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let size = bytes.next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.encoder();
        encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.submit(encoder);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Device(format!("waiting for the GPU: {e}")))?;
        rx.recv()
            .map_err(|_| GpuError::Device("the GPU read-back was dropped".into()))?
            .map_err(|e| GpuError::Device(format!("mapping a GPU buffer: {e}")))?;
        let mapped = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Device(format!("reading a GPU buffer: {e}")))?;
        let mut out = vec![T::zeroed(); count];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&mapped[..bytes as usize]);
        drop(mapped);
        staging.unmap();
        Ok(out)
    }

    /// Blocks until every submitted kernel has finished.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| GpuError::Device(format!("waiting for the GPU: {e}")))
    }

    /// The device, for kernels that manage their own buffers.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue, for kernels that manage their own uploads.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }
}

/// `bytes` zero-padded to a multiple of 4 (and at least 4) bytes.
fn pad4(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().max(4).next_multiple_of(4), 0);
    v
}

/// Splits `groups` workgroups into an (x, y) grid within the per-dimension
/// limit; shaders rebuild the flat index as `wid.y * nwg.x + wid.x` and
/// skip the few past the end.
pub fn grid(groups: u32) -> (u32, u32) {
    if groups <= MAX_GROUPS_X {
        (groups.max(1), 1)
    } else {
        (MAX_GROUPS_X, groups.div_ceil(MAX_GROUPS_X))
    }
}
