//! What a decode mat-vec costs on this adapter, kernel design by kernel design: one matrix
//! of a decoded token's shape, timed alone in chains of dependent dispatches (as the engine
//! records a token), each dispatch reading another copy of the matrix so that every byte
//! comes from memory, not the L2.
//!
//! Variants, each over the same rows:
//! - `engine L/R`: `matvec.wgsl` as the engine builds it, lane groups of L invocations
//!   (GROUP_LANES) sharing R rows (the engine's choice first: about one invocation per dot unit
//!   of a row, 4 rows below 32768 rows), then other sizes. Each is checked against the CPU's dot
//!   of the same rows (max relative difference printed).
//! - `engine+norm`: the engine's choice with the RMSNorm prologue: its extra cost.
//! - `stream V`: no arithmetic, each invocation XORs V vec4 words of the matrix: what
//!   reading the same bytes in a dispatch of that many workgroups costs.
//! - `empty`: a kernel that returns at once on the engine's grid: the dispatch's own cost
//!   (subtracted from the others to give the body's time and GB/s).
//!
//! `cargo run --release --example matvec_lab [chain] [rounds]`
use std::time::Instant;

use glm_flash::formats;
use glm_flash::gguf::GgmlType;
use glm_flash::gpu::kernels::matvec;
use glm_flash::gpu::pipelines::{Dispatch, Pipelines};
use glm_flash::gpu::upload::{storage_f32, storage_init, storage_zeroed, uniform};
use glm_flash::gpu::{GpuContext, GpuOptions};

/// Bytes of matrix copies per shape: well above any L2.
const COPY_BYTES: usize = 192 << 20;

const STREAM: &str = r#"
override V: u32 = 4u;
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = arrayLength(&w);
    var acc = vec4<u32>(0u);
    let base = wid.x * 64u * V + lid;
    for (var i = 0u; i < V; i++) {
        let j = base + i * 64u;
        if (j < n) {
            acc ^= w[j];
        }
    }
    let s = acc.x ^ acc.y ^ acc.z ^ acc.w;
    if (s == 0x9e3779b9u) {
        out[wid.x] = s;
    }
}
"#;

const EMPTY: &str = r#"
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>) {
    if (wid.x == 0xffffffffu) {
        out[0] = w[0].x;
    }
}
"#;

struct Lab<'a> {
    ctx: &'a GpuContext,
    chain: usize,
    rounds: usize,
}

