//! `glm-flash run --backend gpu` prints the same greedy text as `--backend cpu` on every
//! fixture model (each with its default cache: f16 on the GPU, f32 on the CPU), with the
//! prompt in one pass or in passes of 2 tokens, and
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
            let backend: Vec<&str> = backend.split(' ').collect();
            stdout_of(&[&args[..], &["--backend"], &backend[..]].concat())
        };
        let (cpu, gpu) = (run("cpu"), run("gpu"));
        println!("{model}: {gpu:?}");
        assert!(!cpu.trim().is_empty(), "{model}: no text generated");
        assert_eq!(gpu, cpu, "{model}: GPU and CPU greedy text differ");
        // The prompt fed in passes of 2 tokens (`--batch`) gives the same text.
        for backend in ["cpu", "gpu"] {
            let pieces = run(&format!("{backend} --batch 2"));
            assert_eq!(pieces, cpu, "{model}: {backend} in passes of 2 tokens");
        }
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

/// Runs with XDG_RUNTIME_DIR and WAYLAND_DISPLAY unset, as on a headless server.
fn headless(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("the binary runs")
}

/// Mesa's device-select layer connects to a display server when the instance asks for
/// window-system extensions, and libwayland then prints `error: XDG_RUNTIME_DIR is invalid
/// or not set` on a headless machine. The instance asks for none: stderr carries only our
/// own lines.
#[test]
fn no_window_system_noise_on_a_headless_machine() {
    let devices = headless(&["devices"]);
    assert!(devices.status.success());
    assert_eq!(String::from_utf8_lossy(&devices.stderr), "");
    let path = fixture("tiny-q8_0.gguf");
    let run = headless(&[
        "run",
        "-m",
        path.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "2",
        "--temp",
        "0",
        "--backend",
        "gpu",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        !stderr.contains("XDG_RUNTIME_DIR") && !stderr.contains("error"),
        "{stderr}"
    );
}

/// `auto` never runs on a software renderer (lavapipe's `DeviceType::Cpu`): with only such
/// adapters it runs on the CPU and says why; `--backend gpu` and `--adapter` still use it.
/// On a machine with a hardware GPU, `auto` takes the GPU.
#[test]
fn auto_skips_software_adapters() {
    let devices = stdout_of(&["devices"]);
    let adapters: Vec<&str> = devices.lines().filter(|l| l.starts_with('[')).collect();
    let software_only = adapters.iter().all(|l| l.ends_with(", Cpu)"));
    let path = fixture("tiny-q8_0.gguf");
    let args = [
        "run",
        "-m",
        path.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "2",
        "--temp",
        "0",
        "--verbose",
    ];
    let out = headless(&[&args[..], &["--backend", "auto"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    if software_only {
        assert!(
            stderr.contains("running on the CPU: the only GPU adapter, ")
                && stderr.contains(
                    "is a software renderer, slower than the CPU backend (--backend gpu uses it)"
                ),
            "{stderr}"
        );
        assert!(stderr.contains("backend: cpu"), "{stderr}");
    } else {
        assert!(stderr.contains("backend: gpu"), "{stderr}");
    }
    for chosen in [
        &["--backend", "gpu"][..],
        &["--backend", "auto", "--adapter", "0"],
    ] {
        let out = headless(&[&args[..], chosen].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.contains("backend: gpu"),
            "{chosen:?}: {stderr}"
        );
        // The upload is followed by a line while the kernels compile, then the load time.
        assert!(stderr.contains("compiling the GPU kernels"), "{stderr}");
        assert!(
            stderr.contains("loaded in ") && stderr.contains(" s: gpu: "),
            "{stderr}"
        );
    }
}

/// A context the GPU cannot hold is an error naming the largest that fits, on `gpu` and
/// under `auto` alike (not a reason to fall back to the CPU).
#[test]
fn a_context_too_large_for_the_gpu_names_the_largest() {
    let path = fixture("small2-q8_0.gguf");
    // 202752 positions of small2's 576-value cache rows: 234 MB per layer in f16, over any
    // adapter's binding limit this test runs on (lavapipe: 128 MiB).
    for backend in [
        &["--backend", "gpu"][..],
        &["--backend", "auto", "--adapter", "0"],
    ] {
        let args = [
            "run",
            "-m",
            path.to_str().unwrap(),
            "-p",
            "Hello",
            "-n",
            "2",
            "--ctx",
            "202752",
        ];
        let out = headless(&[&args[..], backend].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let last = stderr.lines().last().unwrap();
        assert!(
            last.starts_with("error: a f16 latent cache of 202752 positions takes ")
                && last.contains(" positions fit: use --ctx "),
            "{backend:?}: {stderr}"
        );
        assert!(!stderr.contains("running on the CPU"), "{stderr}");
        // The largest it names does fit.
        let largest = last.rsplit("use --ctx ").next().unwrap();
        let fits = headless(&[&args[..7], &["--ctx", largest], backend].concat());
        assert!(
            fits.status.success(),
            "--ctx {largest}: {}",
            String::from_utf8_lossy(&fits.stderr)
        );
    }
}
