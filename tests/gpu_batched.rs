//! The batched forward's kernels against their CPU twins on random inputs, on whatever
//! adapter wgpu finds (a missing adapter fails): the mat-mul in every weight layout (rows
//! split across bindings, per-head groups, the residual add, SwiGLU, the expert-indexed
//! form), RMSNorm rows, the cache rows, the batched attention and the MoE routing,
//! grouping and combine. Outputs are poisoned with NaN first, so an element a kernel fails
//! to write fails the comparison; shapes are not multiples of the tiles.
//!
//! Tolerance: f32 sums in another order. Dot products: |gpu - cpu| <= TOL * Σ|w x| of the
//! row (as gpu_kernels' layout test); other outputs: TOL * max |cpu| (floor 1e-3). The
//! mat-mul on f16-rounded tiles: F16_TILES_TOL instead (each operand rounded to f16 adds up
//! to 2^-11 of it, so a product up to 2^-10).
mod common;

use common::parity::{check_within, gpu_types, random_rows, Rng};
use common::{check_rows_within, token_ids};
use glm_flash::config::Config;
use glm_flash::cpu::ops;
use glm_flash::gguf::{GgmlType, GgufFile};
use glm_flash::gpu::cache::{decode_rows, encode_rows, POSITION_TILE};
use glm_flash::gpu::kernels::{
    attn_batch, attn_batch_coop, attn_combine, attn_partial, attn_partial_coop, kv_rows, matmul,
    moe_combine, moe_group, moe_route, rms_norm, BatchParams, TokenParams,
};
use glm_flash::gpu::pipelines::{Dispatch, Pipelines};
use glm_flash::gpu::upload::{storage_f32, storage_init, uniform, GpuMatrix, RowRef, Uploader};
use glm_flash::gpu::{GpuContext, GpuOptions, TileMath};
use glm_flash::ops_common::CacheType;
use glm_flash::weights::Matrix;

const TOL: f32 = 2e-5;
const F16_TILES_TOL: f32 = 2e-3;

fn ctx(max_binding: Option<u64>, no_subgroups: bool) -> GpuContext {
    GpuContext::new(&GpuOptions {
        max_binding_bytes: max_binding,
        no_subgroups,
        ..Default::default()
    })
    .expect("a GPU adapter is required for these tests")
}

/// The contexts the mat-mul tests run on: the tiles multiplied with f32 FMAs, and with
/// cooperative matrices on f16 parts and on f16-rounded values where the adapter has them
/// (each printed as it runs).
fn tile_variants(max_binding: Option<u64>) -> Vec<(&'static str, GpuContext, f32)> {
    let with = |tile_math| {
        GpuContext::new(&GpuOptions {
            max_binding_bytes: max_binding,
            tile_math,
            ..Default::default()
        })
        .expect("a GPU adapter is required for these tests")
    };
    let mut v = vec![with(TileMath::Fma)];
    let best = with(TileMath::Split);
    if best.tiles.cooperative() {
        v.push(best);
        v.push(with(TileMath::F16));
    } else {
        println!("{}: no cooperative tiles, FMA tiles only", best.describe());
    }
    v.into_iter()
        .map(|c| {
            println!(
                "running the mat-mul with {} on {}",
                c.tiles.describe(),
                c.describe()
            );
            let tol = match c.tiles {
                TileMath::F16 => F16_TILES_TOL,
                TileMath::Fma | TileMath::Split => TOL,
            };
            (c.tiles.describe(), c, tol)
        })
        .collect()
}

fn poison(ctx: &GpuContext, n: usize) -> wgpu::Buffer {
    storage_f32(ctx, "poisoned output", &vec![f32::NAN; n])
}

fn batch(ctx: &GpuContext, n: usize, pos: usize, first: usize) -> wgpu::Buffer {
    let params = BatchParams {
        n: n as u32,
        pos: pos as u32,
        first: first as u32,
        _pad0: 0,
    };
    uniform(ctx, "batch", &params)
}

/// Records each dispatch with its grid into one pass, submits and waits.
fn run_grids(ctx: &GpuContext, ds: &[(&Dispatch, [u32; 3])]) {
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for (d, grid) in ds {
            d.record_sized(&mut pass, *grid);
        }
    }
    ctx.queue.submit([enc.finish()]);
    ctx.wait().unwrap();
}

/// The expert mat-muls' tile list (moe_group.wgsl's layout) for experts with `counts` pairs:
/// expert e's tile k of TN pairs as e | k << 16, in the experts' order, then entries of no
/// tile (all bits set) to `len`.
fn tile_list(counts: &[usize], len: usize) -> Vec<u32> {
    let mut list: Vec<u32> = Vec::new();
    for (e, &c) in counts.iter().enumerate() {
        list.extend((0..c.div_ceil(matmul::TN)).map(|k| (e | k << 16) as u32));
    }
    list.resize(len, u32::MAX);
    list
}

fn run_matmul(ctx: &GpuContext, ds: &[matmul::MatmulDispatch], n: usize) {
    let grids: Vec<_> = ds.iter().map(|d| (&d.dispatch, d.grid(n))).collect();
    run_grids(ctx, &grids);
}

fn matrix(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Matrix<'_> {
    Matrix {
        name: "test matrix",
        ty,
        rows,
        cols,
        data,
    }
}

/// Σ |w x| over row `r` of `m`: the scale of its dot product with `x`.
fn dot_size(m: &Matrix, r: usize, x: &[f32]) -> f32 {
    let mut w = vec![0f32; m.cols];
    m.dequantize_row(r, &mut w);
    w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum()
}

/// `got` (a GPU result) against `want` (a CPU dot product of scale `size`).
fn check_dot(label: &str, got: f32, want: f32, size: f32, tol: f32) {
    assert!(
        got.is_finite(),
        "{label}: {got} (unwritten or NaN), want {want}"
    );
    assert!(
        (got - want).abs() <= tol * size.max(1e-30) + f32::MIN_POSITIVE,
        "{label}: {got} vs {want} (size {size})"
    );
}

/// Every layout, plain and accumulating: 150 rows (not a multiple of the 64-row tile) split
/// across 16 KiB bindings, 70 tokens (a full token tile and a partial one), inputs read from
/// an offset of longer rows.
#[test]
fn matmul_matches_cpu_in_every_layout() {
    let mut rng = Rng(21);
    let (rows, cols, n) = (150, 512, 70);
    let (x_stride, in_offset, y_stride) = (cols + 24, 8, rows + 3);
    let x = rng.vec(n * x_stride);
    let base = rng.vec(n * y_stride);
    for (variant, ctx, tol) in tile_variants(Some(16 << 10)) {
        let p = Pipelines::new();
        let xb = storage_f32(&ctx, "x", &x);
        let nb = batch(&ctx, n, 0, 0);
        for ty in gpu_types() {
            let bytes = random_rows(&mut rng, ty, rows, cols);
            let m = matrix(ty, rows, cols, &bytes);
            let gm = GpuMatrix::from_matrix(&ctx, "m", &m, &mut Uploader::new(0, None)).unwrap();
            assert!(gm.chunks.len() > 1, "{ty}: the matrix must be split");
            for accumulate in [false, true] {
                let y = match accumulate {
                    true => storage_f32(&ctx, "y", &base),
                    false => poison(&ctx, n * y_stride),
                };
                let spec = matmul::Matmul {
                    batch: &nb,
                    x: &xb,
                    x_stride,
                    in_offset,
                    groups: None,
                    y: &y,
                    y_stride,
                    accumulate,
                    swiglu: false,
                    experts: None,
                };
                run_matmul(&ctx, &matmul::dispatches(&ctx, &p, &gm, &spec), n);
                let got = ctx.read_f32(&y, n * y_stride).unwrap();
                for j in 0..n {
                    let xj = &x[j * x_stride + in_offset..][..cols];
                    for r in 0..rows {
                        let mut want = m.dot_row(r, xj);
                        if accumulate {
                            want += base[j * y_stride + r];
                        }
                        let label =
                            format!("{variant}: {ty} accumulate {accumulate} token {j} row {r}");
                        let size = dot_size(&m, r, xj);
                        check_dot(&label, got[j * y_stride + r], want, size, tol);
                    }
                }
            }
        }
    }
}

