//! Which cooperative-matrix loads from workgroup memory this adapter gets right: the step
//! from the mat-mul's tiles (loads from workgroup memory) to the attention's staged keys.
//!
//! Each variant is one workgroup of eight subgroups; subgroup `sg` multiplies a 16 x 64
//! matrix A (small integers) by the 64 values of keys 16 sg..16 sg + 15 of a [128 keys][64]
//! table (small integers, exact in f16) as B blocks, and stores its 16 x 16 result: every
//! sum is an exact integer, so a right load gives exactly the CPU's sums. The variants move
//! one step at a time from B loaded straight from storage to the attention kernel's pattern:
//! keys copied into workgroup memory (at the kernel's strides, copied as f16 values or as
//! 16-byte words), A loaded row-major, in slabs of 32 values with barriers inside a loop,
//! beside the kernel's other workgroup arrays, the result stored through workgroup memory,
//! and padded with another array up to the 48 KiB most drivers allow (wgpu does not check
//! that limit: the last variant passes it, and a driver may hang on it).
//!
//! `cargo run --release --example coop_loads [N]` (an adapter with cooperative matrices;
//! others only validate the variants' WGSL with naga). Without N it runs every variant
//! within the device's workgroup memory; with N, variant N alone (over the limit too), so a
//! variant that hangs the device takes only its own process with it.
mod cooperative;
use cooperative::small_int;
use glm_flash::gpu::upload::storage_init;

const KEYS: usize = 128;
const VALUES: usize = 64;
const ROWS: usize = 16;

/// One variant of the kernel.
struct Variant {
    what: &'static str,
    /// B from the staged copy in workgroup memory (else straight from storage).
    staged: bool,
    /// Stride of the staged keys (f16 values).
    stride: u32,
    /// The copy reads 16-byte words of the keys and unpacks them (else single f16 values).
    words: bool,
    /// A loaded row-major (`coopLoadT`, as the attention's score products do).
    a_row_major: bool,
    /// Copy and multiply 32 values at a time, barriers inside the loop.
    slabs: bool,
    /// The attention's other workgroup arrays declared and used (an f32 score tile before
    /// the staged keys, f16 weights after them: about 46 KB in all).
    beside: bool,
    /// The result stored to workgroup memory, then copied out (as the attention's scores).
    through_workgroup: bool,
    /// Another workgroup array, touched but otherwise unused, bringing the kernel's
    /// workgroup memory to this many bytes (0: none).
    pad_to: u32,
}

impl Variant {
    /// The bytes of workgroup memory the kernel declares, less the padding array.
    fn declared_bytes(&self) -> u32 {
        let stage = KEYS as u32 * self.stride.max(1) * 2;
        let beside = if self.beside { 4608 * 4 + 8704 * 2 } else { 0 };
        let through = if self.through_workgroup && !self.beside {
            8 * 256 * 4
        } else {
            0
        };
        stage + beside + through
    }

    /// The bytes of workgroup memory the kernel declares in all.
    fn workgroup_bytes(&self) -> u32 {
        self.declared_bytes().max(self.pad_to)
    }

    fn pad_words(&self) -> u32 {
        self.pad_to.saturating_sub(self.declared_bytes()) / 4
    }
}

const fn variant(what: &'static str, staged: bool, stride: u32) -> Variant {
    Variant {
        what,
        staged,
        stride,
        words: false,
        a_row_major: false,
        slabs: false,
        beside: false,
        through_workgroup: false,
        pad_to: 0,
    }
}

/// A variant padded with another workgroup array to `kib` KiB in all.
fn padded(what: &'static str, base: Variant, kib: u32) -> Variant {
    Variant {
        what,
        pad_to: kib * 1024,
        ..base
    }
}

