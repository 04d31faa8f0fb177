//! How fast the decode attention's score products can read an f16 latent cache on
//! cooperative matrices, by where their key blocks come from.
//!
//! Each variant runs the score phase of `lib/attn_tiles.wgsl` alone: workgroups of eight
//! subgroups walk their split of a cache of POSITIONS rows of 576 values in tiles of 32
//! keys, subgroup `sg` multiplying query row block `sg % 2` by key block `(sg / 2) % 2` over
//! side `sg / 4` of the row (18 of its 36 column blocks), and adding every tile into one
//! accumulator, stored at the end. The cache is larger than the L2, so each dispatch reads it
//! from memory. Variants:
//!   rows     the keys loaded from the cache as the engine stores it (a row of 576 values per
//!            position): each 16 x 16 block is 16 runs of 32 bytes, 1152 bytes apart;
//!   ahead    as rows, six blocks' loads written before their products, so they can be
//!            in flight together;
//!   blocks   the same values stored as 16 x 16 blocks of 512 contiguous bytes (16 positions
//!            by 16 columns, each position's 16 values together), loaded at stride 16;
//!   staged   each tile copied into workgroup memory in 16-byte words, a tile ahead, and
//!            loaded from there (vec4<f16> elements, rows padded to 584 values);
//!   rows_held, staged_held   as rows and staged, with the subgroup's 18 query blocks
//!            loaded once before the tiles and held (the decode attention's queries are the
//!            same for every tile), so only the keys are loaded per product;
//!   cached   every tile multiplies the first tile's keys (from the L1/L2): the products
//!            and query loads without the cache's traffic, a ceiling;
//!   stream   no products: every invocation adds its share of each tile's 16-byte words,
//!            the bandwidth a plain read reaches.
//! Keys and queries are small integers, so every sum is exact and a right variant gives the
//! CPU's sums exactly (checked on a few workgroups; `stream` is not checked).
//!
//! `cargo run --release --example cache_reads` (an adapter with cooperative matrices; others
//! only validate the variants' WGSL with naga; `--print NAME` prints one's WGSL). Prints, per variant and count of
//! workgroups, the median time of a dispatch and the cache's bytes over it.
use std::time::Instant;

mod cooperative;
use cooperative::small_int;
use glm_flash::gpu::upload::storage_init;

/// Values per cached position (latent 512 + rope 64), and their 16-wide column blocks.
const ROW: usize = 576;
const COL_BLOCKS: usize = ROW / 16;
/// Keys per tile, query rows, invocations per workgroup.
const KD: usize = 32;
const QR: usize = 32;
const AWG: usize = 256;
/// Staged row stride (f16 values): the row plus 16 bytes, so a block's rows fall on
/// different banks.
const KS: usize = ROW + 8;
/// 16-byte words of a tile, and each invocation's share of them.
const TILE_WORDS: usize = KD * ROW / 8;
const STAGED: usize = TILE_WORDS.div_ceil(AWG);
/// The positions of twelve layers at a 32768-token context: 453 MB, several times the L2.
const POSITIONS: usize = 12 * 32768;

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Rows,
    Ahead,
    Blocks,
    Staged,
    RowsHeld,
    StagedHeld,
    Cached,
    Stream,
}