/// A plain mat-mul of `bytes` (`rows` x `cols` of `ty`) by the `n` rows of `x`, in every tile
/// variant, against the CPU's row dots within each variant's bound.
fn check_plain_matmul(what: &str, ty: GgmlType, bytes: &[u8], rows: usize, x: &[f32], n: usize) {
    let cols = x.len() / n;
    let m = matrix(ty, rows, cols, bytes);
    for (variant, ctx, tol) in tile_variants(None) {
        let p = Pipelines::new();
        let xb = storage_f32(&ctx, "x", x);
        let nb = batch(&ctx, n, 0, 0);
        let gm = GpuMatrix::from_matrix(&ctx, "m", &m, &mut Uploader::new(0, None)).unwrap();
        let y = poison(&ctx, n * rows);
        let spec = matmul::Matmul {
            batch: &nb,
            x: &xb,
            x_stride: cols,
            in_offset: 0,
            groups: None,
            y: &y,
            y_stride: rows,
            accumulate: false,
            swiglu: false,
            experts: None,
        };
        run_matmul(&ctx, &matmul::dispatches(&ctx, &p, &gm, &spec), n);
        let got = ctx.read_f32(&y, n * rows).unwrap();
        for j in 0..n {
            let xj = &x[j * cols..][..cols];
            for r in 0..rows {
                let label = format!("{variant}: {ty} {what}, token {j} row {r}");
                let size = dot_size(&m, r, xj);
                check_dot(&label, got[j * rows + r], m.dot_row(r, xj), size, tol);
            }
        }
    }
}

/// Inputs beyond what the cooperative tiles' f16 parts carry (up to 1e8: past f16's 65504,
/// past the split's 2047) in the first token tile only: the tiles holding them are computed
/// unit by unit (`dot_direct`), the second token tile through the tiles as usual, and every
/// variant matches the CPU within its bound.
#[test]
fn matmul_inputs_beyond_f16_range_match_cpu() {
    let mut rng = Rng(25);
    let (rows, cols, n) = (70, 256, 70);
    let mut x = rng.vec(n * cols);
    for j in [3, 17] {
        for c in (0..cols).step_by(7) {
            x[j * cols + c] *= 1e8;
        }
    }
    x[40 * cols + 5] = 3e4;
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K] {
        let bytes = random_rows(&mut rng, ty, rows, cols);
        check_plain_matmul("large inputs", ty, &bytes, rows, &x, n);
    }
}

/// Weights beyond what the cooperative tiles' f16 parts carry (a row of values up to 1e6,
/// past f16's 65504 once scaled): the tiles holding that row are computed unit by unit
/// (`dot_direct`), and every variant matches the CPU within its bound.
#[test]
fn matmul_weights_beyond_f16_range_match_cpu() {
    let mut rng = Rng(26);
    let (rows, cols, n) = (70, 256, 40);
    let large_row = 9;
    let x = rng.vec(n * cols);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let mut values = rng.vec(rows * cols);
        values[large_row * cols..][..cols]
            .iter_mut()
            .for_each(|v| *v *= 1e6);
        let mut bytes = Vec::new();
        glm_flash::formats::of(ty)
            .unwrap()
            .quantize(&values, &mut bytes);
        check_plain_matmul("large weights", ty, &bytes, rows, &x, n);
    }
}

/// Per-head groups as k_b and v_b use them: heads of 44 rows (not whole tiles), each reading
/// its own slice of the token's input, 96 columns (a step and a half of 64), in the legacy
/// layouts whose blocks divide 96, with the rows split across bindings (chunks that start
/// inside a group); and with the workgroup-reduction context (no subgroups).
#[test]
fn matmul_per_head_groups_match_cpu() {
    let mut rng = Rng(22);
    let (heads, group_rows, cols, n) = (5, 44, 96, 67);
    let rows = heads * group_rows;
    let head_stride = cols + 32;
    let x_stride = heads * head_stride;
    let x = rng.vec(n * x_stride);
    let mut contexts = tile_variants(Some(4 << 10));
    contexts.push(("no subgroups", ctx(Some(4 << 10), true), TOL));
    for (label, ctx, tol) in contexts {
        let p = Pipelines::new();
        let xb = storage_f32(&ctx, "x", &x);
        let nb = batch(&ctx, n, 0, 0);
        for ty in [
            GgmlType::F16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_1,
        ] {
            let bytes = random_rows(&mut rng, ty, rows, cols);
            let m = matrix(ty, rows, cols, &bytes);
            let gm = GpuMatrix::from_matrix(&ctx, "m", &m, &mut Uploader::new(0, None)).unwrap();
            assert!(gm.chunks.len() > 1, "{ty}: the matrix must be split");
            assert!(gm.chunks.iter().any(|c| c.row_start % group_rows != 0));
            let y = poison(&ctx, n * rows);
            let spec = matmul::Matmul {
                batch: &nb,
                x: &xb,
                x_stride,
                in_offset: 0,
                groups: Some((group_rows, head_stride)),
                y: &y,
                y_stride: rows,
                accumulate: false,
                swiglu: false,
                experts: None,
            };
            run_matmul(&ctx, &matmul::dispatches(&ctx, &p, &gm, &spec), n);
            let got = ctx.read_f32(&y, n * rows).unwrap();
            for j in 0..n {
                for r in 0..rows {
                    let xj = &x[j * x_stride + (r / group_rows) * head_stride..][..cols];
                    let want = m.dot_row(r, xj);
                    let l = format!("{ty} groups {label} token {j} row {r}");
                    check_dot(&l, got[j * rows + r], want, dot_size(&m, r, xj), tol);
                }
            }
        }
    }
}

/// A stack of experts: `experts` of `[ffn][gate, up][hidden]` (rows interleaved as the GPU
/// stacks them) and `[hidden][ffn]` down rows.
struct ExpertStack {
    gate: Vec<u8>,
    up: Vec<u8>,
    down: Vec<u8>,
}

