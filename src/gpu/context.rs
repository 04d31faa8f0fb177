//! Instance, adapter and device: which GPU we run on and what it can do.
//!
//! The device is requested with the adapter's own limits (wgpu's defaults allow only 8
//! storage buffers and 128 MiB bindings) and with the optional features we use when present.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::shader::{ShaderCaps, TileMath};
use crate::ops_common::CacheType;

/// How to pick and configure the GPU. Filled from the CLI; the library reads no environment.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Index into [`list_adapters`]' order; `None` picks the high-performance adapter.
    pub adapter: Option<usize>,
    /// Force a lower storage-binding limit than the device's (tests use it to run the
    /// paths that split large matrices into several bindings).
    pub max_binding_bytes: Option<u64>,
    /// Use the workgroup-memory reductions even when the device has subgroups (tests use it
    /// to run the fallback; also a way around a driver with broken subgroup support).
    pub no_subgroups: bool,
    /// Force a lower buffer-size limit than the device's `max_buffer_size`, leaving the
    /// binding limit alone (tests use it to reach the too-large-buffer error).
    pub max_buffer_bytes: Option<u64>,
    /// How the latent cache stores its rows (default f16; the f32 parity tests use f32).
    pub cache_type: CacheType,
    /// How the batched mat-mul multiplies its tiles where the device has cooperative
    /// matrices (default: f16 parts of f32); elsewhere it uses f32 FMAs whatever this says.
    pub tile_math: TileMath,
    /// Tokens per chunk of a batched feed (None: `gpu::batch::DEFAULT_CHUNK`); cut to what
    /// the device's bindings hold. Tests use small chunks to run prompts of several.
    pub prefill_chunk: Option<usize>,
}

/// Optional features we enable when the adapter has them.
const OPTIONAL_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);

/// Workgroup memory of the cooperative tiles of `tiles`: the f16 parts of a step's columns
/// of the tile's weight rows and of 64 tokens (each row's columns padded by 8), one 16 x 16
/// f32 block per subgroup, and two u32 (a flag and the tile's tokens; a driver may give
/// each variable 16 bytes).
pub const fn cooperative_workgroup_bytes(tiles: TileMath) -> u32 {
    let (rows, k) = (tiles.tile_rows(), tiles.step_columns());
    tiles.parts() * (rows + 64) * (k + 8) * 2 + 8 * 256 * 4 + 2 * 16
}

/// The most any cooperative kernel takes (either tile variant, either attention): what the
/// device check asks for.
pub const COOPERATIVE_WORKGROUP_BYTES: u32 = {
    let mut most = 0;
    let takes = [
        cooperative_workgroup_bytes(TileMath::Split),
        cooperative_workgroup_bytes(TileMath::F16),
        crate::gpu::kernels::attn_batch_coop::workgroup_bytes(TileMath::Split),
        crate::gpu::kernels::attn_batch_coop::workgroup_bytes(TileMath::F16),
    ];
    let mut i = 0;
    while i < takes.len() {
        if takes[i] > most {
            most = takes[i];
        }
        i += 1;
    }
    most
};

/// Why the adapter cannot run the cooperative tiles, if it cannot.
fn cooperative_unfit(a: &wgpu::Adapter) -> Option<String> {
    let info = a.get_info();
    // The shape `kernels/lib/tiles_coop.wgsl` multiplies: 16x16x16, f16 inputs, f32 sums.
    let has_shape = a.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type)
            == (
                16,
                16,
                16,
                wgpu::CooperativeScalarType::F16,
                wgpu::CooperativeScalarType::F32,
            )
    });
    if !a
        .features()
        .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        Some("no cooperative matrices".into())
    } else if !has_shape {
        Some("no 16x16x16 f16 x f16 + f32 cooperative matrix".into())
    } else if !a.features().contains(wgpu::Features::SHADER_F16) {
        Some("no shader-f16".into())
    } else if (info.subgroup_min_size, info.subgroup_max_size) != (32, 32) {
        Some(format!(
            "subgroups of {}..{} invocations, the tiles need 32",
            info.subgroup_min_size, info.subgroup_max_size
        ))
    } else if a.limits().max_compute_workgroup_storage_size < COOPERATIVE_WORKGROUP_BYTES {
        Some(format!(
            "{} bytes of workgroup memory, the tiles need {COOPERATIVE_WORKGROUP_BYTES}",
            a.limits().max_compute_workgroup_storage_size
        ))
    } else {
        None
    }
}

