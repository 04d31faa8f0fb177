//! What the Vulkan driver's compiler makes of each kernel: its registers, memory and the
//! other statistics the driver reports through `VK_KHR_pipeline_executable_properties`.
//! wgpu does not expose them, so this talks to Vulkan through ash (the binding wgpu's own
//! Vulkan backend uses), on the SPIR-V the engine's device gets: naga's with the options
//! wgpu uses for the engine's kernels (index bounds checks, buffer checks unless the device
//! has `robustBufferAccess2`, no loop bounding, workgroup memory not zeroed), and for the
//! cooperative kernels the engine's own (`pipelines::vulkan_spirv`: buffer checks, workgroup
//! memory coherent). Registers decide
//! how many workgroups a GPU core keeps in flight, which the timings alone cannot show.
//!
//! `cargo run --release --example pipeline_stats [WORD...]`: one line per kernel variant
//! whose label (kernel, tile maths, weight layout, bool overrides) contains every WORD, e.g.
//! `pipeline_stats matmul Q8_0`. The tile maths are each the device offers (the cooperative
//! ones where it has `VK_KHR_cooperative_matrix`); the overrides all false, then all true.
use ash::vk;
use glm_flash::formats::GpuLayout;
use glm_flash::gpu::kernels::all_shaders;
use glm_flash::gpu::shader::{Shader, ShaderCaps, TileMath};
use std::ffi::CStr;

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&words) {
        eprintln!("pipeline_stats: {e}");
        std::process::exit(1);
    }
}

/// A device that reports pipeline statistics, and what it supports.
struct Driver {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    /// None where the driver does not report statistics: the variants are still compiled.
    stats: Option<ash::khr::pipeline_executable_properties::Device>,
    cooperative: bool,
    robust_buffers: bool,
    spirv: (u8, u8),
}

fn run(words: &[String]) -> Result<(), String> {
    let driver = Driver::open()?;
    let mut maths = vec![TileMath::Fma];
    if driver.cooperative {
        maths.extend([TileMath::Split, TileMath::F16]);
    }
    for shader in all_shaders() {
        let tiled = shader.weights == glm_flash::gpu::shader::WeightAccess::Tiles;
        let layouts: &[GpuLayout] = if shader.weights.reads_weights() {
            &GpuLayout::ALL
        } else {
            &[GpuLayout::F32]
        };
        let shader_maths: &[TileMath] = if tiled { &maths } else { &maths[..1] };
        if shader.cooperative && !driver.cooperative {
            continue;
        }
        for &tiles in shader_maths {
            for &layout in layouts {
                for all_true in [false, true] {
                    let mut label = shader.name.to_string();
                    if tiled {
                        label += &format!(" {tiles:?}");
                    }
                    if shader.weights.reads_weights() {
                        label += &format!(" {}", layout.name());
                    }
                    label += if all_true {
                        " overrides-on"
                    } else {
                        " overrides-off"
                    };
                    if !words.iter().all(|w| label.contains(w.as_str())) {
                        continue;
                    }
                    let caps = ShaderCaps {
                        subgroups: true,
                        tiles,
                    };
                    match driver.statistics(&shader, caps, layout, all_true) {
                        Ok(stats) => println!("{label}: {stats}"),
                        Err(e) => println!("{label}: {e}"),
                    }
                }
            }
        }
    }
    Ok(())
}

