//! `kto logps` against TRL's per-row log-probs with the initial weights (`logps.jsonl`):
//! policy and reference, matched and KL sequences, batched as TRL batches them.

use std::process::Command;

use kto_testkit::{CROSS_FRAMEWORK, assert_close, fixture, read_json, read_jsonl};
use serde_json::Value;

mod common;
use common::{case_a_args, with};

fn check(case: &str, model: &str) {
    let summary = read_json(&format!("trl/{case}/summary.json"));
    let cfg = &summary["kto_config"];
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("logps.jsonl");
    let model = fixture(model);
    let dataset = fixture("datasets/kto_standard.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_kto"))
        .args(["logps", "--model", model.to_str().expect("utf-8"), "--ref-model", model.to_str().expect("utf-8")])
        .args(["--dataset", dataset.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")])
        .args(["--max-length", &cfg["max_length"].to_string()])
        .args(["--per-device-train-batch-size", &cfg["per_device_train_batch_size"].to_string()])
        .output()
        .expect("runs");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let ours: Vec<Value> = kto_testkit::read_jsonl_file(&out);
    let trl = read_jsonl(&format!("trl/{case}/logps.jsonl"));
    assert_eq!(ours.len(), trl.len(), "{case}: rows");
    let (rel, abs) = CROSS_FRAMEWORK;
    for (i, (o, t)) in ours.iter().zip(&trl).enumerate() {
        assert_eq!(o["row"], t["row_id"], "{case} row {i}");
        assert_eq!(o["completion_ids"], t["completion_ids"], "{case} row {i}");
        for (key, trl_key) in [
            ("logps", "policy_logp"),
            ("ref_logps", "ref_logp"),
            ("kl_logps", "policy_KL_logp"),
            ("ref_KL_logps", "ref_KL_logp"),
        ] {
            let got = o[key].as_f64().unwrap_or_else(|| panic!("{key}"));
            let want = t[trl_key].as_f64().unwrap_or_else(|| panic!("{trl_key}"));
            assert_close!(got, want, rel = rel, abs = abs, "{case} row {i} {key}");
        }
    }
}

#[test]
fn logps_match_trl_for_qwen() {
    check("a_qwen_kto_sgd", "models/tiny-qwen2");
}

/// `kto logps` for every family beyond Llama/Qwen2 (tests/fixtures/trl/m_<family>).
#[test]
fn logps_match_trl_for_every_family() {
    for family in ["qwen3", "mistral", "olmo2", "smollm3", "gemma2", "gemma3", "phi3"] {
        check(&format!("m_{family}"), &format!("models/tiny-{family}"));
    }
}

#[test]
fn logps_match_trl_for_llama_with_max_length_48() {
    check("c_llama_weighted_adamw_ga2_trunc", "models/tiny-llama");
}

/// `kto logps --ref-model` output is a pre-tokenized dataset with TRL's reference columns:
/// `kto train` on it loads no reference model and logs TRL's case a (whose reference is the
/// initial model, as here); a row without the columns is refused by name.
#[test]
fn logps_output_trains_as_a_dataset_with_reference_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let scored = dir.path().join("scored.jsonl");
    let model = fixture("models/tiny-qwen2");
    let dataset = fixture("datasets/kto_standard.jsonl");
    let utf8 = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let kto = |args: &[String]| Command::new(env!("CARGO_BIN_EXE_kto")).args(args).output().expect("runs");
    let args: Vec<String> = ["logps", "--model", &utf8(&model), "--ref-model", &utf8(&model), "--dataset"]
        .iter()
        .map(|s| s.to_string())
        .chain([utf8(&dataset), "--out".into(), utf8(&scored), "--per-device-train-batch-size".into(), "4".into()])
        .collect();
    let result = kto(&args);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));

    // TRL case a's settings on the scored rows.
    let train = |data: &std::path::Path, out: &std::path::Path| kto(&with(case_a_args(out), "--dataset", &utf8(data)));
    let out = dir.path().join("run");
    let result = train(&scored, &out);
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("from the dataset's columns (no reference model loaded)"), "{stderr}");
    let ours = kto_testkit::read_jsonl_file(&out.join("metrics.jsonl"));
    let trl = read_jsonl("trl/a_qwen_kto_sgd/metrics.jsonl");
    assert_eq!(ours.len(), trl.len(), "steps");
    for (o, t) in ours.iter().zip(&trl) {
        let step = t["step"].as_f64().expect("step");
        // The CLI plumbing (the library parity test checks every key): loss within 1e-5, the
        // exact 0 KL of a policy equal to its reference at step 1, counts exactly.
        let loss = (o["loss"].as_f64().expect("loss") - t["loss"].as_f64().expect("loss")).abs();
        assert!(loss <= 1e-5, "step {step}: loss differs by {loss}");
        if t["kl"] == 0.0 {
            assert_eq!(o["kl"].as_f64(), Some(0.0), "step {step}: TRL's kl is exactly 0");
        }
        assert_eq!(o["num_tokens"], t["num_tokens"], "step {step}");
    }

    // The same rows under TRL's precompute names (`reference_logps`, `reference_KL_logps`, what
    // TRL's `precompute_ref_log_probs` writes into a dataset) train identically.
    let text = std::fs::read_to_string(&scored).expect("scored");
    let mut lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let classic: String = lines
        .iter()
        .map(|l| {
            let mut row = l.as_object().expect("object").clone();
            for (ours, trls) in [("ref_logps", "reference_logps"), ("ref_KL_logps", "reference_KL_logps")] {
                let value = row.remove(ours).unwrap_or_else(|| panic!("{ours}"));
                row.insert(trls.into(), value);
            }
            Value::Object(row).to_string() + "\n"
        })
        .collect();
    let classic_path = dir.path().join("classic.jsonl");
    std::fs::write(&classic_path, classic).expect("write");
    let classic_out = dir.path().join("classic-run");
    let result = train(&classic_path, &classic_out);
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("from the dataset's columns (no reference model loaded)"), "{stderr}");
    let classic_logged = kto_testkit::read_jsonl_file(&classic_out.join("metrics.jsonl"));
    assert_eq!(classic_logged, ours, "reference_* columns give the ref_* columns' run exactly");

    // A row without the columns, among rows with them, is an error naming it.
    lines[2].as_object_mut().expect("object").remove("ref_KL_logps");
    let partial = dir.path().join("partial.jsonl");
    std::fs::write(&partial, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).expect("write");
    let result = train(&partial, &dir.path().join("never"));
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    assert!(!result.status.success());
    let expected =
        format!("{}:3: field \"ref_KL_logps\": missing, while {}:1 has", partial.display(), partial.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!dir.path().join("never").exists(), "nothing written");
}
