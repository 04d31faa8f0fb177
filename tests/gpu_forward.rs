//! The GPU backend end to end, on whatever adapter wgpu finds (lavapipe in CI): against the
//! fixtures' f64 reference, against the CPU backend, greedy decoding, the weight-splitting
//! paths, and the per-token work counts. A missing adapter fails these tests.
mod common;

use common::*;
use glm_flash::backend::{Backend, Rows, Want};
use glm_flash::config::Config;
use glm_flash::cpu::CpuBackend;
use glm_flash::gguf::{GgmlType, GgufFile};
use glm_flash::gpu::cache::POSITION_TILE;
use glm_flash::gpu::{GpuBackend, GpuOptions};
use glm_flash::ops_common::CacheType;
use glm_flash::weights::Weights;

/// Fixtures README: an engine computing in f32 reaches rel L2 <= 1e-4 on every row.
const F32_TOLERANCE: f64 = 1e-4;

/// Fixtures README: an f16 KV cache adds about 1e-4 (llama.cpp: max 2.13e-04); twice that.
const F16_CACHE_TOLERANCE: f64 = 5e-4;

/// The GPU and the CPU storing the same f16 cache rows: f32 arithmetic in another order
/// (the same bound as between the f32 backends), and a rare row rounded to the other
/// neighbouring f16 when the two computed its value a few ulps apart.
const F16_CACHE_GPU_VS_CPU: f64 = 1e-4;

fn f32_cache() -> GpuOptions {
    GpuOptions {
        cache_type: CacheType::F32,
        ..Default::default()
    }
}

/// Enough for the longest case (284 tokens); small enough that a 1 MiB binding holds the cache.
const CONTEXT: usize = 320;

