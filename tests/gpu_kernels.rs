//! Kernel parity: every GPU kernel against its CPU op on random inputs, on whatever adapter
//! wgpu finds (a missing adapter fails). Outputs are poisoned with NaN before each kernel so
//! an element the kernel fails to write fails the comparison.
//!
//! Tolerance: max |gpu - cpu| <= TOL * max |cpu| (floor 1e-3): f32 sums in another order.
mod common;

use common::fixture;
use common::parity::{check_within, gpu_types, random_rows, Rng};
use glm_flash::config::Config;
use glm_flash::cpu::ops;
use glm_flash::formats;
use glm_flash::gguf::{GgmlType, GgufFile};
use glm_flash::gpu::cache::{decode_rows, encode_rows};
use glm_flash::gpu::kernels::{
    argmax, attn_combine, attn_partial, embed, ffn_down, ffn_gate_up, matvec, TokenParams,
};
use glm_flash::gpu::pipelines::{run, Pipelines};
use glm_flash::gpu::upload::{storage_f32, storage_init, uniform, GpuMatrix, RowRef, Uploader};
use glm_flash::gpu::{GpuContext, GpuOptions};
use glm_flash::ops_common::{argmax as cpu_argmax, CacheType};
use glm_flash::weights::Matrix;

const TOL: f32 = 2e-5;

fn check(label: &str, got: &[f32], want: &[f32]) {
    check_within(label, got, want, TOL);
}

fn ctx(max_binding: Option<u64>, no_subgroups: bool) -> GpuContext {
    GpuContext::new(&GpuOptions {
        max_binding_bytes: max_binding,
        no_subgroups,
        ..Default::default()
    })
    .expect("a GPU adapter is required for these tests")
}

/// Both reduction variants (where the device has subgroups), each with a small binding
/// limit so that matrices split into several chunks.
fn contexts() -> Vec<(String, GpuContext)> {
    let mut v = vec![(
        "workgroup reductions".to_string(),
        ctx(Some(16 << 10), true),
    )];
    let c = ctx(Some(16 << 10), false);
    if c.subgroups {
        v.push(("subgroup reductions".to_string(), c));
    }
    v
}

fn q8_matrix(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
    quantized(rng, GgmlType::Q8_0, rows, cols)
}

/// Random values in [-1, 1) quantized to `ty`.
fn quantized(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    formats::of(ty)
        .unwrap()
        .quantize(&rng.vec(rows * cols), &mut bytes);
    bytes
}

fn poison(ctx: &GpuContext, n: usize) -> wgpu::Buffer {
    storage_f32(ctx, "poisoned output", &vec![f32::NAN; n])
}

/// On Vulkan the cooperative kernels reach the driver as SPIR-V the engine writes
/// (`coherent_spirv`, through wgpu's passthrough), their overrides set in the module and
/// their pipelines laid out by the engine: a small kernel with an override and workgroup
/// memory, made that way, gives the CPU's result on this adapter. (The cooperative kernels
/// themselves run this way only where the adapter has cooperative matrices; their parity
/// tests are in gpu_batched.rs.)
#[test]
fn kernels_written_as_spirv_run_with_their_overrides() {
    use glm_flash::gpu::pipelines::{coherent_spirv, naga_constants, passthrough_module, Kernel};
    use glm_flash::gpu::shader::{Override, Shader, Slot, WeightAccess};
    let ctx = ctx(None, true);
    if !ctx.features.contains(wgpu::Features::PASSTHROUGH_SHADERS) {
        eprintln!(
            "skipped: {} takes no SPIR-V passthrough (not Vulkan)",
            ctx.describe()
        );
        return;
    }
    const SHIFT: Override<u32> = Override::new("SHIFT");
    const REVERSE: Shader = Shader {
        name: "reverse",
        source: "override SHIFT: u32;
@group(0) @binding(0) var<storage, read> input: array<f32>;
@group(0) @binding(1) var<storage, read_write> output: array<f32>;
var<workgroup> tile: array<f32, 64>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    tile[lid] = input[wg.x * 64u + lid];
    workgroupBarrier();
    output[wg.x * 64u + lid] = tile[63u - lid] + f32(SHIFT);
}
",
        bindings: &[Slot::Read, Slot::ReadWrite],
        overrides: &[SHIFT.decl()],
        consts: &[],
        structs: &[],
        reduces: false,
        lanes: false,
        weights: WeightAccess::None,
        libraries: &[],
        cooperative: false,
    };
    let shift = 1000;
    let spirv = coherent_spirv(REVERSE.source, &naga_constants(&[SHIFT.set(shift)])).unwrap();
    assert_eq!(spirv.workgroup_size, [64, 1, 1]);
    let module = passthrough_module(&ctx.device, REVERSE.name, &spirv);
    let kernel = Kernel::new(&ctx, REVERSE, &module, &[]);
    let n = 64 * 5;
    let input: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let (inb, outb) = (storage_f32(&ctx, "input", &input), poison(&ctx, n));
    run(
        &ctx,
        &[kernel.dispatch(&ctx, &[&inb, &outb], [(n / 64) as u32, 1, 1])],
    )
    .unwrap();
    let got = ctx.read_f32(&outb, n).unwrap();
    ctx.check().unwrap();
    let want: Vec<f32> = (0..n)
        .map(|i| input[(i / 64) * 64 + 63 - i % 64] + shift as f32)
        .collect();
    assert_eq!(got, want);
}

fn tiny_config() -> Config {
    Config::from_gguf(&GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap()).unwrap()
}

