//! LoRA from the command line: TRL case g (r 8, α 16 on q_proj/v_proj, from TRL's initial
//! adapter) reproduced with `kto train --use-peft`, PEFT files out, bit-exact resume, `kto merge`
//! equal to base + (α/r)·B·A, and `--adapter` on `kto logps` / `kto generate`.

use std::path::Path;
use std::process::{Command, Output};

use kto_models::{LoadOptions, load_model, load_tensor_file, named_tensors};
use kto_testkit::{fixture, read_jsonl, read_jsonl_file, zip_eq};

mod common;
use common::{case_a_args, with};

fn kto(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kto")).args(args).output().expect("kto runs")
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// Case g's settings (`run_cases.sh`: case a's data and batches, AdamW 1e-2), starting from
/// TRL's initial adapter.
fn case_g(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = with(with(case_a_args(out), "--optim", "adamw_torch"), "--learning-rate", "1e-2");
    let initial = s(&fixture("trl/g_qwen_lora/initial_adapter"));
    for pair in [
        ["--use-peft", "true"],
        ["--lora-r", "8"],
        ["--lora-alpha", "16"],
        ["--lora-target-modules", "q_proj,v_proj"],
        ["--adapter", &initial],
    ]
    .iter()
    .map(|p| &p[..])
    .chain(extra.chunks(2))
    {
        args = with(args, pair[0], pair[1]);
    }
    args
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    zip_eq(a, b, "values").map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn case_g_reproduces_trl_and_peft_and_writes_a_peft_adapter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let result = kto(&case_g(&out, &[]));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let trl = read_jsonl("trl/g_qwen_lora/metrics.jsonl");
    let ours = read_jsonl_file(&out.join("metrics.jsonl"));
    assert_eq!(ours.len(), trl.len());
    for (o, t) in ours.iter().zip(&trl) {
        let diff = (o["loss"].as_f64().expect("loss") - t["loss"].as_f64().expect("loss")).abs();
        assert!(diff <= 1e-5, "{o} vs {t}");
    }
    assert!(out.join("adapter_config.json").is_file() && out.join("tokenizer.json").is_file());
    assert!(!out.join("model.safetensors").exists(), "LoRA runs save the adapter, not the model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).expect("config")).expect("JSON");
    assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(8), Some(16.0)));
    assert_eq!(config["peft_type"], "LORA");
    let ours = load_tensor_file(&out.join("adapter_model.safetensors")).expect("ours");
    let theirs = load_tensor_file(&fixture("trl/g_qwen_lora/final_adapter/adapter_model.safetensors")).expect("TRL");
    assert_eq!(ours.len(), theirs.len());
    for ((name, shape, a), (name_b, shape_b, b)) in ours.iter().zip(&theirs) {
        assert_eq!((name, shape), (name_b, shape_b));
        assert!(max_diff(a, b) <= 1e-4, "{name}: {}", max_diff(a, b));
    }
}

#[test]
fn lora_runs_resume_bit_exactly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let full = dir.path().join("full");
    let result = kto(&case_g(&full, &["--save-steps", "4"]));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert!(full.join("checkpoint-4/adapter_model.safetensors").is_file());
    let resumed = dir.path().join("resumed");
    let checkpoint = s(&full.join("checkpoint-4"));
    let result = kto(&case_g(&resumed, &["--save-steps", "4", "--resume-from-checkpoint", &checkpoint]));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let a = std::fs::read(full.join("adapter_model.safetensors")).expect("full");
    let b = std::fs::read(resumed.join("adapter_model.safetensors")).expect("resumed");
    assert!(a == b, "bit-identical adapters");
}

