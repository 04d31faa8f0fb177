//! The Metal proxy: every WGSL kernel parses, validates with the capabilities Apple GPUs
//! have (with and without subgroups), and translates to MSL with naga. No GPU needed.

use glm_flash::gpu::pipelines::{all_shaders, Shader, REDUCE_SUBGROUP, REDUCE_WORKGROUP};
use naga::valid::{Capabilities, SubgroupOperationSet, ValidationFlags, Validator};

/// Every `.wgsl` file in `src/gpu/kernels/` (not `lib/`) is one registered kernel.
#[test]
fn every_wgsl_file_is_a_registered_kernel() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gpu/kernels");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".wgsl").map(str::to_string)
        })
        .collect();
    files.sort();
    let mut registered: Vec<String> = all_shaders().iter().map(|s| s.name.to_string()).collect();
    registered.sort();
    assert_eq!(files, registered);
    for s in all_shaders() {
        let on_disk = std::fs::read_to_string(dir.join(format!("{}.wgsl", s.name))).unwrap();
        assert_eq!(on_disk, s.source, "{} differs from its file", s.name);
    }
}

/// `unpack2x16float` (the Q8_0 scales): every Metal and Vulkan driver but lavapipe without
/// shader-f16 (src/gpu/context.rs refuses that one).
const F16_IN_F32: Capabilities = Capabilities::SHADER_FLOAT16_IN_FLOAT32;

fn capabilities(subgroups: bool) -> (Capabilities, SubgroupOperationSet) {
    if subgroups {
        (
            Capabilities::SUBGROUP | Capabilities::SHADER_FLOAT16 | F16_IN_F32,
            SubgroupOperationSet::all(),
        )
    } else {
        (
            Capabilities::SHADER_FLOAT16 | F16_IN_F32,
            SubgroupOperationSet::empty(),
        )
    }
}

/// The bool override constants of a kernel, each set to each value in turn (all false, all
/// true), as the launchers may; numeric overrides keep their defaults.
fn override_sets(module: &naga::Module) -> Vec<naga::back::PipelineConstants> {
    let is_bool = |ty| {
        matches!(
            module.types[ty].inner,
            naga::TypeInner::Scalar(naga::Scalar {
                kind: naga::ScalarKind::Bool,
                ..
            })
        )
    };
    [0.0, 1.0]
        .iter()
        .map(|&v| {
            let mut c = naga::back::PipelineConstants::default();
            for (_, o) in module.overrides.iter().filter(|(_, o)| is_bool(o.ty)) {
                c.insert(o.name.clone().unwrap(), v);
            }
            c
        })
        .collect()
}

fn check(shader: &Shader, subgroups: bool) {
    let src = shader.module_source(subgroups);
    let label = format!("{} (subgroups: {subgroups})", shader.name);
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&src)));
    let (caps, ops) = capabilities(subgroups);
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
    validator.subgroup_operations(ops);
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&src)));
    for constants in override_sets(&module) {
        let (module, info) =
            naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
                .unwrap_or_else(|e| panic!("{label}: overrides {constants:?}: {e}"));
        let options = naga::back::msl::Options {
            lang_version: (2, 4),
            fake_missing_bindings: true,
            ..Default::default()
        };
        let pipeline = naga::back::msl::PipelineOptions::default();
        let (msl, _) = naga::back::msl::write_string(&module, &info, &options, &pipeline)
            .unwrap_or_else(|e| panic!("{label}: MSL: {e:?}"));
        assert!(msl.contains("kernel void"), "{label}: no kernel in the MSL");
    }
}

#[test]
fn every_kernel_validates_and_translates_to_msl() {
    for shader in all_shaders() {
        check(&shader, false);
        if shader.reduces {
            check(&shader, true);
        }
    }
}

/// A kernel with subgroup builtins must not validate without the capability: this is why
/// the reduction is a separate library chosen per device (see src/gpu/pipelines.rs).
#[test]
fn subgroup_reduction_needs_the_capability() {
    let src = all_shaders()
        .into_iter()
        .find(|s| s.reduces)
        .unwrap()
        .module_source(true);
    let module = naga::front::wgsl::parse_str(&src).unwrap();
    let (caps, ops) = capabilities(false);
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    validator.subgroup_operations(ops);
    assert!(validator.validate(&module).is_err());
    // and both libraries define the same workgroup size as the Rust side
    for lib in [REDUCE_SUBGROUP, REDUCE_WORKGROUP] {
        assert!(lib.contains(&format!(
            "const WG: u32 = {}u;",
            glm_flash::gpu::context::WORKGROUP_SIZE
        )));
    }
}