/// The LM head's shape class: enough rows that each workgroup takes 16 of them (the row
/// count is not a multiple of 16, so the last workgroup is partial), with the norm prologue.
#[test]
fn matvec_with_many_rows_per_workgroup_matches_cpu() {
    let mut rng = Rng(7);
    let (rows, cols) = (32768 + 13, 64);
    let q8 = q8_matrix(&mut rng, rows, cols);
    let m = Matrix {
        name: "test matrix",
        ty: GgmlType::Q8_0,
        rows,
        cols,
        data: &q8,
    };
    let x = rng.vec(cols);
    let norm_w = rng.vec(cols);
    for reductions_in_workgroup_memory in [true, false] {
        let ctx = ctx(None, reductions_in_workgroup_memory);
        let p = Pipelines::new();
        let gm = GpuMatrix::from_matrix(&ctx, "m", &m, &mut Uploader::new(0, None)).unwrap();
        let (xb, nb) = (
            storage_f32(&ctx, "x", &x),
            storage_f32(&ctx, "norm", &norm_w),
        );
        let out = poison(&ctx, rows);
        let spec = matvec::Matvec {
            input: &xb,
            in_offset: 0,
            groups: None,
            norm: Some((&nb, 1e-5)),
            out: &out,
            accumulate: false,
        };
        let d = matvec::dispatches(&ctx, &p, &gm, &spec);
        run(&ctx, &d).unwrap();
        let mut normed = vec![0f32; cols];
        ops::rmsnorm(&x, &norm_w, 1e-5, &mut normed);
        let want: Vec<f32> = (0..rows).map(|r| m.dot_row(r, &normed)).collect();
        check(
            &format!("matvec {rows} rows, workgroup reductions {reductions_in_workgroup_memory}"),
            &ctx.read_f32(&out, rows).unwrap(),
            &want,
        );
    }
}

#[test]
fn matvec_matches_cpu_in_every_variant() {
    let mut rng = Rng(1);
    // Rows shorter than the workgroup (lane groups sized to them) and longer.
    for cols in [192, 768] {
        matvec_variants(&mut rng, 300, cols);
    }
}

/// Plain from an offset, with the norm prologue and residual epilogue, per-head groups.
fn matvec_variants(rng: &mut Rng, rows: usize, cols: usize) {
    let q8 = q8_matrix(rng, rows, cols);
    let f32s: Vec<f32> = rng.vec(rows * cols);
    let f32_bytes: Vec<u8> = bytemuck::cast_slice(&f32s).to_vec();
    let mats = [
        Matrix {
            name: "test matrix",
            ty: GgmlType::Q8_0,
            rows,
            cols,
            data: &q8,
        },
        Matrix {
            name: "test matrix",
            ty: GgmlType::F32,
            rows,
            cols,
            data: &f32_bytes,
        },
    ];
    let x = rng.vec(2 * cols + 64);
    let norm_w = rng.vec(cols);
    let base = rng.vec(rows);
    for (label, ctx) in contexts() {
        let p = Pipelines::new();
        for m in &mats {
            let gm = GpuMatrix::from_matrix(&ctx, "m", m, &mut Uploader::new(0, None)).unwrap();
            assert!(
                gm.chunks.len() > 1,
                "the small binding limit must split the matrix"
            );
            let xb = storage_f32(&ctx, "x", &x);
            let nb = storage_f32(&ctx, "norm", &norm_w);
            // plain, from an offset
            let out = poison(&ctx, rows);
            let spec = matvec::Matvec {
                input: &xb,
                in_offset: 64,
                groups: None,
                norm: None,
                out: &out,
                accumulate: false,
            };
            let d = matvec::dispatches(&ctx, &p, &gm, &spec);
            run(&ctx, &d).unwrap();
            let want: Vec<f32> = (0..rows).map(|r| m.dot_row(r, &x[64..64 + cols])).collect();
            check(
                &format!("matvec {} x {cols} {label}", m.ty),
                &ctx.read_f32(&out, rows).unwrap(),
                &want,
            );

            // RMSNorm prologue and residual epilogue
            let out = storage_f32(&ctx, "out", &base);
            let spec = matvec::Matvec {
                input: &xb,
                in_offset: 0,
                groups: None,
                norm: Some((&nb, 1e-5)),
                out: &out,
                accumulate: true,
            };
            let d = matvec::dispatches(&ctx, &p, &gm, &spec);
            run(&ctx, &d).unwrap();
            let mut h = vec![0f32; cols];
            ops::rmsnorm(&x[..cols], &norm_w, 1e-5, &mut h);
            let want: Vec<f32> = (0..rows).map(|r| base[r] + m.dot_row(r, &h)).collect();
            check(
                &format!("matvec norm+add {} x {cols} {label}", m.ty),
                &ctx.read_f32(&out, rows).unwrap(),
                &want,
            );

            // per-head batching: groups of 100 rows read inputs 128 apart
            let out = poison(&ctx, rows);
            let spec = matvec::Matvec {
                input: &xb,
                in_offset: 0,
                groups: Some((100, 128)),
                norm: None,
                out: &out,
                accumulate: false,
            };
            let d = matvec::dispatches(&ctx, &p, &gm, &spec);
            run(&ctx, &d).unwrap();
            let want: Vec<f32> = (0..rows)
                .map(|r| m.dot_row(r, &x[(r / 100) * 128..][..cols]))
                .collect();
            check(
                &format!("matvec batched {} x {cols} {label}", m.ty),
                &ctx.read_f32(&out, rows).unwrap(),
                &want,
            );
        }
    }
}

#[test]
fn embed_matches_dequantize_row() {
    let mut rng = Rng(2);
    let (rows, cols) = (200, 128);
    let q8 = q8_matrix(&mut rng, rows, cols);
    let m = Matrix {
        name: "test matrix",
        ty: GgmlType::Q8_0,
        rows,
        cols,
        data: &q8,
    };
    let ctx = ctx(Some(4 << 10), false);
    let p = Pipelines::new();
    let gm = GpuMatrix::from_matrix(&ctx, "embd", &m, &mut Uploader::new(0, None)).unwrap();
    assert!(
        gm.chunks.len() > 1,
        "the table should be split at 4 KiB bindings"
    );
    for token in [0usize, 77, 199] {
        // Every chunk's dispatch runs; only the one holding the row writes x.
        let id = storage_init(&ctx, "token_id", &(token as u32).to_le_bytes());
        let x = poison(&ctx, cols);
        let d = embed::dispatches(&ctx, &p, &gm, &id, &x);
        run(&ctx, &d).unwrap();
        let mut want = vec![0f32; cols];
        m.dequantize_row(token, &mut want);
        check(
            &format!("embed token {token}"),
            &ctx.read_f32(&x, cols).unwrap(),
            &want,
        );
    }
}