/// The SwiGLU epilogue of a dense FFN (one group), and both expert-indexed mat-muls of a
/// MoE layer over hand-made pair lists: an expert with more pairs than a token tile, one
/// with none, one with a single pair, one with exactly a tile; the gate/up stack split
/// across bindings inside experts.
#[test]
fn matmul_swiglu_and_expert_indexed_match_cpu() {
    let mut rng = Rng(23);
    let (experts, ffn, hidden, n) = (5, 96, 256, 90);
    let ty = GgmlType::Q4_K;
    let stack = ExpertStack {
        gate: random_rows(&mut rng, ty, experts * ffn, hidden),
        up: random_rows(&mut rng, ty, experts * ffn, hidden),
        down: random_rows(&mut rng, GgmlType::Q8_0, experts * hidden, ffn),
    };
    let gate = matrix(ty, experts * ffn, hidden, &stack.gate);
    let up = matrix(ty, experts * ffn, hidden, &stack.up);
    let down = matrix(GgmlType::Q8_0, experts * hidden, ffn, &stack.down);
    let x = rng.vec(n * hidden);
    // Pairs per expert, and their tokens (each expert's tokens distinct, in random order).
    let counts = [70usize, 0, 1, 64, 5];
    let mut tokens = Vec::new();
    for &c in &counts {
        let mut pool: Vec<usize> = (0..n).collect();
        for i in 0..c {
            let k = i + rng.below(n - i);
            pool.swap(i, k);
            tokens.push(pool[i]);
        }
    }
    let offsets: Vec<usize> = counts
        .iter()
        .scan(0, |at, &c| {
            let o = *at;
            *at += c;
            Some(o)
        })
        .collect();
    let n_pairs = tokens.len();
    let mut pairs: Vec<u32> = counts.iter().map(|&c| c as u32).collect();
    pairs.extend(offsets.iter().map(|&o| o as u32));
    pairs.extend(tokens.iter().map(|&t| t as u32));
    // The tile list, as long as n tokens of `slots` pairs can need.
    let slots = n_pairs.div_ceil(n);
    let tiles_at = pairs.len();
    pairs.extend(tile_list(
        &counts,
        moe_group::tile_slots(n * slots, experts),
    ));

    for (variant, ctx, tol) in tile_variants(Some(16 << 10)) {
        let p = Pipelines::new();
        let mut upl = Uploader::new(0, None);
        let gate_up = GpuMatrix::build(
            &ctx,
            "gate_up",
            experts * 2 * ffn,
            hidden,
            2,
            &mut upl,
            |r| RowRef {
                m: if r % 2 == 0 { gate } else { up },
                row: (r / (2 * ffn)) * ffn + (r % (2 * ffn)) / 2,
                col_start: 0,
            },
        )
        .unwrap();
        let down_g = GpuMatrix::from_matrix(&ctx, "down", &down, &mut upl).unwrap();
        assert!(gate_up.chunks.iter().any(|c| c.row_start % (2 * ffn) != 0));
        assert!(down_g.chunks.len() > 1);
        let xb = storage_f32(&ctx, "x", &x);
        let nb = batch(&ctx, n, 0, 0);
        let act_of = |e: usize, xt: &[f32]| -> Vec<f32> {
            let mut g: Vec<f32> = (0..ffn).map(|i| gate.dot_row(e * ffn + i, xt)).collect();
            let u: Vec<f32> = (0..ffn).map(|i| up.dot_row(e * ffn + i, xt)).collect();
            ops::swiglu(&mut g, &u);
            g
        };

        // Dense: the first expert's gate/up over every token (one group of its 2 * ffn rows).
        let first = GpuMatrix::build(&ctx, "dense", 2 * ffn, hidden, 2, &mut upl, |r| RowRef {
            m: if r % 2 == 0 { gate } else { up },
            row: r / 2,
            col_start: 0,
        })
        .unwrap();
        let act = poison(&ctx, n * ffn);
        let spec = matmul::Matmul {
            batch: &nb,
            x: &xb,
            x_stride: hidden,
            in_offset: 0,
            groups: None,
            y: &act,
            y_stride: ffn,
            accumulate: false,
            swiglu: true,
            experts: None,
        };
        run_matmul(&ctx, &matmul::dispatches(&ctx, &p, &first, &spec), n);
        let want: Vec<f32> = (0..n)
            .flat_map(|t| act_of(0, &x[t * hidden..][..hidden]))
            .collect();
        check_within(
            &format!("{variant}: dense SwiGLU"),
            &ctx.read_f32(&act, n * ffn).unwrap(),
            &want,
            tol,
        );

        // Experts: gate/up over each pair's token, then down over each pair's activations.
        let pairs_b = storage_init(&ctx, "pairs", bytemuck::cast_slice(&pairs));
        let act = poison(&ctx, n_pairs * ffn);
        let spec = matmul::Matmul {
            experts: Some(matmul::Experts {
                pairs: &pairs_b,
                tiles_at,
                experts,
                slots,
                gather: true,
            }),
            y: &act,
            ..spec
        };
        run_matmul(&ctx, &matmul::dispatches(&ctx, &p, &gate_up, &spec), n);
        let mut want_act = Vec::new();
        for (e, &c) in counts.iter().enumerate() {
            for &t in &tokens[offsets[e]..offsets[e] + c] {
                want_act.extend(act_of(e, &x[t * hidden..][..hidden]));
            }
        }
        let got_act = ctx.read_f32(&act, n_pairs * ffn).unwrap();
        check_within(
            &format!("{variant}: expert gate/up SwiGLU"),
            &got_act,
            &want_act,
            tol,
        );

        let out = poison(&ctx, n_pairs * hidden);
        let spec = matmul::Matmul {
            batch: &nb,
            x: &act,
            x_stride: ffn,
            in_offset: 0,
            groups: None,
            y: &out,
            y_stride: hidden,
            accumulate: false,
            swiglu: false,
            experts: Some(matmul::Experts {
                pairs: &pairs_b,
                tiles_at,
                experts,
                slots,
                gather: false,
            }),
        };
        run_matmul(&ctx, &matmul::dispatches(&ctx, &p, &down_g, &spec), n);
        let got = ctx.read_f32(&out, n_pairs * hidden).unwrap();
        for (e, &c) in counts.iter().enumerate() {
            for q in offsets[e]..offsets[e] + c {
                let a = &got_act[q * ffn..][..ffn];
                for r in 0..hidden {
                    let want = down.dot_row(e * hidden + r, a);
                    let size = dot_size(&down, e * hidden + r, a);
                    check_dot(
                        &format!("{variant}: expert down pair {q} row {r}"),
                        got[q * hidden + r],
                        want,
                        size,
                        tol,
                    );
                }
            }
        }
    }
}

/// RMSNorm of rows `first..first + n` of longer rows, from an offset.
#[test]
fn rms_norm_rows_match_cpu() {
    let mut rng = Rng(24);
    let (cols, stride, offset, rows, first, n) = (200, 236, 12, 40, 3, 33);
    let x: Vec<f32> = rng.vec(rows * stride).iter().map(|v| 7.0 * v).collect();
    let w = rng.vec(cols);
    for (label, ctx) in [
        ("subgroups", ctx(None, false)),
        ("no subgroups", ctx(None, true)),
    ] {
        let p = Pipelines::new();
        let (xb, wb, out) = (
            storage_f32(&ctx, "x", &x),
            storage_f32(&ctx, "w", &w),
            poison(&ctx, n * cols),
        );
        let nb = batch(&ctx, n, 0, first);
        let d = rms_norm::dispatch(
            &ctx,
            &p,
            &nb,
            &xb,
            (stride, offset),
            cols,
            (&wb, 1e-5),
            &out,
            cols,
        );
        run_grids(&ctx, &[(&d, [n as u32, 1, 1])]);
        let mut want = vec![0f32; n * cols];
        for (r, o) in want.chunks_exact_mut(cols).enumerate() {
            ops::rmsnorm(&x[(first + r) * stride + offset..][..cols], &w, 1e-5, o);
        }
        check_within(
            &format!("rms_norm {label}"),
            &ctx.read_f32(&out, n * cols).unwrap(),
            &want,
            TOL,
        );
    }
}

/// The tiny fixture's configuration (`synth::Preset::Tiny`, no file read, so the kernel
/// tests run wherever the test binary is copied) with the attention's shape replaced.
fn small_config(kv: usize, rope: usize, nope: usize, heads: usize) -> Config {
    let mut cfg = glm_flash::synth::Preset::Tiny.config();
    (cfg.kv_lora_rank, cfg.qk_rope, cfg.qk_nope, cfg.n_heads) = (kv, rope, nope, heads);
    cfg
}

/// The rope table of positions `pos..pos + n`, as the batch uploads it.
fn rope_tables(cfg: &Config, pos: usize, n: usize) -> Vec<[f32; 2]> {
    (pos..pos + n)
        .flat_map(|p| attn_partial::rope_table(p, cfg.qk_rope, cfg.rope_base))
        .collect()
}