/// "16x16x16 F16->F32, 16x8x16 F16->F16, ..."
fn cooperative_shapes(a: &wgpu::Adapter) -> String {
    let list: Vec<String> = a
        .cooperative_matrix_properties()
        .iter()
        .map(|p| {
            format!(
                "{}x{}x{} {:?}->{:?}",
                p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
            )
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// No binding may reach 4 GiB: Metal mis-sizes such bindings silently, and WGSL indexes
/// with u32. Keep a margin so byte counts stay below 2^32.
const MAX_BINDING_EVER: u64 = (1 << 32) - 256;

/// Workgroup size of every kernel but the argmax and the attention (WGSL `WG`, prepended to
/// each module); subgroup reductions need the subgroup to divide it.
pub const WORKGROUP_SIZE: u32 = 64;

/// Subgroups narrower than this are not used: the lane library shuffles within groups of
/// up to this many consecutive invocations (`kernels/lib/lanes_subgroup.wgsl`).
pub const MIN_SUBGROUP: u32 = 8;

/// What the engine asks of an adapter, beyond compute shaders and `unpack2x16float`.
#[derive(Clone, Copy, Debug)]
pub struct Requirements {
    /// Storage buffers one kernel binds at most.
    pub storage_buffers_per_stage: u32,
    /// Uniform buffers one kernel binds at most.
    pub uniform_buffers_per_stage: u32,
    /// Bindings of one bind group. Also Metal's rule (31 buffer slots per stage, one kept
    /// for wgpu), whatever other backends report.
    pub bindings_per_group: u32,
    /// Invocations of the largest workgroup (all workgroups are one-dimensional).
    pub invocations_per_workgroup: u32,
    /// Workgroup memory of the kernel that uses the most (the batched mat-mul's tiles of
    /// 64 rows and 64 tokens: 32 KiB, what Apple GPUs and lavapipe offer).
    pub workgroup_storage_bytes: u32,
}

/// The smallest adapter the engine accepts: [`GpuContext::new`] refuses one below any of
/// these, and the binding test holds every pipeline the engine creates to them. Raise a
/// number here when a kernel needs more.
pub const MINIMUM: Requirements = Requirements {
    storage_buffers_per_stage: 8,
    uniform_buffers_per_stage: 2,
    bindings_per_group: 30,
    invocations_per_workgroup: 256,
    workgroup_storage_bytes: 32768,
};

/// The device and what the kernels may assume about it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Largest storage binding we create: the device limit, capped below 4 GiB and by
    /// [`GpuOptions::max_binding_bytes`].
    pub max_binding: u64,
    /// Largest buffer we create: the device's `max_buffer_size` or
    /// [`GpuOptions::max_buffer_bytes`].
    pub max_buffer: u64,
    /// Kernels reduce with subgroup builtins (else through workgroup memory).
    pub subgroups: bool,
    /// How the batched mat-mul multiplies its tiles (f32 FMAs where the device has no
    /// cooperative matrices it can use).
    pub tiles: TileMath,
    /// Kernels with cooperative matrices go to the driver as SPIR-V the engine writes (naga,
    /// then `memory_model`'s pass, through wgpu's passthrough), their shared memory coherent
    /// under the Vulkan memory model those modules declare; else through wgpu as WGSL.
    pub coherent_spirv: bool,
    /// The most consecutive invocations `lane_sum` may span: the smallest subgroup where
    /// kernels reduce with subgroups (shuffles stay inside one), else the workgroup.
    pub lane_limit: u32,
    /// A small storage buffer bound where a kernel variant ignores a binding.
    pub dummy: wgpu::Buffer,
    /// Why the device stopped working, once it has: lost (driver reset, unplugged,
    /// destroyed) or an error wgpu reports outside any error scope. wgpu's default for the
    /// latter is a panic; we keep the message and [`GpuContext::check`] turns it into an error.
    failure: Arc<Mutex<Option<String>>>,
}

/// Vulkan, Metal and DX12 only: the GL backend lacks the storage-buffer counts and compute
/// features the kernels need, and probing it prints windowing-system noise on headless hosts.
const BACKENDS: wgpu::Backends = wgpu::Backends::PRIMARY;

fn instance() -> wgpu::Instance {
    #[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
    if let Some(instance) = vulkan_without_window_system() {
        return instance;
    }
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = BACKENDS;
    wgpu::Instance::new(desc)
}

/// Instance extensions for presenting to X11 and Wayland windows, which compute never does.
#[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
const WINDOW_SYSTEM_EXTENSIONS: [&std::ffi::CStr; 3] = [
    c"VK_KHR_xlib_surface",
    c"VK_KHR_xcb_surface",
    c"VK_KHR_wayland_surface",
];

/// The Vulkan instance wgpu makes, without the X11 and Wayland surface extensions. With
/// them enabled, Mesa's device-select layer (loaded into every Vulkan program where Mesa is
/// installed) connects to the display server while it orders the adapters, and on a
/// machine without one libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set in
/// the environment.` on our stderr. None if Vulkan cannot be loaded.
#[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
fn vulkan_without_window_system() -> Option<wgpu::Instance> {
    use wgpu::hal;
    let desc = hal::InstanceDescriptor {
        name: "glm-flash",
        flags: wgpu::InstanceFlags::default(),
        memory_budget_thresholds: Default::default(),
        backend_options: Default::default(),
        telemetry: None,
        display: None,
    };
    let drop_window_systems = Box::new(|args: hal::vulkan::CreateInstanceCallbackArgs| {
        args.extensions
            .retain(|e| !WINDOW_SYSTEM_EXTENSIONS.contains(e));
    });
    // SAFETY: the callback only removes surface extensions. wgpu-hal asks before using one
    // (creating a surface from an X11 or Wayland window fails with an error when its
    // extension is missing, as on a driver without it), and we never create surfaces.
    let raw =
        unsafe { hal::vulkan::Instance::init_with_callback(&desc, Some(drop_window_systems)) }
            .map_err(|e| log::info!("Vulkan: {e}"))
            .ok()?;
    // SAFETY: `raw` is a valid instance that nothing else owns.
    Some(unsafe { wgpu::Instance::from_hal::<hal::api::Vulkan>(raw) })
}

fn adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(BACKENDS))
}