/// Attention (attn_partial over the cached positions, attn_combine appending the token's
/// row and merging) against the CPU: the token's cache row (RMSNorm of kv_cmpr, RoPE on
/// k_pe) written at pos, RoPE on q_pe, and the per-head softmax over positions 0..=pos, with
/// an f32 and an f16 cache, in every variant of the kernel (heads per workgroup). Real
/// per-head dims (kv 512, rope 64), 6 heads, from 1 position to 17000, across tile and
/// split boundaries (tiles of 64; splits of one tile up to 16384 cached positions, of two
/// beyond).
#[test]
fn attention_matches_cpu_up_to_long_contexts() {
    let mut cfg = tiny_config();
    (cfg.n_heads, cfg.kv_lora_rank, cfg.qk_rope, cfg.qk_nope) = (6, 512, 64, 192);
    let (heads, kv, rope, nope, q_lora) = (
        cfg.n_heads,
        cfg.kv_lora_rank,
        cfg.qk_rope,
        cfg.qk_nope,
        cfg.q_lora_rank,
    );
    let (row, head_dim) = (kv + rope, nope + rope);
    let max_context = 17000;
    let mut rng = Rng(4);
    let cache_init = rng.vec(max_context * row);
    let q_abs = rng.vec(heads * kv);
    let q: Vec<f32> = rng.vec(heads * head_dim).iter().map(|v| 4.0 * v).collect();
    let kv_a = rng.vec(q_lora + row);
    let kv_norm = rng.vec(kv);
    let variants = attn_partial::variants(&cfg);
    assert_eq!(variants, [6, 3, 2], "all heads, half, a fifth");
    let devices = contexts()
        .into_iter()
        .take(1)
        .chain([("device defaults".to_string(), self::ctx(None, false))]);
    for (label, ctx) in devices {
        let p = Pipelines::new();
        let (q_abs_b, q_b, kv_a_b, kv_norm_b) = (
            storage_f32(&ctx, "q_abs", &q_abs),
            storage_f32(&ctx, "q", &q),
            storage_f32(&ctx, "kv_a", &kv_a),
            storage_f32(&ctx, "kv_norm", &kv_norm),
        );
        for cache_type in [CacheType::F32, CacheType::F16] {
            let init_bytes = encode_rows(cache_type, &cache_init);
            for n_ctx in [1usize, 2, 15, 64, 65, 129, 300, 1025, 16385, 17000] {
                let pos = n_ctx - 1;
                let bytes = n_ctx * row * cache_type.bytes();
                // The CPU's row for pos, stored as the cache stores it.
                let mut new = vec![0f32; row];
                ops::rmsnorm(
                    &kv_a[q_lora..q_lora + kv],
                    &kv_norm,
                    cfg.rms_eps,
                    &mut new[..kv],
                );
                new[kv..].copy_from_slice(&kv_a[q_lora + kv..]);
                ops::rope(&mut new[kv..], pos, cfg.rope_base);
                cache_type.round(&mut new);
                for (v, &heads_wg) in variants.iter().enumerate() {
                    // Each variant runs at the longest and two short contexts (each case
                    // takes seconds on lavapipe); the widest at every context.
                    if v > 0 && ![1, 65, 17000].contains(&n_ctx) {
                        continue;
                    }
                    let label = format!(
                        "{label}, {} cache, {heads_wg} heads per workgroup",
                        cache_type.name()
                    );
                    let cache_b = storage_init(&ctx, "cache", &init_bytes[..bytes]);
                    let partial = poison(&ctx, attn_partial::partial_len(&cfg, max_context));
                    let kqv = poison(&ctx, heads * kv);
                    let split = attn_partial::split_len(pos);
                    let tok = uniform(&ctx, "token", &TokenParams::new(pos, split));
                    let table = attn_partial::rope_table(pos, rope, cfg.rope_base);
                    let cs = storage_init(&ctx, "rope", bytemuck::cast_slice(&table));
                    let a = attn_partial::Attention {
                        token: &tok,
                        q_abs: &q_abs_b,
                        q: &q_b,
                        cache: &cache_b,
                        cache_type,
                        rope_cs: &cs,
                        partial: &partial,
                    };
                    let c = attn_combine::Combine {
                        kqv: &kqv,
                        kv_a: &kv_a_b,
                        kv_norm: &kv_norm_b,
                    };
                    let dp = attn_partial::dispatch(&ctx, &p, &cfg, max_context, &a, heads_wg);
                    let dc = attn_combine::dispatch(&ctx, &p, &cfg, max_context, &a, &c);
                    let mut enc = ctx.device.create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        dp.record_sized(&mut pass, attn_partial::grid(&cfg, pos, split, heads_wg));
                        dc.record(&mut pass);
                    }
                    ctx.queue.submit([enc.finish()]);

                    let got_bytes = ctx.read_bytes(&cache_b, bytes as u64).unwrap();
                    let cache = decode_rows(cache_type, &got_bytes);
                    // Computed in another order, a value may round to the other neighbouring f16.
                    let row_tol = match cache_type {
                        CacheType::F16 => 2f32.powi(-10),
                        CacheType::F32 => TOL,
                    };
                    let row_label = format!("cache row {pos} {label}");
                    check_within(&row_label, &cache[pos * row..], &new, row_tol);
                    assert_eq!(
                        got_bytes[..pos * row * cache_type.bytes()],
                        init_bytes[..pos * row * cache_type.bytes()],
                        "{label}: earlier rows untouched"
                    );

                    // Attention over the rows the cache holds (the GPU's row pos, checked above).
                    let mut want = vec![0f32; heads * kv];
                    for h in 0..heads {
                        let qa = &q_abs[h * kv..(h + 1) * kv];
                        let mut qpe = q[h * head_dim + nope..(h + 1) * head_dim].to_vec();
                        ops::rope(&mut qpe, pos, cfg.rope_base);
                        let mut kq: Vec<f32> = cache
                            .chunks_exact(row)
                            .map(|t| {
                                (ops::dot(qa, &t[..kv]) + ops::dot(&qpe, &t[kv..]))
                                    * cfg.attn_scale()
                            })
                            .collect();
                        ops::softmax(&mut kq);
                        for (pr, t) in kq.iter().zip(cache.chunks_exact(row)) {
                            for (o, l) in want[h * kv..(h + 1) * kv].iter_mut().zip(&t[..kv]) {
                                *o += pr * l;
                            }
                        }
                    }
                    check(
                        &format!("attention n_ctx {n_ctx} {label}"),
                        &ctx.read_f32(&kqv, heads * kv).unwrap(),
                        &want,
                    );
                }
            }
        }
    }
}