/// The cache rows of 21 tokens after a prefix of 9, in both cache types: written at their
/// positions, the rows before untouched.
#[test]
fn kv_rows_match_cpu() {
    let cfg = small_config(512, 64, 192, 4);
    let (kv, row) = (cfg.kv_lora_rank, cfg.cache_row());
    let (pos, n, q_lora) = (9, 21, 96);
    let stride = q_lora + row + 8;
    let mut rng = Rng(25);
    let kv_a = rng.vec(n * stride);
    let kv_norm = rng.vec(kv);
    let init = rng.vec((pos + n + 3) * row);
    let ctx = ctx(None, false);
    let p = Pipelines::new();
    for cache_type in [CacheType::F32, CacheType::F16] {
        let init_bytes = encode_rows(cache_type, &init);
        let cache = storage_init(&ctx, "cache", &init_bytes);
        let (kv_a_b, norm_b) = (
            storage_f32(&ctx, "kv_a", &kv_a),
            storage_f32(&ctx, "kv_norm", &kv_norm),
        );
        let rope = storage_init(
            &ctx,
            "rope",
            bytemuck::cast_slice(&rope_tables(&cfg, pos, n)),
        );
        let nb = batch(&ctx, n, pos, 0);
        let d = kv_rows::dispatch(
            &ctx,
            &p,
            &cfg,
            &kv_rows::KvRows {
                batch: &nb,
                kv_a: &kv_a_b,
                in_stride: stride,
                kv_offset: q_lora,
                kv_norm: &norm_b,
                rope_cs: &rope,
                cache: &cache,
                cache_type,
            },
        );
        run_grids(&ctx, &[(&d, [n as u32, 1, 1])]);
        let got_bytes = ctx.read_bytes(&cache, init_bytes.len() as u64).unwrap();
        let rb = row * cache_type.bytes();
        assert_eq!(
            got_bytes[..pos * rb],
            init_bytes[..pos * rb],
            "rows before pos"
        );
        assert_eq!(
            got_bytes[(pos + n) * rb..],
            init_bytes[(pos + n) * rb..],
            "rows after"
        );
        let got = decode_rows(cache_type, &got_bytes[pos * rb..(pos + n) * rb]);
        let mut want = vec![0f32; n * row];
        for (t, w) in want.chunks_exact_mut(row).enumerate() {
            let src = &kv_a[t * stride + q_lora..][..row];
            ops::rmsnorm(&src[..kv], &kv_norm, cfg.rms_eps, &mut w[..kv]);
            w[kv..].copy_from_slice(&src[kv..]);
            ops::rope(&mut w[kv..], pos + t, cfg.rope_base);
        }
        cache_type.round(&mut want);
        // Computed in another order, a value may round to the other neighbouring f16.
        let tol = match cache_type {
            CacheType::F16 => 2f32.powi(-10),
            CacheType::F32 => TOL,
        };
        check_within(&format!("kv_rows {}", cache_type.name()), &got, &want, tol);
    }
}

/// The CPU twin of the batched attention: for each token t (position pos + t) and head h,
/// softmax over the cache rows 0..=pos+t of the scaled scores, weighting the latents.
#[allow(clippy::too_many_arguments)]
fn attention_cpu(
    cfg: &Config,
    cache: &[f32],
    q_abs: &[f32],
    q: &[f32],
    pos: usize,
    n: usize,
) -> Vec<f32> {
    let (heads, kv, nope, rope) = (cfg.n_heads, cfg.kv_lora_rank, cfg.qk_nope, cfg.qk_rope);
    let (row, head_dim) = (kv + rope, nope + rope);
    let mut out = vec![0f32; n * heads * kv];
    for t in 0..n {
        for h in 0..heads {
            let qr = t * heads + h;
            let qa = &q_abs[qr * kv..][..kv];
            let mut qpe = q[qr * head_dim + nope..][..rope].to_vec();
            ops::rope(&mut qpe, pos + t, cfg.rope_base);
            let mut kq: Vec<f32> = cache
                .chunks_exact(row)
                .take(pos + t + 1)
                .map(|c| (ops::dot(qa, &c[..kv]) + ops::dot(&qpe, &c[kv..])) * cfg.attn_scale())
                .collect();
            ops::softmax(&mut kq);
            let o = &mut out[qr * kv..][..kv];
            for (pr, c) in kq.iter().zip(cache.chunks_exact(row)) {
                for (o, l) in o.iter_mut().zip(&c[..kv]) {
                    *o += pr * l;
                }
            }
        }
    }
    out
}

/// The batched attention against its CPU twin: the real per-head dims (kv 512, rope 64,
/// all 32 rows per invocation in the context phase) and tiny ones (kv 64, rope 32, 4 rows
/// per invocation), heads
/// whose count does not divide the 32-row query blocks, batches after no prefix and after
/// prefixes that cross key tiles, both cache types.
#[test]
fn batched_attention_matches_cpu() {
    let mut rng = Rng(26);
    let shapes = [(512, 64, 192, 6), (64, 32, 96, 5)];
    let batches = [(0, 37), (70, 9), (33, 66), (0, 1)];
    // The workgroup-memory lane sums on one case of each shape.
    for (reductions, ctx, cases) in [
        ("subgroups", ctx(None, false), &batches[..]),
        ("no subgroups", ctx(None, true), &batches[2..3]),
    ] {
        let p = Pipelines::new();
        for (kv, rope, nope, heads) in shapes {
            let cfg = small_config(kv, rope, nope, heads);
            let (row, head_dim) = (cfg.cache_row(), nope + rope);
            for &(pos, n) in cases {
                let q_abs = rng.vec(n * heads * kv);
                let q: Vec<f32> = rng
                    .vec(n * heads * head_dim)
                    .iter()
                    .map(|v| 4.0 * v)
                    .collect();
                let cache_vals = rng.vec((pos + n) * row);
                for cache_type in [CacheType::F32, CacheType::F16] {
                    let mut stored = cache_vals.clone();
                    cache_type.round(&mut stored);
                    let label = format!(
                        "{reductions}: kv {kv} heads {heads} pos {pos} n {n} {} cache",
                        cache_type.name()
                    );
                    let cache = storage_init(&ctx, "cache", &encode_rows(cache_type, &cache_vals));
                    let (qa_b, q_b) = (
                        storage_f32(&ctx, "q_abs", &q_abs),
                        storage_f32(&ctx, "q", &q),
                    );
                    let rope_b = storage_init(
                        &ctx,
                        "rope",
                        bytemuck::cast_slice(&rope_tables(&cfg, pos, n)),
                    );
                    let kqv = poison(&ctx, n * heads * kv);
                    let nb = batch(&ctx, n, pos, 0);
                    let d = attn_batch::dispatch(
                        &ctx,
                        &p,
                        &cfg,
                        &attn_batch::AttnBatch {
                            batch: &nb,
                            q_abs: &qa_b,
                            q: &q_b,
                            rope_cs: &rope_b,
                            cache: &cache,
                            cache_type,
                            kqv: &kqv,
                        },
                    );
                    run_grids(&ctx, &[(&d, attn_batch::grid(&cfg, n))]);
                    let want = attention_cpu(&cfg, &stored, &q_abs, &q, pos, n);
                    check_within(
                        &label,
                        &ctx.read_f32(&kqv, n * heads * kv).unwrap(),
                        &want,
                        TOL,
                    );
                }
            }
        }
    }
}

/// The batched attention on cooperative matrices (f16 cache) against the CPU twin, where
/// the adapter has them (it says so where it does not): the real per-head dims with all 20
/// heads, tiny ones, and latents of 128 and 384 (each way the context's accumulators are
/// shared out); batches after no prefix, after prefixes that cross key tiles and reach
/// hundreds of keys (the running max grows across tiles, so the context is rescaled);
/// queries of ordinary size, and rows whose values span 1e-6..1e4 (each row's parts are
/// scaled to its own largest value); and the engine's load-time check agrees.
#[test]
fn cooperative_batched_attention_matches_cpu() {
    for ctx in &cooperative_attention_contexts("batched") {
        cooperative_attention_matches_cpu_with(ctx);
    }
}

/// The contexts of each cooperative tile math, where the cooperative attention kernels run
/// the real dims; none (saying so) without cooperative matrices and subgroups.
fn cooperative_attention_contexts(which: &str) -> Vec<GpuContext> {
    let real = small_config(512, 64, 192, 20);
    let contexts: Vec<GpuContext> = tile_variants(None)
        .into_iter()
        .map(|(_, c, _)| c)
        .filter(|c| attn_batch_coop::runs(c, &real, CacheType::F16))
        .collect();
    if contexts.is_empty() {
        println!(
            "no cooperative matrices with subgroups here: the cooperative {which} attention is \
             not run"
        );
    }
    contexts
}

