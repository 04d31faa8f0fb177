// Four weight rows times one input vector: the inner loop of matvec.wgsl, ffn_gate_up.wgsl
// and ffn_down.wgsl, appended to them by src/gpu/pipelines.rs. The kernel declares
// `override WEIGHTS_F32: bool`, `quants: array<vec4<u32>>`, `scales: array<u32>` (layout in
// matvec.wgsl) and `fn input4(base: u32, j: u32) -> vec4<f32>` (input elements 4j..4j+3 of
// the slice at vec4 `base`). Invocation `lid` takes units lid, lid + WG, ...: each unit's
// input is loaded once for all four rows, and the four weight loads are independent, so
// they are in flight together.

/// Four signed bytes of a u32 as floats.
fn q8(w: u32) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u));
}

/// 16 quants (one vec4<u32>) times 16 inputs.
fn q8_dot16(q: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
    return dot(q8(q.x), x0) + dot(q8(q.y), x1) + dot(q8(q.z), x2) + dot(q8(q.w), x3);
}

/// The f16 scale `i` of the scales array.
fn q8_scale(i: u32) -> f32 {
    return unpack2x16float(scales[i / 2u])[i % 2u];
}

/// This invocation's share of rows[k] · input for k = 0..3 (rows are local to the binding).
fn dot_rows4(rows: vec4<u32>, cols: u32, base: u32, lid: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    if (WEIGHTS_F32) {
        let units = cols / 4u;
        let start = rows * units;
        for (var u = lid; u < units; u += WG) {
            let xv = input4(base, u);
            acc += vec4<f32>(
                dot(bitcast<vec4<f32>>(quants[start.x + u]), xv),
                dot(bitcast<vec4<f32>>(quants[start.y + u]), xv),
                dot(bitcast<vec4<f32>>(quants[start.z + u]), xv),
                dot(bitcast<vec4<f32>>(quants[start.w + u]), xv),
            );
        }
    } else {
        let units = cols / 16u;
        let start = rows * units;
        let first_scale = rows * (cols / 32u);
        for (var u = lid; u < units; u += WG) {
            let j = 4u * u;
            let x0 = input4(base, j);
            let x1 = input4(base, j + 1u);
            let x2 = input4(base, j + 2u);
            let x3 = input4(base, j + 3u);
            let qx = quants[start.x + u];
            let qy = quants[start.y + u];
            let qz = quants[start.z + u];
            let qw = quants[start.w + u];
            let si = first_scale + vec4<u32>(u / 2u);
            acc += vec4<f32>(
                q8_scale(si.x) * q8_dot16(qx, x0, x1, x2, x3),
                q8_scale(si.y) * q8_dot16(qy, x0, x1, x2, x3),
                q8_scale(si.z) * q8_dot16(qz, x0, x1, x2, x3),
                q8_scale(si.w) * q8_dot16(qw, x0, x1, x2, x3),
            );
        }
    }
    return acc;
}
