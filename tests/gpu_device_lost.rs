//! A GPU that goes away mid-run (driver reset, eGPU unplugged; here: the device destroyed)
//! ends the next token with an error naming the device, never a panic or a hang.
mod common;

use common::*;
use glm_flash::backend::{Backend, Rows};
use glm_flash::config::Config;
use glm_flash::gguf::GgufFile;
use glm_flash::gpu::{GpuBackend, GpuOptions};
use glm_flash::weights::Weights;

#[test]
fn a_lost_device_is_an_error_naming_it() {
    let file = GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap();
    let cfg = Config::from_gguf(&file).unwrap();
    let weights = Weights::from_gguf(&file, &cfg).unwrap();
    let mut gpu = GpuBackend::new(&cfg, &weights, 64, &GpuOptions::default())
        .expect("a GPU adapter (lavapipe in CI)");
    gpu.feed_argmax(&[1, 2, 3], 0)
        .expect("the device works before it is lost");
    let name = gpu.context().info.name.clone();

    gpu.context().device.destroy();
    let err = gpu
        .feed_argmax(&[4], 3)
        .expect_err("a destroyed device cannot compute")
        .to_string();
    println!("{err}");
    assert!(err.contains("lost") && err.contains(&name), "{err}");
    // and it stays an error
    assert!(gpu.feed_logits(&[5], 4, Rows::Last).is_err());
}