/// `n` random query values: of ordinary size, or where `wide`, spanning 1e-6..1e4 within
/// each row (each row's parts are scaled to its own largest value).
fn query_values(rng: &mut Rng, n: usize, wide: bool) -> Vec<f32> {
    rng.vec(n)
        .iter()
        .enumerate()
        .map(|(i, &v)| match (wide, i % 7) {
            (false, _) => 4.0 * v,
            (true, 0) => 1e4 * v,
            (true, 1) => 1e-6 * v,
            (true, _) => v,
        })
        .collect()
}

/// The tolerance of a cooperative attention's outputs (`attn_batch_coop::error_bound`):
/// with two parts, about 21 bits of each query value and weight, so rows holding 1e4-sized
/// values reach 1e-3 (measured on an H200) and ordinary ones stay within TOL; with one,
/// f16's 11 bits.
fn cooperative_tolerance(
    ctx: &GpuContext,
    cfg: &Config,
    q_abs: &[f32],
    q: &[f32],
    wide: bool,
) -> f32 {
    let parts = ctx.tiles.parts();
    if wide || parts == 1 {
        TOL.max(attn_batch_coop::error_bound(parts, cfg, q_abs, q))
    } else {
        TOL
    }
}

fn cooperative_attention_matches_cpu_with(ctx: &GpuContext) {
    println!(
        "running the cooperative attention with {} on {}",
        ctx.tiles.describe(),
        ctx.describe()
    );
    let p = Pipelines::new();
    // The engine's own check at load, on the real dims.
    let real = small_config(512, 64, 192, 20);
    assert_eq!(attn_batch_coop::check_against_fma(ctx, &p, &real), Ok(()));
    let mut rng = Rng(31);
    let shapes = [
        (512, 64, 192, 20),
        (64, 32, 96, 5),
        (128, 32, 64, 3),
        (384, 64, 128, 4),
    ];
    let batches = [(0, 37), (70, 9), (333, 66), (0, 1), (1000, 3)];
    for (kv, rope, nope, heads) in shapes {
        let cfg = small_config(kv, rope, nope, heads);
        let (row, head_dim) = (cfg.cache_row(), nope + rope);
        for &(pos, n) in &batches {
            for wide in [false, true] {
                let q_abs = query_values(&mut rng, n * heads * kv, wide);
                let q = query_values(&mut rng, n * heads * head_dim, wide);
                let mut stored = rng.vec((pos + n) * row);
                CacheType::F16.round(&mut stored);
                let label = format!("kv {kv} heads {heads} pos {pos} n {n} wide {wide}");
                // The cache holds whole tiles of positions, as the engine allocates it.
                let mut padded = stored.clone();
                padded.resize((pos + n).next_multiple_of(POSITION_TILE) * row, 0.0);
                let cache = storage_init(ctx, "cache", &encode_rows(CacheType::F16, &padded));
                let (qa_b, q_b) = (storage_f32(ctx, "q_abs", &q_abs), storage_f32(ctx, "q", &q));
                let rope_b = storage_init(
                    ctx,
                    "rope",
                    bytemuck::cast_slice(&rope_tables(&cfg, pos, n)),
                );
                let kqv = poison(ctx, n * heads * kv);
                let q_parts = storage_f32(
                    ctx,
                    "q parts",
                    &vec![f32::NAN; attn_batch_coop::q_parts_words(&cfg, n)],
                );
                let nb = batch(ctx, n, pos, 0);
                let a = attn_batch::AttnBatch {
                    batch: &nb,
                    q_abs: &qa_b,
                    q: &q_b,
                    rope_cs: &rope_b,
                    cache: &cache,
                    cache_type: CacheType::F16,
                    kqv: &kqv,
                };
                let d = attn_batch_coop::dispatch(ctx, &p, &cfg, &a, &q_parts);
                run_grids(ctx, &[(&d, attn_batch_coop::grid(&cfg, n))]);
                let want = attention_cpu(&cfg, &stored, &q_abs, &q, pos, n);
                check_within(
                    &label,
                    &ctx.read_f32(&kqv, n * heads * kv).unwrap(),
                    &want,
                    cooperative_tolerance(ctx, &cfg, &q_abs, &q, wide),
                );
            }
        }
    }
}

/// A token's attention on cooperative matrices (attn_partial_coop's queries and splits,
/// merged by attn_combine, which appends the token's own row) against the CPU, where the
/// adapter has them (it says so where it does not): the real per-head dims with all 20
/// heads, 40 heads (two row blocks), latents of 64 and 384; no cached position (one empty
/// split), one, a tile and around it, hundreds and thousands; splits of the shortest length
/// (the f32 kernel's tile, two of this one's), of several and the engine's own; queries of
/// ordinary size and rows spanning 1e-6..1e4; and the engine's load-time check agrees.
#[test]
fn cooperative_decode_attention_matches_cpu() {
    for ctx in &cooperative_attention_contexts("decode") {
        println!(
            "running the cooperative decode attention with {} on {}",
            ctx.tiles.describe(),
            ctx.describe()
        );
        cooperative_decode_attention_matches_cpu_with(ctx);
    }
}

fn cooperative_decode_attention_matches_cpu_with(ctx: &GpuContext) {
    let p = Pipelines::new();
    let real = small_config(512, 64, 192, 20);
    assert_eq!(attn_partial_coop::check_against_fma(ctx, &p, &real), Ok(()));
    let mut rng = Rng(37);
    let max_context = 5000;
    for (kv, rope, nope, heads) in [(512, 64, 192, 20), (64, 32, 96, 40), (384, 64, 128, 4)] {
        let cfg = small_config(kv, rope, nope, heads);
        let (row, head_dim) = (cfg.cache_row(), nope + rope);
        let kv_a = rng.vec(cfg.q_lora_rank + row);
        let kv_norm = rng.vec(kv);
        let (kv_a_b, kv_norm_b) = (
            storage_f32(ctx, "kv_a", &kv_a),
            storage_f32(ctx, "kv_norm", &kv_norm),
        );
        for pos in [0, 1, 127, 128, 129, 300, 4999] {
            let splits = [
                attn_partial::TILE,
                3 * POSITION_TILE,
                attn_partial_coop::split_len(pos, attn_partial_coop::TARGET_SPLITS),
            ];
            for (split, wide) in splits.into_iter().zip([false, true, false]) {
                let q_abs = query_values(&mut rng, heads * kv, wide);
                let q = query_values(&mut rng, heads * head_dim, wide);
                let mut stored = rng.vec((pos + 1).next_multiple_of(POSITION_TILE) * row);
                CacheType::F16.round(&mut stored);
                let label = format!("kv {kv} heads {heads} pos {pos} split {split} wide {wide}");
                let cache = storage_init(ctx, "cache", &encode_rows(CacheType::F16, &stored));
                let (qa_b, q_b) = (storage_f32(ctx, "q_abs", &q_abs), storage_f32(ctx, "q", &q));
                let table = attn_partial::rope_table(pos, rope, cfg.rope_base);
                let rope_b = storage_init(ctx, "rope", bytemuck::cast_slice(&table));
                let token = uniform(ctx, "token", &TokenParams::new(pos, split));
                let partial = poison(ctx, attn_partial::partial_len(&cfg, max_context));
                let q_parts = poison(ctx, attn_partial_coop::q_parts_words(&cfg));
                let kqv = poison(ctx, heads * kv);
                let a = attn_partial::Attention {
                    token: &token,
                    q_abs: &qa_b,
                    q: &q_b,
                    cache: &cache,
                    cache_type: CacheType::F16,
                    rope_cs: &rope_b,
                    partial: &partial,
                };
                let merge = attn_combine::Combine {
                    kqv: &kqv,
                    kv_a: &kv_a_b,
                    kv_norm: &kv_norm_b,
                };
                let token = attn_partial_coop::dispatches(ctx, &p, &cfg, max_context, &a, &q_parts);
                let combine = attn_combine::dispatch(ctx, &p, &cfg, max_context, &a, &merge);
                let mut grids = token.with_grids(attn_partial_coop::grid(&cfg, pos, split));
                grids.push((&combine, combine.workgroups));
                run_grids(ctx, &grids);
                // Over the rows the cache now holds (the token's own, written by the merge,
                // is checked by the f32 kernel's tests).
                let bytes = ctx
                    .read_bytes(&cache, ((pos + 1) * row * 2) as u64)
                    .unwrap();
                let rows = decode_rows(CacheType::F16, &bytes);
                let want = attention_cpu(&cfg, &rows, &q_abs, &q, pos, 1);
                check_within(
                    &label,
                    &ctx.read_f32(&kqv, heads * kv).unwrap(),
                    &want,
                    cooperative_tolerance(ctx, &cfg, &q_abs, &q, wide),
                );
            }
        }
    }
}