/// MoE layers choose their experts inside ffn_gate_up: the route it writes (ids and
/// weights, shared experts after the routed ones) equals `ops::route`, ties included, and the
/// activations are those of the chosen experts.
#[test]
fn routed_gate_up_matches_cpu_route_including_ties() {
    let ctx = ctx(None, false);
    let p = Pipelines::new();
    let mut rng = Rng(5);
    let (ffn, hidden) = (32, 64);
    for (experts, k, shared, norm) in [
        (16, 4, 1, true),
        (64, 4, 1, true),
        (8, 2, 0, false),
        (64, 8, 2, true),
    ] {
        let stack_rows = (experts + shared) * ffn;
        let gate = q8_matrix(&mut rng, stack_rows, hidden);
        let upm = q8_matrix(&mut rng, stack_rows, hidden);
        let m = |data| Matrix {
            name: "test matrix",
            ty: GgmlType::Q8_0,
            rows: stack_rows,
            cols: hidden,
            data,
        };
        let (gate, upm) = (m(&gate), m(&upm));
        let gate_up = GpuMatrix::build(
            &ctx,
            "gate_up",
            2 * stack_rows,
            hidden,
            2,
            &mut Uploader::new(0, None),
            |r| RowRef {
                m: if r % 2 == 0 { gate } else { upm },
                row: (r / (2 * ffn)) * ffn + (r % (2 * ffn)) / 2,
                col_start: 0,
            },
        )
        .unwrap();
        let (x, norm_w) = (rng.vec(hidden), rng.vec(hidden));
        let mut h = vec![0f32; hidden];
        ops::rmsnorm(&x, &norm_w, 1e-5, &mut h);
        for trial in 0..4 {
            let mut logits = rng.vec(experts);
            let mut bias: Vec<f32> = rng.vec(experts).iter().map(|v| 0.1 * v).collect();
            if trial % 2 == 1 {
                // exact ties in the selection score: equal logits and biases
                for e in (0..experts).step_by(3) {
                    logits[e] = 0.25;
                    bias[e] = 0.0;
                }
            }
            let slots = k + shared;
            let route = storage_init(&ctx, "route", &vec![0xffu8; 8 * slots]);
            let act = poison(&ctx, slots * ffn);
            let (logits_b, bias_b) = (
                storage_f32(&ctx, "l", &logits),
                storage_f32(&ctx, "b", &bias),
            );
            let choice = ffn_gate_up::Route::Router {
                logits: &logits_b,
                bias: &bias_b,
                experts,
                k,
                norm,
                scale: 1.8,
            };
            let (xb, nb) = (storage_f32(&ctx, "x", &x), storage_f32(&ctx, "n", &norm_w));
            let d = ffn_gate_up::dispatches(
                &ctx, &p, &gate_up, ffn, slots, &xb, &nb, 1e-5, &choice, &route, &act,
            );
            run(&ctx, &d).unwrap();
            let got: Vec<u32> =
                bytemuck::pod_collect_to_vec(&ctx.read_bytes(&route, 8 * slots as u64).unwrap());
            let want = ops::route(&logits, &bias, k, norm, 1.8);
            let label = format!("experts {experts} k {k} trial {trial}");
            let mut ids: Vec<usize> = want.iter().map(|w| w.0).collect();
            ids.extend(experts..experts + shared);
            assert_eq!(
                got[..slots].iter().map(|&i| i as usize).collect::<Vec<_>>(),
                ids,
                "{label}"
            );
            let mut weights: Vec<f32> = want.iter().map(|w| w.1).collect();
            weights.extend(std::iter::repeat_n(1.0, shared));
            let got_weights: Vec<f32> = got[slots..].iter().map(|&b| f32::from_bits(b)).collect();
            check(&format!("route weights {label}"), &got_weights, &weights);
            let mut want_act = Vec::new();
            for &e in &ids {
                let mut g: Vec<f32> = (0..ffn).map(|i| gate.dot_row(e * ffn + i, &h)).collect();
                let u: Vec<f32> = (0..ffn).map(|i| upm.dot_row(e * ffn + i, &h)).collect();
                ops::swiglu(&mut g, &u);
                want_act.extend(g);
            }
            check(
                &format!("routed ffn_gate_up {label}"),
                &ctx.read_f32(&act, want_act.len()).unwrap(),
                &want_act,
            );
        }
    }
}