/// Returns the dispatches per layer of each case's model. `greedy`: the reference's
/// greedy tokens are also the GPU's (the K-quant cases record them).
fn gpu_matches_reference(
    cases: &[&'static str],
    opts: &GpuOptions,
    label: &str,
    greedy: bool,
) -> Vec<Vec<usize>> {
    let mut per_layer = Vec::new();
    for &name in cases {
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
        if greedy {
            check_greedy_tokens(&case, &got, label);
        }

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
    let per_layer = gpu_matches_reference(&CASES, &f32_cache(), "gpu", false);
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
        ..f32_cache()
    };
    let per_layer = gpu_matches_reference(&CASES, &opts, "gpu 1MiB bindings, no subgroups", false);
    // small2's LM head, dense FFN and expert stacks exceed 1 MiB: more dispatches than unsplit.
    let small2: usize = per_layer[2].iter().sum();
    assert!(
        small2 > 9 + 10,
        "small2 per layer {:?}: nothing was split",
        per_layer[2]
    );
}

/// The default f16 cache: the GPU's logits equal the CPU's with the same f16 cache, and
/// stay within the fixtures' f16-cache bound of the float64 reference.
#[test]
fn gpu_f16_cache_matches_cpu_f16_cache_and_the_reference() {
    for name in CASES {
        let case = load_case(name);
        let file = GgufFile::open(&case.gguf).unwrap();
        let cfg = Config::from_gguf(&file).unwrap();
        let weights = Weights::from_gguf(&file, &cfg).unwrap();
        let mut gpu = GpuBackend::new(&cfg, &weights, CONTEXT, &GpuOptions::default()).unwrap();
        assert_eq!(gpu.cache_type(), CacheType::F16, "the GPU's default");
        let got = gpu.feed_logits(&case.tokens, 0, Rows::All).unwrap();
        check_against_reference(&case, &got, F16_CACHE_TOLERANCE, "gpu f16 cache");
        let mut cpu = CpuBackend::new(&cfg, &weights, CONTEXT, 0)
            .unwrap()
            .with_cache_type(CacheType::F16);
        let want = cpu.feed_logits(&case.tokens, 0, Rows::All).unwrap();
        let rows = rel_l2_rows(&want, &got, case.vocab);
        let max = rows.iter().cloned().fold(0f64, f64::max);
        println!("gpu f16 vs cpu f16 {name}: rel L2 max {max:.3e}");
        assert!(
            max <= F16_CACHE_GPU_VS_CPU,
            "{name}: GPU vs CPU, both f16 caches: rel L2 {max:.3e}"
        );
    }
}

#[test]
fn gpu_greedy_tokens_equal_cpu_for_32_steps() {
    let case = load_case("tiny-q8_0.short");
    let file = GgufFile::open(&case.gguf).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let mut gpu = GpuBackend::new(&cfg, &weights, 256, &GpuOptions::default()).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &weights, 256, 0)
        .unwrap()
        .with_cache_type(CacheType::F16);
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
    let mut cpu = CpuBackend::new(&cfg, &weights, ctx, 0)
        .unwrap()
        .with_cache_type(CacheType::F16);
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
    gpu.feed_argmax(&[1, 2, 3], 0).unwrap(); // one chunk of the batched schedule
    gpu.feed(&[4], 3, Want::Nothing).unwrap(); // decode steps
    gpu.feed_argmax(&[5], 4).unwrap();
    let stats = gpu.stats().clone();
    println!(
        "per layer: {:?}; last token: {:?}; last chunk: {:?}",
        stats.dispatches_per_layer, stats.last_token, stats.last_chunk
    );
    for (l, &n) in stats.dispatches_per_layer.iter().enumerate() {
        assert!(n <= 10, "layer {l}: {n} dispatches");
    }
    let layers: u64 = stats.dispatches_per_layer.iter().map(|&n| n as u64).sum();
    // embedding + layers + LM head + argmax (two passes)
    assert_eq!(stats.last_token.dispatches, 1 + layers + 1 + 2);
    let chunk = stats.last_chunk;
    assert_eq!(
        (chunk.submits, chunk.compute_passes, chunk.bytes_read_back),
        (1, 1, 4)
    );
    assert_eq!(stats.total.submits, 3);
    assert_eq!(stats.total.bytes_read_back, 8);
    // A decode step that reads nothing skips the LM head.
    assert_eq!(
        stats.total.dispatches,
        chunk.dispatches + (1 + layers) + (1 + layers + 3)
    );

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
    // Hidden states come back like logits (tests/gpu_batched.rs checks their values).
    let hidden = gpu.feed(&[9], 4, Want::Hidden(Rows::Last)).unwrap();
    assert_eq!(hidden.into_rows().len(), cfg.hidden);
    assert_eq!(gpu.cache_len(), 5);
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

/// The files llama.cpp quantizes (Q4_K_M, Q5_K_M, Q6_K, Q4_0, Q2_K: several types each,
/// stacks mixing them) on the GPU, every matrix in its own format's layout: logits within
/// the f32 bar of the reference and of the CPU, and the reference's greedy tokens.
#[test]
fn gpu_logits_match_reference_on_every_kquant_case() {
    gpu_matches_reference(&KQUANT_CASES, &f32_cache(), "gpu", true);
}

/// The same with 1 MiB bindings (chunks of one layout split further) and workgroup
/// reductions.
#[test]
fn gpu_kquant_cases_with_split_bindings_and_workgroup_reductions() {
    let opts = GpuOptions {
        max_binding_bytes: Some(1 << 20),
        no_subgroups: true,
        ..f32_cache()
    };
    gpu_matches_reference(
        &KQUANT_CASES,
        &opts,
        "gpu 1MiB bindings, no subgroups",
        true,
    );
}

/// The tiny model with each Q8_0 matrix `pick` names a type for requantized to it (from
/// its decoded values); the types it took.
fn tiny_requantized(
    pick: impl Fn(&common::model_file::Tensor) -> Option<GgmlType>,
) -> (common::model_file::ModelFile, Vec<GgmlType>) {
    let tiny = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let mut m = common::model_file::ModelFile::read(&tiny);
    let q8 = glm_flash::formats::of(GgmlType::Q8_0).unwrap();
    let mut changed = Vec::new();
    for t in m.tensors.iter_mut().filter(|t| t.ty == GgmlType::Q8_0) {
        let Some(ty) = pick(t) else { continue };
        let mut values = vec![0f32; t.data.len() / q8.block_bytes * q8.block_values];
        q8.dequantize(&t.data, &mut values);
        t.data.clear();
        glm_flash::formats::of(ty)
            .unwrap()
            .quantize(&values, &mut t.data);
        t.ty = ty;
        changed.push(ty);
    }
    (m, changed)
}

/// Every matrix of `file` whose type is in `types` keeps its own layout on the GPU (none
/// goes up as f32), and the GPU's logits (f32 cache) match the CPU's on the same weights.
fn gpu_matches_cpu_in_own_layouts(file: &GgufFile, types: &[GgmlType], label: &str) {
    let planned = glm_flash::gpu::upload::planned_forms(&file.tensors);
    for (t, form) in file.tensors.iter().zip(&planned) {
        if types.contains(&t.ggml_type) {
            assert_eq!(
                form.unwrap().0.name(),
                t.ggml_type.name(),
                "{label}: {}",
                t.name
            );
        }
    }
    let cfg = Config::from_gguf(file).unwrap();
    let weights = Weights::from_gguf(file, &cfg).unwrap();
    let tokens = &load_case("tiny-q8_0.short").tokens[..12];
    let mut gpu = GpuBackend::new(&cfg, &weights, 64, &f32_cache()).unwrap();
    let mut cpu = CpuBackend::new(&cfg, &weights, 64, 0).unwrap();
    let got = gpu.feed_logits(tokens, 0, Rows::All).unwrap();
    let want = cpu.feed_logits(tokens, 0, Rows::All).unwrap();
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{label}: non-finite GPU logits"
    );
    let max = rel_l2_rows(&want, &got, cfg.vocab)
        .into_iter()
        .fold(0f64, f64::max);
    println!("{label}: GPU vs CPU max rel L2 per row {max:.3e}");
    assert!(max <= F32_TOLERANCE, "{label}: GPU vs CPU rel L2 {max:.3e}");
}