fn describe_adapter(i: usize, a: &wgpu::Adapter) -> Vec<String> {
    let info = a.get_info();
    let l = a.limits();
    let f = a.features();
    let mib = |b: u64| format!("{} MiB", b >> 20);
    let feats: Vec<&str> = [
        (wgpu::Features::SUBGROUP, "subgroup"),
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
    ]
    .iter()
    .filter(|(flag, _)| f.contains(*flag))
    .map(|(_, name)| *name)
    .collect();
    vec![
        format!(
            "[{i}] {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        ),
        format!("    driver: {} {}", info.driver, info.driver_info),
        format!(
            "    features: {}; subgroup size {}..{}",
            if feats.is_empty() {
                "none of subgroup, shader-f16, timestamp-query".to_string()
            } else {
                feats.join(", ")
            },
            info.subgroup_min_size,
            info.subgroup_max_size
        ),
        format!(
            "    limits: storage binding {}, buffer {}, {} storage buffers per stage, workgroup memory {} B, {} invocations per workgroup",
            mib(l.max_storage_buffer_binding_size),
            mib(l.max_buffer_size),
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroup_storage_size,
            l.max_compute_invocations_per_workgroup
        ),
        format!(
            "    cooperative matrices: {}; batched mat-mul tiles: {}",
            cooperative_shapes(a),
            match cooperative_unfit(a) {
                None => "cooperative (f16-rounded values; --matmul split: f16 parts of f32)".to_string(),
                Some(why) => format!("f32 FMAs ({why})"),
            }
        ),
    ]
}

/// Printable lines describing every adapter wgpu finds, in the order `--adapter` indexes.
pub fn list_adapters() -> Vec<String> {
    let list = adapters(&instance());
    if list.is_empty() {
        return vec!["no GPU adapter found (wgpu enumerated none on any backend)".into()];
    }
    list.iter()
        .enumerate()
        .flat_map(|(i, a)| describe_adapter(i, a))
        .collect()
}

/// wgpu's high-performance choice: discrete, then integrated, then other GPUs, software
/// adapters (`DeviceType::Cpu`, such as Mesa's lavapipe) last.
fn best_adapter(
    instance: &wgpu::Instance,
) -> std::result::Result<wgpu::Adapter, wgpu::RequestAdapterError> {
    pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    }))
}

/// The adapter [`GpuContext::new`] picks when no index is given, if there is one.
pub fn default_adapter() -> Option<wgpu::AdapterInfo> {
    best_adapter(&instance()).ok().map(|a| a.get_info())
}