/// The expert FFN (ffn_gate_up, then ffn_down on a fixed route of three experts) against the
/// CPU, over stacks built as the resident model builds them: expert e's gate and up rows
/// interleaved, then the down rows, each expert from its own `[gate, up, down]` matrices (so
/// the stacks may mix formats, as routed experts and a shared one do). Returns the layouts of
/// the gate/up and the down stack's chunks.
fn check_expert_ffn(
    label: &str,
    ctx: &GpuContext,
    experts: &[[Matrix; 3]],
    rng: &mut Rng,
) -> [Vec<&'static str>; 2] {
    let (ffn, hidden) = (experts[0][0].rows, experts[0][0].cols);
    let n = experts.len();
    let ids = [n as u32 - 2, 1, n as u32 - 1];
    let weights = [0.7f32, -0.4, 1.0];
    let mut route: Vec<u32> = ids.to_vec();
    route.extend(weights.iter().map(|w| w.to_bits()));
    let x = rng.vec(hidden);
    let norm_w = rng.vec(hidden);
    let p = Pipelines::new();
    let mut up = Uploader::new(0, None);
    let gate_up = GpuMatrix::build(ctx, "gate_up", n * 2 * ffn, hidden, 2, &mut up, |r| {
        RowRef {
            m: experts[r / (2 * ffn)][r % 2],
            row: (r % (2 * ffn)) / 2,
            col_start: 0,
        }
    })
    .unwrap();
    let down_g = GpuMatrix::build(ctx, "down", n * hidden, ffn, 1, &mut up, |r| RowRef {
        m: experts[r / hidden][2],
        row: r % hidden,
        col_start: 0,
    })
    .unwrap();
    let (xb, nb, rb) = (
        storage_f32(ctx, "x", &x),
        storage_f32(ctx, "n", &norm_w),
        storage_init(ctx, "route", bytemuck::cast_slice(&route)),
    );
    let act = poison(ctx, ids.len() * ffn);
    let d = ffn_gate_up::dispatches(
        ctx,
        &p,
        &gate_up,
        ffn,
        ids.len(),
        &xb,
        &nb,
        1e-5,
        &ffn_gate_up::Route::Fixed,
        &rb,
        &act,
    );
    run(ctx, &d).unwrap();
    let mut h = vec![0f32; hidden];
    ops::rmsnorm(&x, &norm_w, 1e-5, &mut h);
    let mut want_act = Vec::new();
    for &e in &ids {
        let [gate, upm, _] = experts[e as usize];
        let mut g: Vec<f32> = (0..ffn).map(|i| gate.dot_row(i, &h)).collect();
        let u: Vec<f32> = (0..ffn).map(|i| upm.dot_row(i, &h)).collect();
        ops::swiglu(&mut g, &u);
        want_act.extend(g);
    }
    check(
        &format!("ffn_gate_up {label}"),
        &ctx.read_f32(&act, want_act.len()).unwrap(),
        &want_act,
    );

    let d = ffn_down::dispatches(ctx, &p, &down_g, hidden, ids.len(), &act, &rb, &xb);
    run(ctx, &d).unwrap();
    let mut want_x = x.clone();
    for (s, &e) in ids.iter().enumerate() {
        let down = experts[e as usize][2];
        for (r, o) in want_x.iter_mut().enumerate() {
            *o += weights[s] * down.dot_row(r, &want_act[s * ffn..(s + 1) * ffn]);
        }
    }
    check(
        &format!("ffn_down {label}"),
        &ctx.read_f32(&xb, hidden).unwrap(),
        &want_x,
    );
    [&gate_up, &down_g].map(|m| m.chunks.iter().map(|c| c.format.name()).collect())
}

#[test]
fn expert_ffn_matches_cpu() {
    let mut rng = Rng(6);
    let (experts, ffn, hidden) = (6, 64, 128);
    let gate = q8_matrix(&mut rng, experts * ffn, hidden);
    let upm = q8_matrix(&mut rng, experts * ffn, hidden);
    let down = q8_matrix(&mut rng, experts * hidden, ffn);
    let m = |data, rows, cols| Matrix {
        name: "test matrix",
        ty: GgmlType::Q8_0,
        rows,
        cols,
        data,
    };
    let (gate, upm, down) = (
        m(&gate, experts * ffn, hidden),
        m(&upm, experts * ffn, hidden),
        m(&down, experts * hidden, ffn),
    );
    let stacks: Vec<[Matrix; 3]> = (0..experts)
        .map(|e| {
            [
                gate.rows(e * ffn, ffn),
                upm.rows(e * ffn, ffn),
                down.rows(e * hidden, hidden),
            ]
        })
        .collect();
    for (label, ctx) in contexts() {
        let [gate_up, down] = check_expert_ffn(&label, &ctx, &stacks, &mut rng);
        assert!(gate_up.len() > 1 && down.len() > 1);
    }
}

/// Routed experts in IQ4_XS, MXFP4 or IQ4_NL with a shared expert of another format (as the
/// IQ4_XS and MXFP4_MOE files mix them): the stacks split by format at the expert boundary,
/// none goes up as f32, and the expert FFN matches the CPU.
#[test]
fn expert_ffn_in_the_iq4_and_mxfp4_layouts_with_a_shared_expert_of_another() {
    let mut rng = Rng(13);
    let (routed, ffn, hidden) = (3, 256, 256);
    for (ty, shared_ty) in [
        (GgmlType::IQ4_XS, GgmlType::Q4_K),
        (GgmlType::MXFP4, GgmlType::Q8_0),
        (GgmlType::IQ4_NL, GgmlType::IQ4_XS),
    ] {
        let data: Vec<[Vec<u8>; 3]> = (0..=routed)
            .map(|e| {
                let t = if e < routed { ty } else { shared_ty };
                [
                    quantized(&mut rng, t, ffn, hidden),
                    quantized(&mut rng, t, ffn, hidden),
                    quantized(&mut rng, t, hidden, ffn),
                ]
            })
            .collect();
        let stacks: Vec<[Matrix; 3]> = data
            .iter()
            .enumerate()
            .map(|(e, d)| {
                let ty = if e < routed { ty } else { shared_ty };
                let m = |data, rows, cols| Matrix {
                    name: "expert",
                    ty,
                    rows,
                    cols,
                    data,
                };
                [
                    m(&d[0], ffn, hidden),
                    m(&d[1], ffn, hidden),
                    m(&d[2], hidden, ffn),
                ]
            })
            .collect();
        for (label, ctx) in contexts() {
            let label = format!("{ty} experts, {shared_ty} shared, {label}");
            let (routed_name, shared_name) = (ty.name(), shared_ty.name());
            for layouts in check_expert_ffn(&label, &ctx, &stacks, &mut rng) {
                assert_eq!(layouts.first().copied(), Some(routed_name.as_str()));
                assert_eq!(layouts.last().copied(), Some(shared_name.as_str()));
                assert!(
                    layouts
                        .iter()
                        .all(|&l| l == routed_name || l == shared_name),
                    "{label}: {layouts:?}"
                );
            }
        }
    }
}