const VARIANTS: [Variant; 8] = [
    Variant::Stream,
    Variant::Rows,
    Variant::Ahead,
    Variant::Blocks,
    Variant::Staged,
    Variant::RowsHeld,
    Variant::StagedHeld,
    Variant::Cached,
];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Rows => "rows",
            Variant::Ahead => "ahead",
            Variant::Blocks => "blocks",
            Variant::Staged => "staged",
            Variant::RowsHeld => "rows_held",
            Variant::StagedHeld => "staged_held",
            Variant::Cached => "cached",
            Variant::Stream => "stream",
        }
    }

    /// Keys copied into workgroup memory a tile ahead.
    fn staged(self) -> bool {
        matches!(self, Variant::Staged | Variant::StagedHeld)
    }

    /// The subgroup's query blocks loaded once and held.
    fn held(self) -> bool {
        matches!(self, Variant::RowsHeld | Variant::StagedHeld)
    }

    /// Where value `col` of position `pos` lies in the cache buffer.
    fn index(self, pos: usize, col: usize) -> usize {
        match self {
            Variant::Blocks => {
                ((pos / 16) * COL_BLOCKS + col / 16) * 256 + (pos % 16) * 16 + col % 16
            }
            _ => pos * ROW + col,
        }
    }

    /// The expression loading key block `16 kb..` of the tile from t0 at column d.
    fn key_load(self) -> &'static str {
        match self {
            Variant::Rows | Variant::Ahead | Variant::RowsHeld => {
                "coopLoad<coop_mat16x16<f16, B>>(&cache[(t0 + 16u * kb) * ROW + d], ROW)"
            }
            Variant::Blocks => {
                "coopLoad<coop_mat16x16<f16, B>>(&cache[(((t0 + 16u * kb) / 16u) * (ROW / 16u) + d / 16u) * 256u], 16u)"
            }
            Variant::Staged | Variant::StagedHeld => {
                "coopLoad<coop_mat16x16<f16, B>>(&k_tile[(16u * kb * KS + d) / 4u], KS / 4u)"
            }
            Variant::Cached => "coopLoad<coop_mat16x16<f16, B>>(&cache[(16u * kb) * ROW + d], ROW)",
            Variant::Stream => "",
        }
    }
}

