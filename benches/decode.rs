//! `cargo bench`: dispatch counts of the simple and the fused schedule for the full
//! GLM-4.7-Flash shape, then decode and prefill on the CPU and the GPU side by side, with the
//! GPU time and GB/s of every kernel role.
//!
//!     cargo bench --bench decode              # synthetic full-width model, 4 layers
//!     cargo bench --bench decode -- FILE.gguf # any model
//!
//! The default model is written once to target/bench-full-4layers.gguf (about 2.6 GB).

use std::path::PathBuf;

use glm_flash::bench::{self, BenchOptions};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::gguf::GgufFile;
use glm_flash::gpu::{GpuBackend, GpuOptions};
use glm_flash::synth::{Preset, SynthModel, SynthOptions};
use glm_flash::weights::Weights;

/// Dispatches of one token if every op of DESIGN.md's step list were its own dispatch.
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
    // `cargo bench` passes `--bench`; any other argument is a model path.
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
        prefill_tokens: 16,
        warmup: 1,
        profile: true,
    };
    let need = 32 + 8 + 1 + 1;
    let mut cpu = CpuBackend::new(&cfg, &weights, need.max(64), 0).unwrap();
    print!(
        "{}",
        bench::run(&mut cpu, &cfg, &weights, &opts).unwrap().table()
    );

    match GpuBackend::new(&cfg, &weights, need.max(64), &GpuOptions::default()) {
        Ok(mut gpu) => {
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
