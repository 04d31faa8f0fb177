//! The GPU backend end to end, on whatever adapter wgpu finds (lavapipe in CI): against the
//! fixtures' f64 reference, against the CPU backend, greedy decoding, the weight-splitting
//! paths, and the per-token work counts. A missing adapter fails these tests.
mod common;

use common::*;
use glm_flash::backend::{Backend, Rows};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::gguf::{GgmlType, GgufFile};
use glm_flash::gpu::{GpuBackend, GpuOptions};
use glm_flash::weights::Weights;

/// Fixtures README: an engine computing in f32 reaches rel L2 <= 1e-4 on every row.
const F32_TOLERANCE: f64 = 1e-4;

/// Enough for the longest case (284 tokens); small enough that a 1 MiB binding holds the cache.
const CONTEXT: usize = 320;

/// Returns the dispatches per layer of each case's model.
fn gpu_matches_reference(opts: &GpuOptions, label: &str) -> Vec<Vec<usize>> {
    let mut per_layer = Vec::new();
    for name in CASES {
        let case = load_case(name);
        let file = GgufFile::open(&case.gguf).unwrap();
        let cfg = Config::from_gguf(&file).unwrap();
        let weights = Weights::from_gguf(&file, &cfg).unwrap();
        let mut gpu = GpuBackend::new(&cfg, &weights, CONTEXT, opts).unwrap();
        println!("{label}: {}", gpu.describe());
        let t = std::time::Instant::now();
        let got = gpu.feed_logits(&case.tokens, 0, Rows::All).unwrap();
        println!(
            "{label} {name}: {} tokens in {:.2?}",
            case.tokens.len(),
            t.elapsed()
        );
        check_against_reference(&case, &got, F32_TOLERANCE, label);

        let mut cpu = CpuBackend::new(&cfg, &weights, CONTEXT, 0).unwrap();
        let want = cpu.feed_logits(&case.tokens, 0, Rows::All).unwrap();
        let rows = rel_l2_rows(&want, &got, case.vocab);
        let max = rows.iter().cloned().fold(0f64, f64::max);
        println!(
            "{label} {name}: vs cpu rel L2 mean {:.3e} max {max:.3e}",
            rows.iter().sum::<f64>() / rows.len() as f64
        );
        assert!(
            max <= F32_TOLERANCE,
            "{label} {name}: GPU vs CPU rel L2 {max:.3e}"
        );
        per_layer.push(gpu.stats().dispatches_per_layer.clone());
    }
    per_layer
}

#[test]
fn gpu_logits_match_reference_and_cpu_on_every_case() {
    let per_layer = gpu_matches_reference(&GpuOptions::default(), "gpu");
    // Unsplit, every layer of every case runs its fixed set of dispatches: 9 in a dense
    // layer, 10 in a MoE layer (the router mat-vec on top).
    for layers in per_layer {
        assert!(layers.iter().all(|&n| n == 9 || n == 10), "{layers:?}");
    }
}

/// A 1 MiB binding limit splits the LM head, the embedding and the expert stacks into
/// several chunks (one dispatch each); the reductions use workgroup memory, not subgroups.
#[test]
fn gpu_split_bindings_and_workgroup_reductions_match_reference() {
    let opts = GpuOptions {
        max_binding_bytes: Some(1 << 20),
        no_subgroups: true,
        ..Default::default()
    };
    let per_layer = gpu_matches_reference(&opts, "gpu 1MiB bindings, no subgroups");
    // small2's LM head, dense FFN and expert stacks exceed 1 MiB: more dispatches than unsplit.
    let small2: usize = per_layer[2].iter().sum();
    assert!(
        small2 > 9 + 10,
        "small2 per layer {:?}: nothing was split",
        per_layer[2]
    );
}