/// Which limit of `l` is below [`MINIMUM`], if one is: "allows 7 storage buffers per stage,
/// the kernels need 8".
pub fn below_minimum(l: &wgpu::Limits) -> Option<String> {
    let m = MINIMUM;
    let checks = [
        (
            "storage buffers per stage",
            l.max_storage_buffers_per_shader_stage,
            m.storage_buffers_per_stage,
        ),
        (
            "uniform buffers per stage",
            l.max_uniform_buffers_per_shader_stage,
            m.uniform_buffers_per_stage,
        ),
        (
            "bindings per bind group",
            l.max_bindings_per_bind_group,
            m.bindings_per_group,
        ),
        (
            "invocations per workgroup",
            l.max_compute_invocations_per_workgroup,
            m.invocations_per_workgroup,
        ),
        (
            "invocations along a workgroup's x",
            l.max_compute_workgroup_size_x,
            m.invocations_per_workgroup,
        ),
        (
            "bytes of workgroup memory",
            l.max_compute_workgroup_storage_size,
            m.workgroup_storage_bytes,
        ),
    ];
    checks
        .iter()
        .find(|(_, has, needs)| has < needs)
        .map(|(what, has, needs)| format!("allows {has} {what}, the kernels need {needs}"))
}

/// Why the adapter cannot run the kernels, if it cannot: below [`MINIMUM`], or without
/// `unpack2x16float`.
fn check_usable(a: &wgpu::Adapter) -> std::result::Result<(), String> {
    let info = a.get_info();
    if let Some(why) = below_minimum(&a.limits()) {
        return Err(format!("{} {why}", info.name));
    }
    if !a
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32)
    {
        return Err(format!(
            "{} cannot run unpack2x16float (downlevel flag SHADER_F16_IN_F32), which reads the Q8_0 scales",
            info.name
        ));
    }
    Ok(())
}

impl GpuContext {
    pub fn new(opts: &GpuOptions) -> Result<GpuContext> {
        let instance = instance();
        let list = adapters(&instance);
        let names = || {
            if list.is_empty() {
                "wgpu found no adapter on any backend (Vulkan, Metal, DX12, GL)".to_string()
            } else {
                let v: Vec<String> = list
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let info = a.get_info();
                        format!("[{i}] {} ({:?})", info.name, info.backend)
                    })
                    .collect();
                format!("adapters found: {}", v.join(", "))
            }
        };
        let adapter = match opts.adapter {
            Some(i) => list
                .get(i)
                .cloned()
                .ok_or_else(|| Error::Gpu(format!("adapter index {i} requested; {}", names())))?,
            None => best_adapter(&instance).map_err(|e| {
                Error::Gpu(format!(
                    "need a GPU adapter with compute shaders ({e}); {}",
                    names()
                ))
            })?,
        };
        check_usable(&adapter).map_err(Error::Gpu)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let tiles = if opts.tile_math.cooperative() && cooperative_unfit(&adapter).is_none() {
            opts.tile_math
        } else {
            TileMath::Fma
        };
        let cooperative = tiles.cooperative();
        let mut features = adapter.features() & OPTIONAL_FEATURES;
        let mut experimental = wgpu::ExperimentalFeatures::disabled();
        if cooperative {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
            // SAFETY: the one experimental feature we enable is cooperative matrices, used
            // only by the tile library the shape check above admits (its parity tests run
            // it on such devices).
            experimental = unsafe { wgpu::ExperimentalFeatures::enabled() };
        }
        // naga writes cooperative modules under the Vulkan memory model with every access
        // private, so that no barrier orders one invocation's workgroup stores before
        // another's loads; the engine writes their SPIR-V itself where it can pass it through.
        let passthrough = info.backend == wgpu::Backend::Vulkan
            && adapter
                .features()
                .contains(wgpu::Features::PASSTHROUGH_SHADERS);
        if passthrough {
            features |= wgpu::Features::PASSTHROUGH_SHADERS;
        }
        let coherent_spirv = cooperative && passthrough;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("glm-flash"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: experimental,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("cannot open {}: {e}", info.name)))?;
        let mut max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(MAX_BINDING_EVER);
        if let Some(forced) = opts.max_binding_bytes {
            max_binding = max_binding.min(forced);
        }
        max_binding &= !255;
        let max_buffer = opts
            .max_buffer_bytes
            .map_or(limits.max_buffer_size, |b| b.min(limits.max_buffer_size));
        // Subgroup reductions assume a subgroup fits the workgroup and divides it, and
        // holds whole groups of lanes.
        let subgroups = !opts.no_subgroups
            && features.contains(wgpu::Features::SUBGROUP)
            && info.subgroup_max_size <= WORKGROUP_SIZE
            && info.subgroup_min_size >= MIN_SUBGROUP
            && WORKGROUP_SIZE.is_multiple_of(info.subgroup_max_size);
        let lane_limit = if subgroups {
            info.subgroup_min_size
        } else {
            WORKGROUP_SIZE
        };
        let failure = Arc::new(Mutex::new(None::<String>));
        let lost = failure.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut f = lost.lock().unwrap_or_else(|e| e.into_inner());
            let detail = if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            };
            f.get_or_insert(format!("the GPU device was lost ({reason:?}{detail})"));
        });
        let uncaptured = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut f = uncaptured.lock().unwrap_or_else(|e| e.into_inner());
            f.get_or_insert(format!("the GPU reported an error: {e}"));
        }));
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(GpuContext {
            dummy,
            device,
            queue,
            info,
            limits,
            features,
            max_binding,
            max_buffer,
            subgroups,
            tiles,
            coherent_spirv,
            lane_limit,
            failure,
        })
    }

    /// Err once the device has been lost or has reported an error, naming the device.
    pub fn check(&self) -> Result<()> {
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match &*failure {
            None => Ok(()),
            Some(why) => Err(Error::Gpu(format!("{} on {}", why, self.describe()))),
        }
    }

    /// What the kernels' modules may use on this device.
    pub fn caps(&self) -> ShaderCaps {
        ShaderCaps {
            subgroups: self.subgroups,
            tiles: self.tiles,
        }
    }

    /// "NVIDIA H100 (Vulkan)"
    pub fn describe(&self) -> String {
        format!("{} ({:?})", self.info.name, self.info.backend)
    }
}

