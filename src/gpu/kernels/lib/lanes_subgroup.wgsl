// Sums and maxima over each group of LANES consecutive invocations, with subgroup shuffles,
// for devices with Features::SUBGROUP (subgroups of at least 8 invocations: see
// src/gpu/context.rs). Appended by src/gpu/shader.rs in place of lanes_workgroup.wgsl (same
// names) to the kernels that declare `lanes`; the kernel declares LANES (a power of two, at
// most the device's smallest subgroup: 8 where a constant, `GpuContext::lane_limit` where
// the launcher chooses it) and its workgroup size AWG. The butterfly gives every lane of a
// group the same bits (each step adds the same two values, in either order). Call from
// uniform control flow.

/// Sum of `v` over this invocation's group of LANES.
fn lane_sum(v: vec4<f32>, lid: u32) -> vec4<f32> {
    var s = v;
    for (var o = 1u; o < LANES; o = o << 1u) {
        s += subgroupShuffleXor(s, o);
    }
    return s;
}

/// Maximum of `v` over this invocation's group of LANES.
fn lane_max(v: vec4<f32>, lid: u32) -> vec4<f32> {
    var s = v;
    for (var o = 1u; o < LANES; o = o << 1u) {
        s = max(s, subgroupShuffleXor(s, o));
    }
    return s;
}
