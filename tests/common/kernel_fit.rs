//! What a kernel asks of the adapter, read from its WGSL with naga and from its launcher's
//! binding list, against the smallest adapter the engine accepts (`gpu::context::MINIMUM`).

use glm_flash::gpu::context::MINIMUM;
use glm_flash::gpu::shader::Shader;

/// Why `shader` (its module for a device with or without subgroups) would not run on the
/// smallest accepted adapter: one line per limit it exceeds.
pub fn exceeds_minimum(shader: &Shader, subgroups: bool) -> Vec<String> {
    let src = shader.module_source(subgroups);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&src)));
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    let workgroup_bytes: u32 = module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| layouter[g.ty].size.next_multiple_of(16))
        .sum();
    let invocations: u32 = module
        .entry_points
        .iter()
        .map(|e| e.workgroup_size.iter().product::<u32>())
        .max()
        .unwrap_or(0);
    let m = MINIMUM;
    let checks = [
        (
            "bindings in its group",
            shader.bindings.len(),
            m.bindings_per_group,
        ),
        (
            "storage buffers",
            shader.storage_buffers(),
            m.storage_buffers_per_stage,
        ),
        (
            "uniform buffers",
            shader.uniform_buffers(),
            m.uniform_buffers_per_stage,
        ),
        (
            "invocations per workgroup",
            invocations as usize,
            m.invocations_per_workgroup,
        ),
        (
            "bytes of workgroup memory",
            workgroup_bytes as usize,
            m.workgroup_storage_bytes,
        ),
    ];
    checks
        .iter()
        .filter(|(_, uses, allowed)| *uses > *allowed as usize)
        .map(|(what, uses, allowed)| {
            format!(
                "{} (subgroups: {subgroups}) uses {uses} {what}; the smallest accepted adapter allows {allowed}",
                shader.name
            )
        })
        .collect()
}