#[test]
fn argmax_matches_cpu_with_ties_to_the_lowest_index() {
    let ctx = ctx(None, false);
    let p = Pipelines::new();
    let mut rng = Rng(7);
    let span = argmax::SPAN;
    for n in [1usize, 255, 1024, 1025, 4096, 154880] {
        let mut logits = rng.vec(n);
        if n > 300 {
            // ties: the lower index wins, across the first pass's spans and within one
            logits[n - 7] = 3.0;
            logits[290] = 3.0;
            logits[291] = 3.0;
        }
        let mut cases = vec![("random", logits.clone())];
        // NaN never wins: at index 0 (the first candidate of everything), where a tree
        // reduction would meet it early, at the start of a later span, everywhere.
        let mut nan_at = |label, at: &[usize]| {
            let mut l = logits.clone();
            at.iter().filter(|&&i| i < n).for_each(|&i| l[i] = f32::NAN);
            cases.push((label, l));
        };
        nan_at("NaN at 0", &[0]);
        nan_at("NaN at 1, 257, 513", &[1, 257, 513]);
        nan_at("NaN at a span start", &[span, 2 * span + 1]);
        nan_at("NaN at the largest", &[290, 291]);
        cases.push(("all NaN", vec![f32::NAN; n]));
        for (label, logits) in cases {
            let result = storage_init(&ctx, "result", &[0xff; 4]);
            let logits_b = storage_f32(&ctx, "logits", &logits);
            let ds = argmax::dispatches(&ctx, &p, n, &logits_b, &result).unwrap();
            run(&ctx, &ds).unwrap();
            let got = u32::from_le_bytes(ctx.read_bytes(&result, 4).unwrap().try_into().unwrap());
            assert_eq!(got, cpu_argmax(&logits), "n = {n}, {label}");
        }
    }
}

/// `W · x` over the whole of `gm` (no offset, groups, norm or residual), read back; the
/// output is NaN-poisoned first.
fn plain_matvec(
    ctx: &GpuContext,
    p: &Pipelines,
    gm: &GpuMatrix,
    xb: &wgpu::Buffer,
    rows: usize,
) -> Vec<f32> {
    let out = poison(ctx, rows);
    let spec = matvec::Matvec {
        input: xb,
        in_offset: 0,
        groups: None,
        norm: None,
        out: &out,
        accumulate: false,
    };
    run(ctx, &matvec::dispatches(ctx, p, gm, &spec)).unwrap();
    ctx.read_f32(&out, rows).unwrap()
}

/// Each row's GPU dot `got[r]` is finite and equals the CPU's dot of row `r` of `m` with `x`
/// within TOL of the row's own scale, `Σ |w x|`.
fn check_rows_against_cpu(m: &Matrix, x: &[f32], got: &[f32], label: &str) {
    for (r, &g) in got.iter().enumerate() {
        let want = m.dot_row(r, x);
        let mut w = vec![0f32; m.cols];
        m.dequantize_row(r, &mut w);
        let size: f32 = w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
        assert!(g.is_finite(), "{label} row {r}: {g}");
        assert!(
            (g - want).abs() <= TOL * size.max(1e-30) + f32::MIN_POSITIVE,
            "{label} row {r}: {g} vs {want} (size {size})"
        );
    }
}

/// Per layout: the GPU's dot products against the CPU's on random rows split across
/// bindings, with both reduction variants, and the embedding row against `dequantize_row`.
/// Rows are compared one by one (each against its own magnitude).
#[test]
fn every_gpu_layout_dots_and_decodes_as_the_cpu() {
    let mut rng = Rng(11);
    let (rows, cols) = (150, 512);
    let x = rng.vec(cols);
    for ty in gpu_types() {
        let bytes = random_rows(&mut rng, ty, rows, cols);
        let m = Matrix {
            name: "test matrix",
            ty,
            rows,
            cols,
            data: &bytes,
        };
        matvec_as_the_cpu_on_every_context(&m, &x, |ctx, p, gm, label| {
            assert!(gm.chunks.len() > 1, "{ty}: the matrix must be split");
            for token in [0usize, 2, 77, rows - 1] {
                let id = storage_init(ctx, "token_id", &(token as u32).to_le_bytes());
                let xo = poison(ctx, cols);
                run(ctx, &embed::dispatches(ctx, p, gm, &id, &xo)).unwrap();
                let mut want = vec![0f32; cols];
                m.dequantize_row(token, &mut want);
                check(
                    &format!("embed {ty} token {token} {label}"),
                    &ctx.read_f32(&xo, cols).unwrap(),
                    &want,
                );
            }
        });
    }
}

/// `m` uploaded on every test context, its GPU dots with `x` checked against the CPU's
/// ([`check_rows_against_cpu`]); `also` checks more of each upload.
fn matvec_as_the_cpu_on_every_context(
    m: &Matrix,
    x: &[f32],
    mut also: impl FnMut(&GpuContext, &Pipelines, &GpuMatrix, &str),
) {
    for (label, ctx) in contexts() {
        let p = Pipelines::new();
        let gm = GpuMatrix::from_matrix(&ctx, "m", m, &mut Uploader::new(0, None)).unwrap();
        let xb = storage_f32(&ctx, "x", x);
        let got = plain_matvec(&ctx, &p, &gm, &xb, m.rows);
        check_rows_against_cpu(m, x, &got, &format!("{} {label}", m.ty));
        also(&ctx, &p, &gm, &label);
    }
}