impl Lab<'_> {
    /// Median ms of a submitted chain of `count` dispatches, the i-th `dispatches[i % n]`.
    fn time(&self, dispatches: &[Dispatch], count: usize) -> f64 {
        let mut runs: Vec<f64> = (0..self.rounds + 2)
            .map(|_| {
                let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    for i in 0..count {
                        dispatches[i % dispatches.len()].record(&mut pass);
                    }
                }
                let t = Instant::now();
                self.ctx.queue.submit([enc.finish()]);
                self.ctx.wait().expect("the device stays up");
                t.elapsed().as_secs_f64() * 1e3
            })
            .skip(2)
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    }

    /// Microseconds per dependent dispatch: (chain - one) / (chain - 1).
    fn per_dispatch(&self, dispatches: &[Dispatch]) -> f64 {
        let one = self.time(dispatches, 1);
        let chain = self.time(dispatches, self.chain);
        (chain - one) * 1e3 / (self.chain - 1) as f64
    }

    /// A pipeline of a raw WGSL module with an automatic layout.
    fn raw(
        &self,
        source: &str,
        constants: &[(&str, f64)],
    ) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
        let d = &self.ctx.device;
        let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("matvec_lab"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("matvec_lab"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        (pipeline, layout)
    }

    fn raw_dispatches(
        &self,
        source: &str,
        constants: &[(&str, f64)],
        copies: &[wgpu::Buffer],
        sink: &wgpu::Buffer,
        workgroups: u32,
    ) -> Vec<Dispatch> {
        let (pipeline, layout) = self.raw(source, constants);
        copies
            .iter()
            .map(|q| Dispatch {
                name: "lab",
                pipeline: pipeline.clone(),
                bind_group: self
                    .ctx
                    .device
                    .create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &layout,
                        entries: &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: q.as_entire_binding(),
                            },
                            wgpu::BindGroupEntry {
                                binding: 1,
                                resource: sink.as_entire_binding(),
                            },
                        ],
                    }),
                workgroups: [workgroups, 1, 1],
            })
            .collect()
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map_or(default, |s| s.parse().expect("counts are whole numbers"))
    };
    let (chain, rounds) = (arg(1, 48).max(2), arg(2, 9).max(1));
    let ctx = GpuContext::new(&GpuOptions::default()).expect("a GPU adapter");
    println!(
        "{}; chains of {chain} dependent dispatches, median of {rounds}",
        ctx.describe()
    );
    let lab = Lab {
        ctx: &ctx,
        chain,
        rounds,
    };
    let pipes = Pipelines::new();
    let shapes: [(GgmlType, usize, usize, &str); 7] = [
        (GgmlType::Q4_K, 12288, 2048, "gate/up of 4 experts + shared"),
        (GgmlType::Q4_K, 10240, 1536, "down of 4 experts + shared"),
        (GgmlType::F32, 64, 2048, "router"),
        (GgmlType::Q4_K, 2048, 5120, "attn_output"),
        (GgmlType::Q4_K, 768, 2048, "q_a"),
        (GgmlType::Q8_0, 12288, 2048, "gate/up of 4 experts + shared"),
        (GgmlType::Q8_0, 2048, 5120, "attn_output"),
    ];
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let x: Vec<f32> = (0..5120).map(|_| rng.next()).collect();
    let x_buf = storage_f32(&ctx, "x", &x);
    let out = storage_zeroed(&ctx, "out", 16384).expect("out");
    let sink = storage_zeroed(&ctx, "sink", 1 << 16).expect("sink");
    for (ty, rows, cols, what) in shapes {
        let format = formats::of(ty).expect("a format");
        let layout = format.gpu.expect("a GPU layout");
        // One random matrix, quantized by the engine, uploaded as many times as fill COPY_BYTES.
        let values: Vec<f32> = (0..rows * cols).map(|_| rng.next() * 0.05).collect();
        let mut file = Vec::new();
        format.quantize(&values, &mut file);
        let row_bytes = file.len() / rows;
        let mut arrays = [Vec::new(), Vec::new()];
        let mut scratch = Vec::new();
        for r in 0..rows {
            layout.pack_row(
                format,
                &file[r * row_bytes..(r + 1) * row_bytes],
                &mut arrays,
                &mut scratch,
            );
        }
        let bytes = arrays[0].len() + arrays[1].len();
        let copies = (COPY_BYTES / bytes).clamp(2, 256);
        let quants: Vec<wgpu::Buffer> = (0..copies)
            .map(|_| storage_init(&ctx, "q", &arrays[0]))
            .collect();
        let scales: Vec<wgpu::Buffer> = (0..copies)
            .map(|_| storage_init(&ctx, "s", &arrays[1]))
            .collect();
        let cpu: Vec<f32> = (0..rows)
            .map(|r| format.dot(&file[r * row_bytes..(r + 1) * row_bytes], &x[..cols]))
            .collect();
        println!(
            "\n{ty} {rows} x {cols} ({what}): {:.2} MB, {copies} copies",
            bytes as f64 / 1e6
        );
        let matvec_dispatches = |lanes: u32, rows_per: u32, norm: bool| {
            let constants = [
                matvec::NORM.set(norm),
                matvec::ACCUMULATE.set(false),
                matvec::ROWS.set(rows_per),
                matvec::GROUP_LANES.set(lanes),
                matvec::LANES.set(lanes.min(ctx.lane_limit)),
            ];
            let kernel = pipes.get_for(&ctx, matvec::SHADER, layout, &constants);
            let per_wg = rows_per as usize * matvec::WORKGROUP / lanes as usize;
            let workgroups = rows.div_ceil(per_wg) as u32;
            // groups_x is the grid's x extent: one row of workgroups here.
            let params = uniform(
                &ctx,
                "params",
                &[
                    rows as u32,
                    cols as u32,
                    0,
                    0,
                    rows as u32,
                    0,
                    1e-6f32.to_bits(),
                    workgroups,
                ],
            );
            let ds: Vec<Dispatch> = (0..copies)
                .map(|c| {
                    kernel.dispatch(
                        &ctx,
                        &[&params, &quants[c], &scales[c], &x_buf, &x_buf, &out],
                        [workgroups, 1, 1],
                    )
                })
                .collect();
            (ds, workgroups)
        };
        let first_output = |ds: &[Dispatch]| -> Vec<f32> {
            glm_flash::gpu::pipelines::run(&ctx, [&ds[0]]).expect("runs");
            ctx.read_f32(&out, rows).expect("reads")
        };
        // Largest difference relative to the reference's largest value (a NaN is infinite).
        let max_err = |got: &[f32], reference: &[f32]| -> f64 {
            let scale = reference
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(1e-30);
            got.iter()
                .zip(reference)
                .map(|(g, r)| {
                    if g.is_finite() {
                        ((g - r).abs() / scale) as f64
                    } else {
                        f64::INFINITY
                    }
                })
                .fold(0.0, f64::max)
        };
        let lanes = matvec::group_lanes(cols / layout.dot_values()) as u32;
        let (engine, engine_wgs) = matvec_dispatches(lanes, 4, false);
        let empty = lab.raw_dispatches(EMPTY, &[], &quants, &sink, engine_wgs);
        let floor = lab.per_dispatch(&empty);
        println!("  empty ({engine_wgs} workgroups): {floor:7.2} us per dispatch");
        let report = |name: String, wgs: u32, us: f64, err: Option<f64>| {
            let body = (us - floor).max(1e-3);
            println!(
                "  {name:14} {wgs:6} wgs {us:8.2} us  body {body:7.2} us  {:7.0} GB/s{}",
                bytes as f64 / body / 1e3,
                err.map_or(String::new(), |e| format!("  max err {e:.1e}"))
            );
        };
        report(
            format!("engine {lanes}/4"),
            engine_wgs,
            lab.per_dispatch(&engine),
            Some(max_err(&first_output(&engine), &cpu)),
        );
        // The same with the RMSNorm prologue (x as its own norm weight): its extra cost.
        let (normed, _) = matvec_dispatches(lanes, 4, true);
        report(
            "engine+norm".into(),
            engine_wgs,
            lab.per_dispatch(&normed),
            None,
        );
        for group in [32u32, 64, 128, 256] {
            for rows_per in [4u32, 8, 16] {
                if (group, rows_per) == (lanes, 4) {
                    continue;
                }
                let (ds, wgs) = matvec_dispatches(group, rows_per, false);
                let err = max_err(&first_output(&ds), &cpu);
                report(
                    format!("engine {group}/{rows_per}"),
                    wgs,
                    lab.per_dispatch(&ds),
                    Some(err),
                );
            }
        }
        let words = bytes.div_ceil(16) as u32;
        for v in [1u32, 4, 16] {
            let wgs = words.div_ceil(64 * v);
            // The stream reads `quants` only: its bytes.
            let ds = lab.raw_dispatches(STREAM, &[("V", v as f64)], &quants, &sink, wgs);
            let us = lab.per_dispatch(&ds);
            let body = (us - floor).max(1e-3);
            println!(
                "  {:14} {wgs:6} wgs {us:8.2} us  body {body:7.2} us  {:7.0} GB/s",
                format!("stream {v}"),
                arrays[0].len() as f64 / body / 1e3
            );
        }
    }
}
