// Weight layout Q8_0 (see dot_rows4.wgsl for the interface): `quants` holds the int8 quants,
// 4 per u32 (element 4i in the low byte), so 16 per vec4<u32>, row-major; `scales` holds the
// f16 block scales, two per u32 (even index in the low half), row-major. Value = scale *
// quant (`signed_bytes_f32`: the codes library shader.rs appends). A unit is one vec4 of
// quants: 16 values, half a block.

const UNIT_RUNS: u32 = 1u;
alias Unit = array<vec4<f32>, 4>;

fn unit_run(u: u32, k: u32) -> u32 {
    return 16u * u;
}

/// The f16 scale `i` of the scales array.
fn q8_scale(i: u32) -> f32 {
    return unpack2x16float(scales[i / 2u])[i % 2u];
}

/// A unit as the words it decodes from: the batched mat-mul holds these (5 registers, not
/// the 16 values) while the step before is multiplied. Zeros decode to zeros.
struct Raw {
    q: vec4<u32>,
    d: f32,
}

fn unit_raw(row: u32, units: u32, u: u32) -> Raw {
    return Raw(quants[row * units + u], q8_scale(row * (units / 2u) + u / 2u));
}

/// |value| <= 128 |d| (codes from -128 to 127).
fn raw_bound(r: Raw, u: u32) -> f32 {
    return 128.0 * abs(r.d);
}

fn raw_values(r: Raw, u: u32, scale: f32) -> Unit {
    let d = r.d * scale;
    return Unit(
        d * signed_bytes_f32(r.q.x), d * signed_bytes_f32(r.q.y),
        d * signed_bytes_f32(r.q.z), d * signed_bytes_f32(r.q.w),
    );
}

fn unit_values(row: u32, units: u32, u: u32) -> Unit {
    return raw_values(unit_raw(row, units, u), u, 1.0);
}

fn unit_dot(row: u32, units: u32, u: u32, x: Unit) -> f32 {
    let r = unit_raw(row, units, u);
    let q = r.q;
    return r.d * (dot(signed_bytes_f32(q.x), x[0]) + dot(signed_bytes_f32(q.y), x[1])
        + dot(signed_bytes_f32(q.z), x[2]) + dot(signed_bytes_f32(q.w), x[3]));
}
