//! Shared pieces of the `kto train` tests: TRL case a's command line and flag overrides.
#![allow(dead_code)]

use std::path::Path;

use kto_testkit::fixture;

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// TRL case a: Qwen2, standard data, SGD lr 1e-2, batch 4, 8 steps (`run_cases.sh`).
pub fn case_a_args(out: &Path) -> Vec<String> {
    let model = fixture("models/tiny-qwen2");
    let data = fixture("datasets/kto_standard.jsonl");
    [
        "train",
        "--model",
        path(&model),
        "--dataset",
        path(&data),
        "--output-dir",
        path(out),
        "--optim",
        "sgd",
        "--learning-rate",
        "1e-2",
        "--per-device-train-batch-size",
        "4",
        "--max-steps",
        "8",
        "--logging-steps",
        "1",
        "--save-steps",
        "0",
        "--gradient-checkpointing",
        "false",
        "--device",
        "ndarray",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `args` with `flag` set to `value` (replacing an earlier value).
pub fn with(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.into(),
        None => args.extend([flag.into(), value.into()]),
    }
    args
}
