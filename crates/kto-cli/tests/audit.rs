//! `kto audit --dump` against TRL 1.16's processed rows for every reference case: identical
//! prompt, completion and KL completion ids in training order, and the same dropped rows.

use std::path::Path;
use std::process::Command;

use kto_testkit::{TRL_CASES, fixture, read_json, read_jsonl};
use serde_json::Value;

fn kto(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kto")).args(args).output().expect("kto runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Dataset and model of each reference case (`shared/reference/run_cases.sh`).
fn case_inputs(case: &str) -> (&'static str, &'static str) {
    let model = if case.contains("llama") { "models/tiny-llama" } else { "models/tiny-qwen2" };
    let dataset = match &case[..1] {
        "d" | "i" => "datasets/kto_conversational.jsonl",
        "e" => "datasets/pairwise_explicit.jsonl",
        "h" => "datasets/pairwise_implicit.jsonl",
        _ => "datasets/kto_standard.jsonl",
    };
    (dataset, model)
}

fn audit_dump(case: &str, dump: &Path) -> String {
    let summary = read_json(&format!("trl/{case}/summary.json"));
    let cfg = &summary["kto_config"];
    let (dataset, model) = case_inputs(case);
    let (dataset, model) = (fixture(dataset), fixture(model));
    let max_length = cfg["max_length"].as_u64().map_or("0".to_string(), |v| v.to_string());
    let batch = cfg["per_device_train_batch_size"].to_string();
    let args = [
        "audit",
        "--model",
        model.to_str().expect("utf-8"),
        "--dataset",
        dataset.to_str().expect("utf-8"),
        "--max-length",
        &max_length,
        "--per-device-train-batch-size",
        &batch,
        "--loss-type",
        cfg["loss_type"].as_str().expect("loss type"),
        "--desirable-weight",
        &cfg["desirable_weight"].to_string(),
        "--undesirable-weight",
        &cfg["undesirable_weight"].to_string(),
        "--dump",
        dump.to_str().expect("utf-8"),
    ];
    let (ok, stdout, stderr) = kto(&args);
    assert!(ok, "{case}: kto audit failed: {stderr}");
    stdout
}

#[test]
fn audit_dump_matches_trl_tokenized_rows_for_every_case() {
    let dir = tempfile::tempdir().expect("temp dir");
    for case in TRL_CASES {
        let dump = dir.path().join(format!("{case}.jsonl"));
        let stdout = audit_dump(case, &dump);
        let ours: Vec<Value> = kto_testkit::read_jsonl_file(&dump);
        let trl = read_jsonl(&format!("trl/{case}/tokenized.jsonl"));
        let kept = |rows: &[Value], dropped: bool| -> Vec<Value> {
            rows.iter().filter(|r| r["dropped"] == dropped).cloned().collect()
        };
        let (ours_kept, trl_kept) = (kept(&ours, false), kept(&trl, false));
        assert_eq!(ours_kept.len(), trl_kept.len(), "{case}: kept rows");
        let uses_kl = trl_kept[0].get("KL_input_ids").is_some();
        for (i, (o, t)) in ours_kept.iter().zip(&trl_kept).enumerate() {
            let at = format!("{case}: training row {i}");
            assert_eq!(o["row"], t["row_id"], "{at}: source row");
            assert_eq!(o["label"], t["label"], "{at}: label");
            assert_eq!(o["prompt_ids"], t["prompt_ids"], "{at}: prompt_ids");
            assert_eq!(o["completion_ids"], t["completion_ids"], "{at}: completion_ids");
            if uses_kl {
                // TRL's KL_input_ids is prompt ++ KL completion, cut to max_length like the
                // matched sequence; compare the uncut KL completion through it.
                let prompt = t["prompt_ids"].as_array().expect("ids").len();
                let kl_input: Vec<Value> = t["KL_input_ids"].as_array().expect("ids")[prompt..].to_vec();
                let ours_kl = o["kl_completion_ids"].as_array().expect("KL ids");
                assert_eq!(&ours_kl[..kl_input.len()], &kl_input[..], "{at}: KL completion");
                let trl_kl = t.get("KL_completion_ids").and_then(Value::as_array);
                if let Some(full) = trl_kl {
                    assert_eq!(ours_kl, full, "{at}: KL completion ids");
                }
            } else {
                assert_eq!(o["kl_completion_ids"], Value::Null, "{at}: no KL pairs for {case}");
            }
        }
        let (ours_dropped, trl_dropped) = (kept(&ours, true), kept(&trl, true));
        assert_eq!(ours_dropped.len(), trl_dropped.len(), "{case}: dropped rows");
        for (o, t) in ours_dropped.iter().zip(&trl_dropped) {
            assert_eq!(o["row"], t["row_id"], "{case}: dropped row");
            assert_eq!(o["reason"], t["reason"], "{case}: drop reason");
            assert_eq!(o["prompt_ids"], t["prompt_ids"], "{case}: dropped row's prompt ids");
        }
        let summary = read_json(&format!("trl/{case}/summary.json"));
        let counts = &summary["dataset"];
        let kept_line = format!(
            "rows kept          {:>7}  (desirable {}, undesirable {})",
            counts["processed_rows"].as_u64().expect("count"),
            counts["processed_desirable"],
            counts["processed_undesirable"]
        );
        assert!(stdout.contains(&kept_line), "{case}: report has {kept_line:?}:\n{stdout}");
    }
}

#[test]
fn audit_reports_weights_drops_and_kl_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stdout = audit_dump("c_llama_weighted_adamw_ga2_trunc", &dir.path().join("c.jsonl"));
    // 38 desirable, 22 undesirable kept, weights 1.0 / 1.33:
    // desirable in [round(22 * 1.33 / 38, 2), round(1.33 * 22 * 1.33 / 38, 2)] = [0.77, 1.02].
    assert!(stdout.contains("desirable_weight in [0.77, 1.02]"), "{stdout}");
    assert!(stdout.contains("dropped                  4"), "{stdout}");
    assert!(stdout.contains("row 3: len(prompt_ids)=88 >= max_length=48"), "{stdout}");
    // 60 kept rows in chunks of 4: 15 chunks, the last one full, so no row is self-paired.
    assert!(stdout.contains("KL pairs           15 chunks of 4 rows (last chunk 4)"), "{stdout}");
    assert!(!stdout.contains("self-paired"), "{stdout}");
}

