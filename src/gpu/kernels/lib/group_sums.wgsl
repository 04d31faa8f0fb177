// Sums over lane groups wider than a subgroup, for the mat-vec and expert kernels (appended
// by src/gpu/shader.rs to the kernels that list it, after their lane library): each
// LANES-wide lane_sum meets the others of its group in workgroup memory. The kernel declares
// LANES (lane_sum's width) and its workgroup size AWG. Call from uniform control flow.

var<workgroup> group_parts: array<vec4<f32>, AWG>;
var<workgroup> square_parts: array<f32, AWG>;

struct GroupSums {
    /// The products summed over the invocation's group.
    rows: vec4<f32>,
    /// The squares summed over the whole workgroup (an RMSNorm's).
    squares: f32,
}

/// `rows` summed over each group of `group` consecutive invocations (a multiple of LANES)
/// and, where `norm` (uniform over the workgroup), `squares` over the workgroup, with one pair
/// of barriers. Without `norm` the result's `squares` is 0 and nothing is spent on them.
fn group_sums(rows: vec4<f32>, squares: f32, norm: bool, group: u32, lid: u32) -> GroupSums {
    let r = lane_sum(rows, lid);
    var s = 0.0;
    if (norm) {
        s = lane_sum(vec4<f32>(squares, 0.0, 0.0, 0.0), lid).x;
    }
    workgroupBarrier(); // a previous call may still be reading the parts
    if (lid % LANES == 0u) {
        group_parts[lid / LANES] = r;
        square_parts[lid / LANES] = s;
    }
    workgroupBarrier();
    let parts = group / LANES;
    let first = lid / group * parts;
    var sums = GroupSums(group_parts[first], 0.0);
    for (var i = 1u; i < parts; i++) {
        sums.rows += group_parts[first + i];
    }
    if (norm) {
        for (var i = 0u; i < AWG / LANES; i++) {
            sums.squares += square_parts[i];
        }
    }
    return sums;
}