fn source(v: Variant) -> String {
    let header = format!(
        "enable f16;
enable wgpu_cooperative_matrix;
const ROW: u32 = {ROW}u;
const KD: u32 = {KD}u;
const KS: u32 = {KS}u;
const AWG: u32 = {AWG}u;
const TILE_WORDS: u32 = {TILE_WORDS}u;
const STAGED: u32 = {STAGED}u;
override WORKGROUPS: u32;
override TILES: u32;
@group(0) @binding(0) var<storage, read> cache: array<f16>;
@group(0) @binding(1) var<storage, read> cache_words: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> queries: array<f16>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

/// The word of the tile from t0 that invocation lid's unit u takes.
fn word_at(t0: u32, lid: u32, u: u32) -> u32 {{
    let w = lid + AWG * u;
    return (t0 * ROW) / 8u + w;
}}
"
    );
    let body = if v == Variant::Stream {
        "    var acc = vec4<u32>();
    for (var t = t_begin; t < t_end; t++) {
        for (var u = 0u; u < STAGED; u++) {
            if (lid + AWG * u < TILE_WORDS) {
                acc += cache_words[word_at(t * KD, lid, u)];
            }
        }
    }
    out[wg.x * AWG + lid] = f32((acc.x ^ acc.y ^ acc.z ^ acc.w) & 1u);
"
        .to_string()
    } else {
        let (prologue, stage) = if v.staged() {
            (
                "    var words: array<vec4<u32>, STAGED>;
    stage_load(&words, lid, t_begin * KD);
",
                "        workgroupBarrier();
        stage_store(&words, lid);
        stage_load(&words, lid, select(t0, t0 + KD, t + 1u < t_end));
        workgroupBarrier();
",
            )
        } else {
            ("", "")
        };
        // The products over the subgroup's 18 column blocks: one load pair then its
        // product at a time, or (ahead) six blocks' loads first, or (held) the 18 query
        // blocks loaded before the tiles and the loop over blocks written out.
        let blocks = ROW / 32;
        let group = match v {
            Variant::Ahead => 6,
            _ if v.held() => blocks,
            _ => 1,
        };
        let key = |j: usize| {
            v.key_load()
                .replace("+ d]", &format!("+ d{j}]"))
                .replace("d / 16u", &format!("d{j} / 16u"))
                .replace("KS + d)", &format!("KS + d{j})"))
        };
        let query = |d: &str| {
            format!("coopLoadT<coop_mat16x16<f16, A>>(&queries[16u * rb * ROW + {d}], ROW)")
        };
        let mut held = String::new();
        let mut products = String::new();
        for j in 0..group {
            products += &format!("            let d{j} = 16u * (side * {blocks}u + i + {j}u);\n");
            products += &format!("            let k{j} = {};\n", key(j));
            if v.held() {
                held += &format!(
                    "    let q{j} = {};\n",
                    query(&format!("16u * (side * {blocks}u + {j}u)"))
                );
            } else {
                products += &format!("            let q{j} = {};\n", query(&format!("d{j}")));
            }
        }
        for j in 0..group {
            products += &format!("            s = coopMultiplyAdd(q{j}, k{j}, s);\n");
        }
        format!(
            "    let sg = lid / 32u;
    let rb = sg % 2u;
    let kb = (sg / 2u) % 2u;
    let side = sg / 4u;
    var s = coop_mat16x16<f32, C>();
{held}{prologue}    for (var t = t_begin; t < t_end; t++) {{
        let t0 = t * KD;
{stage}        for (var i = 0u; i < {blocks}u; i += {group}u) {{
{products}        }}
    }}
    coopStore(s, &out[(wg.x * 8u + sg) * 256u], 16u);
"
        )
    };
    // Only the staged variant declares the tile: workgroup memory bounds how many
    // workgroups an SM holds.
    let staging = if v.staged() {
        "var<workgroup> k_tile: array<vec4<f16>, KD * KS / 4u>;

fn stage_load(words: ptr<function, array<vec4<u32>, STAGED>>, lid: u32, t0: u32) {
    for (var u = 0u; u < STAGED; u++) {
        if (lid + AWG * u < TILE_WORDS) {
            (*words)[u] = cache_words[word_at(t0, lid, u)];
        }
    }
}

fn stage_store(words: ptr<function, array<vec4<u32>, STAGED>>, lid: u32) {
    for (var u = 0u; u < STAGED; u++) {
        let w = lid + AWG * u;
        if (w < TILE_WORDS) {
            let at = ((w / (ROW / 8u)) * KS + 8u * (w % (ROW / 8u))) / 4u;
            let word = (*words)[u];
            k_tile[at] = vec4<f16>(vec4<f32>(unpack2x16float(word.x), unpack2x16float(word.y)));
            k_tile[at + 1u] = vec4<f16>(vec4<f32>(unpack2x16float(word.z), unpack2x16float(word.w)));
        }
    }
}
"
    } else {
        ""
    };
    format!(
        "{header}
{staging}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
    // Every binding and array used, so the automatic layout holds them all.
    if (lid == 999u) {{
        out[0] = f32(cache[0]) + f32(cache_words[0].x) + f32(queries[0]);
    }}
    let t_begin = wg.x * TILES / WORKGROUPS;
    let t_end = (wg.x + 1u) * TILES / WORKGROUPS;
{body}}}
"
    )
}

fn validate_all() {
    for v in VARIANTS {
        cooperative::validate(
            v.name(),
            &source(v),
            &[("WORKGROUPS", 132.0), ("TILES", 1024.0)],
        );
        println!("{:<11} valid", v.name());
    }
}