/// Short rows of Q4_0 and Q5_0 (192 values: `attn_k_b`'s) go up widened into the Q8_0
/// layout and dot as the CPU dots the stored blocks.
#[test]
fn widened_short_rows_dot_as_the_cpu() {
    let mut rng = Rng(15);
    let (rows, cols) = (150, 192);
    let x = rng.vec(cols);
    for ty in [GgmlType::Q4_0, GgmlType::Q5_0] {
        let bytes = random_rows(&mut rng, ty, rows, cols);
        let m = Matrix {
            name: "short rows",
            ty,
            rows,
            cols,
            data: &bytes,
        };
        matvec_as_the_cpu_on_every_context(&m, &x, |_, _, gm, _| {
            assert!(gm.chunks.iter().all(|c| c.format.name() == "Q8_0"), "{ty}");
        });
    }
}

/// Raw rows of IQ4_NL, IQ4_XS and MXFP4 (512 values each) at extreme scales, every code in
/// every row: IQ4 `d` of ±1, the largest f16, f16 subnormals (IQ4_XS files hold many: its
/// `d` is the block's largest value / 4064), the smallest normal f16 and 0, every IQ4_XS
/// sub-block scale code; MXFP4 every E8M0 exponent (rows of 16 consecutive ones, 0..=255: the
/// largest make values of ±inf, as on the CPU) and a row of the smallest normal scales.
fn extreme_rows(ty: GgmlType) -> (usize, Vec<u8>) {
    let mut bytes = Vec::new();
    let f16_scales: [u16; 8] = [
        0x3c00, 0xbc00, 0x7bff, 0xfbff, 0x0001, 0x03ff, 0x0400, 0x0000,
    ];
    match ty {
        GgmlType::IQ4_NL => {
            for d in f16_scales {
                // Block k of a row holds the code bytes 16k..16k + 16.
                for k in 0..16u8 {
                    bytes.extend_from_slice(&d.to_le_bytes());
                    bytes.extend((0..16).map(|j| 16 * k + j));
                }
            }
            (f16_scales.len(), bytes)
        }
        GgmlType::IQ4_XS => {
            for (r, d) in f16_scales.into_iter().enumerate() {
                for half in 0..2 {
                    // Sub-block i's 6-bit scale code: 16r + 8 half + i (mod 64), so the
                    // rows hold every code.
                    let (mut high, mut low) = (0u16, 0u32);
                    for i in 0..8 {
                        let code = (16 * r + 8 * half + i) % 64;
                        low |= ((code & 15) as u32) << (4 * i);
                        high |= ((code >> 4) as u16) << (2 * i);
                    }
                    bytes.extend_from_slice(&d.to_le_bytes());
                    bytes.extend_from_slice(&high.to_le_bytes());
                    bytes.extend_from_slice(&low.to_le_bytes());
                    bytes.extend((0..128).map(|j| 128 * half as u8 + j));
                }
            }
            (f16_scales.len(), bytes)
        }
        GgmlType::MXFP4 => {
            let exponents = (0..=255u8).chain(2..18);
            for (i, e) in exponents.enumerate() {
                bytes.push(e);
                bytes.extend((0..16).map(|j| 16 * (i % 16) as u8 + j));
            }
            (17, bytes)
        }
        other => panic!("no extreme rows of {other}"),
    }
}

/// The non-linear layouts decode every code at extreme scales to exactly the CPU's values
/// (an f32 subnormal may read as 0: GPUs may flush them), and their dots match the CPU's
/// on every row whose values are finite and whose scales are normal f32s.
#[test]
fn iq4_and_mxfp4_decode_every_code_at_extreme_scales_as_the_cpu() {
    let mut rng = Rng(14);
    let cols = 512;
    let x = rng.vec(cols);
    for ty in [GgmlType::IQ4_NL, GgmlType::IQ4_XS, GgmlType::MXFP4] {
        let (rows, bytes) = extreme_rows(ty);
        let m = Matrix {
            name: "extremes",
            ty,
            rows,
            cols,
            data: &bytes,
        };
        for (label, ctx) in contexts() {
            let p = Pipelines::new();
            let gm = GpuMatrix::from_matrix(&ctx, "m", &m, &mut Uploader::new(0, None)).unwrap();
            let xb = storage_f32(&ctx, "x", &x);
            let out = plain_matvec(&ctx, &p, &gm, &xb, rows);
            let dots = out;
            let mut dotted = 0;
            for (r, &dot) in dots.iter().enumerate() {
                let mut want = vec![0f32; cols];
                m.dequantize_row(r, &mut want);
                let id = storage_init(&ctx, "token_id", &(r as u32).to_le_bytes());
                let xo = poison(&ctx, cols);
                run(&ctx, &embed::dispatches(&ctx, &p, &gm, &id, &xo)).unwrap();
                let got = ctx.read_f32(&xo, cols).unwrap();
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        g == w || (w.abs() < f32::MIN_POSITIVE && g == 0.0),
                        "{ty} row {r} value {i} {label}: {g:e} vs {w:e}"
                    );
                }
                // MXFP4 scales below 2^-126 are subnormal (exponents 0 and 1, row 0).
                let subnormal_scale = ty == GgmlType::MXFP4 && r == 0;
                if subnormal_scale || !want.iter().all(|v| v.is_finite()) {
                    continue;
                }
                let size: f32 = want.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                let (g, w) = (dot, m.dot_row(r, &x));
                assert!(
                    g.is_finite() && (g - w).abs() <= TOL * size + f32::MIN_POSITIVE,
                    "{ty} row {r} dot {label}: {g:e} vs {w:e} (size {size:e})"
                );
                dotted += 1;
            }
            assert!(dotted >= rows - 2, "{ty}: {dotted} rows dotted");
        }
    }
}

