//! `glm-flash run --backend gpu` prints the same greedy text as `--backend cpu` on every
//! fixture model (each with its default cache: f16 on the GPU, f32 on the CPU), and
//! `logits --backend gpu --cache-type f32` matches the reference. Needs a GPU adapter
//! (lavapipe in CI): without one the GPU runs fail, and so does this test.
mod common;

use std::process::Command;

use common::*;

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args(args)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "glm-flash {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gpu_greedy_text_equals_cpu_on_every_fixture_model() {
    for model in ["tiny-q8_0.gguf", "small2-q8_0.gguf"] {
        let path = fixture(model);
        let path = path.to_str().unwrap();
        let run = |backend: &str| {
            let args = [
                "run",
                "-m",
                path,
                "-p",
                "The lighthouse keeper wrote",
                "-n",
                "24",
                "--temp",
                "0",
            ];
            stdout_of(&[&args[..], &["--backend", backend]].concat())
        };
        let (cpu, gpu) = (run("cpu"), run("gpu"));
        println!("{model}: {gpu:?}");
        assert!(!cpu.trim().is_empty(), "{model}: no text generated");
        assert_eq!(gpu, cpu, "{model}: GPU and CPU greedy text differ");
    }
}

/// Fixtures README: an engine computing in f32 (f32 cache) reaches rel L2 <= 1e-4 on every row.
#[test]
fn gpu_logits_command_matches_reference_on_every_case() {
    let dir = std::env::temp_dir().join(format!("glm-flash-cli-gpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in CASES {
        let case = load_case(name);
        let tokens = case
            .tokens
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let out = dir.join(format!("{name}.f32"));
        let (gguf, out_str) = (case.gguf.to_str().unwrap(), out.to_str().unwrap());
        stdout_of(&[
            "logits",
            "-m",
            gguf,
            "--tokens",
            &tokens,
            "--out",
            out_str,
            "--backend",
            "gpu",
            "--cache-type",
            "f32",
        ]);
        let bytes = std::fs::read(&out).unwrap();
        let got: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        check_against_reference(&case, &got, 1e-4, "glm-flash logits --backend gpu");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An adapter that does not exist: `--backend gpu` fails naming what exists, `--backend
/// auto` says why in one line and runs on the CPU.
#[test]
fn missing_adapter_is_named_and_auto_falls_back_to_the_cpu() {
    let path = fixture("tiny-q8_0.gguf");
    let args = [
        "run",
        "-m",
        path.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "4",
        "--temp",
        "0",
        "--adapter",
        "99",
    ];
    let gpu = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args([&args[..], &["--backend", "gpu"]].concat())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&gpu.stderr);
    assert_eq!(gpu.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("adapter index 99") && stderr.contains("adapters found: [0]"),
        "{stderr}"
    );

    let auto = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args([&args[..], &["--backend", "auto"]].concat())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&auto.stderr);
    assert!(auto.status.success(), "{stderr}");
    assert!(
        stderr.contains("running on the CPU") && stderr.contains("adapter index 99"),
        "{stderr}"
    );
    let cpu = stdout_of(&[&args[..], &["--backend", "cpu"]].concat());
    assert_eq!(
        String::from_utf8_lossy(&auto.stdout),
        cpu,
        "the fallback computes what the CPU does"
    );
}