fn main() {
    // `cache_reads --print NAME` prints a variant's WGSL.
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--print" {
        let v = VARIANTS.iter().find(|v| v.name() == args[2]);
        let v = v.unwrap_or_else(|| panic!("{:?}: no such variant", args[2]));
        print!("{}", source(*v));
        return;
    }
    let Some(ctx) = cooperative::context_or_validate(validate_all) else {
        return;
    };
    let limits = ctx.device.limits();
    let fit = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        / (ROW as u64 * 2);
    let positions = POSITIONS.min(fit as usize / 512 * 512);
    let tiles = positions / KD;
    let bytes = positions * ROW * 2;
    println!(
        "{}; a cache of {positions} positions ({:.0} MB)",
        ctx.describe(),
        bytes as f64 / 1e6
    );

    // The buffer's value at index i is small_int(i, 2); each layout reads its own keys from it.
    let f16_of: Vec<u16> = (0..5)
        .map(|k| half::f16::from_f32(k as f32 - 2.0).to_bits())
        .collect();
    let cache_bits: Vec<u16> = (0..positions * ROW)
        .map(|i| f16_of[(small_int(i, 2) + 2.0) as usize])
        .collect();
    let queries: Vec<f32> = (0..QR * ROW).map(|i| small_int(i * 31 + 5, 2)).collect(); // [row][col]
    let query_bits: Vec<u16> = queries
        .iter()
        .map(|x| half::f16::from_f32(*x).to_bits())
        .collect();
    let d = &ctx.device;
    let cache_b = storage_init(&ctx, "cache", bytemuck::cast_slice(&cache_bits));
    let queries_b = storage_init(&ctx, "queries", bytemuck::cast_slice(&query_bits));
    drop(cache_bits);

    for v in VARIANTS {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(v.name()),
            source: wgpu::ShaderSource::Wgsl(source(v).into()),
        };
        let checks = glm_flash::gpu::pipelines::runtime_checks();
        // SAFETY: every loop of these kernels ends (bounds fixed at creation).
        let module = unsafe { d.create_shader_module_trusted(desc, checks) };
        for workgroups in [132usize, 264, 528, 1056] {
            let constants = [("WORKGROUPS", workgroups as f64), ("TILES", tiles as f64)];
            let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(v.name()),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            let out_len = workgroups * 8 * 256;
            let out = storage_init(&ctx, "out", bytemuck::cast_slice(&vec![f32::NAN; out_len]));
            let group = d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(v.name()),
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[&cache_b, &cache_b, &queries_b, &out]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| wgpu::BindGroupEntry {
                        binding: i as u32,
                        resource: b.as_entire_binding(),
                    })
                    .collect::<Vec<_>>(),
            });
            let run = |count: usize| {
                let mut enc = d.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &group, &[]);
                    for _ in 0..count {
                        pass.dispatch_workgroups(workgroups as u32, 1, 1);
                    }
                }
                let t = Instant::now();
                ctx.queue.submit([enc.finish()]);
                ctx.wait().expect("the device stays up");
                t.elapsed().as_secs_f64()
            };
            run(1);
            // Median of five submits of 21 dispatches less one of a single dispatch.
            let mut times: Vec<f64> = (0..5).map(|_| (run(21) - run(1)) / 20.0).collect();
            times.sort_by(f64::total_cmp);
            let t = times[2];

            let check = if v == Variant::Stream {
                "not checked".to_string()
            } else {
                let got = ctx.read_f32(&out, out_len).expect("read back");
                let mut wrong = 0;
                for w in [0, workgroups / 2, workgroups - 1] {
                    let (t_begin, t_end) = (w * tiles / workgroups, (w + 1) * tiles / workgroups);
                    for sg in 0..8 {
                        let (rb, kb, side) = (sg % 2, (sg / 2) % 2, sg / 4);
                        for e in 0..256 {
                            let (key, row) = (e / 16, e % 16);
                            let mut sum = 0f32;
                            for t in t_begin..t_end {
                                let t0 = if v == Variant::Cached { 0 } else { t * KD };
                                let pos = t0 + 16 * kb + key;
                                for col in side * ROW / 2..(side + 1) * ROW / 2 {
                                    sum += queries[(16 * rb + row) * ROW + col]
                                        * small_int(v.index(pos, col), 2);
                                }
                            }
                            if got[(w * 8 + sg) * 256 + e] != sum {
                                wrong += 1;
                            }
                        }
                    }
                }
                if wrong == 0 {
                    "right".to_string()
                } else {
                    format!("WRONG: {wrong} of {} values", 3 * 8 * 256)
                }
            };
            println!(
                "{:<11} {workgroups:5} workgroups: {:8.1} us a dispatch, {:7.1} GB/s of the cache; {check}",
                v.name(),
                t * 1e6,
                bytes as f64 / t / 1e9,
            );
        }
    }
}
