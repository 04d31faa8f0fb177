//! The `glm-flash` binary end to end, against the fixtures.
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use glm_flash::gguf::{GgufWriter, Value};

fn glm_flash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Runs and expects success; returns (stdout, stderr).
fn ok(args: &[&str]) -> (String, String) {
    let out = glm_flash(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "glm-flash {args:?} failed ({:?}):\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Runs and expects exit code 1 with `error: ...` as the last line; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = glm_flash(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "glm-flash {args:?}: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("glm-flash-cli-{}-{name}", std::process::id()))
}

fn path_str(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

fn case_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture(&format!("{name}.tokens.json"))).unwrap())
        .unwrap()
}

fn ids_of(json: &serde_json::Value) -> Vec<u32> {
    json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn parse_ids(s: &str) -> Vec<u32> {
    s.trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// The ids after `label` on a line of `--verbose` output.
fn verbose_ids(stderr: &str, label: &str) -> Vec<u32> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{stderr}"));
    parse_ids(line)
}

#[test]
fn run_without_model_uses_the_builtin_one() {
    let (stdout, stderr) = ok(&["run", "-p", "Hello, world", "-n", "12", "--seed", "3"]);
    assert!(stderr.contains("built-in model"), "{stderr}");
    assert!(!stdout.trim().is_empty(), "no text generated");
    assert!(
        stderr.contains("prompt: ") && stderr.contains("tok/s"),
        "{stderr}"
    );
    // Same seed, same text.
    let (again, _) = ok(&["run", "-p", "Hello, world", "-n", "12", "--seed", "3"]);
    assert_eq!(stdout, again);
}

/// `info` hyper-parameter lines as (key, value).
fn info_params(model: &str) -> Vec<(String, String)> {
    let (stdout, _) = ok(&["info", "-m", path_str(&fixture(model))]);
    assert!(
        stdout.contains("blk.1.ffn_gate_exps.weight"),
        "tensor table"
    );
    assert!(
        stdout.contains("model \"gpt2\", pre \"glm4\", 4096 tokens, 3804 merges"),
        "{stdout}"
    );
    assert!(
        stdout.contains("special tokens (36)") && stdout.contains("[gMASK]=4062"),
        "{stdout}"
    );
    assert!(stdout.contains("chat template: present"));
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter_map(|l| l.split_once("  "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> &'a str {
    &params
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key:?} in {params:?}"))
        .1
}

#[test]
fn info_prints_the_fixture_hyper_parameters() {
    // The numbers of the fixtures README's model table.
    let tiny = info_params("tiny-q8_0.gguf");
    assert_eq!(param(&tiny, "hidden size"), "256");
    assert!(param(&tiny, "layers").starts_with("4 (1 dense, 3 MoE"));
    assert_eq!(param(&tiny, "heads"), "4");
    assert_eq!(param(&tiny, "q / kv low rank"), "96 / 64");
    assert_eq!(param(&tiny, "qk head dim"), "128 = 96 nope + 32 rope");
    assert_eq!(param(&tiny, "v head dim"), "128");
    assert_eq!(param(&tiny, "dense FFN width"), "512");
    assert_eq!(param(&tiny, "expert width"), "128");
    assert_eq!(param(&tiny, "experts / used / shared"), "16 / 4 / 1");
    assert_eq!(param(&tiny, "vocab"), "4096");

    let small2 = info_params("small2-q8_0.gguf");
    assert_eq!(param(&small2, "hidden size"), "512");
    assert!(param(&small2, "layers").starts_with("2 (1 dense, 1 MoE"));
    assert_eq!(param(&small2, "heads"), "8");
    assert_eq!(param(&small2, "q / kv low rank"), "192 / 512");
    assert_eq!(param(&small2, "qk head dim"), "256 = 192 nope + 64 rope");
    assert_eq!(param(&small2, "v head dim"), "256");
    assert_eq!(param(&small2, "dense FFN width"), "1536");
    assert_eq!(param(&small2, "expert width"), "256");
    assert_eq!(param(&small2, "experts / used / shared"), "8 / 4 / 1");
}

#[test]
fn logits_match_the_reference() {
    let case = load_case("tiny-q8_0.short");
    let out = temp_path("short.f32");
    let tokens = case
        .tokens
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",");
    ok(&[
        "logits",
        "-m",
        path_str(&case.gguf),
        "--tokens",
        &tokens,
        "--out",
        path_str(&out),
        "--backend",
        "cpu",
    ]);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).ok();
    let got: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got.len(), case.tokens.len() * case.vocab);
    // Fixtures README: an f32 engine reaches rel L2 <= 1e-4 on every row.
    check_against_reference(&case, &got, 1e-4, "cli logits");
}