fn variants() -> Vec<Variant> {
    vec![
        variant("B from storage", false, 0),
        variant("staged, stride 64", true, 64),
        variant("staged, stride 72", true, 72),
        Variant {
            words: true,
            ..variant("staged, stride 72, copied as words", true, 72)
        },
        Variant {
            a_row_major: true,
            ..variant("staged, stride 72, A row-major", true, 72)
        },
        Variant {
            slabs: true,
            ..variant("staged in slabs of 32, stride 40", true, 40)
        },
        Variant {
            slabs: true,
            beside: true,
            a_row_major: true,
            through_workgroup: true,
            ..variant("as the attention: slabs, stride 40, A row-major, beside, stored through workgroup memory", true, 40)
        },
        Variant {
            beside: true,
            a_row_major: true,
            through_workgroup: true,
            ..variant("as the attention, B from storage", false, 0)
        },
        padded("staged, stride 72, 32 KiB in all", variant("", true, 72), 32),
        padded("staged, stride 72, 40 KiB in all", variant("", true, 72), 40),
        padded("staged, stride 72, 44 KiB in all", variant("", true, 72), 44),
        padded("staged, stride 72, 46 KiB in all", variant("", true, 72), 46),
        padded("staged, stride 72, 47 KiB in all", variant("", true, 72), 47),
        padded("staged, stride 72, 48 KiB in all", variant("", true, 72), 48),
        padded("B from storage, 47 KiB in all", variant("", false, 0), 47),
        padded("B from storage, 48 KiB in all", variant("", false, 0), 48),
        // Over the 48 KiB most drivers allow; wgpu does not check it, NVIDIA's driver hangs.
        Variant {
            beside: true,
            ..variant("staged, stride 72, beside the other arrays", true, 72)
        },
    ]
}

fn source(v: &Variant) -> String {
    let slab = if v.slabs { 32 } else { VALUES };
    let stage_len = KEYS as u32 * v.stride.max(1);
    let mut beside = if v.beside {
        "var<workgroup> s_tile: array<f32, 4608>;\nvar<workgroup> p_parts: array<f16, 8704>;\n"
            .to_string()
    } else if v.through_workgroup {
        "var<workgroup> s_tile: array<f32, 2048>;\n".to_string()
    } else {
        String::new()
    };
    if v.pad_words() > 0 {
        beside += &format!("var<workgroup> pad: array<u32, {}>;\n", v.pad_words());
    }
    let copy = if v.words {
        "let w = keys_words[(key * 64u + dv) / 8u];
                for (var e = 0u; e < 4u; e++) {
                    let h = unpack2x16float(w[e]);
                    stage[at + 2u * e] = f16(h.x);
                    stage[at + 2u * e + 1u] = f16(h.y);
                }"
    } else {
        "for (var j = 0u; j < 8u; j++) {
                    stage[at + j] = keys[key * 64u + dv + j];
                }"
    };
    let stage_copy = if v.staged {
        format!(
            "workgroupBarrier();
            for (var i = lid; i < 128u * SLAB / 8u; i += 256u) {{
                let key = i / (SLAB / 8u);
                let dv = dc + 8u * (i % (SLAB / 8u));
                let at = key * SK + dv - dc;
                {copy}
            }}
            workgroupBarrier();"
        )
    } else {
        String::new()
    };
    let b_load = if v.staged {
        "coopLoad<coop_mat16x16<f16, B>>(&stage[16u * sg * SK + d], SK)"
    } else {
        "coopLoad<coop_mat16x16<f16, B>>(&keys[16u * sg * 64u + dc + d], 64u)"
    };
    let a_load = if v.a_row_major {
        "coopLoadT<coop_mat16x16<f16, A>>(&a_row[dc + d], 64u)"
    } else {
        "coopLoad<coop_mat16x16<f16, A>>(&a_col[(dc + d) * 16u], 16u)"
    };
    let store = if v.through_workgroup {
        "coopStore(s, &s_tile[sg * 256u], 16u);
    workgroupBarrier();
    for (var i = lid % 32u; i < 256u; i += 32u) {
        out[sg * 256u + i] = s_tile[sg * 256u + i];
    }"
    } else {
        "coopStore(s, &out[sg * 256u], 16u);"
    };
    let mut touch_beside = if v.beside {
        "if (lid == 0u) { s_tile[4607] = 0.0; p_parts[8703] = f16(0.0); }
    workgroupBarrier();
    if (lid == 999u) { out[0] = s_tile[4607] + f32(p_parts[8703]); }"
            .to_string()
    } else {
        String::new()
    };
    if v.pad_words() > 0 {
        // Every word written and read, so no compiler drops the array.
        touch_beside += &format!(
            "
    for (var i = lid; i < {n}u; i += 256u) {{ pad[i] = i; }}
    workgroupBarrier();
    if (pad[(lid * 97u) % {n}u] == 0xffffffffu) {{ out[1] = 1.0; }}",
            n = v.pad_words()
        );
    }
    format!(
        "enable f16;
enable wgpu_cooperative_matrix;
const SK: u32 = {sk}u;
const SLAB: u32 = {slab}u;
@group(0) @binding(0) var<storage, read> keys: array<f16>;
@group(0) @binding(1) var<storage, read> keys_words: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> a_col: array<f16>;
@group(0) @binding(3) var<storage, read> a_row: array<f16>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
{beside}var<workgroup> stage: array<f16, {stage_len}>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {{
    let sg = lid / 32u;
    // Every binding and array used, so the automatic layout holds them all.
    if (lid == 999u) {{
        out[0] = f32(keys[0]) + f32(keys_words[0].x) + f32(a_col[0]) + f32(a_row[0]);
        stage[0] = f16(0.0);
    }}
    {touch_beside}
    var s = coop_mat16x16<f32, C>();
    for (var dc = 0u; dc < 64u; dc += SLAB) {{
        {stage_copy}
        for (var d = 0u; d < SLAB; d += 16u) {{
            let a = {a_load};
            let b = {b_load};
            s = coopMultiplyAdd(a, b, s);
        }}
    }}
    {store}
}}
",
        sk = v.stride.max(1),
    )
}