#[test]
fn gpu_greedy_tokens_equal_cpu_for_32_steps() {
    let case = load_case("tiny-q8_0.short");
    let file = GgufFile::open(&case.gguf).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let mut gpu = GpuBackend::new(&cfg, &weights, 256, &GpuOptions::default()).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &weights, 256, 0).unwrap();
    let prompt = &case.tokens[..case.n_prompt];
    let mut g = gpu.feed_argmax(prompt, 0).unwrap();
    let mut c = cpu.feed_argmax(prompt, 0).unwrap();
    let mut generated = Vec::new();
    for (step, pos) in (prompt.len()..).take(32).enumerate() {
        assert_eq!(g, c, "step {step}: gpu {g} cpu {c} after {generated:?}");
        generated.push(g);
        g = gpu.feed_argmax(&[g], pos).unwrap();
        c = cpu.feed_argmax(&[c], pos).unwrap();
    }
    println!("greedy: {generated:?}");
    // Greedy decoding reads back the 4-byte id only, in one submit of one pass.
    let s = gpu.stats().last_token;
    assert_eq!((s.submits, s.compute_passes, s.bytes_read_back), (1, 1, 4));
}

/// `decode_greedy` on the GPU (each token fed from the previous argmax on the GPU, the next
/// one in flight while an id is handed over) gives the CPU's tokens; stopping early and
/// going on from the last id continues the same sequence (the extra position the GPU
/// computed is overwritten); decoding stops at the end of the context.
#[test]
fn gpu_decode_greedy_chains_on_the_gpu_and_equals_cpu() {
    let case = load_case("tiny-q8_0.short");
    let file = GgufFile::open(&case.gguf).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let prompt = &case.tokens[..case.n_prompt];
    let ctx = prompt.len() + 40;
    let mut gpu = GpuBackend::new(&cfg, &weights, ctx, &GpuOptions::default()).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &weights, ctx, 0).unwrap();
    let decode = |b: &mut dyn Backend, first: u32, pos: usize, n: usize, stop_after: usize| {
        let mut ids = Vec::new();
        b.decode_greedy(first, pos, n, &mut |id| {
            ids.push(id);
            ids.len() < stop_after
        })
        .unwrap();
        ids
    };
    let first = cpu.feed_argmax(prompt, 0).unwrap();
    assert_eq!(gpu.feed_argmax(prompt, 0).unwrap(), first);
    let pos = prompt.len();
    let want = decode(&mut cpu, first, pos, 100, usize::MAX);
    // The context ends after 40 more positions: 40 ids, the last one not fed.
    assert_eq!(want.len(), 40);
    let head = decode(&mut gpu, first, pos, 100, 13);
    assert_eq!(head, want[..13], "first 13 ids");
    assert_eq!(gpu.cache_len(), pos + 13, "the 13th id is not in the cache");
    let tail = decode(&mut gpu, head[12], pos + 13, 100, usize::MAX);
    assert_eq!(tail, want[13..], "the ids after stopping and going on");
    println!("gpu decode_greedy = cpu: {want:?}");
}

#[test]
fn gpu_work_per_token_and_binding_discipline() {
    let file = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let mut gpu = GpuBackend::new(&cfg, &weights, 64, &GpuOptions::default()).unwrap();
    gpu.feed_argmax(&[1, 2, 3], 0).unwrap();
    let stats = gpu.stats().clone();
    println!(
        "per layer: {:?}; last token: {:?}",
        stats.dispatches_per_layer, stats.last_token
    );
    for (l, &n) in stats.dispatches_per_layer.iter().enumerate() {
        assert!(n <= 10, "layer {l}: {n} dispatches");
    }
    let layers: u64 = stats.dispatches_per_layer.iter().map(|&n| n as u64).sum();
    // embedding + layers + LM head + argmax (two passes)
    assert_eq!(stats.last_token.dispatches, 1 + layers + 1 + 2);
    assert_eq!(stats.total.submits, 3);
    assert_eq!(stats.total.bytes_read_back, 4);
    // Prefill tokens skip the LM head.
    assert_eq!(stats.total.dispatches, 3 * (1 + layers) + 3);

    // Every pipeline the engine created, with and without subgroup reductions, fits the
    // smallest adapter the engine accepts (which includes Metal's 30 bindings per group).
    let registry = gpu.pipelines();
    assert!(!registry.is_empty());
    for p in &registry {
        for subgroups in [false, true] {
            let problems = common::kernel_fit::exceeds_minimum(&p.shader, subgroups);
            assert!(problems.is_empty(), "{:?}: {problems:#?}", p.constants);
        }
    }
    println!(
        "{} pipelines, all within the smallest accepted adapter: {:?}",
        registry.len(),
        glm_flash::gpu::context::MINIMUM
    );
}

