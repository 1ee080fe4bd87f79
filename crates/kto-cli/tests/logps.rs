//! `kto logps` against TRL's per-row log-probs with the initial weights (`logps.jsonl`):
//! policy and reference, matched and KL sequences, batched as TRL batches them.

use std::process::Command;

use kto_testkit::{CROSS_FRAMEWORK, assert_close, fixture, read_json, read_jsonl};
use serde_json::Value;

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
            ("ref_kl_logps", "ref_KL_logp"),
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

#[test]
fn logps_match_trl_for_llama_with_max_length_48() {
    check("c_llama_weighted_adamw_ga2_trunc", "models/tiny-llama");
}
