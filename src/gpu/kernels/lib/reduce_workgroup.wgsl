// Workgroup-wide reductions through workgroup memory: the portable fallback for devices
// without subgroups. Appended by src/gpu/pipelines.rs to the kernels that reduce (the other
// choice is reduce_subgroup.wgsl; both define the same names). Call from uniform control
// flow: every invocation of the workgroup must call, and every one gets the result. WG: the
// workgroup size, prepended to every module.

var<workgroup> reduce_scratch: array<vec4<f32>, WG>;

/// Sum over the workgroup of each lane of `v`.
fn reduce_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    workgroupBarrier(); // a previous call may still be reading the scratch
    reduce_scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            reduce_scratch[lid] += reduce_scratch[lid + s];
        }
        workgroupBarrier();
    }
    return reduce_scratch[0];
}

/// Maximum over the workgroup of each lane of `v`.
fn reduce_max4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    workgroupBarrier();
    reduce_scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            reduce_scratch[lid] = max(reduce_scratch[lid], reduce_scratch[lid + s]);
        }
        workgroupBarrier();
    }
    return reduce_scratch[0];
}
