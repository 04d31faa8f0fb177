//! The `glm-flash` binary end to end, against the fixtures.
mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use glm_flash::gguf::{GgufWriter, Value};
use glm_flash::json_output::{JsonState, JsonValue};

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

/// Runs and expects exit code 2 (a malformed command line, before anything loads) with
/// `error: MESSAGE` as the first line of stderr.
fn usage_error(args: &[&str], message: &str) {
    let out = glm_flash(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "glm-flash {args:?}: {stderr}");
    assert_eq!(
        stderr.lines().next().unwrap_or_default(),
        format!("error: {message}"),
        "glm-flash {args:?}"
    );
}

/// Runs with `stdin` as standard input; returns the output.
fn with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
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

/// `info --ctx N` sizes the GPU's latent cache for N positions: every layer's buffer holds
/// whole tiles of 64 positions of the 64 + 32 latent values (tiny: 4 layers), 2 bytes each
/// in f16; and the activations of a prompt chunk, in proportion to its tokens; a context
/// past the model's own length is refused by name.
#[test]
fn info_sizes_the_gpu_cache_for_a_context() {
    let model = fixture("tiny-q8_0.gguf");
    let (stdout, _) = ok(&["info", "-m", path_str(&model), "--ctx", "100"]);
    let f16_bytes = (4 * 128 * (64 + 32) * 2) as f64;
    let (f16, f32) = (f16_bytes / 1e3, 2.0 * f16_bytes / 1e3);
    assert!(
        stdout.contains(&format!(
            "at --ctx 100 a latent cache of {f16:.1} kB in f16"
        )) && stdout.contains(&format!("({f32:.1} kB in f32")),
        "{stdout}"
    );
    // The prompt chunk is the context when shorter than the default, or `--batch`; its
    // activations grow with its tokens.
    let activations = |stdout: &str, chunk: usize| -> f64 {
        let end = stdout
            .find(&format!(
                " of activations for prompt chunks of {chunk} tokens"
            ))
            .unwrap_or_else(|| panic!("no chunk of {chunk} tokens in {stdout}"));
        let words: Vec<&str> = stdout[..end].split_whitespace().rev().take(2).collect();
        let scale = match words[0] {
            "kB" => 1e3,
            "MB" => 1e6,
            unit => panic!("unit {unit} in {stdout}"),
        };
        words[1].parse::<f64>().unwrap() * scale
    };
    let (batched, _) = ok(&[
        "info",
        "-m",
        path_str(&model),
        "--ctx",
        "100",
        "--batch",
        "20",
    ]);
    let (full, small) = (activations(&stdout, 100), activations(&batched, 20));
    // Printed to two or three digits.
    assert!((full / small - 5.0).abs() < 0.2, "{full} against {small}");
    let err = fails(&["info", "-m", path_str(&model), "--ctx", "300000"]);
    assert!(
        err.contains(
            "--ctx 300000 is over the model's context length: the largest context is 202752 tokens"
        ),
        "{err}"
    );
    // Without --batch or a shorter context, the chunk the GPU takes by default, as the help
    // of `--batch` says.
    let (stdout, _) = ok(&["info", "-m", path_str(&model), "--ctx", "8192"]);
    let chunk = glm_flash::gpu::batch::DEFAULT_CHUNK;
    assert!(activations(&stdout, chunk) > 0.0, "{stdout}");
    for command in ["run", "info"] {
        let (help, _) = ok(&[command, "--help"]);
        // The first default after the flag is its own.
        let after_flag = &help[help.find("--batch <N>").expect("a --batch flag")..];
        let default = &after_flag[after_flag.find("[default: ").expect("a default")..];
        assert!(default.starts_with(&format!("[default: {chunk}")), "{help}");
    }
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

/// `run --format`: the text is JSON, or its start when `-n` cut it; a whole value ends the
/// reply there (its stop reason says so, or a stop token once it is whole); with `--chat`
/// the answer after the thinking is held to it. An unknown format is a usage error.
#[test]
fn run_format_holds_the_answer_to_json() {
    for (format, object) in [("json-object", true), ("json", false)] {
        for seed in ["1", "2"] {
            let (stdout, _) = ok(&[
                "run",
                "-p",
                "Paris",
                "--format",
                format,
                "-n",
                "40",
                "--seed",
                seed,
                "--backend",
                "cpu",
                "--json",
            ]);
            let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            let text = out["text"].as_str().unwrap();
            let parsed = serde_json::from_str::<serde_json::Value>(text);
            match out["stop"]["reason"].as_str().unwrap() {
                "answer_complete" | "stop_token" => {
                    assert_eq!(parsed.unwrap().is_object(), object, "{text:?}")
                }
                "max_tokens" => {
                    let value = if object {
                        JsonValue::Object
                    } else {
                        JsonValue::Any
                    };
                    assert!(JsonState::new(value).push_all(text.as_bytes()), "{text:?}")
                }
                other => panic!("{other}: {text:?}"),
            }
        }
    }
    let (stdout, _) = ok(&[
        "run",
        "-m",
        path_str(&fixture("small2-q8_0.gguf")),
        "--chat",
        "--no-think",
        "-p",
        "Paris as JSON",
        "--format",
        "json-object",
        "-n",
        "12",
        "--seed",
        "1",
        "--backend",
        "cpu",
        "--json",
    ]);
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let content = out["content"].as_str().unwrap();
    let mut state = JsonState::new(JsonValue::Object);
    assert!(state.push_all(content.as_bytes()), "{out}");
    usage_error(
        &["run", "-p", "x", "--format", "xml"],
        "invalid value 'xml' for '--format <FORMAT>'",
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
        info.contains("output.weight                      Q6_K   Q6_K"),
        "{info}"
    );
    assert!(
        info.contains("blk.1.attn_k_b.weight              Q5_0"),
        "{info}"
    );
    // Every Q5_0 row of these shapes (the K-quants' fallback) is shorter than 512 values, so
    // it goes up widened to Q8_0: 34 bytes per 32 values instead of 24.
    assert!(
        info.contains("blk.1.attn_k_b.weight              Q5_0   Q8_0   [96, 64, 4]                   16896        26112"),
        "{info}"
    );
    assert!(
        info.contains("gpu: 0.00 GB of weights (2247648 bytes)"),
        "{info}"
    );
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
    // As llama.cpp and shells report SIGINT.
    assert_eq!(out.status.code(), Some(130), "{stderr}");
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

/// Negative numbers reach the flags: -1 means what it means in llama.cpp where it means
/// something (`-n`, `--seed`, `--repeat-last-n`, `--threads`), and is refused with what is
/// expected everywhere else. A prompt may start with a hyphen.
#[test]
fn negative_numbers_are_values_with_a_meaning_or_a_clear_refusal() {
    // -n -1: until an end token or the end of the context (here 24 positions).
    let (_, stderr) = ok(&[
        "run",
        "-p",
        "-5 degrees",
        "-n",
        "-1",
        "--ctx",
        "24",
        "--seed",
        "-1",
        "--repeat-last-n",
        "-1",
        "--threads",
        "-1",
        "--backend",
        "cpu",
    ]);
    assert!(
        stderr.contains("[stopped: the context of 24 tokens is full; raise --ctx]")
            || stderr.contains("generated: "),
        "{stderr}"
    );
    let run = |flag: &str, value: &str| -> Vec<String> {
        ["run", "-p", "hi", flag, value]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    for (flag, value, message) in [
        ("--temp", "-1", "invalid value '-1' for '--temp <T>': expected 0 (greedy) or more"),
        ("--temp", "nan", "invalid value 'nan' for '--temp <T>': NaN is not a usable number"),
        ("--seed", "-3", "invalid value '-3' for '--seed <S>': expected -1 (random) or a number from 0 to 18446744073709551615"),
        ("-n", "-2", "invalid value '-2' for '--max-tokens <N>': expected -1 (no limit) or 0 or more"),
        ("--top-k", "-1", "invalid value '-1' for '--top-k <K>': expected 0 or more"),
        ("--top-p", "2", "invalid value '2' for '--top-p <P>': expected a value in (0, 1] (1 = off)"),
        ("--top-p", "0", "invalid value '0' for '--top-p <P>': expected a value in (0, 1] (1 = off)"),
        ("--min-p", "-0.5", "invalid value '-0.5' for '--min-p <P>': expected a value in [0, 1] (0 = off)"),
        ("--repeat-penalty", "0", "invalid value '0' for '--repeat-penalty <P>': expected a value above 0 (1 = off)"),
        ("--ctx", "0", "invalid value '0' for '--ctx <N>': expected 1 or more"),
        ("--ctx", "-1", "invalid value '-1' for '--ctx <N>': expected 1 or more"),
        ("--threads", "-2", "invalid value '-2' for '--threads <N>': expected 0 or -1 (every core) or a thread count"),
    ] {
        let args = run(flag, value);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        usage_error(&args, message);
    }
    usage_error(
        &["bench", "-m", "x.gguf", "--decode", "0"],
        "invalid value '0' for '--decode <N>': expected 1 or more",
    );
}

/// Everything that can be checked without the model is checked before it loads: with a
/// model path that does not exist, the flag's error comes first, and nothing is left on disk.
#[test]
fn flags_are_checked_before_the_model_loads() {
    let missing = "/nonexistent/model.gguf";
    let err = fails(&["run", "-m", missing, "-p", ""]);
    assert_eq!(err.trim_end(), "error: the prompt is empty");
    let err = fails(&["run", "-m", missing]);
    assert!(
        err.contains("no prompt: give one with -p TEXT, -f FILE or -f -"),
        "{err}"
    );
    let out = with_stdin(&["run", "-m", missing, "-f", "-"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: the prompt is empty"));

    // Unwritable outputs: named before the model is opened; a file opened early is removed
    // again when the run fails.
    let err = fails(&[
        "logits",
        "-m",
        missing,
        "--tokens",
        "1",
        "--out",
        "/nonexistent/dir/x.f32",
    ]);
    assert!(err.contains("/nonexistent/dir/x.f32"), "{err}");
    let dir = std::env::temp_dir();
    let err = fails(&[
        "logits",
        "-m",
        missing,
        "--tokens",
        "1",
        "--out",
        path_str(&dir),
    ]);
    assert!(err.contains("is a directory, not a file to write"), "{err}");
    let err = fails(&["bench", "-m", missing, "--json", "/nonexistent/dir/b.json"]);
    assert!(err.contains("/nonexistent/dir/b.json"), "{err}");
    let out = temp_path("early.f32");
    let err = fails(&[
        "logits",
        "-m",
        missing,
        "--tokens",
        "1",
        "--out",
        path_str(&out),
    ]);
    assert!(err.contains(missing), "{err}");
    assert!(!out.exists(), "a failed run leaves its output file behind");

    // More threads than cores: a warning before loading.
    let cores = std::thread::available_parallelism().unwrap().get();
    let many = (cores + 1).to_string();
    let (_, stderr) = ok(&[
        "run",
        "-p",
        "hi",
        "-n",
        "1",
        "--threads",
        &many,
        "--backend",
        "cpu",
    ]);
    assert!(
        stderr.contains(&format!(
            "warning: --threads {many} is more than the {cores} cores here"
        )),
        "{stderr}"
    );
}

/// One context rule on every backend: at least 1 token (a usage error), at most the
/// model's context length (named); a too-long prompt names the context.
#[test]
fn one_context_rule() {
    let tiny = fixture("tiny-q8_0.gguf");
    let err = fails(&[
        "run",
        "-m",
        path_str(&tiny),
        "-p",
        "hi",
        "--ctx",
        "300000",
        "--backend",
        "cpu",
    ]);
    assert_eq!(
        err.lines().last().unwrap(),
        "error: --ctx 300000 is over the model's context length: the largest context is 202752 tokens"
    );
    let err = fails(&[
        "bench",
        "-m",
        path_str(&tiny),
        "--depth",
        "300000",
        "--backend",
        "cpu",
    ]);
    assert_eq!(
        err.lines().last().unwrap(),
        "error: 300034 positions are needed, over the model's context length: the largest context is 202752 tokens"
    );
    let err = fails(&[
        "run",
        "-p",
        "hello there, my friend",
        "--ctx",
        "2",
        "--backend",
        "cpu",
    ]);
    assert!(
        err.contains("but the context holds 2 (raise --ctx)"),
        "{err}"
    );
}

#[test]
fn run_reads_the_prompt_from_stdin_and_warns_about_chat_flags_without_chat() {
    let args = [
        "run",
        "-n",
        "3",
        "--temp",
        "0",
        "--backend",
        "cpu",
        "--verbose",
    ];
    let (stdout, stderr) = ok(&[&args[..], &["-p", "Hello, world"]].concat());
    let out = with_stdin(&[&args[..], &["-f", "-"]].concat(), b"Hello, world");
    assert!(out.status.success());
    let stdin_err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        verbose_ids(&stdin_err, "prompt ids: "),
        verbose_ids(&stderr, "prompt ids: ")
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), stdout);

    let (_, stderr) = ok(&[
        &args[..],
        &[
            "-p",
            "hi",
            "--system",
            "Be brief.",
            "--no-think",
            "--hide-thinking",
        ],
    ]
    .concat());
    assert!(
        stderr.contains(
            "warning: --system, --no-think, --hide-thinking only apply with --chat; ignored"
        ),
        "{stderr}"
    );
    let (_, stderr) = ok(&[&args[..], &["-p", "hi", "--chat", "--system", "Be brief."]].concat());
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// The timing line counts every generated token, says how many decode passes made them,
/// and the load line says where the model runs.
#[test]
fn timing_and_load_lines() {
    let (_, stderr) = ok(&[
        "run",
        "-p",
        "Hello",
        "-n",
        "12",
        "--seed",
        "2",
        "--backend",
        "cpu",
    ]);
    assert!(
        stderr.contains("loaded in ") && stderr.contains(" s: cpu, "),
        "{stderr}"
    );
    let timing = stderr.lines().find(|l| l.starts_with("prompt: ")).unwrap();
    // 12 tokens unless an end token came first; the prompt's pass chose the first one.
    let generated: usize = timing
        .split("generated: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        timing.contains(&format!("| decode: {} passes", generated.max(1) - 1))
            || timing.contains(&format!("| decode: {generated} passes")),
        "{timing}"
    );
    let (_, stderr) = ok(&[
        "run",
        "-p",
        "Hello",
        "-n",
        "12",
        "--temp",
        "0",
        "--backend",
        "cpu",
    ]);
    assert!(
        stderr.contains("| generated: 12 tokens | decode: 11 passes, "),
        "{stderr}"
    );
}

/// Plain `run` prints text, not chat markup: control tokens the model generates are left
/// out of the text (their ids are still generated and counted).
#[test]
fn run_output_has_no_control_tokens() {
    let file = glm_flash::synth::builtin_model();
    let tokenizer = glm_flash::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    // Seed 3 samples control tokens among the first 48 of the built-in model.
    let (stdout, stderr) = ok(&[
        "run",
        "-p",
        "Hello there",
        "-n",
        "48",
        "--seed",
        "3",
        "--backend",
        "cpu",
        "--verbose",
    ]);
    let ids = verbose_ids(&stderr, "generated ids: ");
    let control: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| tokenizer.is_control(id))
        .collect();
    assert!(!control.is_empty(), "no control token generated: {ids:?}");
    let text: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| !tokenizer.is_control(id))
        .collect();
    assert_eq!(
        stdout.trim_end_matches('\n'),
        tokenizer.decode(&text).unwrap()
    );
    for id in control {
        let markup = tokenizer.decode(&[id]).unwrap();
        assert!(!stdout.contains(&markup), "{markup} in {stdout:?}");
    }
}

/// `--stop` ends the text before the stop string; penalties reach the choice of tokens
/// even when greedy; `--json` gives the text, ids and timings.
#[test]
fn stop_strings_penalties_and_json() {
    let args = [
        "run",
        "-p",
        "The sea",
        "--temp",
        "0",
        "--backend",
        "cpu",
        "--verbose",
    ];
    let (full, _) = ok(&[&args[..], &["-n", "16"]].concat());
    let chars: Vec<char> = full.trim_end().chars().collect();
    assert!(chars.len() >= 8, "{full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = full.find(&stop).unwrap();
    let (text, stderr) = ok(&[
        &args[..],
        &["-n", "16", "--stop", "never there", "--stop", &stop],
    ]
    .concat());
    assert_eq!(text.trim_end_matches('\n'), &full[..cut], "stop {stop:?}");
    assert!(stderr.contains("stop: StopString(1)"), "{stderr}");

    // A presence penalty of 100 over the whole context: no token may repeat, prompt included
    // (greedy "Hello" repeats 5 of its first 60 tokens without it).
    let args = [
        "run",
        "-p",
        "Hello",
        "--temp",
        "0",
        "--backend",
        "cpu",
        "--verbose",
        "-n",
        "60",
    ];
    let (_, stderr) = ok(&[
        &args[..],
        &["--presence-penalty", "100", "--repeat-last-n", "-1"],
    ]
    .concat());
    let prompt = verbose_ids(&stderr, "prompt ids: ");
    let ids = verbose_ids(&stderr, "generated ids: ");
    let mut seen: std::collections::HashSet<u32> = prompt.iter().copied().collect();
    for id in &ids {
        assert!(
            seen.insert(*id),
            "{id} repeats: prompt {prompt:?}, generated {ids:?}"
        );
    }
    let (_, plain) = ok(&args);
    let plain = verbose_ids(&plain, "generated ids: ");
    let distinct: std::collections::HashSet<u32> = plain.iter().copied().collect();
    assert!(
        distinct.len() < plain.len(),
        "greedy repeats nothing: {plain:?}"
    );

    let (json, _) = ok(&[
        "run",
        "-p",
        "The sea",
        "-n",
        "5",
        "--temp",
        "0",
        "--backend",
        "cpu",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), 5);
    assert_eq!(v["stop"]["reason"], "max_tokens");
    assert_eq!(v["timings"]["generated_tokens"], 5);
    assert_eq!(v["timings"]["decode_tokens"], 4);
    assert!(v["prompt_ids"].as_array().unwrap().len() >= 2);
    let (five, _) = ok(&[
        "run",
        "-p",
        "The sea",
        "-n",
        "5",
        "--temp",
        "0",
        "--backend",
        "cpu",
    ]);
    assert_eq!(v["text"].as_str().unwrap(), five.trim_end_matches('\n'));
    let (json, _) = ok(&[
        "run",
        "-p",
        "Hi",
        "-n",
        "3",
        "--chat",
        "--backend",
        "cpu",
        "--json",
        "--seed",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["reasoning"].is_string() && v["content"].is_string() && v["tool_calls"].is_array());
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let (script, _) = ok(&["completions", shell]);
        assert!(
            script.contains("glm-flash") && script.contains("max-tokens"),
            "{shell}"
        );
    }
}

#[test]
fn small_ones() {
    // A directory as the model.
    let dir = std::env::temp_dir();
    let err = fails(&["info", "-m", path_str(&dir)]);
    assert_eq!(
        err.trim_end(),
        format!("error: {}: is a directory, not a GGUF file", dir.display())
    );
    // `info` describes a file whose weights do not load, and exits 1 saying why.
    let mut m = common::model_file::ModelFile::read(
        &glm_flash::gguf::GgufFile::open(fixture("tiny-q8_0.gguf")).unwrap(),
    );
    drop(m.remove_tensor("output_norm.weight"));
    let broken = temp_path("no-output-norm.gguf");
    std::fs::write(&broken, m.to_bytes()).unwrap();
    let out = glm_flash(&["info", "-m", path_str(&broken)]);
    std::fs::remove_file(&broken).ok();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains("weights: DO NOT LOAD") && stdout.contains("tensors ("),
        "{stdout}"
    );
    assert!(
        stderr.starts_with(&format!(
            "error: {} cannot run: weights: ",
            broken.display()
        )) && stderr.contains("output_norm.weight"),
        "{stderr}"
    );
    // `bench` names the flag, not a field of the library.
    usage_error(
        &[
            "bench",
            "-m",
            path_str(&fixture("tiny-q8_0.gguf")),
            "--decode",
            "0",
        ],
        "invalid value '0' for '--decode <N>': expected 1 or more",
    );
}

/// `chat` without -m uses the built-in model; /help lists the commands without sending
/// them; an unknown /command is named; a history longer than the context loses its oldest
/// exchanges (saying so) instead of failing every turn.
#[test]
fn chat_helps_and_keeps_going_when_the_history_outgrows_the_context() {
    let turns: String = (0..10)
        .map(|i| format!("Tell me about number {i}\n"))
        .collect();
    let input = format!("/help\n/nope\n{turns}/exit\n");
    let out = with_stdin(
        &[
            "chat",
            "-n",
            "8",
            "--ctx",
            "96",
            "--seed",
            "1",
            "--backend",
            "cpu",
            "--verbose",
        ],
        input.as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("built-in model"), "{stderr}");
    assert!(
        stderr.contains("commands: /reset clears the history, /exit (or /quit, Ctrl-D) ends the chat, /help lists these"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown command /nope"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    // One timing line per message sent: /help and /nope were not sent.
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("prompt: ")).count(),
        10,
        "{stderr}"
    );
    assert!(
        stderr.contains("oldest exchanges were dropped to fit the context of 96 tokens]"),
        "{stderr}"
    );
    // Every prompt fits with room for the reply.
    for line in stderr.lines().filter_map(|l| l.strip_prefix('[')) {
        if let Some((n, _)) = line.split_once(" prompt tokens, ") {
            assert!(n.parse::<usize>().unwrap() + 8 <= 96, "{line}");
        }
    }
}

/// Ctrl-C at the chat prompt ends the prompt's line and exits 130.
#[cfg(unix)]
#[test]
fn ctrl_c_at_the_chat_prompt_ends_the_line() {
    use std::io::Read as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args(["chat", "--backend", "cpu"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the prompt, then interrupt while the chat waits for a line.
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8];
    while !seen.ends_with(b"> ") {
        assert_eq!(stdout.read(&mut byte).unwrap(), 1, "stdout ended: {seen:?}");
        seen.push(byte[0]);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    stdout.read_to_end(&mut seen).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&seen), "> \n");
}

/// Ctrl-C during `synth` removes the partial file and exits 130.
#[cfg(unix)]
#[test]
fn interrupted_synth_leaves_nothing_behind() {
    let out = temp_path("interrupted.gguf");
    let partial = std::path::PathBuf::from(format!("{}.partial", out.display()));
    // Full width, two layers: about 0.8 GB, several seconds of writing.
    let child = Command::new(env!("CARGO_BIN_EXE_glm-flash"))
        .args([
            "synth",
            "--preset",
            "full",
            "--layers",
            "2",
            "--vocab",
            "4096",
            "--out",
            path_str(&out),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt as soon as the partial file appears (well before 0.8 GB are written).
    let start = std::time::Instant::now();
    while !partial.exists() {
        assert!(
            start.elapsed().as_secs() < 60,
            "the write has not started in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "[interrupted: nothing written to {}]",
            out.display()
        )),
        "{stderr}"
    );
    assert!(!partial.exists() && !out.exists());
}

/// `--matmul q8` runs on the CPU (and says so when it loads) and is refused by name on the
/// GPU, before any adapter is looked for.
#[test]
fn matmul_q8_is_the_cpu_backends() {
    let args = [
        "run",
        "-p",
        "Hello",
        "-n",
        "4",
        "--matmul",
        "q8",
        "--backend",
    ];
    let (_, stderr) = ok(&[&args[..], &["cpu"]].concat());
    assert!(stderr.contains("8-bit activations"), "{stderr}");
    let err = fails(&[&args[..], &["gpu"]].concat());
    assert!(
        err.contains("--matmul q8") && err.contains("--backend cpu"),
        "{err}"
    );
}
