//! Repro of the lavapipe (Mesa 22.3) growth that our kernels avoid: the former MoE routing
//! kernel (`lavapipe_uniform_inlining.wgsl`; routing now runs inside
//! src/gpu/kernels/ffn_gate_up.wgsl with its numbers as pipeline constants) with its params
//! bound as a uniform and as a read-only storage buffer, bound and dispatched `binds` times
//! (one submit each); prints RSS growth and time per bind.
//!
//! With a uniform, lavapipe inlines the params into a new LLVM compile at every bind and keeps
//! each clone of the shader until the pipeline goes, at small expert counts (it gives up
//! inlining after the first bind at 33 or more). With storage, nothing grows at any count.
//! BENCHMARKS.md has the measured growth and time per bind.
//!
//! `cargo run --release --example lavapipe_uniform_inlining [binds] [experts]`
use std::time::Instant;

use glm_flash::gpu::{GpuContext, GpuOptions};
use wgpu::util::DeviceExt;

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let arg = |i: usize, default: u32| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().unwrap())
    };
    let (binds, experts) = (arg(1, 300) as usize, arg(2, 8));
    let ctx = GpuContext::new(&GpuOptions::default()).unwrap();
    println!("{}; {binds} binds, {experts} experts", ctx.describe());
    let storage = include_str!("lavapipe_uniform_inlining.wgsl");
    let uniform = storage.replace("var<storage, read> p: Params", "var<uniform> p: Params");
    for (name, source, params_ty) in [
        (
            "uniform",
            uniform.as_str(),
            wgpu::BufferBindingType::Uniform,
        ),
        (
            "storage",
            storage,
            wgpu::BufferBindingType::Storage { read_only: true },
        ),
    ] {
        let (per_bind, ms) = run(&ctx, source, params_ty, binds, experts);
        println!(
            "params as {name}: {:.1} KB RSS and {ms:.2} ms per bind",
            per_bind / 1024.0
        );
    }
}

/// Binds and dispatches the kernel `binds` times after a warm-up; RSS bytes and ms per bind.
fn run(
    ctx: &GpuContext,
    source: &str,
    params_ty: wgpu::BufferBindingType,
    binds: usize,
    experts: u32,
) -> (f64, f64) {
    let d = &ctx.device;
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let ty = [
        params_ty,
        wgpu::BufferBindingType::Storage { read_only: true },
        wgpu::BufferBindingType::Storage { read_only: true },
        wgpu::BufferBindingType::Storage { read_only: false },
    ];
    let entries: Vec<_> = (0..4)
        .map(|i| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: ty[i],
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = d.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &entries,
    });
    let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: Some(&d.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        })),
        module: &module,
        entry_point: Some("main"),
        // As the engine's pipelines (src/gpu/pipelines.rs).
        compilation_options: wgpu::PipelineCompilationOptions {
            zero_initialize_workgroup_memory: false,
            ..Default::default()
        },
        cache: None,
    });
    let buffer = |contents: &[u8]| {
        d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::STORAGE,
        })
    };
    // experts, k, n_shared, norm, scale, padding: the shader's Params.
    let params = buffer(bytemuck::cast_slice(&[
        experts,
        2,
        1,
        1,
        1f32.to_bits(),
        0,
        0,
        0,
    ]));
    let logits: Vec<f32> = (0..experts).map(|e| (e % 7) as f32 - 3.0).collect();
    let logits = buffer(bytemuck::cast_slice(&logits));
    let bias = buffer(&vec![0; 4 * experts as usize]);
    let route = buffer(&[0; 64]);
    let all = [&params, &logits, &bias, &route];
    let entries: Vec<_> = (0..4)
        .map(|i| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: all[i].as_entire_binding(),
        })
        .collect();
    let bind_group = d.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &layout,
        entries: &entries,
    });
    let bind_and_dispatch = || {
        let mut enc = d.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        ctx.queue.submit([enc.finish()]);
        ctx.wait().unwrap();
    };
    for _ in 0..binds / 5 {
        bind_and_dispatch();
    }
    let (before, t) = (rss(), Instant::now());
    for _ in 0..binds {
        bind_and_dispatch();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / binds as f64;
    ((rss() as f64 - before as f64) / binds as f64, ms)
}
