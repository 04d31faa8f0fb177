//! Every WGSL kernel, read by naga without a GPU: it parses, validates with the
//! capabilities Apple GPUs have (with and without subgroups) and translates to MSL (the Metal
//! proxy); its bindings, uniform structs and overrides are the ones its launcher declares;
//! it fits the smallest adapter the engine accepts.
mod common;

use glm_flash::gpu::context::{cooperative_workgroup_bytes, COOPERATIVE_WORKGROUP_BYTES};
use glm_flash::gpu::kernels::all_shaders;
use glm_flash::gpu::shader::{GpuLayout, Scalar, Shader, ShaderCaps, Slot, TileMath, WeightAccess};
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

fn caps(subgroups: bool) -> ShaderCaps {
    ShaderCaps {
        subgroups,
        tiles: TileMath::Fma,
    }
}

/// `module` (parsed from `src`) validated for compute with these capabilities, or a panic
/// naming `label` with naga's report.
fn validate(
    label: &str,
    src: &str,
    module: &naga::Module,
    caps: Capabilities,
    ops: SubgroupOperationSet,
) -> naga::valid::ModuleInfo {
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
    validator.subgroup_operations(ops);
    validator
        .validate(module)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)))
}

fn check(shader: &Shader, subgroups: bool, weights: GpuLayout) {
    let src = shader.module_source(caps(subgroups), weights);
    let label = format!(
        "{} (subgroups: {subgroups}, weights {})",
        shader.name,
        weights.name()
    );
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&src)));
    let (caps, ops) = capabilities(subgroups);
    let info = validate(&label, &src, &module, caps, ops);
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
    for shader in all_shaders().into_iter().filter(|s| !s.cooperative) {
        for weights in common::kernel_fit::layouts(&shader) {
            check(&shader, false, weights);
            if shader.reduces || shader.lanes {
                check(&shader, true, weights);
            }
        }
    }
}

/// On Vulkan the engine writes a cooperative module's SPIR-V itself, its workgroup memory
/// made coherent (`glm_flash::gpu::memory_model`); this checks that it can for `src`, so no
/// kernel falls back to wgpu's SPIR-V on the device.
fn coherent_spirv_is_written(label: &str, src: &str) {
    let spirv = glm_flash::gpu::pipelines::coherent_spirv(src, &Default::default())
        .unwrap_or_else(|e| panic!("{label}: coherent SPIR-V: {e}"));
    assert_eq!(spirv.words[0], 0x0723_0203, "{label}: not a SPIR-V module");
}

/// The batched mat-mul's cooperative tiles (f16 parts, or f16-rounded values, in 16x16
/// cooperative matrices), in every weight layout: they validate with the capability, not
/// without it, translate to SPIR-V (what Vulkan drivers get) with every bool override, and
/// use exactly the workgroup memory of their parts (`cooperative_workgroup_bytes`), the
/// most of which the device check admits (`COOPERATIVE_WORKGROUP_BYTES`).
#[test]
fn cooperative_tiles_validate_translate_to_spirv_and_fit_their_budget() {
    let tiled: Vec<Shader> = all_shaders()
        .into_iter()
        .filter(|s| s.weights == WeightAccess::Tiles)
        .collect();
    assert!(!tiled.is_empty());
    for (shader, tiles) in tiled
        .iter()
        .flat_map(|s| [(s, TileMath::Split), (s, TileMath::F16)])
    {
        let coop = ShaderCaps {
            subgroups: true,
            tiles,
        };
        assert!(cooperative_workgroup_bytes(tiles) <= COOPERATIVE_WORKGROUP_BYTES);
        for weights in GpuLayout::ALL {
            let src = shader.module_source(coop, weights);
            let label = format!(
                "{} {tiles:?} tiles, weights {}",
                shader.name,
                weights.name()
            );
            assert!(
                src.contains("coopMultiplyAdd"),
                "{label}: not the cooperative tiles"
            );
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&src)));
            let (caps, ops) = capabilities(true);
            assert!(
                Validator::new(ValidationFlags::all(), caps)
                    .subgroup_operations(ops)
                    .validate(&module)
                    .is_err(),
                "{label}: validates without the cooperative-matrix capability"
            );
            let info = validate(
                &label,
                &src,
                &module,
                caps | Capabilities::COOPERATIVE_MATRIX,
                ops,
            );
            for constants in override_sets(&module) {
                let (module, info) = naga::back::pipeline_constants::process_overrides(
                    &module, &info, None, &constants,
                )
                .unwrap_or_else(|e| panic!("{label}: overrides {constants:?}: {e}"));
                let options = naga::back::spv::Options {
                    lang_version: (1, 3),
                    ..Default::default()
                };
                let words = naga::back::spv::write_vec(&module, &info, &options, None)
                    .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e:?}"));
                assert_eq!(words[0], 0x0723_0203, "{label}: not a SPIR-V module");
            }
            coherent_spirv_is_written(&label, &src);
            assert_eq!(
                common::kernel_fit::workgroup_bytes(&module),
                cooperative_workgroup_bytes(tiles),
                "{label}: workgroup memory"
            );
            assert_eq!(
                common::kernel_fit::unaligned_workgroup_variables(&module),
                Vec::<String>::new(),
                "{label}: workgroup variables that may misalign the cooperative ones"
            );
        }
    }
}

