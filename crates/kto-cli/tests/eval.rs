//! Evaluation through `kto train` against TRL 1.16 (cases j and k of
//! `tests/fixtures/gen/trl_eval_cases.py`): Llama, 44 training rows in batches of 4, 16
//! evaluation rows in batches of 6 (6 + 6 + 4), undesirable weight 0.35, AdamW, an evaluation
//! every 3 steps; j with a separate reference model, k with the reference log-probs precomputed
//! for the training and the evaluation rows.

use std::path::Path;
use std::process::Command;

use kto_testkit::{fixture, read_jsonl, read_jsonl_file};
use serde_json::Value;

mod common;
use common::path;

/// The step loss and `eval_loss`, absolute [measured: see the closing note of issue 16].
const LOSS_ABS: f64 = 4e-6;
/// Every other metric: relative, the cross-framework tolerance of sequence log-probs, with an
/// absolute floor for values near 0 (rewards and KL are β-scaled differences of two sums).
const METRIC_REL: f64 = 1e-4;
const METRIC_ABS: f64 = 1e-5;

/// The first 48 rows of `kto_standard.jsonl` to train on and the next 16 to evaluate, as the
/// generator splits them.
fn split_dataset(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let text = std::fs::read_to_string(fixture("datasets/kto_standard.jsonl")).expect("dataset");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 64, "kto_standard has 64 rows");
    let (train, eval) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
    std::fs::write(&train, lines[..48].join("\n") + "\n").expect("train split");
    std::fs::write(&eval, lines[48..].join("\n") + "\n").expect("eval split");
    (train, eval)
}

fn train(out: &Path, train: &Path, eval: &Path, device: &str, precompute: bool) {
    let model = fixture("models/tiny-llama");
    let mut args: Vec<&str> = vec![
        "train",
        "--model",
        path(&model),
        "--dataset",
        path(train),
        "--eval-dataset",
        path(eval),
        "--output-dir",
        path(out),
        "--optim",
        "adamw_torch",
        "--learning-rate",
        "1e-3",
        "--per-device-train-batch-size",
        "4",
        "--per-device-eval-batch-size",
        "6",
        "--undesirable-weight",
        "0.35",
        "--max-length",
        "48",
        "--max-steps",
        "6",
        "--logging-steps",
        "1",
        "--eval-strategy",
        "steps",
        "--eval-steps",
        "3",
        "--save-steps",
        "0",
        "--gradient-checkpointing",
        "false",
        "--device",
        device,
    ];
    if precompute {
        args.extend(["--precompute-ref-log-probs", "true"]);
    } else {
        args.extend(["--ref-model", path(&model)]);
    }
    let result = Command::new(env!("CARGO_BIN_EXE_kto")).args(&args).output().expect("kto runs");
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
}

/// Every key TRL logged (train and eval entries, in order) against ours; timing keys (null in
/// the fixture) and the final train summary are not compared.
fn compare(case: &str, ours: &[Value], trl: &[Value]) -> f64 {
    let trl: Vec<&Value> = trl.iter().filter(|e| e.get("train_runtime").is_none()).collect();
    assert_eq!(ours.len(), trl.len(), "{case}: log entries");
    let mut worst = 0.0f64;
    for (o, t) in ours.iter().zip(&trl) {
        let step = t["step"].as_f64().expect("step");
        for (key, want) in t.as_object().expect("entry") {
            let Some(want) = want.as_f64() else { continue };
            let got = o[key].as_f64().unwrap_or_else(|| panic!("{case} step {step}: `{key}` not logged in {o}"));
            let diff = (got - want).abs();
            let ok = match key.as_str() {
                "loss" | "eval_loss" => diff <= LOSS_ABS,
                "num_tokens" | "eval_num_tokens" | "learning_rate" | "epoch" | "step" => {
                    diff <= 1e-12 * want.abs().max(1.0)
                }
                _ => {
                    worst = worst.max(diff / want.abs().max(METRIC_ABS / METRIC_REL));
                    diff <= METRIC_ABS.max(METRIC_REL * want.abs())
                }
            };
            assert!(ok, "{case} step {step}: {key} = {got}, TRL logged {want} (off by {diff:e})");
        }
    }
    worst
}

#[test]
fn eval_metrics_equal_trls_with_a_partial_last_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (train_file, eval_file) = split_dataset(dir.path());
    let trl = read_jsonl("trl/j_llama_eval_partial/metrics.jsonl");
    for device in ["ndarray", "flex"] {
        let out = dir.path().join(format!("j-{device}"));
        train(&out, &train_file, &eval_file, device, false);
        let worst = compare("j", &read_jsonl_file(&out.join("metrics.jsonl")), &trl);
        eprintln!("j on {device}: worst relative metric deviation {worst:e}");
    }
}

#[test]
fn precomputed_reference_log_probs_cover_the_eval_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (train_file, eval_file) = split_dataset(dir.path());
    let trl = read_jsonl("trl/k_llama_precompute_eval/metrics.jsonl");
    let out = dir.path().join("k");
    train(&out, &train_file, &eval_file, "ndarray", true);
    let worst = compare("k", &read_jsonl_file(&out.join("metrics.jsonl")), &trl);
    eprintln!("k on ndarray: worst relative metric deviation {worst:e}");
    // One cache line per training row, then per evaluation row.
    let cache = read_jsonl_file(&out.join("ref_logps.jsonl"));
    let splits: Vec<&str> = cache.iter().map(|l| l["split"].as_str().expect("split")).collect();
    assert_eq!(splits.iter().filter(|s| **s == "train").count(), 44, "TRL keeps 44 of the 48 training rows");
    assert_eq!(splits.iter().filter(|s| **s == "eval").count(), 16);
    // A second run reuses the cache for both splits and logs the same numbers.
    train(&out, &train_file, &eval_file, "ndarray", true);
    let again = read_jsonl_file(&out.join("metrics.jsonl"));
    compare("k (cached)", &again, &trl);
}
