// Workgroup-wide reductions with subgroup builtins, for devices with Features::SUBGROUP.
// Appended by src/gpu/pipelines.rs in place of reduce_workgroup.wgsl (same names). No
// `enable subgroups;`: naga rejects it and accepts the builtins when the device has them.
// The subgroup size is read at run time (subgroupAdd(1u)); we assume only that subgroups
// are runs of consecutive local invocation ids, as on every Vulkan and Metal driver seen.
// Call from uniform control flow. WG: the workgroup size, prepended to every module.

var<workgroup> reduce_scratch: array<vec4<f32>, WG>;

/// Sum over the workgroup of each lane of `v`.
fn reduce_sum4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    let partial = subgroupAdd(v);
    let size = subgroupAdd(1u);
    workgroupBarrier(); // a previous call may still be reading the scratch
    if (lid % size == 0u) {
        reduce_scratch[lid / size] = partial;
    }
    workgroupBarrier();
    var total = reduce_scratch[0];
    for (var i = 1u; i < WG / size; i++) {
        total += reduce_scratch[i];
    }
    return total;
}

/// Maximum over the workgroup of each lane of `v`.
fn reduce_max4(v: vec4<f32>, lid: u32) -> vec4<f32> {
    let partial = subgroupMax(v);
    let size = subgroupAdd(1u);
    workgroupBarrier();
    if (lid % size == 0u) {
        reduce_scratch[lid / size] = partial;
    }
    workgroupBarrier();
    var total = reduce_scratch[0];
    for (var i = 1u; i < WG / size; i++) {
        total = max(total, reduce_scratch[i]);
    }
    return total;
}