/// Routing every token of a batch: ids and weights equal `ops::route` for each token (exact
/// ties in the selection score included), shared experts after the routed ones.
#[test]
fn moe_route_matches_cpu_route_for_every_token() {
    let ctx = ctx(None, false);
    let p = Pipelines::new();
    let mut rng = Rng(27);
    let n = 45;
    for (experts, k, shared, norm) in [
        (16, 4, 1, true),
        (64, 4, 1, true),
        (8, 2, 0, false),
        (64, 8, 2, true),
    ] {
        let slots = k + shared;
        let mut logits = rng.vec(n * experts);
        let mut bias: Vec<f32> = rng.vec(experts).iter().map(|v| 0.1 * v).collect();
        for e in (0..experts).step_by(3) {
            bias[e] = 0.0;
            for t in (0..n).step_by(2) {
                logits[t * experts + e] = 0.25;
            }
        }
        let routing = moe_group::Routing {
            experts: experts + shared,
            slots,
            max_tokens: n + 3,
        };
        let rule = moe_route::Rule {
            experts,
            k,
            norm,
            scale: 1.8,
        };
        let route = storage_init(&ctx, "route", &vec![0xff; 4 * routing.route_len()]);
        let (lb, bb) = (
            storage_f32(&ctx, "logits", &logits),
            storage_f32(&ctx, "bias", &bias),
        );
        let nb = batch(&ctx, n, 0, 0);
        let d = moe_route::dispatch(&ctx, &p, &rule, &routing, &nb, &lb, &bb, &route);
        run_grids(&ctx, &[(&d, [n as u32, 1, 1])]);
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(
            &ctx.read_bytes(&route, 4 * routing.route_len() as u64)
                .unwrap(),
        );
        for t in 0..n {
            let want = ops::route(&logits[t * experts..][..experts], &bias, k, norm, 1.8);
            let label = format!("experts {experts} k {k} token {t}");
            let mut ids: Vec<u32> = want.iter().map(|w| w.0 as u32).collect();
            ids.extend((experts..experts + shared).map(|e| e as u32));
            assert_eq!(got[t * slots..][..slots], ids, "{label}");
            let mut weights: Vec<f32> = want.iter().map(|w| w.1).collect();
            weights.extend(std::iter::repeat_n(1.0, shared));
            let got_w: Vec<f32> = got[routing.weights_at() + t * slots..][..slots]
                .iter()
                .map(|&b| f32::from_bits(b))
                .collect();
            check_within(&format!("weights {label}"), &got_w, &weights, TOL);
        }
    }
}

/// Grouping a batch's pairs by expert: the counts and offsets of each expert (the CPU's
/// `tokens_of` grouping), each expert's tokens in its span, and each pair's place there.
#[test]
fn moe_group_matches_cpu_grouping() {
    let ctx = ctx(None, false);
    let p = Pipelines::new();
    let mut rng = Rng(28);
    for (experts, k, shared, n) in [(16, 4, 1, 300), (64, 4, 1, 77), (8, 2, 0, 1)] {
        let slots = k + shared;
        let routing = moe_group::Routing {
            experts: experts + shared,
            slots,
            max_tokens: n + 5,
        };
        // Distinct routed experts per token (the first few experts favoured), then shared.
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut chosen: Vec<usize> = Vec::new();
            while chosen.len() < k {
                let e = rng.below(experts).min(rng.below(experts));
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            ids.extend(chosen.iter().map(|&e| e as u32));
            ids.extend((experts..experts + shared).map(|e| e as u32));
        }
        let mut route = ids.clone();
        route.resize(routing.route_len(), 0);
        let route_b = storage_init(&ctx, "route", bytemuck::cast_slice(&route));
        let pairs_b = storage_init(&ctx, "pairs", &vec![0xff; 4 * routing.pairs_len()]);
        let nb = batch(&ctx, n, 0, 0);
        let d = moe_group::dispatch(&ctx, &p, &routing, &nb, &route_b, &pairs_b);
        run_grids(&ctx, &[(&d, [1, 1, 1])]);
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(
            &ctx.read_bytes(&pairs_b, 4 * routing.pairs_len() as u64)
                .unwrap(),
        );
        let total = experts + shared;
        let mut tokens_of = vec![Vec::new(); total];
        for (i, &e) in ids.iter().enumerate() {
            tokens_of[e as usize].push((i / slots) as u32);
        }
        let mut at = 0;
        for (e, want) in tokens_of.iter().enumerate() {
            assert_eq!(got[e] as usize, want.len(), "count of expert {e}");
            assert_eq!(got[total + e] as usize, at, "offset of expert {e}");
            let mut span = got[2 * total + at..][..want.len()].to_vec();
            span.sort_unstable();
            assert_eq!(&span, want, "tokens of expert {e}");
            at += want.len();
        }
        assert_eq!(at, n * slots);
        for (i, &e) in ids.iter().enumerate() {
            let q = got[routing.positions_at() + i] as usize;
            let (o, c) = (got[total + e as usize] as usize, got[e as usize] as usize);
            assert!(
                q >= o && q < o + c,
                "pair {i}: place {q} outside expert {e}'s span"
            );
            assert_eq!(
                got[2 * total + q] as usize,
                i / slots,
                "pair {i}: token at its place"
            );
        }
        let mut places: Vec<u32> = got[routing.positions_at()..][..n * slots].to_vec();
        places.sort_unstable();
        assert!(
            places.iter().enumerate().all(|(i, &q)| q as usize == i),
            "places are a permutation"
        );
        let counts: Vec<usize> = tokens_of.iter().map(Vec::len).collect();
        let want_tiles = tile_list(&counts, routing.pairs_len() - routing.tiles_at());
        assert_eq!(
            &got[routing.tiles_at()..routing.pairs_len()],
            &want_tiles[..],
            "tile list"
        );
    }
}

/// The weighted sum of each token's expert rows added to the residual.
#[test]
fn moe_combine_matches_cpu() {
    let ctx = ctx(None, false);
    let p = Pipelines::new();
    let mut rng = Rng(29);
    let (hidden, slots, n) = (136, 5, 23);
    let routing = moe_group::Routing {
        experts: 9,
        slots,
        max_tokens: n + 2,
    };
    let down = rng.vec(n * slots * hidden);
    let x = rng.vec(n * hidden);
    // A random place for every pair; random weights.
    let mut places: Vec<usize> = (0..n * slots).collect();
    for i in 0..places.len() {
        let k = i + rng.below(places.len() - i);
        places.swap(i, k);
    }
    let weights = rng.vec(n * slots);
    let mut route = vec![0u32; routing.route_len()];
    for (i, w) in weights.iter().enumerate() {
        route[routing.weights_at() + i] = w.to_bits();
    }
    let mut pairs = vec![0u32; routing.pairs_len()];
    for (i, &q) in places.iter().enumerate() {
        pairs[routing.positions_at() + i] = q as u32;
    }
    let (route_b, pairs_b, down_b, xb) = (
        storage_init(&ctx, "route", bytemuck::cast_slice(&route)),
        storage_init(&ctx, "pairs", bytemuck::cast_slice(&pairs)),
        storage_f32(&ctx, "down", &down),
        storage_f32(&ctx, "x", &x),
    );
    let nb = batch(&ctx, n, 0, 0);
    let d = moe_combine::dispatch(
        &ctx, &p, &routing, hidden, &nb, &route_b, &pairs_b, &down_b, &xb,
    );
    run_grids(&ctx, &[(&d, [n as u32, 1, 1])]);
    let mut want = x.clone();
    for t in 0..n {
        for c in 0..hidden {
            let mut acc = 0f32;
            for s in 0..slots {
                let i = t * slots + s;
                acc += weights[i] * down[places[i] * hidden + c];
            }
            want[t * hidden + c] += acc;
        }
    }
    check_within(
        "moe_combine",
        &ctx.read_f32(&xb, n * hidden).unwrap(),
        &want,
        TOL,
    );
}

