//! Collated micro-batches equal the padded batches TRL's collator built (`microbatches.jsonl`
//! inputs), including `max_length` truncation of prompt + completion and of the KL sequences.

use burn::tensor::Device;
use kto_data::{
    CollateConfig, HfTokenizer, HostSequences, KlPairing, TokenizeConfig, collate, read_jsonl, tokenize_examples,
};
use kto_testkit::{fixture, read_jsonl as read_fixture_jsonl};
use serde_json::Value;

fn flat_i64(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("rows")
        .iter()
        .flat_map(|r| r.as_array().expect("row").iter().map(|x| x.as_i64().expect("int")))
        .collect()
}

fn flat_bool(v: &Value) -> Vec<bool> {
    flat_i64(v).into_iter().map(|x| x == 1).collect()
}

fn assert_same(ours: &HostSequences, inputs: &Value, prefix: &str, at: &str) {
    assert_eq!(ours.input_ids, flat_i64(&inputs[format!("{prefix}input_ids")]), "{at}: {prefix}input_ids");
    assert_eq!(
        ours.attention_mask,
        flat_bool(&inputs[format!("{prefix}attention_mask")]),
        "{at}: {prefix}attention_mask"
    );
    assert_eq!(
        ours.completion_mask,
        flat_bool(&inputs[format!("{prefix}completion_mask")]),
        "{at}: {prefix}completion_mask"
    );
}

fn check(case: &str, model: &str, max_length: usize, pad_id: u32) {
    let tokenizer = HfTokenizer::from_folder(&fixture(model)).expect("tokenizer");
    assert_eq!(tokenizer.pad_id(), Some(pad_id));
    let examples = read_jsonl(&fixture("datasets/kto_standard.jsonl")).expect("dataset");
    let config = TokenizeConfig { max_length: Some(max_length), ..TokenizeConfig::trl(4) };
    let rows = tokenize_examples(&examples, &tokenizer, &config).expect("tokenizes").rows;
    let collate_config =
        CollateConfig { pad_id, max_length: Some(max_length), pad_to_multiple_of: None, kl: KlPairing::FromRows };
    let micro = read_fixture_jsonl(&format!("trl/{case}/microbatches.jsonl"));
    for (k, mb) in micro.iter().enumerate() {
        let at = format!("{case} micro-batch {k}");
        let batch_rows: Vec<_> = rows[4 * k..4 * k + 4].iter().collect();
        let ours = collate(&batch_rows, &collate_config);
        assert_same(&ours.matched, &mb["inputs"], "", &at);
        assert_same(ours.kl.as_ref().expect("KL sequences"), &mb["inputs"], "KL_", &at);
        let labels: Vec<bool> =
            mb["inputs"]["label"].as_array().expect("labels").iter().map(|v| v.as_bool().expect("bool")).collect();
        assert_eq!(ours.desirable, labels, "{at}: labels");
        let typed = ours.to_device(&Device::flex());
        assert_eq!(typed.matched.input_ids.dims(), ours.matched.shape);
    }
}

#[test]
fn qwen_batches_match_trl() {
    check("a_qwen_kto_sgd", "models/tiny-qwen2", 1024, 997);
}

#[test]
fn llama_batches_truncated_to_48_match_trl() {
    check("c_llama_weighted_adamw_ga2_trunc", "models/tiny-llama", 48, 899);
}

#[test]
fn pad_to_multiple_of_rounds_the_width() {
    let tokenizer = HfTokenizer::from_folder(&fixture("models/tiny-qwen2")).expect("tokenizer");
    let examples = read_jsonl(&fixture("datasets/kto_standard.jsonl")).expect("dataset");
    let config = TokenizeConfig { max_length: None, kl_pairs: false, ..TokenizeConfig::trl(4) };
    let rows = tokenize_examples(&examples, &tokenizer, &config).expect("tokenizes").rows;
    let batch: Vec<_> = rows[..4].iter().collect();
    let plain =
        collate(&batch, &CollateConfig { pad_id: 997, max_length: None, pad_to_multiple_of: None, kl: KlPairing::Off });
    let padded = collate(
        &batch,
        &CollateConfig { pad_id: 997, max_length: None, pad_to_multiple_of: Some(16), kl: KlPairing::Off },
    );
    assert_eq!(padded.matched.shape[1], plain.matched.shape[1].div_ceil(16) * 16);
    assert!(padded.kl.is_none(), "no KL sequences without KL pairs");
    // Extra columns are padding: attention and completion masks false, pad id.
    let [n, seq] = padded.matched.shape;
    let width = plain.matched.shape[1];
    for r in 0..n {
        for t in width..seq {
            assert_eq!(padded.matched.input_ids[r * seq + t], 997);
            assert!(!padded.matched.attention_mask[r * seq + t] && !padded.matched.completion_mask[r * seq + t]);
        }
    }
}

#[test]
fn in_batch_pairs_equal_trl_pairs_on_sequential_batches_and_carry_reference_logps() {
    let tokenizer = HfTokenizer::from_folder(&fixture("models/tiny-qwen2")).expect("tokenizer");
    let mut examples = read_jsonl(&fixture("datasets/kto_standard.jsonl")).expect("dataset");
    for (i, e) in examples.iter_mut().enumerate() {
        e.ref_logps = Some(-(i as f64));
        e.ref_kl_logps = Some(-(i as f64) - 0.5);
    }
    let rows = tokenize_examples(&examples, &tokenizer, &TokenizeConfig::trl(4)).expect("tokenizes").rows;
    let config = |kl| CollateConfig { pad_id: 997, max_length: Some(1024), pad_to_multiple_of: None, kl };
    // Sequential batches are TRL's KL chunks, so pairing in the batch gives TRL's pairs.
    for batch in kto_data::epoch_batches(&vec![0; rows.len()], 4, kto_data::Sampling::Sequential, 0, false) {
        let batch: Vec<_> = batch.iter().map(|&i| &rows[i]).collect();
        let trl = collate(&batch, &config(KlPairing::FromRows));
        let ours = collate(&batch, &config(KlPairing::InBatch));
        assert_eq!(trl.kl, ours.kl);
        assert_eq!(trl.reference_logps, ours.reference_logps);
        assert_eq!(ours.reference_kl_logps, None, "new pairs have no precomputed reference");
    }
    let first: Vec<_> = rows[..4].iter().collect();
    let batch = collate(&first, &config(KlPairing::FromRows));
    assert_eq!(batch.reference_logps, Some(vec![0.0, -1.0, -2.0, -3.0]));
    assert_eq!(batch.reference_kl_logps, Some(vec![-0.5, -1.5, -2.5, -3.5]));
    // In a shuffled batch every row is paired with another row's completion of that batch.
    let shuffled = kto_data::epoch_batches(&vec![0; rows.len()], 4, kto_data::Sampling::Shuffle { seed: 1 }, 0, false);
    let picked: Vec<_> = shuffled[0].iter().map(|&i| &rows[i]).collect();
    let batch = collate(&picked, &config(KlPairing::InBatch));
    let kl = batch.kl.expect("KL sequences");
    let width = kl.shape[1];
    for (j, row) in picked.iter().enumerate() {
        let partner = picked[(j + 3) % 4];
        let ids: Vec<i64> = kl.input_ids[j * width..(j + 1) * width].to_vec();
        let expected: Vec<i64> = row.prompt_ids.iter().chain(&partner.completion_ids).map(|&t| i64::from(t)).collect();
        assert_eq!(ids[..expected.len()], expected[..], "row {j} takes row {}'s completion", (j + 3) % 4);
    }
}
