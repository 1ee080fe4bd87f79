//! The `kto` binary end to end on the fixtures.

use std::process::Command;

use kto_testkit::fixture;

fn kto(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kto")).args(args).output().expect("kto runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn weights_prints_trl_ranges() {
    let (ok, stdout, _) = kto(&["weights", "--desirable", "40", "--undesirable", "24"]);
    assert!(ok);
    assert!(stdout.contains("desirable_weight in [0.6, 0.8]"), "{stdout}");
    let (ok, _, stderr) = kto(&["weights", "--desirable", "4", "--undesirable", "2", "--beta-less", "1"]);
    assert!(!ok, "unknown flag is a usage error: {stderr}");
    let (ok, _, stderr) = kto(&["weights", "--desirable", "4", "--undesirable", "2", "--desirable-weight", "-1"]);
    assert!(!ok);
    assert_eq!(stderr.trim(), "error: desirable_weight must be >= 0, got -1");
}

#[test]
fn generate_is_deterministic_and_stops_at_max_new_tokens() {
    let model = fixture("models/tiny-qwen2");
    let args = [
        "generate",
        "--model",
        model.to_str().expect("utf-8 path"),
        "--prompt",
        "What is 3 plus 4?",
        "--chat",
        "--max-new-tokens",
        "8",
        "--do-sample",
        "true",
        "--seed",
        "3",
    ];
    let (ok, first, stderr) = kto(&args);
    assert!(ok, "{stderr}");
    let (_, second, _) = kto(&args);
    assert_eq!(first, second, "same seed, same text");
    assert!(!first.trim().is_empty());
}

#[test]
fn unknown_devices_list_the_compiled_in_ones() {
    let model = fixture("models/tiny-qwen2");
    let (ok, _, stderr) =
        kto(&["generate", "--model", model.to_str().expect("utf-8 path"), "--prompt", "x", "--device", "tpu"]);
    assert!(!ok);
    assert!(stderr.contains("unknown or not compiled-in device `tpu`; this build supports: flex"), "{stderr}");
}

#[test]
fn convert_writes_a_bf16_folder_and_reports_bad_dtypes() {
    let model = fixture("models/tiny-llama");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bf16");
    let convert = |model: &std::path::Path, dtype: Option<&str>| {
        let mut args = vec!["convert", "--model", model.to_str().expect("path"), "--out", out.to_str().expect("path")];
        if let Some(dtype) = dtype {
            args.extend(["--dtype", dtype]);
        }
        kto(&args)
    };
    let (ok, _, stderr) = convert(&model, Some("bfloat16"));
    assert!(ok, "{stderr}");
    let config = std::fs::read_to_string(out.join("config.json")).expect("config written");
    assert!(config.contains("\"torch_dtype\": \"bfloat16\""), "{config}");
    assert!(out.join("tokenizer.json").is_file());
    let (ok, _, stderr) = convert(&model, Some("int8"));
    assert!(!ok);
    assert_eq!(stderr.trim(), "error: --dtype `int8`: expected float32, bfloat16 or float16");
    let missing = dir.path().join("nope");
    let (ok, _, stderr) = convert(&missing, None);
    assert!(!ok);
    let expected = format!("error: loading model from {0}: {0}/config.json: No such file", missing.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
}
