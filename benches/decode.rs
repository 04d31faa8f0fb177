//! `cargo bench`: dispatch counts of the simple and the fused schedule for the full
//! GLM-4.7-Flash shape, the attention kernels alone at contexts 512 to 32768, then decode
//! and prefill on the CPU and the GPU side by side, with the GPU time and GB/s of every
//! kernel role (the mat-vec shapes).
//!
//!     cargo bench --bench decode              # synthetic full-width model, 4 layers
//!     cargo bench --bench decode -- FILE.gguf # any model
//!
//! The default model is written once to target/bench-full-4layers.gguf (about 2.6 GB).
//! What a dispatch itself costs on an adapter: `cargo run --release --example dispatch_floor`.

use std::path::PathBuf;

use glm_flash::bench::{self, BenchOptions};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::ftype::FileType;
use glm_flash::gguf::GgufFile;
use glm_flash::gpu::cache::{encode_rows, POSITION_TILE};
use glm_flash::gpu::kernels::{attn_combine, attn_partial, attn_partial_coop, TokenParams};
use glm_flash::gpu::pipelines::Pipelines;
use glm_flash::gpu::upload::{storage_f32, storage_init, uniform};
use glm_flash::gpu::{GpuBackend, GpuContext, GpuOptions, TileMath};
use glm_flash::ops_common::CacheType;
use glm_flash::synth::{Preset, SynthModel, SynthOptions};
use glm_flash::weights::Weights;

/// Dispatches of one token if every op of the CPU reference's forward were its own dispatch.
fn simple_schedule(cfg: &Config) -> (usize, usize, usize) {
    // attn_norm, q_a, q_a_norm, q_b, kv_a, kv_a_norm, rope q, rope k, cache append,
    // absorb (k_b, batched over heads), scores, softmax, context, v_b, attn_output, add
    let attention = 16;
    // ffn_norm, gate, up, swiglu, down, add
    let dense = attention + 6;
    // ffn_norm, router, sigmoid + top-k, normalise, per routed and shared expert
    // gate, up, swiglu, down, weighted sum, add
    let moe = attention + 4 + 4 * (cfg.n_experts_used + cfg.n_shared_experts) + 2;
    // embedding; output norm, LM head, argmax
    let token = 1 + cfg.n_dense_layers * dense + (cfg.n_layers - cfg.n_dense_layers) * moe + 3;
    (dense, moe, token)
}

/// The attention of one layer (attn_partial, or the cooperative attn_partial_coop where it
/// runs, then attn_combine, which also appends the token's cache row) on the full shape at a
/// given context, with an f32 and an f16 cache, repeated in one pass: time per layer and
/// GB/s of the cache (counted once), for each kernel and split the engine might choose; the
/// f32 kernel only where `lanes`. Every repeat reads the same cache, so one that fits the
/// GPU's L2 is read from there (a token's layers each read their own: `glm-flash bench`).
fn attention_kernels(ctx: &GpuContext, lanes: bool) {
    const REPEATS: usize = 20;
    let cfg = Preset::Full.config();
    let mut seed = 1u32;
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    };
    let pipes = Pipelines::new();
    let tiles = attn_partial_coop::runs(ctx, &cfg, CacheType::F16)
        && match attn_partial_coop::check_against_fma(ctx, &pipes, &cfg) {
            Ok(()) => true,
            Err(why) => {
                println!("attention: {why}; the cooperative kernel is not timed");
                false
            }
        };
    for n_ctx in [512usize, 4096, 16384, 32768] {
        for cache_type in [CacheType::F32, CacheType::F16] {
            if !lanes && cache_type == CacheType::F32 {
                continue;
            }
            let pos = n_ctx - 1;
            let b = |label: &str, data: Vec<f32>| storage_f32(ctx, label, &data);
            let mut rows = values(n_ctx * cfg.cache_row());
            rows.resize(n_ctx.next_multiple_of(POSITION_TILE) * cfg.cache_row(), 0.0);
            let cache = storage_init(ctx, "cache", &encode_rows(cache_type, &rows));
            let q_abs = b("q_abs", values(cfg.n_heads * cfg.kv_lora_rank));
            let q = b("q", values(cfg.n_heads * (cfg.qk_nope + cfg.qk_rope)));
            let kv_a = b("kv_a", values(cfg.q_lora_rank + cfg.cache_row()));
            let kv_norm = b("kv_norm", values(cfg.kv_lora_rank));
            let table = attn_partial::rope_table(pos, cfg.qk_rope, cfg.rope_base);
            let rope_cs = b("rope_cs", table.concat());
            let partial = b("partial", vec![0.0; attn_partial::partial_len(&cfg, n_ctx)]);
            let kqv = b("kqv", vec![0.0; cfg.n_heads * cfg.kv_lora_rank]);
            let q_parts = b("q_parts", vec![0.0; attn_partial_coop::q_parts_words(&cfg)]);
            let c = attn_combine::Combine {
                kqv: &kqv,
                kv_a: &kv_a,
                kv_norm: &kv_norm,
            };
            // (what, positions per split, on cooperative matrices)
            let mut plans = Vec::new();
            let variants = attn_partial::variants(&cfg);
            let heads_wg = variants[attn_partial::choose(&cfg, &variants, pos)];
            if lanes {
                let what = format!("f32, {heads_wg} heads per workgroup");
                plans.push((what, attn_partial::split_len(pos), false));
            }
            if tiles && cache_type == CacheType::F16 {
                for target in [64, 128, 256] {
                    let split = attn_partial_coop::split_len(pos, target);
                    let what = format!("{}, {target} splits at most", ctx.tiles.describe());
                    plans.push((what, split, true));
                }
            }
            for (what, split, cooperative) in &plans {
                let token = uniform(ctx, "token", &TokenParams::new(pos, *split));
                let a = attn_partial::Attention {
                    token: &token,
                    q_abs: &q_abs,
                    q: &q,
                    cache: &cache,
                    cache_type,
                    rope_cs: &rope_cs,
                    partial: &partial,
                };
                // The dispatches with their grids.
                let coop = cooperative
                    .then(|| attn_partial_coop::dispatches(ctx, &pipes, &cfg, n_ctx, &a, &q_parts));
                let lanes = (!cooperative)
                    .then(|| attn_partial::dispatch(ctx, &pipes, &cfg, n_ctx, &a, heads_wg));
                let merge = attn_combine::dispatch(ctx, &pipes, &cfg, n_ctx, &a, &c);
                let mut dispatches = match &coop {
                    Some(coop) => coop.with_grids(attn_partial_coop::grid(&cfg, pos, *split)),
                    None => Vec::new(),
                };
                if let Some(d) = &lanes {
                    dispatches.push((d, attn_partial::grid(&cfg, pos, *split, heads_wg)));
                }
                dispatches.push((&merge, merge.workgroups));
                let run = |repeats: usize| {
                    let start = std::time::Instant::now();
                    let mut enc = ctx.device.create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        for _ in 0..repeats {
                            for (d, grid) in &dispatches {
                                d.record_sized(&mut pass, *grid);
                            }
                        }
                    }
                    ctx.queue.submit([enc.finish()]);
                    ctx.wait().unwrap();
                    start.elapsed().as_secs_f64()
                };
                // Pipelines, first-use costs, and the GPU's clocks up from idle.
                let warm = std::time::Instant::now();
                while warm.elapsed().as_secs_f64() < 0.2 {
                    run(REPEATS);
                }
                let seconds = run(REPEATS) / REPEATS as f64;
                let bytes = (n_ctx * cfg.cache_row() * cache_type.bytes()) as f64;
                println!(
                    "attention @ context {n_ctx:>5}, {} cache, {what} ({} splits): {:>8.1} us per layer ({} dispatches), cache {:.1} MB at {:.1} GB/s",
                    cache_type.name(),
                    attn_partial::splits(pos, *split),
                    seconds * 1e6,
                    dispatches.len(),
                    bytes / 1e6,
                    bytes / seconds / 1e9
                );
            }
        }
    }
}

