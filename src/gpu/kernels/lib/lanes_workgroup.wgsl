// Sums and maxima over each group of LANES consecutive invocations, through workgroup
// memory: the portable fallback for devices without subgroups. Appended by
// src/gpu/shader.rs in place of lanes_subgroup.wgsl (same names) to the kernels that
// declare `lanes`; the kernel declares LANES and its workgroup size AWG. Every lane of a
// group gets the same bits. Call from uniform control flow.

var<workgroup> lane_scratch: array<vec4<f32>, AWG>;

/// Sum of `v` over this invocation's group of LANES.
fn lane_sum(v: vec4<f32>, lid: u32) -> vec4<f32> {
    workgroupBarrier(); // a previous call may still be reading the scratch
    lane_scratch[lid] = v;
    workgroupBarrier();
    let first = lid - lid % LANES;
    var s = lane_scratch[first];
    for (var i = 1u; i < LANES; i++) {
        s += lane_scratch[first + i];
    }
    return s;
}

/// Maximum of `v` over this invocation's group of LANES.
fn lane_max(v: vec4<f32>, lid: u32) -> vec4<f32> {
    workgroupBarrier();
    lane_scratch[lid] = v;
    workgroupBarrier();
    let first = lid - lid % LANES;
    var s = lane_scratch[first];
    for (var i = 1u; i < LANES; i++) {
        s = max(s, lane_scratch[first + i]);
    }
    return s;
}