/// The kernels written for cooperative matrices (run where the cooperative tiles run,
/// with subgroups), with the f16 parts of either cooperative tile math: they validate with
/// the capability, not without it, translate to SPIR-V with every bool override, and use
/// the workgroup memory their launchers declare.
#[test]
fn cooperative_kernels_validate_translate_to_spirv_and_declare_their_memory() {
    use glm_flash::gpu::kernels::attn_batch_coop;
    // Both attention kernels keep the workgroup memory of lib/attn_tiles.wgsl.
    let coop: Vec<Shader> = all_shaders()
        .into_iter()
        .filter(|s| s.cooperative)
        .collect();
    assert_eq!(coop.len(), 2);
    for (shader, tiles) in coop
        .iter()
        .flat_map(|s| [(s, TileMath::Split), (s, TileMath::F16)])
    {
        let with = ShaderCaps {
            subgroups: true,
            tiles,
        };
        let label = &format!("{} {tiles:?}", shader.name);
        let src = shader.module_source(with, GpuLayout::F32);
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(&src)));
        let (caps, ops) = capabilities(true);
        assert!(
            Validator::new(ValidationFlags::all(), caps)
                .subgroup_operations(ops)
                .validate(&module)
                .is_err(),
            "{label}: validates without the cooperative-matrix capability"
        );
        let info = validate(
            label,
            &src,
            &module,
            caps | Capabilities::COOPERATIVE_MATRIX,
            ops,
        );
        for constants in override_sets(&module) {
            let (module, info) =
                naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
                    .unwrap_or_else(|e| panic!("{label}: overrides {constants:?}: {e}"));
            let options = naga::back::spv::Options {
                lang_version: (1, 3),
                ..Default::default()
            };
            let words = naga::back::spv::write_vec(&module, &info, &options, None)
                .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e:?}"));
            assert_eq!(words[0], 0x0723_0203, "{label}: not a SPIR-V module");
        }
        coherent_spirv_is_written(label, &src);
        assert_eq!(
            common::kernel_fit::unaligned_workgroup_variables(&module),
            Vec::<String>::new(),
            "{label}: workgroup variables that may misalign the cooperative ones"
        );
        let bytes = attn_batch_coop::workgroup_bytes(tiles);
        assert_eq!(
            common::kernel_fit::workgroup_bytes(&module),
            bytes,
            "{label}: workgroup memory"
        );
        assert!(bytes <= COOPERATIVE_WORKGROUP_BYTES);
    }
}

/// A kernel with subgroup builtins must not validate without the capability: this is why
/// the reduction is a separate library chosen per device (see src/gpu/shader.rs).
#[test]
fn subgroup_reduction_needs_the_capability() {
    let src = all_shaders()
        .into_iter()
        .find(|s| s.reduces)
        .unwrap()
        .module_source(caps(true), GpuLayout::F32);
    let module = naga::front::wgsl::parse_str(&src).unwrap();
    let (caps, ops) = capabilities(false);
    let mut validator = Validator::new(ValidationFlags::all(), caps);
    validator.subgroup_operations(ops);
    assert!(validator.validate(&module).is_err());
}