impl GpuContext {
    /// Blocks until the GPU has finished everything submitted.
    pub fn wait(&self) -> Result<()> {
        self.wait_for(None)
    }

    /// Blocks until `submission` (None: the latest) has run.
    pub fn wait_for(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.check()?;
        let polled = self.device.poll(wgpu::PollType::Wait {
            submission_index: submission,
            timeout: None,
        });
        self.check()?;
        polled.map(|_| ()).map_err(|e| {
            // A submission that failed (the device lost before it) has no index to wait on.
            Error::Gpu(format!(
                "work submitted to {} never ran (the device was lost or rejected it): {e}",
                self.describe()
            ))
        })
    }

    /// Copies `size` bytes of `buffer` (which needs COPY_SRC) back to the host.
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        let submitted = self.queue.submit([enc.finish()]);
        map_read(self, &staging, size, submitted)
    }

    pub fn read_f32(&self, buffer: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buffer, 4 * n as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// Maps a MAP_READ buffer whose copy is in submission `submitted`, waits for that
/// submission only (later ones may still run), and copies its bytes out.
pub fn map_read(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    size: u64,
    submitted: wgpu::SubmissionIndex,
) -> Result<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, 0..size, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait_for(Some(submitted))?;
    rx.recv()
        .map_err(|_| Error::Gpu("buffer map callback never ran".into()))?
        .map_err(|e| Error::Gpu(format!("cannot map a readback buffer: {e}")))?;
    let out = staging
        .get_mapped_range(0..size)
        .map_err(|e| Error::Gpu(format!("cannot read a mapped buffer: {e}")))?
        .to_vec();
    staging.unmap();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_below_the_minimum_is_refused_naming_the_limit() {
        let enough = wgpu::Limits {
            max_compute_workgroup_storage_size: 32768,
            ..Default::default()
        };
        assert_eq!(below_minimum(&enough), None);
        let seven = wgpu::Limits {
            max_storage_buffers_per_shader_stage: 7,
            ..enough.clone()
        };
        assert_eq!(
            below_minimum(&seven).as_deref(),
            Some("allows 7 storage buffers per stage, the kernels need 8")
        );
        let small = wgpu::Limits {
            max_compute_workgroup_storage_size: 16384,
            ..enough
        };
        assert!(below_minimum(&small)
            .unwrap()
            .contains("16384 bytes of workgroup memory"));
    }
}
