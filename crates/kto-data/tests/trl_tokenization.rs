//! TRL 1.16's processed token ids, reproduced from the raw datasets: prompt, completion and KL
//! completion ids of every kept row, in training order, and the same dropped rows.

use kto_data::{HfTokenizer, TokenizeConfig, read_jsonl, tokenize_examples};
use kto_testkit::{fixture, read_json, read_jsonl as read_fixture_jsonl, zip_eq};
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn check(case: &str, dataset: &str, model: &str) {
    let summary = read_json(&format!("trl/{case}/summary.json"));
    let cfg = &summary["kto_config"];
    let config = TokenizeConfig {
        max_length: cfg["max_length"].as_u64().map(|v| v as usize),
        per_device_train_batch_size: cfg["per_device_train_batch_size"].as_u64().expect("batch size") as usize,
        kl_pairs: cfg["loss_type"] == "kto",
        ..TokenizeConfig::trl(4)
    };
    let tokenizer = HfTokenizer::from_folder(&fixture(model)).expect("tokenizer");
    let examples = read_jsonl(&fixture(dataset)).expect("dataset reads");
    let ours = tokenize_examples(&examples, &tokenizer, &config).expect("tokenizes");

    let expected = read_fixture_jsonl(&format!("trl/{case}/tokenized.jsonl"));
    let kept: Vec<&Value> = expected.iter().filter(|r| r["dropped"] == false).collect();
    let dropped: Vec<u64> =
        expected.iter().filter(|r| r["dropped"] == true).map(|r| r["row_id"].as_u64().expect("id")).collect();
    assert_eq!(ours.rows.len(), kept.len(), "{case}: kept rows");
    assert_eq!(ours.dropped.iter().map(|d| d.source_row as u64).collect::<Vec<_>>(), dropped, "{case}: dropped rows");
    let expected_dropped: Vec<&Value> = expected.iter().filter(|r| r["dropped"] == true).collect();
    for (d, e) in zip_eq(&ours.dropped, &expected_dropped, "dropped rows") {
        assert_eq!(d.reason, e["reason"].as_str().expect("reason"), "{case}: drop reason");
    }
    for (i, (row, e)) in ours.rows.iter().zip(&kept).enumerate() {
        let at = format!("{case} processed row {i} (source row {})", row.source_row);
        assert_eq!(row.source_row as u64, e["row_id"].as_u64().expect("row_id"), "{at}: order");
        assert_eq!(row.label, e["label"].as_bool().expect("label"), "{at}: label");
        assert_eq!(row.prompt_ids, ids(&e["prompt_ids"]), "{at}: prompt_ids");
        assert_eq!(row.completion_ids, ids(&e["completion_ids"]), "{at}: completion_ids");
        assert_eq!(
            row.kl_completion_ids.as_ref().expect("kto builds KL pairs"),
            &ids(&e["KL_completion_ids"]),
            "{at}: KL"
        );
    }
    // TRL's one-time prefix warning, when it emitted one.
    let trl_warning = summary["warnings"].as_array().expect("warnings").iter().find_map(|w| {
        let m = w["message"].as_str().expect("message");
        m.contains("not a prefix").then(|| m.trim_start_matches("[RANK 0] ").to_string())
    });
    assert_eq!(ours.prefix_warning, trl_warning, "{case}: prefix warning");
}

#[test]
fn standard_qwen() {
    check("a_qwen_kto_sgd", "datasets/kto_standard.jsonl", "models/tiny-qwen2");
}

#[test]
fn standard_llama_with_bos_and_max_length_48() {
    check("c_llama_weighted_adamw_ga2_trunc", "datasets/kto_standard.jsonl", "models/tiny-llama");
}

#[test]
fn conversational_qwen() {
    check("d_qwen_conversational", "datasets/kto_conversational.jsonl", "models/tiny-qwen2");
}

#[test]
fn conversational_llama() {
    check("i_llama_conversational", "datasets/kto_conversational.jsonl", "models/tiny-llama");
}

#[test]
fn explicit_pairs() {
    check("e_qwen_pairwise_explicit", "datasets/pairwise_explicit.jsonl", "models/tiny-qwen2");
}

#[test]
fn implicit_pairs() {
    check("h_qwen_pairwise_implicit", "datasets/pairwise_implicit.jsonl", "models/tiny-qwen2");
}