/// Fixtures README: an engine computing in f32 reaches rel L2 <= 1e-4 on every row; the
/// batched and the token-by-token forward differ only in summation order.
const F32_TOLERANCE: f64 = 1e-4;

/// Tokens per chunk in the end-to-end tests: a matmul token tile and a bit (64 + 6), so
/// prompts of 63, 64 and 65 tokens are one chunk of one or two token tiles, and 150 are
/// three chunks.
const CHUNK: usize = 70;

fn load(name: &str) -> (GgufFile, Config) {
    let file = GgufFile::open(common::fixture(name)).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    (file, cfg)
}

fn gpu_options(cache_type: CacheType, chunk: usize) -> GpuOptions {
    GpuOptions {
        cache_type,
        prefill_chunk: Some(chunk),
        ..Default::default()
    }
}

/// What one model's end-to-end check runs.
struct Sweep {
    /// Prompt lengths fed from an empty cache, every row wanted.
    lengths: &'static [usize],
    /// Of those, the lengths also fed for the last row's logits and for its argmax.
    last_too: &'static [usize],
    /// (prefix already in the cache, tokens fed after it), every row wanted.
    after_prefix: &'static [(usize, usize)],
}

/// Batched logits of `model` against its token-by-token (decode schedule) logits, with the
/// cache type `cache_type`, within `tol`.
fn batched_equals_token_by_token(model: &str, sweep: &Sweep, cache_type: CacheType, tol: f64) {
    use glm_flash::backend::{Backend, Rows, Want};
    let longest = sweep
        .lengths
        .iter()
        .copied()
        .chain(sweep.after_prefix.iter().map(|(p, n)| p + n))
        .max()
        .unwrap();
    let (file, cfg) = load(model);
    let w = glm_flash::weights::Weights::from_gguf(&file, &cfg).unwrap();
    let vocab = cfg.vocab;
    let ids = token_ids(longest, vocab);
    let opts = gpu_options(cache_type, CHUNK);
    let mut gpu = glm_flash::gpu::GpuBackend::new(&cfg, &w, longest, &opts).unwrap();
    let name = format!("{model} ({} cache)", cache_type.name());
    let t = std::time::Instant::now();
    let mut want = Vec::with_capacity(longest * vocab);
    for (pos, &id) in ids.iter().enumerate() {
        want.extend(gpu.feed_logits(&[id], pos, Rows::Last).unwrap());
    }
    println!("{name}: {longest} tokens one by one in {:.2?}", t.elapsed());
    for &n in sweep.lengths {
        gpu.truncate(0).unwrap();
        let t = std::time::Instant::now();
        let got = gpu.feed_logits(&ids[..n], 0, Rows::All).unwrap();
        let label = format!("{name}: {n} tokens in {:.2?}", t.elapsed());
        assert_eq!(got.len(), n * vocab);
        assert_eq!(gpu.cache_len(), n);
        check_rows_within(&want, &got, vocab, 0, tol, &label);
        if !sweep.last_too.contains(&n) {
            continue;
        }
        gpu.truncate(0).unwrap();
        let last = gpu.feed_logits(&ids[..n], 0, Rows::Last).unwrap();
        check_rows_within(
            &want,
            &last,
            vocab,
            n - 1,
            tol,
            &format!("{name}: last of {n}"),
        );
        gpu.truncate(0).unwrap();
        let id = gpu.feed_argmax(&ids[..n], 0).unwrap();
        assert_eq!(id as usize, common::argmax(&last), "{name}: argmax of {n}");
    }
    for &(prefix, n) in sweep.after_prefix {
        gpu.truncate(0).unwrap();
        gpu.feed(&ids[..prefix], 0, Want::Nothing).unwrap();
        assert_eq!(gpu.cache_len(), prefix);
        let got = gpu
            .feed_logits(&ids[prefix..prefix + n], prefix, Rows::All)
            .unwrap();
        let label = format!("{name}: {n} tokens after {prefix}");
        check_rows_within(&want, &got, vocab, prefix, tol, &label);
    }
}

/// The Q8_0 models with the f32 cache: prompts of 1, 2, a token tile - 1, a tile, a tile +
/// 1 and three chunks, every row, the last row alone and its argmax; blocks after a prefix
/// already in the cache (within a chunk, at a chunk's end, across chunks).
#[test]
fn batched_logits_equal_token_by_token_logits_on_the_q8_0_models() {
    let sweep = Sweep {
        lengths: &[1, 2, 63, 64, 65, 2 * CHUNK + 10],
        last_too: &[2, 65, 2 * CHUNK + 10],
        after_prefix: &[(37, 20), (CHUNK - 3, 7), (5, 2 * CHUNK)],
    };
    for model in ["tiny-q8_0.gguf", "small2-q8_0.gguf"] {
        batched_equals_token_by_token(model, &sweep, CacheType::F32, F32_TOLERANCE);
    }
}

/// llama.cpp's K-quant and Q4_0 mixes with the f32 cache (every layout's mat-mul is
/// covered by the kernel test): two tokens, two token tiles, and a block across two chunks
/// after a prefix.
#[test]
fn batched_logits_equal_token_by_token_logits_on_the_kquant_models() {
    let sweep = Sweep {
        lengths: &[2, 65],
        last_too: &[65],
        after_prefix: &[(37, 40)],
    };
    for model in [
        "tiny-q4_0.gguf",
        "tiny-q2_k.gguf",
        "tiny-q5_k_m.gguf",
        "tiny-q6_k.gguf",
        "small2-q4_k_m.gguf",
    ] {
        batched_equals_token_by_token(model, &sweep, CacheType::F32, F32_TOLERANCE);
    }
}

/// The default f16 cache: the batched forward stores the rows the decode schedule stores
/// (a rare value rounded to the other neighbouring f16, where the two computed it a few
/// ulps apart), so the logits agree within the bound gpu_forward uses between the GPU and
/// the CPU with f16 caches.
#[test]
fn batched_logits_equal_token_by_token_logits_with_the_f16_cache() {
    let sweep = Sweep {
        lengths: &[65, 2 * CHUNK + 10],
        last_too: &[],
        after_prefix: &[(37, 60)],
    };
    batched_equals_token_by_token("tiny-q8_0.gguf", &sweep, CacheType::F16, 1e-4);
}

