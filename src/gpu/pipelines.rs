//! Pipelines made from [`Shader`]s, created once per (kernel, override values), with a
//! registry of every pipeline the engine creates (the binding test walks it); and the
//! [`Dispatch`]: a pipeline, its bind group and its grid, built once and recorded per token.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::Result;
use crate::gpu::context::GpuContext;
use crate::gpu::memory_model;
use crate::gpu::shader::{Constant, GpuLayout, Shader, Slot};

/// A created pipeline as the registry records it.
#[derive(Clone, Debug)]
pub struct PipelineInfo {
    pub shader: Shader,
    /// The weight layout it reads (kernels that read weights).
    pub weights: Option<GpuLayout>,
    pub constants: Vec<Constant>,
}

/// What identifies a pipeline: the kernel and the values of its overrides, in the order
/// the launcher sets them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: &'static str,
    weights: Option<GpuLayout>,
    constants: Vec<Constant>,
}

/// The checks wgpu adds to every kernel of the engine. Bounds checks stay on. wgpu's loop
/// bounding (a 64-bit counter added to every loop, against drivers that miscompile infinite
/// loops) is off: it hides trip counts from the driver's compiler, and attention keeps its
/// per-head accumulators in registers only when its loops over pipeline-constant head
/// counts are unrolled. Only for modules whose every loop ends (creating one is `unsafe`).
pub fn runtime_checks() -> wgpu::ShaderRuntimeChecks {
    wgpu::ShaderRuntimeChecks {
        force_loop_bounding: false,
        ..wgpu::ShaderRuntimeChecks::checked()
    }
}

/// A module's SPIR-V for one pipeline (its overrides set), and its entry point's workgroup
/// size.
pub struct Spirv {
    pub words: Vec<u32>,
    pub workgroup_size: [u32; 3],
}

/// The SPIR-V of a cooperative module with these override values as the engine gives it
/// to a Vulkan driver: [`vulkan_spirv`] with SPIR-V 1.5 (the Vulkan memory model is core
/// there) and bounds checks on storage indices (whether the device checks them itself is
/// not known here).
pub fn coherent_spirv(
    source: &str,
    constants: &naga::back::PipelineConstants,
) -> std::result::Result<Spirv, String> {
    vulkan_spirv(source, constants, (1, 5), true)
}

/// Override values as naga takes them.
pub fn naga_constants(constants: &[Constant]) -> naga::back::PipelineConstants {
    constants
        .iter()
        .map(|c| (c.name.to_string(), c.value.as_f64()))
        .collect()
}

/// A module's SPIR-V with these override values, as wgpu's Vulkan backend writes it for the
/// engine's kernels (index bounds checks, and storage-buffer checks where `buffer_checks`,
/// as wgpu adds them on devices without robust buffer access 2; no loop bounding; workgroup
/// memory not zeroed), its shared memory then made coherent by `memory_model` where it
/// declares the Vulkan memory model (the cooperative modules).
pub fn vulkan_spirv(
    source: &str,
    constants: &naga::back::PipelineConstants,
    lang_version: (u8, u8),
    buffer_checks: bool,
) -> std::result::Result<Spirv, String> {
    use naga::back::spv;
    use naga::proc::BoundsCheckPolicy::{Restrict, Unchecked};
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| format!("{:?}", e.into_inner()))?;
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((naga::ShaderStage::Compute, "main")),
        constants,
    )
    .map_err(|e| e.to_string())?;
    let options = spv::Options {
        lang_version,
        flags: spv::WriterFlags::empty(),
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: Restrict,
            buffer: if buffer_checks { Restrict } else { Unchecked },
            image_load: Restrict,
            binding_array: Unchecked,
        },
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: runtime_checks().force_loop_bounding,
        ..spv::Options::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    let words =
        spv::write_vec(&module, &info, &options, Some(&pipeline)).map_err(|e| e.to_string())?;
    let workgroup_size = module
        .entry_points
        .iter()
        .find(|e| e.name == "main")
        .map(|e| e.workgroup_size)
        .ok_or("no entry point main")?;
    Ok(Spirv {
        words: memory_model::make_shared_accesses_coherent(&words).map_err(|e| e.to_string())?,
        workgroup_size,
    })
}