fn scalar_of(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Option<Scalar> {
    match module.types[ty].inner {
        naga::TypeInner::Scalar(naga::Scalar { kind, width: 4 }) => match kind {
            naga::ScalarKind::Uint => Some(Scalar::U32),
            naga::ScalarKind::Float => Some(Scalar::F32),
            _ => None,
        },
        naga::TypeInner::Scalar(naga::Scalar {
            kind: naga::ScalarKind::Bool,
            ..
        }) => Some(Scalar::Bool),
        _ => None,
    }
}

/// What the launcher declares (bindings with the Rust struct of each uniform, overrides)
/// against what the WGSL module declares, as naga reflects it.
fn check_declarations(shader: &Shader, weights: GpuLayout) {
    let src = shader.module_source(caps(false), weights);
    let name = shader.name;
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
    let mut bound: Vec<(u32, &naga::GlobalVariable)> = module
        .global_variables
        .iter()
        .filter_map(|(_, g)| g.binding.as_ref().map(|b| (b, g)))
        .map(|(b, g)| {
            assert_eq!(b.group, 0, "{name}: {:?} is not in group 0", g.name);
            (b.binding, g)
        })
        .collect();
    bound.sort_by_key(|(b, _)| *b);
    assert_eq!(
        bound.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
        (0..shader.bindings.len() as u32).collect::<Vec<_>>(),
        "{name}: the WGSL bindings are not the launcher's 0..{}",
        shader.bindings.len()
    );
    for ((i, g), slot) in bound.iter().zip(shader.bindings) {
        let var = format!("{name} binding {i} ({})", g.name.as_deref().unwrap_or("?"));
        match slot {
            Slot::Uniform(layout) => {
                assert_eq!(g.space, naga::AddressSpace::Uniform, "{var}: not a uniform");
                let naga::TypeInner::Struct { members, span } = &module.types[g.ty].inner else {
                    panic!("{var}: not a struct");
                };
                let wgsl_name = module.types[g.ty].name.as_deref();
                assert_eq!(wgsl_name, Some(layout.name), "{var}: struct name");
                let wgsl: Vec<(String, u32, Option<Scalar>)> = members
                    .iter()
                    .map(|m| {
                        let n = m.name.clone().unwrap_or_default();
                        (n, m.offset, scalar_of(&module, m.ty))
                    })
                    .collect();
                let rust: Vec<(String, u32, Option<Scalar>)> = layout
                    .members
                    .iter()
                    .map(|m| (m.name.to_string(), m.offset as u32, Some(m.ty)))
                    .collect();
                assert_eq!(wgsl, rust, "{var}: WGSL members vs the Rust struct");
                assert_eq!(*span as usize, layout.size, "{var}: struct size");
            }
            Slot::Read | Slot::ReadWrite => {
                let naga::AddressSpace::Storage { access } = g.space else {
                    panic!("{var}: not a storage buffer");
                };
                let writes = access.contains(naga::StorageAccess::STORE);
                assert_eq!(
                    writes,
                    matches!(slot, Slot::ReadWrite),
                    "{var}: read_write in one, read in the other"
                );
            }
        }
    }
    let mut wgsl: Vec<(String, Option<Scalar>)> = module
        .overrides
        .iter()
        .map(|(_, o)| (o.name.clone().unwrap(), scalar_of(&module, o.ty)))
        .collect();
    wgsl.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rust: Vec<(String, Option<Scalar>)> = shader
        .overrides
        .iter()
        .map(|o| (o.name.to_string(), Some(o.ty)))
        .collect();
    rust.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(wgsl, rust, "{name}: WGSL overrides vs the launcher's");
}

#[test]
fn every_launcher_declares_its_kernels_bindings_structs_and_overrides() {
    for shader in all_shaders() {
        for weights in common::kernel_fit::layouts(&shader) {
            check_declarations(&shader, weights);
        }
    }
}

/// Every kernel within the smallest adapter the engine accepts (storage and uniform
/// buffers, bindings per group, which is also Metal's rule, workgroup size and memory).
#[test]
fn every_kernel_fits_the_smallest_accepted_adapter() {
    for shader in all_shaders() {
        for subgroups in [false, true] {
            let problems = common::kernel_fit::exceeds_minimum(&shader, subgroups);
            assert!(problems.is_empty(), "{problems:#?}");
        }
    }
}

/// The launchers size the mat-mul's steps by a row's units (`GpuLayout::unit_values`) and the
/// mat-vecs' lane groups by its dot units (`GpuLayout::dot_values`): 16 values per run of the
/// library's `UNIT_RUNS`, and a library dots whole units (`unit_dot`) where the dot unit is
/// the unit, single runs (`run_dot`) where it is 16 values of a longer unit.
#[test]
fn every_layouts_units_match_its_library() {
    for layout in GpuLayout::ALL {
        let lib = glm_flash::gpu::shader::weights_library(layout);
        let unit_runs: usize = lib
            .lines()
            .find_map(|l| l.strip_prefix("const UNIT_RUNS: u32 = "))
            .and_then(|v| v.strip_suffix("u;"))
            .unwrap_or_else(|| panic!("{}: no UNIT_RUNS", layout.name()))
            .parse()
            .unwrap();
        assert_eq!(layout.unit_values(), 16 * unit_runs, "{}", layout.name());
        let by_runs = layout.dot_values() != layout.unit_values();
        if by_runs {
            assert_eq!(layout.dot_values(), 16, "{}", layout.name());
        }
        let (has, lacks) = if by_runs {
            ("fn run_dot(", "fn unit_dot(")
        } else {
            ("fn unit_dot(", "fn run_dot(")
        };
        assert!(lib.contains(has), "{}: no {has}", layout.name());
        assert!(!lib.contains(lacks), "{}: {lacks} unused", layout.name());
    }
}
