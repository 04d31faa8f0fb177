//! WGSL sources and the pipelines made from them, with a registry of every pipeline the
//! engine creates (the binding-discipline test walks it).
//!
//! Kernels that reduce across a workgroup call `reduce_sum4` / `reduce_max4`, which come from
//! one of two small libraries appended to the kernel's source: `kernels/lib/reduce_subgroup.wgsl`
//! when the device has subgroups, else `kernels/lib/reduce_workgroup.wgsl`. It has to be a choice
//! of source, not of entry point or override constant: naga validates the whole module
//! against the device's capabilities, so subgroup builtins anywhere in a module fail on a
//! device without them.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::gpu::context::GpuContext;

/// What a binding is, in binding order (binding i is `bindings[i]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Uniform,
    Read,
    ReadWrite,
}

/// One WGSL kernel: its file, its bindings, whether it needs a reduction library.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// The file name without `.wgsl`; also the launcher's module name.
    pub name: &'static str,
    pub source: &'static str,
    pub bindings: &'static [Slot],
    pub reduces: bool,
    /// Appends `kernels/lib/dot_rows4.wgsl` (the Q8_0/F32 row-dot loop of the mat-vec kernels).
    pub dots: bool,
}

pub const REDUCE_SUBGROUP: &str = include_str!("kernels/lib/reduce_subgroup.wgsl");
pub const REDUCE_WORKGROUP: &str = include_str!("kernels/lib/reduce_workgroup.wgsl");
pub const DOT_ROWS4: &str = include_str!("kernels/lib/dot_rows4.wgsl");

/// Every kernel, for tests that validate all sources.
pub fn all_shaders() -> Vec<Shader> {
    use crate::gpu::kernels::*;
    vec![
        embed::SHADER,
        matvec::SHADER,
        attn_partial::SHADER,
        attn_combine::SHADER,
        ffn_gate_up::SHADER,
        ffn_down::SHADER,
        argmax::SHADER,
    ]
}

impl Shader {
    /// The complete module source for a device with or without subgroups.
    pub fn module_source(&self, subgroups: bool) -> String {
        let mut s = self.source.to_string();
        if self.reduces {
            s.push('\n');
            s.push_str(if subgroups {
                REDUCE_SUBGROUP
            } else {
                REDUCE_WORKGROUP
            });
        }
        if self.dots {
            s.push('\n');
            s.push_str(DOT_ROWS4);
        }
        s
    }
}

/// A created pipeline as the registry records it.
#[derive(Clone, Debug)]
pub struct PipelineInfo {
    pub name: &'static str,
    pub constants: Vec<(&'static str, f64)>,
    pub bindings: usize,
    pub storage_buffers: usize,
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
    cache: Mutex<HashMap<String, Kernel>>,
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

    /// The pipeline of `shader` with these override constants (bools as 0/1).
    pub fn get(
        &self,
        ctx: &GpuContext,
        shader: Shader,
        constants: &[(&'static str, f64)],
    ) -> Kernel {
        let key = format!("{}{constants:?}", shader.name);
        if let Some(k) = self.cache.lock().unwrap().get(&key) {
            return k.clone();
        }
        let device = &ctx.device;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.name),
            source: wgpu::ShaderSource::Wgsl(shader.module_source(ctx.subgroups).into()),
        });
        let entries: Vec<wgpu::BindGroupLayoutEntry> = shader
            .bindings
            .iter()
            .enumerate()
            .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match slot {
                    Slot::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Slot::Read | Slot::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *slot == Slot::Read,
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
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let kernel = Kernel {
            shader,
            pipeline,
            layout,
        };
        self.registry.lock().unwrap().push(PipelineInfo {
            name: shader.name,
            constants: constants.to_vec(),
            bindings: shader.bindings.len(),
            storage_buffers: shader
                .bindings
                .iter()
                .filter(|s| **s != Slot::Uniform)
                .count(),
        });
        self.cache.lock().unwrap().insert(key, kernel.clone());
        kernel
    }
}

impl Kernel {
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

/// Bool override constants are passed as 0.0 / 1.0.
pub fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
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