/// A shader module of SPIR-V written by [`coherent_spirv`], given to the driver as it is
/// (the device needs `PASSTHROUGH_SHADERS`); its pipelines need an explicit layout and no
/// override values.
pub fn passthrough_module(device: &wgpu::Device, label: &str, spirv: &Spirv) -> wgpu::ShaderModule {
    let [x, y, z] = spirv.workgroup_size;
    // SAFETY: naga wrote the SPIR-V from a module it validated, for the features the
    // engine's device has (the same sources create through wgpu's WGSL path); the pass
    // after it only adds memory operands.
    unsafe {
        device.create_shader_module_passthrough(wgpu::ShaderModuleDescriptorPassthrough {
            label: Some(label),
            entry_points: std::borrow::Cow::Owned(vec![wgpu::PassthroughShaderEntryPoint {
                name: "main".into(),
                workgroup_size: (x, y, z),
            }]),
            spirv: Some(std::borrow::Cow::Borrowed(&spirv.words)),
            ..Default::default()
        })
    }
}

/// A compute pipeline with its bind group layout.
#[derive(Clone)]
pub struct Kernel {
    pub shader: Shader,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// One recorded dispatch: a pipeline, its bindings and its grid.
#[derive(Clone)]
pub struct Dispatch {
    pub name: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

/// Creates pipelines once per (kernel, constants) and records each in the registry.
pub struct Pipelines {
    cache: Mutex<HashMap<PipelineKey, Kernel>>,
    registry: Mutex<Vec<PipelineInfo>>,
}

impl Default for Pipelines {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipelines {
    pub fn new() -> Pipelines {
        Pipelines {
            cache: Mutex::new(HashMap::new()),
            registry: Mutex::new(Vec::new()),
        }
    }

    /// Every pipeline created so far.
    pub fn registry(&self) -> Vec<PipelineInfo> {
        self.registry.lock().unwrap().clone()
    }

    /// The pipeline of `shader` with these override values (each one the shader declares).
    pub fn get(&self, ctx: &GpuContext, shader: Shader, constants: &[Constant]) -> Kernel {
        assert!(
            !shader.weights.reads_weights(),
            "{}: reads weights, use get_for",
            shader.name
        );
        self.make(ctx, shader, None, constants)
    }

    /// The pipeline of a kernel that reads weights (`shader.weights`), for weights kept in
    /// `weights`, with these override values.
    pub fn get_for(
        &self,
        ctx: &GpuContext,
        shader: Shader,
        weights: GpuLayout,
        constants: &[Constant],
    ) -> Kernel {
        assert!(
            shader.weights.reads_weights(),
            "{}: reads no weights, use get",
            shader.name
        );
        self.make(ctx, shader, Some(weights), constants)
    }

