// Weight layout Q4_K (see dot_rows4.wgsl for the interface): `quants` holds the file's
// 144-byte super-blocks as they are, 9 vec4 each, row-major: vec4 0 is `d | dmin` (f16
// pair) and the 12 bytes of 6-bit scales and mins; vec4 1..8 the 128 bytes of nibbles. Byte
// 32p + l of the nibbles holds value 64p + l (low nibble, sub-block 2p) and 64p + 32 + l
// (high nibble, sub-block 2p + 1). Value = d * scale * q - dmin * min, per sub-block of 32
// (`k4_scales`: lib/scales_k4.wgsl, appended after this).
// A unit is one vec4 of nibbles (k = 0..7 of a super-block): 16 values of sub-block 2p and
// the 16 of sub-block 2p + 1 at the same offsets, p = k / 2. A dot unit is one of its runs
// (its low or its high nibbles, `run_dot`): the two of a unit are adjacent, read by adjacent
// invocations in one memory transaction.

const UNIT_RUNS: u32 = 2u;
alias Unit = array<vec4<f32>, 8>;

fn unit_run(u: u32, k: u32) -> u32 {
    let j = u % 8u;
    return 256u * (u / 8u) + 64u * (j / 2u) + 16u * (j % 2u) + 32u * k;
}

/// The nibbles of a u32's four bytes from bit `shift` of each (0: the low ones, 4: the high).
fn nibbles(w: u32, shift: u32) -> vec4<f32> {
    let bits = vec4<u32>(0u, 8u, 16u, 24u) + vec4<u32>(shift);
    return codes_f32((vec4<u32>(w) >> bits) & vec4<u32>(15u), 0.0);
}

/// A unit as the words it decodes from: the batched mat-mul holds these (8 registers, not
/// the 32 values) while the step before is multiplied. Zeros decode to zeros.
struct Raw {
    head: vec4<u32>,
    q: vec4<u32>,
}

fn unit_raw(row: u32, units: u32, u: u32) -> Raw {
    let block = 9u * (row * (units / 8u) + u / 8u);
    return Raw(quants[block], quants[block + 1u + u % 8u]);
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    return raw_values(unit_raw(row, units, u), u, 1.0);
}

/// |value| <= 15 · 63 |d| + 63 |dmin| (codes to 15, 6-bit scales and mins).
fn raw_bound(r: Raw, u: u32) -> f32 {
    let dm = abs(unpack2x16float(r.head.x));
    return 945.0 * dm.x + 63.0 * dm.y;
}

fn raw_values(r: Raw, u: u32, scale: f32) -> Unit {
    let q = r.q;
    let s = k4_scales(r.head, (u % 8u) / 2u) * scale;
    let lo = vec4<f32>(s.x);
    let lm = vec4<f32>(s.y);
    let hi = vec4<f32>(s.z);
    let hm = vec4<f32>(s.w);
    return Unit(
        lo * nibbles(q.x, 0u) - lm, lo * nibbles(q.y, 0u) - lm,
        lo * nibbles(q.z, 0u) - lm, lo * nibbles(q.w, 0u) - lm,
        hi * nibbles(q.x, 4u) - hm, hi * nibbles(q.y, 4u) - hm,
        hi * nibbles(q.z, 4u) - hm, hi * nibbles(q.w, 4u) - hm,
    );
}

/// Σ (d·sc·q - dmin·m) x = d·sc Σ q x - dmin·m Σ x over run `r` of the row, run r % 2 of unit
/// r / 2 (the sum of x is the same for the four rows of dot_rows4).
fn run_dot(row: u32, runs: u32, r: u32, x: Run) -> f32 {
    let u = r / 2u;
    let raw = unit_raw(row, runs / 2u, u);
    let s4 = k4_scales(raw.head, (u % 8u) / 2u);
    let s = select(s4.xy, s4.zw, r % 2u == 1u);
    let shift = 4u * (r % 2u);
    let q = raw.q;
    let qx = dot(nibbles(q.x, shift), x[0]) + dot(nibbles(q.y, shift), x[1])
        + dot(nibbles(q.z, shift), x[2]) + dot(nibbles(q.w, shift), x[3]);
    let xs = dot((x[0] + x[1]) + (x[2] + x[3]), vec4<f32>(1.0));
    return s.x * qx - s.y * xs;
}