/// The tiny model with its matrices requantized to IQ4_XS, IQ4_NL and MXFP4 as the
/// IQ4_XS and MXFP4_MOE files mix them (MXFP4 routed experts beside Q8_0 shared ones, IQ4_XS
/// attention and embedding, an IQ4_NL LM head and dense FFN): every matrix stays in its own
/// format's layout on the GPU (none as f32), and the logits match the CPU's on the same
/// weights.
#[test]
fn gpu_iq4_and_mxfp4_model_matches_cpu() {
    let (m, changed) = tiny_requantized(|t| {
        let n = &t.name;
        if n.contains("_exps") {
            Some(GgmlType::MXFP4)
        } else if n == "output.weight" || n.contains("ffn_gate.") || n.contains("ffn_up.") {
            Some(GgmlType::IQ4_NL)
        } else if t.dims[0] % 256 == 0 && !n.contains("shexp") {
            Some(GgmlType::IQ4_XS)
        } else {
            None
        }
    });
    let types = [GgmlType::MXFP4, GgmlType::IQ4_NL, GgmlType::IQ4_XS];
    for ty in types {
        assert!(changed.contains(&ty), "no tensor became {ty}");
    }
    gpu_matches_cpu_in_own_layouts(&m.parse("iq4_mxfp4.gguf"), &types, "IQ4/MXFP4");
}

/// The tiny model as an F16 file and as a BF16 file (every matrix in that type, as
/// llama-quantize writes them): the GPU keeps the 16-bit values as they are (half the bytes
/// of f32) and computes the CPU's logits.
#[test]
fn gpu_f16_and_bf16_models_match_cpu() {
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let (m, changed) = tiny_requantized(|_| Some(ty));
        assert!(changed.len() > 20, "{ty}: {} matrices", changed.len());
        gpu_matches_cpu_in_own_layouts(&m.parse("16-bit.gguf"), &[ty], &ty.name());
    }
}