#[test]
fn merge_logps_and_generate_with_an_adapter() {
    let dir = tempfile::tempdir().expect("temp dir");
    let adapter = fixture("trl/g_qwen_lora/final_adapter");
    let base = fixture("models/tiny-qwen2");
    let merged = dir.path().join("merged");
    let result =
        kto(&["merge", "--model", &s(&base), "--adapter", &s(&adapter), "--out", &s(&merged)].map(String::from));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));

    // merged = base + (α/r) · B · A on every adapted projection, unchanged elsewhere.
    let device = burn::tensor::Device::flex();
    let (_, base_model) = load_model(&base, &device, &LoadOptions::default()).expect("base");
    let (_, merged_model) = load_model(&merged, &device, &LoadOptions::default()).expect("merged");
    let adapter_tensors = load_tensor_file(&adapter.join("adapter_model.safetensors")).expect("adapter");
    let tensor = |key: &str| adapter_tensors.iter().find(|(k, _, _)| k == key).expect("tensor").clone();
    for ((name, shape, w), (_, _, m)) in zip_eq(&named_tensors(&base_model), &named_tensors(&merged_model), "tensors") {
        let prefix = name.trim_end_matches(".weight");
        let adapted = name.ends_with("q_proj.weight") || name.ends_with("v_proj.weight");
        if !adapted {
            assert_eq!(w, m, "{name} unchanged");
            continue;
        }
        let (_, a_shape, a) = tensor(&format!("base_model.model.{prefix}.lora_A.weight")); // [r, d_in]
        let (_, _, b) = tensor(&format!("base_model.model.{prefix}.lora_B.weight")); // [d_out, r]
        let (r, d_in, d_out) = (a_shape[0], a_shape[1], shape[0]);
        let mut expected = w.clone(); // [d_out, d_in]
        for o in 0..d_out {
            for i in 0..d_in {
                let delta: f32 = (0..r).map(|k| b[o * r + k] * a[k * d_in + i]).sum();
                expected[o * d_in + i] += 16.0 / 8.0 * delta;
            }
        }
        assert!(max_diff(&expected, m) <= 1e-6, "{name}: merged differs by {}", max_diff(&expected, m));
    }

    // The adapter applied at run time scores like the merged folder.
    let data = s(&fixture("datasets/kto_standard.jsonl"));
    let score = |model: &Path, adapter: Option<&Path>, out: &Path| {
        let mut args = vec!["logps".to_string(), "--model".into(), s(model), "--dataset".into(), data.clone()];
        args.extend(["--out".into(), s(out), "--per-device-train-batch-size".into(), "4".into()]);
        if let Some(a) = adapter {
            args.extend(["--adapter".into(), s(a)]);
        }
        let result = kto(&args);
        assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
        read_jsonl_file(out)
    };
    let with_adapter = score(&base, Some(&adapter), &dir.path().join("a.jsonl"));
    let with_merged = score(&merged, None, &dir.path().join("m.jsonl"));
    for (x, y) in zip_eq(&with_adapter, &with_merged, "scored rows") {
        let (x, y) = (x["logps"].as_f64().expect("logps"), y["logps"].as_f64().expect("logps"));
        assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{x} vs {y}");
    }
    let result = kto(&[
        "generate",
        "--model",
        &s(&base),
        "--adapter",
        &s(&adapter),
        "--prompt",
        "What is 3 plus 4?",
        "--max-new-tokens",
        "4",
    ]
    .map(String::from));
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
}

/// `kto merge` of PEFT's own `all-linear` adapter (tests/fixtures/trl/m_<family>/peft_adapter)
/// onto every family beyond Llama/Qwen2, Phi-3's fused projections included: the merged folder
/// has the base model's tensors, and its log-probs are the adapted model's as transformers +
/// PEFT compute them (`peft_logps.jsonl`, the first rows of `logps.jsonl` at max_length 48).
#[test]
fn peft_adapters_merge_into_every_family() {
    let dir = tempfile::tempdir().expect("temp dir");

    for family in ["qwen3", "mistral", "olmo2", "smollm3", "gemma2", "gemma3", "phi3"] {
        let base = fixture(&format!("models/tiny-{family}"));
        let adapter = fixture(&format!("trl/m_{family}/peft_adapter"));
        let merged = dir.path().join(family);
        let args = ["merge", "--model", &s(&base), "--adapter", &s(&adapter), "--out", &s(&merged)];
        let result = kto(&args.map(String::from));
        assert!(result.status.success(), "{family}: {}", String::from_utf8_lossy(&result.stderr));
        let device = burn::tensor::Device::flex();
        let (_, base_model) = load_model(&base, &device, &LoadOptions::default()).expect("base");
        let (_, merged_model) = load_model(&merged, &device, &LoadOptions::default()).expect("merged");
        let names =
            |m: &kto_models::TransformerLm| named_tensors(m).into_iter().map(|t| (t.0, t.1)).collect::<Vec<_>>();
        assert_eq!(names(&merged_model), names(&base_model), "{family}: the base model's tensors");
        let expected = read_jsonl(&format!("trl/m_{family}/peft_logps.jsonl"));
        let rows = read_jsonl(&format!("trl/m_{family}/logps.jsonl"));
        for (i, (e, row)) in expected.iter().zip(&rows).enumerate() {
            let ids = |key: &str| -> Vec<i64> {
                row[key].as_array().expect(key).iter().map(|v| v.as_i64().expect("id")).collect()
            };
            let (prompt, completion) = (ids("prompt_ids"), ids("completion_ids"));
            let all: Vec<i64> = prompt.iter().chain(&completion).copied().take(48).collect();
            let n = all.len();
            let input = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(all, [1, n]),
                &device,
            );
            let mask = burn::tensor::Tensor::<2, burn::tensor::Bool>::from_data(
                burn::tensor::TensorData::new(vec![true; n], [1, n]),
                &device,
            );
            let scored: Vec<bool> = (0..n).map(|j| j >= prompt.len()).collect();
            let completion_mask = burn::tensor::Tensor::<2, burn::tensor::Bool>::from_data(
                burn::tensor::TensorData::new(scored, [1, n]),
                &device,
            );
            let got = kto_core::sequence_logps(&merged_model, input, mask, completion_mask, 32).into_scalar::<f32>();
            let want = e["logp"].as_f64().expect("logp");
            let (rel, abs) = kto_testkit::CROSS_FRAMEWORK;
            assert!(
                kto_testkit::is_close(f64::from(got), want, rel, abs),
                "{family} row {i}: merged {got} vs PEFT {want}"
            );
        }
    }
}
