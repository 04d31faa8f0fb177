//! What a kernel asks of the adapter, read from its WGSL with naga and from its launcher's
//! binding list, against the smallest adapter the engine accepts (`gpu::context::MINIMUM`).

use glm_flash::gpu::context::{COOPERATIVE_WORKGROUP_BYTES, MINIMUM};
use glm_flash::gpu::shader::{GpuLayout, Shader, ShaderCaps, TileMath};

/// The weight layouts a kernel's modules are made for (one for a kernel without weights).
pub fn layouts(shader: &Shader) -> Vec<GpuLayout> {
    if shader.weights.reads_weights() {
        GpuLayout::ALL.to_vec()
    } else {
        vec![GpuLayout::F32]
    }
}

/// Why `shader` (its module for a device with or without subgroups, for every weight
/// layout) would not run on the smallest accepted adapter: one line per limit it exceeds.
/// A kernel written for cooperative matrices runs where the cooperative tiles do, which have
/// subgroups: its workgroup memory is held to what their device check asks for, and it is
/// never built without subgroups.
pub fn exceeds_minimum(shader: &Shader, subgroups: bool) -> Vec<String> {
    if shader.cooperative && !subgroups {
        return Vec::new();
    }
    layouts(shader)
        .into_iter()
        .flat_map(|l| exceeds_minimum_for(shader, subgroups, l))
        .collect()
}

/// The workgroup variables `module` declares: name and size in bytes.
fn workgroup_variables(module: &naga::Module) -> Vec<(String, u32)> {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).unwrap();
    module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| (g.name.clone().unwrap_or_default(), layouter[g.ty].size))
        .collect()
}

/// Bytes of workgroup memory `module` declares (each variable rounded up to 16 bytes).
pub fn workgroup_bytes(module: &naga::Module) -> u32 {
    workgroup_variables(module)
        .iter()
        .map(|(_, size)| size.next_multiple_of(16))
        .sum()
}

/// The workgroup variables of `module` whose size is not a multiple of 16 bytes, by name.
/// Vulkan leaves their placement to the driver and cooperative-matrix loads and stores
/// need 16-byte aligned addresses, so in a kernel with cooperative matrices one such
/// variable can misalign those laid out after it (it did, on an NVIDIA driver).
pub fn unaligned_workgroup_variables(module: &naga::Module) -> Vec<String> {
    workgroup_variables(module)
        .into_iter()
        .filter(|(_, size)| size % 16 != 0)
        .map(|(name, size)| format!("{name} ({size} bytes)"))
        .collect()
}

fn exceeds_minimum_for(shader: &Shader, subgroups: bool, weights: GpuLayout) -> Vec<String> {
    let caps = ShaderCaps {
        subgroups,
        tiles: TileMath::Fma,
    };
    let src = shader.module_source(caps, weights);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{}: {}", shader.name, e.emit_to_string(&src)));
    let workgroup_bytes = workgroup_bytes(&module);
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
            if shader.cooperative {
                COOPERATIVE_WORKGROUP_BYTES
            } else {
                m.workgroup_storage_bytes
            },
        ),
    ];
    checks
        .iter()
        .filter(|(_, uses, allowed)| *uses > *allowed as usize)
        .map(|(what, uses, allowed)| {
            format!(
                "{} (subgroups: {subgroups}, weights {}) uses {uses} {what}; the smallest accepted adapter allows {allowed}",
                shader.name,
                weights.name()
            )
        })
        .collect()
}