#[test]
fn tokenize_gives_the_fixture_ids() {
    for name in ["tiny-q8_0.short", "small2-q8_0.chat"] {
        let json = case_json(name);
        let n_prompt = json["n_prompt"].as_u64().unwrap() as usize;
        let model = fixture(json["gguf"].as_str().unwrap());
        let (stdout, _) = ok(&[
            "tokenize",
            "-m",
            path_str(&model),
            "-p",
            json["prompt_text"].as_str().unwrap(),
        ]);
        assert_eq!(parse_ids(&stdout), ids_of(&json)[..n_prompt], "{name}");
    }
}

#[test]
fn greedy_run_continues_like_the_reference() {
    let json = case_json("tiny-q8_0.short");
    let tokens = ids_of(&json);
    let n_prompt = json["n_prompt"].as_u64().unwrap() as usize;
    let (_, stderr) = ok(&[
        "run",
        "-m",
        path_str(&fixture("tiny-q8_0.gguf")),
        "-p",
        json["prompt_text"].as_str().unwrap(),
        "-n",
        "8",
        "--temp",
        "0",
        "--backend",
        "cpu",
        "--verbose",
    ]);
    assert_eq!(verbose_ids(&stderr, "prompt ids: "), tokens[..n_prompt]);
    // The reference's rows 8..16 all have a top-1/top-2 gap of at least 0.038.
    assert_eq!(
        verbose_ids(&stderr, "generated ids: "),
        tokens[n_prompt..n_prompt + 8]
    );
}

#[test]
fn chat_run_renders_the_template_like_the_reference() {
    let json = case_json("small2-q8_0.chat");
    let tokens = ids_of(&json);
    let n_prompt = json["n_prompt"].as_u64().unwrap() as usize;
    let messages = json["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "one user message");
    let (_, stderr) = ok(&[
        "run",
        "-m",
        path_str(&fixture("small2-q8_0.gguf")),
        "--chat",
        "-p",
        messages[0]["content"].as_str().unwrap(),
        "-n",
        "4",
        "--temp",
        "0",
        "--backend",
        "cpu",
        "--verbose",
    ]);
    assert_eq!(verbose_ids(&stderr, "prompt ids: "), tokens[..n_prompt]);
    assert_eq!(
        verbose_ids(&stderr, "generated ids: "),
        tokens[n_prompt..n_prompt + 4]
    );
}

#[test]
fn synth_writes_a_model_that_runs() {
    let out = temp_path("synth.gguf");
    let (_, stderr) = ok(&[
        "synth",
        "--preset",
        "tiny",
        "--layers",
        "2",
        "--vocab",
        "1000",
        "--seed",
        "5",
        "--out",
        path_str(&out),
    ]);
    assert!(stderr.contains("wrote"), "{stderr}");
    let (info, _) = ok(&["info", "-m", path_str(&out)]);
    assert!(info.contains("1000 tokens"), "{info}");
    let (text, _) = ok(&[
        "run",
        "-m",
        path_str(&out),
        "-p",
        "The sea",
        "-n",
        "5",
        "--temp",
        "0",
    ]);
    std::fs::remove_file(&out).ok();
    assert!(!text.trim().is_empty());
}

/// `synth --ftype` writes llama-quantize's type mix; `info` shows it per tensor with the GPU
/// layout; the CPU runs it.
#[test]
fn synth_writes_kquant_mixes() {
    let out = temp_path("synth-q4_k_m.gguf");
    let args = [
        "synth", "--preset", "tiny", "--layers", "2", "--vocab", "1000", "--ftype", "q4_k_m",
        "--out",
    ];
    let (_, stderr) = ok(&[&args[..], &[path_str(&out)]].concat());
    assert!(stderr.contains("Q4_K_M"), "{stderr}");
    let (info, _) = ok(&["info", "-m", path_str(&out)]);
    assert!(info.contains("file type: 15 (Q4_K_M)"), "{info}");
    assert!(
        info.contains("output.weight                      Q6_K   -"),
        "{info}"
    );
    assert!(
        info.contains("blk.1.attn_k_b.weight              Q5_0"),
        "{info}"
    );
    assert!(info.contains("gpu: cannot run this file yet"), "{info}");
    let (text, _) = ok(&[
        "run",
        "-m",
        path_str(&out),
        "-p",
        "The sea",
        "-n",
        "3",
        "--temp",
        "0",
        "--backend",
        "cpu",
    ]);
    std::fs::remove_file(&out).ok();
    assert!(!text.trim().is_empty());
    // An unknown type is a usage error (clap's exit code 2) listing the known ones.
    let bad = glm_flash(&[
        "synth", "--preset", "tiny", "--ftype", "q3_k_m", "--out", "x.gguf",
    ]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown file type \"q3_k_m\" (known: q8_0, q4_0"),
        "{err}"
    );
}

