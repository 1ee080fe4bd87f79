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

/// `kto convert` on every family: the same tensor names and shapes as the source checkpoint (the
/// fused Phi-3 projections, Gemma's four norms and OLMo 2's full-width q/k norms included), each
/// value the source's rounded to the nearest bf16 (read back through a float32 convert), and the
/// config unchanged but for its dtype.
#[test]
fn convert_keeps_every_familys_checkpoint_layout() {
    let dir = tempfile::tempdir().expect("temp dir");
    for family in ["llama", "qwen2", "qwen3", "mistral", "olmo2", "smollm3", "gemma2", "gemma3", "phi3"] {
        let model = fixture(&format!("models/tiny-{family}"));
        let (out, back) = (dir.path().join(family), dir.path().join(format!("{family}-f32")));
        // To bf16, and back to f32 (exact) to read the values.
        for (from, to, dtype) in [(&model, &out, "bfloat16"), (&out, &back, "float32")] {
            let (from, to) = (from.to_str().expect("path"), to.to_str().expect("path"));
            let (ok, _, stderr) = kto(&["convert", "--model", from, "--out", to, "--dtype", dtype]);
            assert!(ok, "{family} {dtype}: {stderr}");
        }
        let source = kto_models::load_tensor_file(&model.join("model.safetensors")).expect("source");
        let converted = kto_models::load_tensor_file(&back.join("model.safetensors")).expect("converted");
        let names =
            |t: &[(String, Vec<usize>, Vec<f32>)]| t.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect::<Vec<_>>();
        assert_eq!(names(&converted), names(&source), "{family}: tensor names and shapes");
        for ((name, _, a), (_, _, b)) in source.iter().zip(&converted) {
            // Round to nearest, ties to even, on the f32 bits.
            let nearest =
                |x: f32| f32::from_bits(x.to_bits().wrapping_add(0x7FFF + ((x.to_bits() >> 16) & 1)) & 0xFFFF_0000);
            assert!(a.iter().zip(b).all(|(x, y)| nearest(*x) == *y), "{family} {name}: not the bf16 rounding");
        }
        let read = |p: &std::path::Path| -> serde_json::Value {
            let mut config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p.join("config.json")).expect("config")).expect("json");
            let obj = config.as_object_mut().expect("object");
            obj.remove("torch_dtype");
            obj.remove("dtype");
            config
        };
        assert_eq!(read(&out), read(&model), "{family}: config.json but its dtype");
    }
}

/// `kto devices` runs a matmul in each dtype a device reports and names the precision settings
/// it can train with: flex computes f32, f16 and bf16 (bf16's product within 2^-9-ish of f32's),
/// ndarray f32 only, so only flex accepts --bf16, --bf16-weights and --bf16-moments.
#[test]
fn devices_reports_what_each_device_computes() {
    let (ok, stdout, stderr) = kto(&["devices", "--devices", "flex,ndarray", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let (flex, ndarray) = (&report[0], &report[1]);
    assert_eq!((&flex["device"], &ndarray["device"]), (&serde_json::json!("flex"), &serde_json::json!("ndarray")));
    for dtype in ["f32", "f16", "bf16"] {
        assert_eq!(flex["dtypes"][dtype]["computes"], true, "flex {dtype}: {stdout}");
    }
    // f32 against itself is exact; bf16 rounds the inputs (8 significant bits).
    assert_eq!(flex["dtypes"]["f32"]["matmul_error"], 0.0);
    let bf16 = flex["dtypes"]["bf16"]["matmul_error"].as_f64().expect("error");
    assert!(bf16 > 1e-4 && bf16 < 1.5e-2, "bf16 error {bf16}");
    assert_eq!(flex["train_precision"], serde_json::json!(["fp32", "--bf16", "--bf16-weights", "--bf16-moments"]));
    assert_eq!(ndarray["dtypes"]["bf16"]["reported"], false);
    assert_eq!(ndarray["train_precision"], serde_json::json!(["fp32"]));
    let (ok, table, _) = kto(&["devices", "--devices", "ndarray"]);
    assert!(ok && table.contains("| ndarray |") && table.contains("no (burn: no arithmetic)"), "{table}");
}

/// `kto` with Vulkan's driver manifests replaced by `icd` (a path, or `/nonexistent` for none)
/// and wgpu's OpenGL fallback usable.
#[cfg(feature = "vulkan")]
fn kto_with_vulkan_icd(icd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kto"))
        .args(args)
        .env("VK_ICD_FILENAMES", icd)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("kto runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A build with `vulkan` on a machine without a Vulkan GPU: `--device vulkan` is refused by name
/// before anything is read or written, `kto devices` lists the device as unavailable and still
/// reports the others, and a GPU index that is not there is refused with the adapters found.
/// With `KTO_TEST_LAVAPIPE` naming Mesa's lavapipe manifest (CI installs it), the software
/// adapter is refused too, instead of crashing in its compute pipelines.
#[cfg(feature = "vulkan")]
#[test]
fn vulkan_without_a_gpu_is_refused_by_name() {
    let none = "error: device `vulkan`: no Vulkan GPU found (adapters: none); is a Vulkan driver installed?";
    let (ok, _, stderr) = kto_with_vulkan_icd("/nonexistent", &["devices", "--devices", "vulkan"]);
    assert!(!ok);
    assert!(stderr.contains(none), "{stderr}");

    let (ok, stdout, stderr) = kto_with_vulkan_icd("/nonexistent", &["devices", "--json"]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let names: Vec<&str> =
        report.as_array().expect("list").iter().map(|d| d["device"].as_str().expect("name")).collect();
    assert_eq!(names, ["flex", "ndarray", "wgpu", "vulkan"]);
    assert_eq!(report[3]["available"], false);
    assert!(none.ends_with(report[3]["error"].as_str().expect("why")), "{stdout}");
    // wgpu lands on Mesa's software OpenGL: an adapter with a name, computing f32.
    assert_eq!(report[2]["available"], true, "{stdout}");
    assert!(report[2]["adapter"]["name"].as_str().is_some_and(|n| !n.is_empty()), "{stdout}");
    assert_eq!(report[2]["dtypes"]["f32"]["computes"], true, "{stdout}");

    let out = tempfile::tempdir().expect("tempdir");
    let run = out.path().join("run");
    let data = fixture("datasets/kto_standard.jsonl");
    let model = fixture("models/tiny-qwen2");
    let (ok, _, stderr) = kto_with_vulkan_icd(
        "/nonexistent",
        &[
            "train",
            "--model",
            model.to_str().expect("utf-8"),
            "--dataset",
            data.to_str().expect("utf-8"),
            "--device",
            "vulkan",
            "--output-dir",
            run.to_str().expect("utf-8"),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains(none), "{stderr}");
    assert!(!run.exists(), "nothing is written for a refused device");

    let (ok, _, stderr) = kto_with_vulkan_icd("/nonexistent", &["devices", "--devices", "wgpu:7"]);
    assert!(!ok);
    assert!(stderr.contains("error: device `wgpu:7`: no such adapter; adapters found: "), "{stderr}");

    if let Ok(lavapipe) = std::env::var("KTO_TEST_LAVAPIPE") {
        let (ok, _, stderr) = kto_with_vulkan_icd(&lavapipe, &["devices", "--devices", "vulkan"]);
        assert!(!ok);
        assert!(
            stderr.contains("error: device `vulkan`: the only Vulkan adapter is a software one (Mesa's lavapipe)"),
            "{stderr}"
        );
    }
}