impl Driver {
    fn open() -> Result<Driver, String> {
        let vk_err = |what: &str| {
            let what = what.to_string();
            move |e: vk::Result| format!("{what}: {e}")
        };
        let entry = unsafe { ash::Entry::load() }.map_err(|e| format!("no Vulkan loader: {e}"))?;
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
        let instance = unsafe {
            entry.create_instance(
                &vk::InstanceCreateInfo::default().application_info(&app),
                None,
            )
        }
        .map_err(vk_err("vkCreateInstance"))?;
        let physical = unsafe { instance.enumerate_physical_devices() }
            .map_err(vk_err("vkEnumeratePhysicalDevices"))?;
        let has = |pd: vk::PhysicalDevice, name: &CStr| {
            unsafe { instance.enumerate_device_extension_properties(pd) }
                .unwrap_or_default()
                .iter()
                .any(|e| e.extension_name_as_c_str() == Ok(name))
        };
        let reports = physical
            .iter()
            .copied()
            .find(|&pd| has(pd, ash::khr::pipeline_executable_properties::NAME));
        let pd = reports
            .or(physical.first().copied())
            .ok_or("no Vulkan device")?;
        let props = unsafe { instance.get_physical_device_properties(pd) };
        let name = props
            .device_name_as_c_str()
            .unwrap_or(c"?")
            .to_string_lossy()
            .into_owned();
        let api = props.api_version;
        println!(
            "device: {name}, Vulkan {}.{}, driver {:#x}",
            vk::api_version_major(api),
            vk::api_version_minor(api),
            props.driver_version
        );
        if api < vk::API_VERSION_1_3 {
            return Err(format!("{name} offers Vulkan below 1.3"));
        }
        let cooperative_ext = has(pd, ash::khr::cooperative_matrix::NAME);
        let robustness_ext = has(pd, ash::ext::robustness2::NAME);

        // Every feature the device has is enabled, as the kernels may need any of them
        // (f16, subgroups, the Vulkan memory model, cooperative matrices).
        let mut v11 = vk::PhysicalDeviceVulkan11Features::default();
        let mut v12 = vk::PhysicalDeviceVulkan12Features::default();
        let mut v13 = vk::PhysicalDeviceVulkan13Features::default();
        let mut exec = vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default();
        let mut coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
        let mut robust = vk::PhysicalDeviceRobustness2FeaturesEXT::default();
        let core = {
            let mut query = vk::PhysicalDeviceFeatures2::default()
                .push_next(&mut v11)
                .push_next(&mut v12)
                .push_next(&mut v13)
                .push_next(&mut exec);
            if cooperative_ext {
                query = query.push_next(&mut coop);
            }
            if robustness_ext {
                query = query.push_next(&mut robust);
            }
            unsafe { instance.get_physical_device_features2(pd, &mut query) };
            query.features
        };
        let cooperative = cooperative_ext && coop.cooperative_matrix == vk::TRUE;
        let robust_buffers = robustness_ext && robust.robust_buffer_access2 == vk::TRUE;
        let reports = reports.is_some() && exec.pipeline_executable_info == vk::TRUE;
        if !reports {
            println!("{name} reports no pipeline statistics: the variants are only compiled");
        }
        // The query chained the structs together; they are chained again for the device.
        v11.p_next = std::ptr::null_mut();
        v12.p_next = std::ptr::null_mut();
        v13.p_next = std::ptr::null_mut();
        exec.p_next = std::ptr::null_mut();
        coop.p_next = std::ptr::null_mut();
        robust.p_next = std::ptr::null_mut();
        let mut features = vk::PhysicalDeviceFeatures2::default()
            .features(core)
            .push_next(&mut v11)
            .push_next(&mut v12)
            .push_next(&mut v13);
        if reports {
            features = features.push_next(&mut exec);
        }
        if cooperative_ext {
            features = features.push_next(&mut coop);
        }
        if robustness_ext {
            features = features.push_next(&mut robust);
        }
        let mut extensions = Vec::new();
        if reports {
            extensions.push(ash::khr::pipeline_executable_properties::NAME.as_ptr());
        }
        if cooperative_ext {
            extensions.push(ash::khr::cooperative_matrix::NAME.as_ptr());
        }
        if robustness_ext {
            extensions.push(ash::ext::robustness2::NAME.as_ptr());
        }
        let family = unsafe { instance.get_physical_device_queue_family_properties(pd) }
            .iter()
            .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or("no compute queue")? as u32;
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(family)
            .queue_priorities(&priorities)];
        let info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&extensions)
            .push_next(&mut features);
        let device =
            unsafe { instance.create_device(pd, &info, None) }.map_err(vk_err("vkCreateDevice"))?;
        let stats = reports
            .then(|| ash::khr::pipeline_executable_properties::Device::new(&instance, &device));
        Ok(Driver {
            _entry: entry,
            instance,
            device,
            stats,
            cooperative,
            robust_buffers,
            spirv: (1, 6),
        })
    }

    /// The driver's statistics of one kernel variant, as `name=value` pairs per executable.
    fn statistics(
        &self,
        shader: &Shader,
        caps: ShaderCaps,
        layout: GpuLayout,
        overrides_on: bool,
    ) -> Result<String, String> {
        let words = self.spirv_words(shader, caps, layout, overrides_on)?;
        let d = &self.device;
        unsafe {
            let module = d
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None)
                .map_err(|e| format!("vkCreateShaderModule: {e}"))?;
            let bindings: Vec<vk::DescriptorSetLayoutBinding> = shader
                .bindings
                .iter()
                .enumerate()
                .map(|(i, slot)| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(i as u32)
                        .descriptor_type(if slot.is_storage() {
                            vk::DescriptorType::STORAGE_BUFFER
                        } else {
                            vk::DescriptorType::UNIFORM_BUFFER
                        })
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            let set_layout = d
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                    None,
                )
                .map_err(|e| format!("vkCreateDescriptorSetLayout: {e}"))?;
            let set_layouts = [set_layout];
            let layout = d
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts),
                    None,
                )
                .map_err(|e| format!("vkCreatePipelineLayout: {e}"))?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let mut info = vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(layout);
            if self.stats.is_some() {
                info = info.flags(vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR);
            }
            let made = d.create_compute_pipelines(vk::PipelineCache::null(), &[info], None);
            let result = match made {
                Ok(p) => {
                    let text = self.describe(p[0]);
                    d.destroy_pipeline(p[0], None);
                    text
                }
                Err((_, e)) => Err(format!("vkCreateComputePipelines: {e}")),
            };
            d.destroy_pipeline_layout(layout, None);
            d.destroy_descriptor_set_layout(set_layout, None);
            d.destroy_shader_module(module, None);
            result
        }
    }

    unsafe fn describe(&self, pipeline: vk::Pipeline) -> Result<String, String> {
        let Some(stats) = &self.stats else {
            return Ok("compiled".to_string());
        };
        let executables = unsafe {
            stats.get_pipeline_executable_properties(
                &vk::PipelineInfoKHR::default().pipeline(pipeline),
            )
        }
        .map_err(|e| format!("vkGetPipelineExecutablePropertiesKHR: {e}"))?;
        let mut out = Vec::new();
        for index in 0..executables.len() as u32 {
            let info = vk::PipelineExecutableInfoKHR::default()
                .pipeline(pipeline)
                .executable_index(index);
            let stats = unsafe { stats.get_pipeline_executable_statistics(&info) }
                .map_err(|e| format!("vkGetPipelineExecutableStatisticsKHR: {e}"))?;
            for s in stats {
                let name = s
                    .name_as_c_str()
                    .unwrap_or(c"?")
                    .to_string_lossy()
                    .into_owned();
                let value = unsafe {
                    match s.format {
                        vk::PipelineExecutableStatisticFormatKHR::BOOL32 => s.value.b32.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::INT64 => s.value.i64.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::UINT64 => s.value.u64.to_string(),
                        vk::PipelineExecutableStatisticFormatKHR::FLOAT64 => {
                            s.value.f64.to_string()
                        }
                        _ => "?".to_string(),
                    }
                };
                out.push(format!("{name}={value}"));
            }
        }
        Ok(out.join(", "))
    }

    /// The kernel's SPIR-V as the engine's device gets it.
    fn spirv_words(
        &self,
        shader: &Shader,
        caps: ShaderCaps,
        layout: GpuLayout,
        overrides_on: bool,
    ) -> Result<Vec<u32>, String> {
        let src = shader.module_source(caps, layout);
        let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src))?;
        let mut constants = naga::back::PipelineConstants::default();
        for (_, o) in module.overrides.iter() {
            let is_bool = matches!(
                module.types[o.ty].inner,
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Bool,
                    ..
                })
            );
            if is_bool {
                let name = o.name.clone().unwrap_or_default();
                constants.insert(name, if overrides_on { 1.0 } else { 0.0 });
            }
        }
        // As the engine: cooperative kernels as its own SPIR-V (coherent workgroup memory,
        // storage indices checked), the others as wgpu writes them for this device.
        use glm_flash::gpu::pipelines::{coherent_spirv, vulkan_spirv};
        let spirv = if shader.uses_cooperative_matrices(caps) {
            coherent_spirv(&src, &constants)
        } else {
            vulkan_spirv(&src, &constants, self.spirv, !self.robust_buffers)
        };
        spirv.map(|spirv| spirv.words)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        unsafe {
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}
