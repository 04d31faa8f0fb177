// The batched mat-mul's fetch of a weight unit for layouts without a raw form of their own
// (appended after the layout's library by src/gpu/shader.rs): what it holds between
// fetching a step's weights and storing them into the tiles is the decoded values.

alias Raw = Unit;

fn unit_raw(row: u32, units: u32, u: u32) -> Raw {
    return unit_values(row, units, u);
}

fn raw_bound(r: Raw, u: u32) -> f32 {
    var m = vec4<f32>(0.0);
    for (var i = 0u; i < 4u * UNIT_RUNS; i++) {
        m = max(m, abs(r[i]));
    }
    return max(max(m.x, m.y), max(m.z, m.w));
}

fn raw_values(r: Raw, u: u32, scale: f32) -> Unit {
    var v = r;
    for (var i = 0u; i < 4u * UNIT_RUNS; i++) {
        v[i] *= scale;
    }
    return v;
}
