// Weight layout Q6_K (see dot_rows4.wgsl for the interface), row-major per super-block:
// `quants` holds `ql` (128 bytes) then `qh` (64 bytes), 12 vec4; `scales` holds the 16
// signed 8-bit sub-block scales then `d` as f32, 5 u32. In half h (128 values), byte
// 64h + 32a + l of `ql` holds value 128h + 32a + l (low nibble) and 128h + 32a + 64 + l
// (high nibble); byte 32h + l of `qh` holds the top two bits of value 128h + 32q + l at bit
// 2q. Value = d * scale * (q - 32), per sub-block of 16.
// A unit (j = 0..7 of a super-block: h = j / 4, a = j % 2, l0 = 16 * ((j / 2) % 2)) is one
// vec4 of `ql` and one of `qh`: runs 128h + 32a + l0 and 128h + 32a + 64 + l0. The two units
// with a = 0, 1 read the same `qh` vec4 (adjacent invocations: one memory transaction). A
// dot unit is one run of a unit (`run_dot`; the two of a unit are adjacent, as above).

const UNIT_RUNS: u32 = 2u;
alias Unit = array<vec4<f32>, 8>;

fn unit_run(u: u32, k: u32) -> u32 {
    let j = u % 8u;
    return 256u * (u / 8u) + 128u * (j / 4u) + 32u * (j % 2u) + 16u * ((j / 2u) % 2u) + 64u * k;
}

/// The codes minus 32 of four values: a nibble of `w` from bit `shift` of each byte, two
/// bits of `h` from bit `bit` of each byte.
fn q6_k_codes(w: u32, shift: u32, h: u32, bit: u32) -> vec4<f32> {
    let bytes = vec4<u32>(0u, 8u, 16u, 24u);
    let low = (vec4<u32>(w) >> (bytes + vec4<u32>(shift))) & vec4<u32>(15u);
    let high = ((vec4<u32>(h) >> (bytes + vec4<u32>(bit))) & vec4<u32>(3u)) << vec4<u32>(4u);
    return codes_f32(low | high, 32.0);
}

/// The signed scale byte `i` of super-block `block`'s scales.
fn q6_k_scale(block: u32, i: u32) -> f32 {
    let w = scales[5u * block + i / 4u];
    return f32(bitcast<i32>(w << (24u - 8u * (i % 4u))) >> 24u);
}

/// A unit as the words it decodes from and its two runs' factors: the batched mat-mul
/// holds these (10 registers, not the 32 values) while the step before is multiplied. Zeros
/// decode to zeros.
struct Raw {
    q: vec4<u32>,
    h: vec4<u32>,
    s: vec2<f32>,
}

/// Where unit u of `row` lies: its super-block, its `ql` and `qh` vec4s (quants indices) and
/// the scale index of its run 0 (run 1's is 4 more).
struct Q6kPlace {
    block: u32,
    q: u32,
    h: u32,
    sub: u32,
}

fn q6_k_place(row: u32, units: u32, u: u32) -> Q6kPlace {
    let block = row * (units / 8u) + u / 8u;
    let j = u % 8u;
    let h = j / 4u;
    let a = j % 2u;
    let l16 = (j / 2u) % 2u;
    return Q6kPlace(
        block,
        12u * block + 4u * h + 2u * a + l16,
        12u * block + 8u + 2u * h + l16,
        8u * h + l16 + 2u * a,
    );
}

/// d * scale of run k of the unit at `at`.
fn q6_k_run_scale(at: Q6kPlace, k: u32) -> f32 {
    return bitcast<f32>(scales[5u * at.block + 4u]) * q6_k_scale(at.block, at.sub + 4u * k);
}

fn unit_raw(row: u32, units: u32, u: u32) -> Raw {
    let at = q6_k_place(row, units, u);
    let s = vec2<f32>(q6_k_run_scale(at, 0u), q6_k_run_scale(at, 1u));
    return Raw(quants[at.q], quants[at.h], s);
}

/// |value| <= 32 |d · scale| per run (codes from -32 to 31).
fn raw_bound(r: Raw, u: u32) -> f32 {
    return 32.0 * max(abs(r.s.x), abs(r.s.y));
}

/// The 32 codes (minus 32) of unit u, run 0 then run 1.
fn raw_codes(r: Raw, u: u32) -> Unit {
    let bit = 2u * ((u % 8u) % 2u);
    return Unit(
        q6_k_codes(r.q.x, 0u, r.h.x, bit), q6_k_codes(r.q.y, 0u, r.h.y, bit),
        q6_k_codes(r.q.z, 0u, r.h.z, bit), q6_k_codes(r.q.w, 0u, r.h.w, bit),
        q6_k_codes(r.q.x, 4u, r.h.x, bit + 4u), q6_k_codes(r.q.y, 4u, r.h.y, bit + 4u),
        q6_k_codes(r.q.z, 4u, r.h.z, bit + 4u), q6_k_codes(r.q.w, 4u, r.h.w, bit + 4u),
    );
}

fn raw_values(r: Raw, u: u32, scale: f32) -> Unit {
    let c = raw_codes(r, u);
    let s = r.s * scale;
    return Unit(
        s.x * c[0], s.x * c[1], s.x * c[2], s.x * c[3],
        s.y * c[4], s.y * c[5], s.y * c[6], s.y * c[7],
    );
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    return raw_values(unit_raw(row, units, u), u, 1.0);
}

/// Σ value · x over run `r` of the row, run r % 2 of unit r / 2.
fn run_dot(row: u32, runs: u32, r: u32, x: Run) -> f32 {
    let k = r % 2u;
    let at = q6_k_place(row, runs / 2u, r / 2u);
    let q = quants[at.q];
    let h = quants[at.h];
    let s = q6_k_run_scale(at, k);
    let shift = 4u * k;
    let bit = 2u * ((r / 2u) % 2u) + shift;
    return s * (dot(q6_k_codes(q.x, shift, h.x, bit), x[0])
        + dot(q6_k_codes(q.y, shift, h.y, bit), x[1])
        + dot(q6_k_codes(q.z, shift, h.z, bit), x[2])
        + dot(q6_k_codes(q.w, shift, h.w, bit), x[3]));
}