#[test]
fn gpu_rewind_recomputes_like_a_fresh_run() {
    let file = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let mut gpu = GpuBackend::new(&cfg, &weights, 64, &GpuOptions::default()).unwrap();
    let first = gpu.feed_logits(&[5, 6, 7, 8], 0, Rows::Last).unwrap();
    gpu.feed_logits(&[9, 10], 4, Rows::Last).unwrap();
    let err = gpu
        .feed_logits(&[7, 8], 2, Rows::Last)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("position 2") && err.contains("holds 6"),
        "{err}"
    );
    gpu.truncate(2).unwrap();
    assert_eq!(gpu.cache_len(), 2);
    let again = gpu.feed_logits(&[7, 8], 2, Rows::Last).unwrap();
    assert_eq!(first, again);
    assert!(
        gpu.feed_logits(&[1], 64, Rows::Last).is_err(),
        "position past the context must fail"
    );
}

/// A buffer over the device's `max_buffer_size` is an `Error::Gpu` naming the tensor, the
/// bytes and the limit (checked before wgpu sees it, so no panic in its error handler).
/// The limit is forced down to 64 KiB: token_embd's 4096x256 Q8_0 quants take 1 MiB.
#[test]
fn gpu_buffer_over_the_device_limit_is_an_error_naming_the_tensor() {
    let file = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let opts = GpuOptions {
        max_buffer_bytes: Some(64 << 10),
        ..Default::default()
    };
    let err = match GpuBackend::new(&cfg, &weights, 64, &opts) {
        Ok(_) => panic!("a 1 MiB buffer was created under a 64 KiB buffer limit"),
        Err(e) => e.to_string(),
    };
    println!("{err}");
    assert!(err.starts_with("GPU: token_embd"), "{err}");
    assert!(
        err.contains("1048576 bytes") && err.contains("65536 bytes"),
        "{err}"
    );
}

/// A file with a type the GPU cannot compute with yet is refused before anything is
/// uploaded, naming the tensor, its type and the types the GPU takes (so `--backend auto`
/// falls back to the CPU with a reason).
#[test]
fn gpu_refuses_kquant_files_by_tensor_and_type() {
    let case = load_case("small2-q4_k_m.chat");
    let file = GgufFile::open(&case.gguf).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let Err(e) = GpuBackend::new(&cfg, &weights, 64, &GpuOptions::default()) else {
        panic!("the GPU accepted a Q4_K_M file");
    };
    let msg = e.to_string();
    for needle in [
        "tensor token_embd.weight has type Q4_K",
        "GPU types: F32, F16, BF16, Q8_0",
    ] {
        assert!(msg.contains(needle), "{msg:?} does not say {needle:?}");
    }
}

/// A stacked GPU matrix whose parts differ in type (here the shared expert's down projection
/// made F16 under Q8_0 routed experts) is stored as f32 by the stated policy: the logits
/// still match the CPU's on the same weights.
#[test]
fn gpu_mixed_type_stack_matches_cpu() {
    use common::model_file::ModelFile;
    let tiny = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let mut m = ModelFile::read(&tiny);
    let t = m.tensor_mut("blk.1.ffn_down_shexp.weight");
    assert_eq!(t.ty, GgmlType::Q8_0);
    let q8 = glm_flash::formats::of(GgmlType::Q8_0).unwrap();
    let mut values = vec![0f32; t.data.len() / q8.block_bytes * q8.block_values];
    q8.dequantize(&t.data, &mut values);
    t.data = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .collect();
    t.ty = GgmlType::F16;
    let file = m.parse("mixed.gguf");
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let tokens = &load_case("tiny-q8_0.short").tokens[..12];
    let mut gpu = GpuBackend::new(&cfg, &weights, 64, &GpuOptions::default()).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &weights, 64, 0).unwrap();
    let got = gpu.feed_logits(tokens, 0, Rows::All).unwrap();
    let want = cpu.feed_logits(tokens, 0, Rows::All).unwrap();
    assert!(got.iter().all(|v| v.is_finite()), "non-finite GPU logits");
    let max = rel_l2_rows(&want, &got, cfg.vocab)
        .into_iter()
        .fold(0f64, f64::max);
    assert!(
        max <= F32_TOLERANCE,
        "mixed stack: GPU vs CPU rel L2 {max:.3e}"
    );
}