fn validate_all() {
    for v in variants() {
        cooperative::validate(v.what, &source(&v), &[]);
        println!("{:<90} {:>6} B valid", v.what, v.workgroup_bytes());
    }
}

fn main() {
    let Some(ctx) = cooperative::context_or_validate(validate_all) else {
        return;
    };
    println!(
        "{}; {} bytes of workgroup memory",
        ctx.describe(),
        ctx.device.limits().max_compute_workgroup_storage_size
    );
    // `coop_loads N` runs variant N alone: a variant that hangs the device then takes
    // only its own process with it.
    let only: Option<usize> = std::env::args().nth(1).map(|a| {
        a.parse()
            .unwrap_or_else(|_| panic!("{a:?}: expected a variant's number"))
    });
    let keys: Vec<f32> = (0..KEYS * VALUES).map(|i| small_int(i, 4)).collect();
    let a: Vec<f32> = (0..ROWS * VALUES)
        .map(|i| small_int(i * 31 + 5, 2))
        .collect(); // [row][d]
    let a_col: Vec<f32> = (0..ROWS * VALUES)
        .map(|i| a[(i % ROWS) * VALUES + i / ROWS])
        .collect(); // [d][row]
                    // out[sg][key][row] = Σ_d a[row][d] keys[16 sg + key][d] (column-major 16 x 16 blocks)
    let want: Vec<f32> = (0..8 * 256)
        .map(|i| {
            let (sg, key, row) = (i / 256, (i % 256) / 16, i % 16);
            (0..VALUES)
                .map(|d| a[row * VALUES + d] * keys[(16 * sg + key) * VALUES + d])
                .sum()
        })
        .collect();
    let halves = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect()
    };
    let d = &ctx.device;
    let keys_b = storage_init(&ctx, "keys", &halves(&keys));
    let a_col_b = storage_init(&ctx, "a_col", &halves(&a_col));
    let a_row_b = storage_init(&ctx, "a_row", &halves(&a));
    for (n, v) in variants().into_iter().enumerate() {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let limit = ctx.device.limits().max_compute_workgroup_storage_size;
        if only.is_none() && v.workgroup_bytes() > limit {
            println!(
                "{n:>2} {:<90} {:>6} B skipped: over the device's {limit} (run it alone: {n})",
                v.what,
                v.workgroup_bytes()
            );
            continue;
        }
        let out = storage_init(&ctx, "out", bytemuck::cast_slice(&vec![f32::NAN; 8 * 256]));
        // As the engine makes its pipelines: its runtime checks, workgroup memory not zeroed.
        let checks = glm_flash::gpu::pipelines::runtime_checks();
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(v.what),
            source: wgpu::ShaderSource::Wgsl(source(&v).into()),
        };
        // SAFETY: every loop of these kernels ends (constant bounds and steps).
        let module = unsafe { d.create_shader_module_trusted(desc, checks) };
        let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(v.what),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let entries: Vec<wgpu::BindGroupEntry> = [&keys_b, &keys_b, &a_col_b, &a_row_b, &out]
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let group = d.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(v.what),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut enc = d.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        ctx.queue.submit([enc.finish()]);
        let got = ctx.read_f32(&out, 8 * 256).expect("read back");
        let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, |m, e| if e.is_nan() { f32::NAN } else { m.max(e) });
        println!(
            "{n:>2} {:<90} {:>6} B {}",
            v.what,
            v.workgroup_bytes(),
            if wrong == 0 {
                "right".to_string()
            } else {
                format!("WRONG: {wrong} of 2048 values, worst by {worst}")
            }
        );
    }
}
