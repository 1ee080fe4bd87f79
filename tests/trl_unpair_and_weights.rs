//! Unpairing, prompt extraction and the weight warning against TRL 1.16's outputs.
//!
//! `trl/<case>/processed.jsonl` holds TRL's processed rows decoded back to text (see
//! `tests/fixtures/gen/trl_processed_strings.py`); `summary.json` holds TRL's processed label
//! counts and captured warnings.

use kto::core::{PairedExample, TRL_UNPAIR_BLOCK, unpair, weight_warning};
use kto_testkit::{TRL_CASES, read_json, read_jsonl};

fn text(v: &serde_json::Value) -> String {
    v.as_str().expect("string").to_string()
}

fn check_case(case: &str, dataset: &str) {
    let paired: Vec<PairedExample<String, usize>> = read_jsonl(dataset)
        .iter()
        .enumerate()
        .map(|(row_id, r)| PairedExample {
            prompt: r.get("prompt").map(text),
            chosen: text(&r["chosen"]),
            rejected: text(&r["rejected"]),
            extra: row_id,
        })
        .collect();
    let ours = unpair(paired, TRL_UNPAIR_BLOCK).expect("valid paired data");
    let trl = read_jsonl(&format!("trl/{case}/processed.jsonl"));
    assert_eq!(ours.len(), trl.len(), "{case}: processed rows");
    for (i, (ours, theirs)) in ours.iter().zip(&trl).enumerate() {
        assert_eq!(ours.extra as u64, theirs["row_id"].as_u64().expect("row_id"), "{case} row {i}: source row");
        assert_eq!(ours.label, theirs["label"].as_bool().expect("label"), "{case} row {i}: label");
        assert_eq!(ours.prompt, text(&theirs["prompt"]), "{case} row {i}: prompt");
        assert_eq!(ours.completion, text(&theirs["completion"]), "{case} row {i}: completion");
    }
    // The processed order in TRL's own summary, too.
    let summary = &read_json(&format!("trl/{case}/summary.json"))["dataset"];
    let order: Vec<u64> = summary["row_id_order_after_processing"]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_u64().expect("id"))
        .collect();
    assert_eq!(ours.iter().map(|u| u.extra as u64).collect::<Vec<_>>(), order, "{case}: order");
}

#[test]
fn explicit_pairs_unpair_in_trl_order() {
    check_case("e_qwen_pairwise_explicit", "datasets/pairwise_explicit.jsonl");
}

#[test]
fn implicit_pairs_extract_prompts_like_trl() {
    // Includes row 5, whose answers share a leading "Sure," that TRL moves into the prompt.
    check_case("h_qwen_pairwise_implicit", "datasets/pairwise_implicit.jsonl");
}

/// TRL's weight warning (without the logger's `[RANK 0] ` prefix), if it emitted one.
fn trl_weight_warning(summary: &serde_json::Value) -> Option<String> {
    summary["warnings"].as_array().expect("warnings").iter().find_map(|w| {
        let message = w["message"].as_str().expect("message");
        message.contains("desirable_weight in").then(|| message.trim_start_matches("[RANK 0] ").to_string())
    })
}

#[test]
fn weight_warning_text_equals_trl_for_every_case() {
    let mut warned = Vec::new();
    for case in TRL_CASES {
        let summary = read_json(&format!("trl/{case}/summary.json"));
        let count = |k: &str| summary["dataset"][k].as_u64().expect("count") as usize;
        let weight = |k: &str| summary["kto_config"][k].as_f64().expect("weight");
        let ours = weight_warning(
            count("processed_desirable"),
            count("processed_undesirable"),
            weight("desirable_weight"),
            weight("undesirable_weight"),
        );
        assert_eq!(ours, trl_weight_warning(&summary), "{case}");
        if ours.is_some() {
            warned.push(case.chars().next().expect("case letter"));
        }
    }
    // a (40/24, weights 1/1) warns; c (38/22 after dropping, undesirable_weight 1.33) does not.
    assert_eq!(warned, vec!['a', 'b', 'd', 'f', 'g', 'i']);
}
