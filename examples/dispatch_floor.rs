//! What a dispatch costs on this adapter before any kernel does real work: chains of `n`
//! dispatches of a trivial kernel (each invocation scales one float) in one compute pass and
//! one submit, as the engine records a token. Two chains:
//! - dependent: every dispatch reads and writes the same buffer, so wgpu puts a barrier
//!   between each and the next (the engine's decode is such a chain);
//! - independent: every dispatch has a buffer of its own, so none waits on another.
//!
//! Prints the time per dispatch from the submit to the end of the wait, `(chain - one
//! dispatch) / (n - 1)`, median of `rounds` submits, for grids of 1, 256 and 2048 workgroups
//! of 64; and, apart, the CPU's time to record a dispatch (the engine records the next token
//! while the GPU runs this one). BENCHMARKS.md has the numbers.
//!
//! `cargo run --release --example dispatch_floor [n] [rounds]`
use std::time::Instant;

use glm_flash::gpu::{GpuContext, GpuOptions};

const KERNEL: &str = "
@group(0) @binding(0) var<storage, read_write> a: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&a)) {
        a[id.x] = a[id.x] * 0.5 + 1.0;
    }
}
";

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("counts are whole numbers"))
    };
    let (n, rounds) = (arg(1, 470).max(2), arg(2, 30).max(1));
    let ctx = GpuContext::new(&GpuOptions::default()).expect("a GPU adapter");
    println!(
        "{}; chains of {n} dispatches, median of {rounds} submits",
        ctx.describe()
    );
    let d = &ctx.device;
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("dispatch_floor"),
        source: wgpu::ShaderSource::Wgsl(KERNEL.into()),
    });
    let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("dispatch_floor"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let layout = pipeline.get_bind_group_layout(0);
    for workgroups in [1u32, 256, 2048] {
        let buffers: Vec<_> = (0..n)
            .map(|_| {
                d.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("dispatch_floor"),
                    size: workgroups as u64 * 64 * 4,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let groups: Vec<_> = buffers
            .iter()
            .map(|b| {
                d.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("dispatch_floor"),
                    layout: &layout,
                    entries: &[wgpu::BindGroupEntry {
                        binding: 0,
                        resource: b.as_entire_binding(),
                    }],
                })
            })
            .collect();
        // Median ms of recording, and of submitting and waiting for, `count` dispatches,
        // the i-th bound to groups[pick(i)].
        let time = |count: usize, pick: &dyn Fn(usize) -> usize| {
            let (mut record, mut run): (Vec<f64>, Vec<f64>) = (0..rounds + 3)
                .map(|_| {
                    let t = Instant::now();
                    let mut enc = d.create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        pass.set_pipeline(&pipeline);
                        for i in 0..count {
                            pass.set_bind_group(0, &groups[pick(i)], &[]);
                            pass.dispatch_workgroups(workgroups, 1, 1);
                        }
                    }
                    let commands = enc.finish();
                    let recorded = t.elapsed().as_secs_f64() * 1e3;
                    let t = Instant::now();
                    ctx.queue.submit([commands]);
                    ctx.wait().expect("the device stays up");
                    (recorded, t.elapsed().as_secs_f64() * 1e3)
                })
                .skip(3)
                .unzip();
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            (median(&mut record), median(&mut run))
        };
        let (_, one) = time(1, &|_| 0);
        let (record, dependent) = time(n, &|_| 0);
        let (_, independent) = time(n, &|i| i);
        let per = |chain: f64| (chain - one) * 1e3 / (n - 1) as f64;
        println!(
            "{workgroups:5} workgroups: dependent {:7.2} us per dispatch ({dependent:.3} ms), \
             independent {:7.2} us ({independent:.3} ms); one dispatch and the wait {one:.3} ms; \
             recording {:.2} us per dispatch",
            per(dependent),
            per(independent),
            record * 1e3 / n as f64,
        );
    }
}