#[test]
fn audit_fails_cleanly_on_bad_data_and_writes_no_dump() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, "{\"prompt\": \"Q\", \"completion\": \" A\", \"label\": true}\n{\"prompt\": \"Q\", \"completion\": \" B\", \"label\": \"yes\"}\n")
        .expect("write");
    let dump = dir.path().join("dump.jsonl");
    let model = fixture("models/tiny-qwen2");
    let (ok, _, stderr) = kto(&[
        "audit",
        "--model",
        model.to_str().expect("utf-8"),
        "--dataset",
        data.to_str().expect("utf-8"),
        "--dump",
        dump.to_str().expect("utf-8"),
    ]);
    assert!(!ok);
    assert_eq!(
        stderr.trim(),
        format!("error: {}:2: field \"label\": expected a boolean (or 0/1), found \"yes\"", data.display())
    );
    assert!(!dump.exists(), "no dump for a failed audit");
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "nothing half-written");
}

#[test]
fn hub_ids_resolve_through_hf_hub_cache_and_hf_home() {
    let model = fixture("models/tiny-qwen2");
    let hf_home = fixture("formats/hf_home");
    let args = ["audit", "--model", model.to_str().expect("utf-8"), "--dataset", "kto-test/zen-kto"];
    for (key, value) in [("HF_HUB_CACHE", hf_home.join("hub")), ("HF_HOME", hf_home.clone())] {
        let out = Command::new(env!("CARGO_BIN_EXE_kto"))
            .args(args)
            .env_remove("HF_HUB_CACHE")
            .env_remove("HUGGINGFACE_HUB_CACHE")
            .env(key, &value)
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("rows kept               64  (desirable 40, undesirable 24)"), "{stdout}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kto"))
        .args(["audit", "--model", model.to_str().expect("utf-8"), "--dataset", "kto-test/missing"])
        .env("HF_HUB_CACHE", hf_home.join("hub"))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: kto-test/missing: not a file or folder; as a hub id: kto-test/missing is not in the Hugging Face cache"),
        "{stderr}"
    );
}