    fn make(
        &self,
        ctx: &GpuContext,
        shader: Shader,
        weights: Option<GpuLayout>,
        constants: &[Constant],
    ) -> Kernel {
        let key = PipelineKey {
            shader: shader.name,
            weights,
            constants: constants.to_vec(),
        };
        if let Some(k) = self.cache.lock().unwrap().get(&key) {
            return k.clone();
        }
        for c in constants {
            assert!(
                shader
                    .overrides
                    .iter()
                    .any(|o| o.name == c.name && o.ty == c.value.ty()),
                "{}: no override {} of type {:?}",
                shader.name,
                c.name,
                c.value.ty()
            );
        }
        let device = &ctx.device;
        let source = shader.module_source(ctx.caps(), weights.unwrap_or(GpuLayout::F32));
        // Cooperative modules as SPIR-V written here where the device takes it (overrides
        // then set in the module); every other module through wgpu, overrides at creation.
        let coherent = if ctx.coherent_spirv && shader.uses_cooperative_matrices(ctx.caps()) {
            match coherent_spirv(&source, &naga_constants(constants)) {
                Ok(spirv) => Some(spirv),
                Err(why) => {
                    log::warn!("{}: through wgpu's SPIR-V ({why})", shader.name);
                    None
                }
            }
        } else {
            None
        };
        let wgpu_constants: Vec<(&str, f64)> = match coherent {
            Some(_) => Vec::new(),
            None => constants
                .iter()
                .map(|c| (c.name, c.value.as_f64()))
                .collect(),
        };
        let module = match &coherent {
            Some(spirv) => passthrough_module(device, shader.name, spirv),
            // SAFETY: every loop of our kernels ends: its counter moves by a constant step
            // (or a shift) towards a bound that is a size far below 2^32 (a uniform, an
            // override or a constant).
            None => unsafe {
                device.create_shader_module_trusted(
                    wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(source.into()),
                    },
                    runtime_checks(),
                )
            },
        };
        let kernel = Kernel::new(ctx, shader, &module, &wgpu_constants);
        self.registry.lock().unwrap().push(PipelineInfo {
            shader,
            weights,
            constants: constants.to_vec(),
        });
        self.cache.lock().unwrap().insert(key, kernel.clone());
        kernel
    }
}

impl Kernel {
    /// The pipeline of `shader` from `module` (its source made for the device, as WGSL or
    /// SPIR-V) with these override values (none for passthrough SPIR-V, which has them set),
    /// laid out by the shader's bindings.
    pub fn new(
        ctx: &GpuContext,
        shader: Shader,
        module: &wgpu::ShaderModule,
        constants: &[(&str, f64)],
    ) -> Kernel {
        let device = &ctx.device;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = shader
            .bindings
            .iter()
            .enumerate()
            .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match slot {
                    Slot::Uniform(_) => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Slot::Read | Slot::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: matches!(slot, Slot::Read),
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(shader.name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(shader.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(shader.name),
            layout: Some(&pipeline_layout),
            module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Kernel {
            shader,
            pipeline,
            layout,
        }
    }

    /// A dispatch of this kernel over `buffers` (in binding order) with grid `workgroups`.
    pub fn dispatch(
        &self,
        ctx: &GpuContext,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Dispatch {
        assert_eq!(
            buffers.len(),
            self.shader.bindings.len(),
            "{}: {} buffers for {} bindings",
            self.shader.name,
            buffers.len(),
            self.shader.bindings.len()
        );
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.shader.name),
            layout: &self.layout,
            entries: &entries,
        });
        Dispatch {
            name: self.shader.name,
            pipeline: self.pipeline.clone(),
            bind_group,
            workgroups,
        }
    }
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass) {
        self.record_sized(pass, self.workgroups);
    }

    /// With a grid decided at record time (attention's grows with the context).
    pub fn record_sized(&self, pass: &mut wgpu::ComputePass, workgroups: [u32; 3]) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
    }
}

/// Grid for `n` workgroups: x up to the per-dimension limit, the rest in y. Returns the grid
/// and its x extent (kernels rebuild the flat index as x + y * groups_x; surplus
/// workgroups find no rows).
pub fn grid(ctx: &GpuContext, n: usize) -> ([u32; 3], u32) {
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if n <= max {
        ([n.max(1) as u32, 1, 1], n.max(1) as u32)
    } else {
        ([max as u32, n.div_ceil(max) as u32, 1], max as u32)
    }
}

/// Records `dispatches` into one compute pass, submits and waits (tests and one-off work).
pub fn run<'d>(ctx: &GpuContext, dispatches: impl IntoIterator<Item = &'d Dispatch>) -> Result<()> {
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for d in dispatches {
            d.record(&mut pass);
        }
    }
    ctx.queue.submit([enc.finish()]);
    ctx.wait()
}