#[test]
fn broken_files_give_errors_not_panics() {
    let missing = fails(&["info", "-m", "/nonexistent/model.gguf"]);
    assert!(missing.contains("/nonexistent/model.gguf"), "{missing}");

    let tiny = std::fs::read(fixture("tiny-q8_0.gguf")).unwrap();
    let truncated = temp_path("truncated.gguf");
    std::fs::write(&truncated, &tiny[..tiny.len() / 2]).unwrap();
    let err = fails(&["run", "-m", path_str(&truncated), "-p", "hi", "-n", "2"]);
    std::fs::remove_file(&truncated).ok();
    assert!(err.contains("needs") && err.contains("bytes"), "{err}");

    let mut w = GgufWriter::default();
    w.kv("general.architecture", Value::String("llama".into()));
    let mut bytes = Vec::new();
    w.write(&mut bytes, |_, _| Ok(())).unwrap();
    let foreign = temp_path("llama.gguf");
    std::fs::write(&foreign, bytes).unwrap();
    let err = fails(&["info", "-m", path_str(&foreign)]);
    std::fs::remove_file(&foreign).ok();
    assert!(err.contains("architecture \"llama\""), "{err}");

    let not_gguf = temp_path("text.gguf");
    std::fs::write(&not_gguf, "hello").unwrap();
    let err = fails(&["tokenize", "-m", path_str(&not_gguf), "-p", "x"]);
    std::fs::remove_file(&not_gguf).ok();
    assert!(err.contains("GGUF"), "{err}");
}

#[test]
fn bad_inputs_give_errors() {
    let bad = temp_path("bad-utf8.txt");
    std::fs::write(&bad, b"abc\xffdef").unwrap();
    let err = fails(&["run", "-f", path_str(&bad), "-n", "1"]);
    std::fs::remove_file(&bad).ok();
    assert!(err.contains("byte offset 3"), "{err}");

    let err = fails(&["run", "-p", "hello there, my friend", "--ctx", "1"]);
    assert!(err.contains("context"), "{err}");

    let tiny = fixture("tiny-q8_0.gguf");
    let out = temp_path("never.f32");
    let err = fails(&[
        "logits",
        "-m",
        path_str(&tiny),
        "--tokens",
        "1,99999",
        "--out",
        path_str(&out),
        "--backend",
        "cpu",
    ]);
    assert!(err.contains("99999"), "{err}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_generation_with_timings() {
    // A prompt long enough that its prefill runs for seconds, so the signal lands in it.
    let prompt = temp_path("long-prompt.txt");
    std::fs::write(&prompt, "lighthouse keeper ".repeat(2_500)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args([
            "run",
            "-f",
            path_str(&prompt),
            "--ctx",
            "30000",
            "--backend",
            "cpu",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&prompt).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("[interrupted]"), "{stderr}");
    assert!(
        stderr.contains("prompt: ") && stderr.contains("tok/s"),
        "{stderr}"
    );
}

#[test]
fn chat_keeps_history_and_reuses_the_cache() {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args([
            "chat",
            "-m",
            path_str(&fixture("small2-q8_0.gguf")),
            "-n",
            "6",
            "--seed",
            "1",
            "--backend",
            "cpu",
            "--verbose",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello there\nAnd again\n/reset\nFresh start\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // "[N prompt tokens, M reused from the cache]" per turn.
    let turns: Vec<(usize, usize)> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix('[')?.split_once(" prompt tokens, "))
        .map(|(n, rest)| {
            let m = rest.split_once(' ').unwrap().0;
            (n.parse().unwrap(), m.parse().unwrap())
        })
        .collect();
    assert_eq!(turns.len(), 3, "{stderr}");
    assert_eq!(turns[0].1, 0, "nothing cached before the first turn");
    // The second prompt holds the first exchange: longer, and its start comes from the cache.
    assert!(turns[1].0 > turns[0].0 && turns[1].1 >= 4, "{turns:?}");
    // After /reset the history is gone: the prompt is short again.
    assert!(turns[2].0 < turns[1].0, "{turns:?}");
    assert!(stderr.contains("[history cleared]"));
}

/// `-n` past the context: generation stops at the last position with a message, exit 0.
#[test]
fn run_stops_at_the_context_end() {
    let (stdout, stderr) = ok(&[
        "run",
        "-p",
        "Hello, world",
        "--ctx",
        "16",
        "-n",
        "100",
        "--backend",
        "cpu",
        "--seed",
        "1",
    ]);
    assert!(
        stderr.contains("[stopped: the context of 16 tokens is full; raise --ctx]"),
        "{stderr}"
    );
    assert!(!stdout.trim().is_empty(), "no text generated");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{stderr}"
    );
}