/// Greedy text after a batched prefill (the prompt in chunks of 4 tokens) is the CPU's: the
/// prompt's argmax, then 24 tokens of `decode_greedy`.
#[test]
fn greedy_tokens_after_a_batched_prefill_equal_cpu() {
    use glm_flash::backend::Backend;
    let case = common::load_case("tiny-q8_0.short");
    let (file, cfg) = load("tiny-q8_0.gguf");
    let w = glm_flash::weights::Weights::from_gguf(&file, &cfg).unwrap();
    let prompt = &case.tokens[..case.n_prompt];
    assert!(prompt.len() > 8, "the prompt spans several chunks");
    let opts = gpu_options(CacheType::F16, 4);
    let mut gpu = glm_flash::gpu::GpuBackend::new(&cfg, &w, 64, &opts).unwrap();
    let mut cpu = glm_flash::cpu::CpuBackend::new(&cfg, &w, 64, 0)
        .unwrap()
        .with_cache_type(CacheType::F16);
    let first = cpu.feed_argmax(prompt, 0).unwrap();
    assert_eq!(gpu.feed_argmax(prompt, 0).unwrap(), first);
    assert_eq!(gpu.stats().chunks, prompt.len().div_ceil(4) as u64);
    let decode = |b: &mut dyn Backend| {
        let mut ids = Vec::new();
        b.decode_greedy(first, prompt.len(), 24, &mut |id| {
            ids.push(id);
            true
        })
        .unwrap();
        ids
    };
    let want = decode(&mut cpu);
    assert_eq!(decode(&mut gpu), want);
    println!("greedy after a batched prefill: {first} {want:?}");
}

/// Hidden states (the output-normed rows the LM head reads) of every row and of the last,
/// for a batch and for one token, equal the CPU's; the cache grows as for logits.
#[test]
fn hidden_states_equal_cpu() {
    use glm_flash::backend::{Backend, Rows, Want};
    let (file, cfg) = load("small2-q8_0.gguf");
    let w = glm_flash::weights::Weights::from_gguf(&file, &cfg).unwrap();
    let ids = token_ids(30, cfg.vocab);
    let opts = gpu_options(CacheType::F32, 16);
    let mut gpu = glm_flash::gpu::GpuBackend::new(&cfg, &w, 64, &opts).unwrap();
    let mut cpu = glm_flash::cpu::CpuBackend::new(&cfg, &w, 64, 0).unwrap();
    let h = cfg.hidden;
    for (want, label) in [
        (Want::Hidden(Rows::All), "all rows"),
        (Want::Hidden(Rows::Last), "last row"),
    ] {
        gpu.truncate(0).unwrap();
        cpu.truncate(0).unwrap();
        let got = gpu.feed(&ids[..29], 0, want).unwrap().into_rows();
        let expect = cpu.feed(&ids[..29], 0, want).unwrap().into_rows();
        assert_eq!(gpu.cache_len(), 29);
        check_rows_within(
            &expect,
            &got,
            h,
            0,
            F32_TOLERANCE,
            &format!("hidden, {label}"),
        );
        let got = gpu.feed(&ids[29..], 29, want).unwrap().into_rows();
        let expect = cpu.feed(&ids[29..], 29, want).unwrap().into_rows();
        assert_eq!(got.len(), h);
        check_rows_within(
            &expect,
            &got,
            h,
            0,
            F32_TOLERANCE,
            &format!("hidden of one token, {label}"),
        );
    }
}

/// A chunk is one submit of one compute pass with the same dispatches per layer as the
/// stats report (the embedding and the head on top); a dense layer has 12 dispatches and a
/// MoE layer 16 when no matrix is split. Logits of more rows than one head pass writes take
/// a pass and a submit each.
#[test]
fn chunk_work_is_one_submit_and_the_reported_dispatches() {
    use glm_flash::backend::{Backend, Rows};
    let (file, cfg) = load("tiny-q8_0.gguf");
    let w = glm_flash::weights::Weights::from_gguf(&file, &cfg).unwrap();
    let mut gpu =
        glm_flash::gpu::GpuBackend::new(&cfg, &w, 128, &gpu_options(CacheType::F16, 32)).unwrap();
    let stats = gpu.stats().clone();
    assert_eq!(stats.chunk_tokens, 32);
    let layers = &stats.chunk_dispatches_per_layer;
    println!("dispatches per layer of a chunk: {layers:?}");
    assert_eq!(layers[0], 12, "dense layer");
    assert!(layers[1..].iter().all(|&n| n == 16), "MoE layers");
    let per_chunk: u64 = layers.iter().map(|&n| n as u64).sum::<u64>() + 1;
    gpu.feed_argmax(&token_ids(20, cfg.vocab), 0).unwrap();
    let s = gpu.stats().last_chunk;
    // + output norm, LM head mat-vec, two argmax passes
    assert_eq!(s.dispatches, per_chunk + 4);
    assert_eq!((s.submits, s.compute_passes, s.bytes_read_back), (1, 1, 4));
    gpu.feed_logits(&token_ids(9, cfg.vocab), 20, Rows::All)
        .unwrap();
    let s = gpu.stats().last_chunk;
    assert_eq!(s.dispatches, per_chunk + 2); // + output norm, LM head mat-mul
    assert_eq!(s.bytes_read_back, 4 * 9 * cfg.vocab as u64);
    assert_eq!(gpu.stats().chunks, 2);
    assert_eq!(
        gpu.instrumented().unwrap().last_chunk_stats(),
        Some(gpu.stats().last_chunk)
    );

    // 1 MiB bindings: a head pass writes 64 rows of 4096 logits, so 70 rows take two; the
    // logits are those of one pass.
    let ids = token_ids(70, cfg.vocab);
    gpu.truncate(0).unwrap();
    let want = gpu.feed_logits(&ids, 0, Rows::All).unwrap();
    let opts = GpuOptions {
        max_binding_bytes: Some(1 << 20),
        ..gpu_options(CacheType::F16, 70)
    };
    let mut split = glm_flash::gpu::GpuBackend::new(&cfg, &w, 128, &opts).unwrap();
    assert_eq!(split.stats().chunk_tokens, 70);
    let got = split.feed_logits(&ids, 0, Rows::All).unwrap();
    let s = split.stats().last_chunk;
    assert_eq!((s.submits, s.compute_passes), (2, 2));
    check_rows_within(&want, &got, cfg.vocab, 0, F32_TOLERANCE, "two head passes");
}

/// A profiled prompt: its earlier chunks fed as usual, its last chunk timed dispatch by
/// dispatch (as many names as the chunk's dispatches, every role of a layer among them), and
/// the cache after it the same as after a plain feed (the next token's logits agree). On an
/// adapter without timestamps inside passes, the error names the missing feature.
#[test]
fn a_profiled_prompt_times_its_last_chunk_and_fills_the_cache() {
    use glm_flash::backend::{Backend, Rows, Want};
    let (file, cfg) = load("tiny-q8_0.gguf");
    let w = glm_flash::weights::Weights::from_gguf(&file, &cfg).unwrap();
    let opts = gpu_options(CacheType::F32, 32);
    let mut plain = glm_flash::gpu::GpuBackend::new(&cfg, &w, 128, &opts).unwrap();
    let mut profiled = glm_flash::gpu::GpuBackend::new(&cfg, &w, 128, &opts).unwrap();
    let ids = token_ids(71, cfg.vocab);
    plain.feed(&ids, 0, Want::Nothing).unwrap();
    let profile = match profiled.profile_prompt(&ids, 0) {
        Ok(p) => p,
        Err(e) => {
            let why = e.to_string();
            println!("no profile on this adapter: {why}");
            assert!(why.contains("timestamp queries"), "{why}");
            return;
        }
    };
    let last = profiled.stats().last_chunk;
    assert_eq!(profile.dispatches.len() as u64, last.dispatches);
    assert_eq!(
        profiled.stats().chunks,
        3,
        "two chunks of 32, then the timed 7"
    );
    for role in [
        "kqv",
        "ffn_moe_gate_up",
        "ffn_moe_down",
        "attn_out",
        "result_argmax",
    ] {
        assert!(
            profile.dispatches.iter().any(|(n, _)| *n == role),
            "no {role} in the profile"
        );
    }
    assert!(profile
        .dispatches
        .iter()
        .all(|(_, t)| t.is_finite() && *t >= 0.0));
    let next = token_ids(1, cfg.vocab);
    let want = plain.feed_logits(&next, 71, Rows::Last).unwrap();
    let got = profiled.feed_logits(&next, 71, Rows::Last).unwrap();
    check_rows_within(
        &want,
        &got,
        cfg.vocab,
        0,
        F32_TOLERANCE,
        "after a profiled prompt",
    );
}