fn default_model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-full-4layers.gguf");
    if !path.exists() {
        eprintln!(
            "writing {} (synthetic, full width, 4 layers)...",
            path.display()
        );
        let opts = SynthOptions {
            preset: Preset::Full,
            layers: Some(4),
            vocab: None,
            seed: 1,
            ftype: FileType::Q8_0,
        };
        let model = SynthModel::new(&opts).unwrap();
        let partial = path.with_extension("partial");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&partial).unwrap());
        model.write(&mut out, &mut |_| {}).unwrap();
        drop(out);
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` runs it without, only to keep it building.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // Any argument but `--bench` is a model path.
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from);

    let full = Preset::Full.config();
    let (dense, moe, token) = simple_schedule(&full);
    println!(
        "== dispatches, full GLM-4.7-Flash shape ({} layers)",
        full.n_layers
    );
    println!("simple schedule (one op per dispatch): dense layer {dense}, MoE layer {moe}, token {token}");

    let path = path.unwrap_or_else(default_model);
    let file = GgufFile::open(&path).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    println!(
        "== {} ({} layers, hidden {}, vocab {})",
        path.display(),
        cfg.n_layers,
        cfg.hidden,
        cfg.vocab
    );

    // Small counts: lavapipe (CI's Vulkan) is slow; glm-flash bench measures longer runs.
    let opts = BenchOptions {
        depths: vec![32],
        decode_tokens: 8,
        prefill_tokens: vec![64],
        prefill_depths: vec![0, 32],
        warmup: 1,
        profile: true,
    };
    let need = opts.positions();
    let mut cpu = CpuBackend::new(&cfg, &weights, need.max(64), 0).unwrap();
    print!(
        "{}",
        bench::run(&mut cpu, &cfg, &weights, &opts).unwrap().table()
    );

    match GpuBackend::new(&cfg, &weights, need.max(64), &GpuOptions::default()) {
        Ok(mut gpu) => {
            println!("== GPU kernels alone, {}", gpu.context().describe());
            attention_kernels(gpu.context(), true);
            if gpu.context().tiles == TileMath::Split {
                let f16 = GpuContext::new(&GpuOptions {
                    tile_math: TileMath::F16,
                    ..Default::default()
                })
                .unwrap();
                attention_kernels(&f16, false);
            }
            let per_layer = gpu.stats().dispatches_per_layer.clone();
            let report = bench::run(&mut gpu, &cfg, &weights, &opts).unwrap();
            let moe_layer = per_layer
                .iter()
                .skip(cfg.n_dense_layers)
                .copied()
                .max()
                .unwrap_or(0);
            let dense_layer = per_layer.first().copied().unwrap_or(0);
            let head = report.decode[0]
                .token_stats
                .map_or(0, |t| t.dispatches as usize)
                - per_layer.iter().sum::<usize>();
            // Counts depend on the binding limit: a matrix above it is split into several
            // dispatches (lavapipe's 128 MiB splits the expert stacks; an H100's 2 GiB does not).
            println!(
                "fused schedule (the engine, on this device): dense layer {dense_layer}, MoE layer {moe_layer}; \
                 full shape at these counts: token {}",
                dense_layer * full.n_dense_layers + moe_layer * (full.n_layers - full.n_dense_layers) + head
            );
            print!("{}", report.table());
        }
        Err(e) => println!("no GPU: {e}"),
    }
}