/// A stacked GPU matrix whose parts differ in type (here the shared expert's down projection
/// made F16 under Q8_0 routed experts) is split by format (a Q8_0 chunk, then an F16 one):
/// the logits still match the CPU's on the same weights.
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
    let mut gpu = GpuBackend::new(&cfg, &weights, 64, &f32_cache()).unwrap();
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

/// A context whose cache does not fit one binding is refused before anything is
/// allocated, naming the largest that fits; f16 halves the bytes, so twice the positions
/// fit. tiny's row is 96 values: 192 bytes in f16, 384 in f32; the limit is forced to 64 KiB;
/// the cache holds whole tiles of POSITION_TILE positions.
#[test]
fn gpu_context_too_large_for_the_cache_is_refused_naming_what_fits() {
    let file = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let limit = 64 << 10;
    let whole_tiles = |rows: usize| rows / POSITION_TILE * POSITION_TILE;
    for (cache_type, fits) in [
        (CacheType::F32, whole_tiles(limit / 384)),
        (CacheType::F16, whole_tiles(limit / 192)),
    ] {
        let opts = GpuOptions {
            max_binding_bytes: Some(limit as u64),
            cache_type,
            ..Default::default()
        };
        let err = match GpuBackend::new(&cfg, &weights, fits + 1, &opts) {
            Ok(_) => panic!("{} positions fitted a {limit}-byte binding", fits + 1),
            Err(e) => e.to_string(),
        };
        println!("{err}");
        assert!(
            err.contains(&format!("at most {fits} positions fit")),
            "{err}"
        );
        assert!(err.contains(&format!("--ctx {fits}")), "{err}");
        let gpu = GpuBackend::new(&cfg, &weights, fits, &opts).unwrap();
        assert!(gpu
            .describe()
            .contains(&format!("{} latent cache", cache_type.name())));
    }
}

/// The benchmark's cache fill: both backends, filled with the same synthetic rows (a block
/// of 7 rows repeated over 300 positions), give the same next-token logits; an f16 fill
/// stores the rows as the f16 cache does. A block that is not whole rows, or more positions
/// than the context, is an error.
#[test]
fn bench_cache_fill_gives_the_same_logits_on_both_backends() {
    let file = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let block: Vec<f32> = (0..7 * cfg.cache_row())
        .map(|i| ((i * 7919) % 2003) as f32 / 1001.0 - 1.0)
        .collect();
    let (depth, ctx) = (300, 320);
    for cache_type in [CacheType::F32, CacheType::F16] {
        let opts = GpuOptions {
            cache_type,
            ..Default::default()
        };
        let mut gpu = GpuBackend::new(&cfg, &weights, ctx, &opts).unwrap();
        let mut cpu = CpuBackend::new(&cfg, &weights, ctx, 0)
            .unwrap()
            .with_cache_type(cache_type);
        gpu.fill_cache_for_bench(&block, depth).unwrap();
        cpu.fill_cache_for_bench(&block, depth).unwrap();
        let got = gpu.feed_logits(&[17], depth, Rows::Last).unwrap();
        let want = cpu.feed_logits(&[17], depth, Rows::Last).unwrap();
        let rel = rel_l2_rows(&want, &got, cfg.vocab)[0];
        println!(
            "{} cache filled to {depth}: gpu vs cpu rel L2 {rel:.3e}",
            cache_type.name()
        );
        assert!(
            rel <= F32_TOLERANCE,
            "{}: rel L2 {rel:.3e}",
            cache_type.name()
        );
        // The filled rows matter: a different fill gives different logits.
        cpu.fill_cache_for_bench(&block[cfg.cache_row()..], depth)
            .unwrap();
        let other = cpu.feed_logits(&[17], depth, Rows::Last).unwrap();
        assert!(rel_l2_rows(&want, &other, cfg.vocab)[0] > 1e-3);
        for b in [&mut gpu as &mut dyn Backend, &mut cpu] {
            assert!(b.fill_cache_for_bench(&block[1..], depth).is_err());
            assert!(b.fill_cache_for_bench(&block, ctx + 1).is_err());
        }
    }
}
