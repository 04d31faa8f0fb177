//! What the examples that probe cooperative matrices share: the adapter, or on one without
//! cooperative matrices the variants' WGSL checked through naga instead, and the small
//! integers whose products and sums stay exact.
use glm_flash::gpu::{GpuContext, GpuOptions};

/// The default adapter if it has cooperative matrices. Otherwise says so, runs
/// `validate_all` (each variant through [`validate`]) and returns None.
pub fn context_or_validate(validate_all: impl FnOnce()) -> Option<GpuContext> {
    let ctx = GpuContext::new(&GpuOptions::default()).expect("a GPU adapter");
    if ctx.tiles.cooperative() {
        return Some(ctx);
    }
    println!(
        "{}: no cooperative matrices; the variants' WGSL through naga only:",
        ctx.describe()
    );
    validate_all();
    None
}

/// A kernel's WGSL through naga's validation (with the cooperative-matrix capability), its
/// overrides set to `constants`, and its SPIR-V writer: what an adapter without cooperative
/// matrices can check. Panics naming `what` on the first error.
pub fn validate(what: &str, src: &str, constants: &[(&str, f64)]) {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
    let caps = Capabilities::SHADER_FLOAT16
        | Capabilities::SHADER_FLOAT16_IN_FLOAT32
        | Capabilities::COOPERATIVE_MATRIX;
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(src)));
    let constants = constants
        .iter()
        .map(|&(name, value)| (name.to_string(), value))
        .collect();
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
            .unwrap_or_else(|e| panic!("{what}: overrides: {e:?}"));
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    naga::back::spv::write_vec(&module, &info, &Default::default(), Some(&pipeline))
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e:?}"));
}

/// A small integer for index i, in -m..=m: exact in f16, and the sums of its products
/// exact in f32.
pub fn small_int(i: usize, m: usize) -> f32 {
    (i.wrapping_mul(7919).wrapping_add(13) % (2 * m + 1)) as f32 - m as f32
}