/// A stack of tensors of different formats is split by format (each chunk one layout, the
/// boundaries at the tensors'), and reads as the CPU reads each part; rows of different
/// layouts that interleave (a gate/up pair of two formats) go up as f32.
#[test]
fn mixed_type_stacks_split_by_format() {
    let mut rng = Rng(12);
    let cols = 256;
    let parts_spec = [
        (GgmlType::Q4_K, 40),
        (GgmlType::Q6_K, 24),
        (GgmlType::Q5_0, 12),
        (GgmlType::IQ4_XS, 20),
        (GgmlType::MXFP4, 16),
        (GgmlType::IQ4_NL, 8),
    ];
    let data: Vec<Vec<u8>> = parts_spec
        .iter()
        .map(|&(ty, rows)| random_rows(&mut rng, ty, rows, cols))
        .collect();
    let parts: Vec<Matrix> = parts_spec
        .iter()
        .zip(&data)
        .map(|(&(ty, rows), d)| Matrix {
            name: "part",
            ty,
            rows,
            cols,
            data: d,
        })
        .collect();
    let rows: usize = parts_spec.iter().map(|p| p.1).sum();
    let x = rng.vec(cols);
    let want: Vec<f32> = parts
        .iter()
        .flat_map(|m| (0..m.rows).map(|r| m.dot_row(r, &x)).collect::<Vec<_>>())
        .collect();
    for (label, ctx) in contexts() {
        let p = Pipelines::new();
        let gm = GpuMatrix::concat(&ctx, "stack", &parts, &mut Uploader::new(0, None)).unwrap();
        let layouts: Vec<(usize, &str)> = gm
            .chunks
            .iter()
            .map(|c| (c.row_start, c.format.name()))
            .collect();
        // Q5_0's rows of 256 values go up widened into the Q8_0 layout
        // (`formats::WIDEN_BELOW`).
        for (start, name) in [
            (0, "Q4_K"),
            (40, "Q6_K"),
            (64, "Q8_0"),
            (76, "IQ4_XS"),
            (96, "MXFP4"),
            (112, "IQ4_NL"),
        ] {
            assert!(layouts.contains(&(start, name)), "{layouts:?}");
        }
        assert!(gm.chunks.iter().all(|c| !c.format.is_f32()), "{layouts:?}");
        let xb = storage_f32(&ctx, "x", &x);
        let out = plain_matvec(&ctx, &p, &gm, &xb, rows);
        check(&format!("mixed stack {label}"), &out, &want);

        // Gate (Q4_K) and up (Q6_K) rows interleaved: one f32 matrix.
        let (gate, up) = (parts[0], parts[1]);
        let pairs = up.rows;
        let gm = GpuMatrix::build(
            &ctx,
            "gate_up",
            2 * pairs,
            cols,
            2,
            &mut Uploader::new(0, None),
            |r| RowRef {
                m: if r % 2 == 0 { gate } else { up },
                row: r / 2,
                col_start: 0,
            },
        )
        .unwrap();
        assert!(gm.chunks.iter().all(|c| c.format.is_f32()));
        let out = plain_matvec(&ctx, &p, &gm, &xb, 2 * pairs);
        let want: Vec<f32> = (0..2 * pairs)
            .map(|r| if r % 2 == 0 { gate } else { up }.dot_row(r / 2, &x))
            .collect();
        check(&format!("interleaved gate/up {label}"), &out, &want);
    }
}

/// The f16 cache's rounding (`f16_bits` in lib/cache_store.wgsl, which every kernel that
/// writes cache rows stores through) against the CPU's `half::f16::from_f32`, bit for bit:
/// ties to even (and to odd neighbours), values next to ties, the largest finite f16 and
/// the first values that overflow, subnormals and their ties, zeros, infinities, NaN, and
/// random values of every magnitude.
#[test]
fn the_f16_cache_rounds_to_nearest_even_as_the_cpu() {
    let mut values: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        1.0 + f32::powi(2.0, -11),       // tie: stays at 1 (even)
        1.0 + 3.0 * f32::powi(2.0, -11), // tie: up to the even neighbour
        1.0 + f32::powi(2.0, -11) + f32::powi(2.0, -23), // just past a tie: up
        65504.0,
        65519.99,
        65520.0, // tie between 65504 and 65536: infinity
        -70000.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::powi(2.0, -14),       // smallest normal
        f32::powi(2.0, -24),       // smallest subnormal
        f32::powi(2.0, -25),       // tie between 0 and it: 0
        3.0 * f32::powi(2.0, -25), // tie: up to 2^-23 (even)
        -5.0 * f32::powi(2.0, -26),
        f32::powi(2.0, -14) - f32::powi(2.0, -25), // tie into the smallest normal
        1e-30,
    ];
    let mut rng = Rng(5);
    for e in -30..17 {
        for _ in 0..16 {
            values.push(rng.f32() * f32::powi(2.0, e));
        }
    }
    values.resize(values.len().next_multiple_of(4), 0.0);
    let ctx = ctx(None, true);
    let source = format!(
        "override CACHE_F16: bool = true;
@group(0) @binding(0) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> cache: array<vec2<u32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {{
    if (id.x < arrayLength(&input)) {{
        _ = store4(id.x, input[id.x]);
    }}
}}
{}",
        glm_flash::gpu::shader::CACHE_STORE
    );
    let module = ctx
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("f16 rounding"),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
    let pipeline = ctx
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("f16 rounding"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    let input = storage_f32(&ctx, "values", &values);
    let out = storage_f32(&ctx, "cache", &vec![0.0; values.len() / 2]);
    let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("f16 rounding"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: input.as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: out.as_entire_binding(),
            },
        ],
    });
    let d = glm_flash::gpu::pipelines::Dispatch {
        name: "f16 rounding",
        pipeline,
        bind_group,
        workgroups: [(values.len() / 4).div_ceil(64) as u32, 1, 1],
    };
    run(&ctx, &[d]).unwrap();
    let words: Vec<u32> = ctx
        .read_f32(&out, values.len() / 2)
        .unwrap()
        .iter()
        .map(|w| w.to_bits())
        .collect();
    for (i, &v) in values.iter().enumerate() {
        let got = (words[i / 2] >> (16 * (i % 2))) & 0xffff;
        let want = half::f16::from_f32(v);
        if v.is_nan() {
            assert!(
                half::f16::from_bits(got as u16).is_nan(),
                "NaN stored as {got:#06x}"
            );
        } else {
            assert_eq!(
                got,
                want.to_bits() as u32,
                "{v:e} ({:#010x}): {got:#06x}, the CPU {:#06x}",
                v.to_bits(),
                want.to_bits()
            );
        }
    }
}
