//! Completion log-probs of the tiny Qwen2 and Llama fixtures against transformers (through TRL's
//! `logps.jsonl`), on flex and ndarray (and wgpu with `KTO_TEST_WGPU=1`), in bf16
//! against f32 on flex, and after loading TRL's trained `final_model/` folders
//! (transformers-5 config layout). The matched and KL sequences are also scored in one
//! prompt-sharing pass (`paired_completion_logps`, the trainer's path) against the same values.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use kto_core::{CausalLm, LogpsConfig, SequenceBatch, paired_completion_logps, sequence_logps, shared_prefix_len};
use kto_models::{LoadOptions, TransformerLm, load_model};
use kto_testkit::{CROSS_FRAMEWORK, EXACT_MATH, assert_close, fixture, parity_devices, read_jsonl, zip_eq};
use serde_json::Value;

/// One scored row: token ids and the index of the first completion token.
struct Row {
    ids: Vec<i64>,
    completion_start: usize,
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().expect("ids").iter().map(|x| x.as_i64().expect("id")).collect()
}

fn rows(case: &str, completion_key: &str, max_length: usize) -> Vec<Row> {
    read_jsonl(&format!("trl/{case}/logps.jsonl"))
        .iter()
        .map(|r| {
            let prompt = ids(&r["prompt_ids"]);
            let mut all = prompt.clone();
            all.extend(ids(&r[completion_key]));
            all.truncate(max_length);
            Row { ids: all, completion_start: prompt.len() }
        })
        .collect()
}

/// Right-padded batch: `(input_ids, attention_mask, completion_mask)`.
fn batch(rows: &[Row], pad: i64, device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>, Tensor<2, Bool>) {
    let seq = rows.iter().map(|r| r.ids.len()).max().expect("rows");
    let (mut ids, mut mask, mut completion) = (vec![], vec![], vec![]);
    for r in rows {
        for t in 0..seq {
            ids.push(r.ids.get(t).copied().unwrap_or(pad));
            mask.push(t < r.ids.len());
            completion.push(t < r.ids.len() && t >= r.completion_start);
        }
    }
    let n = rows.len();
    (
        Tensor::from_data(TensorData::new(ids, [n, seq]), device),
        Tensor::from_data(TensorData::new(mask, [n, seq]), device),
        Tensor::from_data(TensorData::new(completion, [n, seq]), device),
    )
}

fn logps(model: &TransformerLm, rows: &[Row], pad: i64, device: &Device) -> Vec<f32> {
    let mut out = vec![];
    for chunk in rows.chunks(8) {
        let (ids, mask, completion) = batch(chunk, pad, device);
        out.extend(sequence_logps(model, ids, mask, completion, 32).into_data().iter::<f32>());
    }
    out
}

fn check_case(case: &str, model_dir: &str, pad: i64, max_length: usize) {
    for (backend, device) in parity_devices() {
        let (_, model) = load_model(&fixture(model_dir), &device, &LoadOptions::default()).expect("fixture loads");
        let expected = read_jsonl(&format!("trl/{case}/logps.jsonl"));
        let mut worst = 0.0f64;
        for (key, completion_key) in [("policy_logp", "completion_ids"), ("policy_KL_logp", "KL_completion_ids")] {
            let got = logps(&model, &rows(case, completion_key, max_length), pad, &device);
            for (i, (g, e)) in zip_eq(&got, &expected, &format!("{backend} {case} {key}")).enumerate() {
                let want = e[key].as_f64().expect("logp");
                assert_close!(*g, want, CROSS_FRAMEWORK, "{backend} {case} row {i} {key}");
                worst = worst.max((f64::from(*g) - want).abs() / want.abs().max(1.0));
            }
        }
        eprintln!("{backend} {case}: sequence log-probs within {worst:.2e} (relative) of TRL's");

        // The trainer's path: each row's matched and KL sequences in one pass that computes the
        // shared prompt once. Same values as above, against TRL's and against the separate passes.
        let config = LogpsConfig::new().with_chunk(32);
        let matched = rows(case, "completion_ids", max_length);
        let kl = rows(case, "KL_completion_ids", max_length);
        for (i, (m, k)) in zip_eq(matched.chunks(8), kl.chunks(8), "batches").enumerate() {
            let sequences = |rows: &[Row]| {
                let (input_ids, attention_mask, completion_mask) = batch(rows, pad, &device);
                SequenceBatch { input_ids, attention_mask, completion_mask }
            };
            let (a, b) = (sequences(m), sequences(k));
            let shared = shared_prefix_len(&a, &b);
            let shortest_prompt = m.iter().map(|r| r.completion_start).min().expect("rows");
            assert!(shared >= shortest_prompt, "{backend} {case} batch {i}: {shared} < {shortest_prompt} shared");
            let (pa, pb) = paired_completion_logps(&model, &a, &config, &model, &b, &config);
            let (pa, pb): (Vec<f32>, Vec<f32>) =
                (pa.logps.into_data().iter().collect(), pb.logps.into_data().iter().collect());
            assert_eq!(pa.len(), m.len(), "{backend} {case} batch {i}: paired rows");
            for (r, (got_a, got_b)) in zip_eq(&pa, &pb, "paired rows").enumerate() {
                let row = i * 8 + r;
                let e = &expected[row];
                assert_close!(
                    *got_a,
                    e["policy_logp"].as_f64().expect("logp"),
                    CROSS_FRAMEWORK,
                    "{backend} {case} paired row {row}"
                );
                assert_close!(
                    *got_b,
                    e["policy_KL_logp"].as_f64().expect("logp"),
                    CROSS_FRAMEWORK,
                    "{backend} {case} paired KL row {row}"
                );
            }
            let separate = |rows: &[Row]| logps(&model, rows, pad, &device);
            let pairs = zip_eq(&pa, separate(m), "matched rows").chain(zip_eq(&pb, separate(k), "KL rows"));
            for (got, alone) in pairs {
                // Same arithmetic; only the KL suffix's matrix shapes differ.
                assert_close!(*got, alone, EXACT_MATH, "{backend} {case} batch {i}: paired vs separate");
            }
        }

        // Per-token values through the full logits: checks the one-token shift position by position.
        let r = &rows(case, "completion_ids", max_length)[0];
        let (ids_t, mask, _) = batch(std::slice::from_ref(r), pad, &device);
        let seq = r.ids.len();
        let logits = model.logits(ids_t.clone(), mask).slice([0..1, 0..seq - 1]);
        let targets = ids_t.slice([0..1, 1..seq]).unsqueeze_dim::<3>(2);
        let per_token: Vec<f32> = log_softmax(logits, 2).gather(2, targets).into_data().iter::<f32>().collect();
        let expected_tokens = expected[0]["completion_token_logps"].as_array().expect("token logps");
        let scored = &per_token[r.completion_start - 1..];
        assert_eq!(scored.len(), expected_tokens.len(), "{backend} {case}: scored tokens");
        for (t, (g, e)) in scored.iter().zip(expected_tokens).enumerate() {
            assert_close!(*g, e.as_f64().expect("number"), CROSS_FRAMEWORK, "{backend} {case} token {t}");
        }
    }
}

#[test]
fn tiny_qwen2_matches_transformers() {
    // Case a: kto_standard, no truncation; pad <|endoftext|> = 997; tied embeddings, qkv biases.
    check_case("a_qwen_kto_sgd", "models/tiny-qwen2", 997, usize::MAX);
}

#[test]
fn tiny_llama_matches_transformers_with_truncation() {
    // Case c: max_length 48 keeps the first 48 tokens; pad = eos <|eot_id|> = 899; untied head.
    check_case("c_llama_weighted_adamw_ga2_trunc", "models/tiny-llama", 899, 48);
}

/// The families beyond Llama/Qwen2 (tests/fixtures/gen/model_families.py): tiny random
/// checkpoints in the Hub config layout, TRL's per-row log-probs at max_length 48 (rows up to 48
/// tokens, longer than Mistral's window of 8).
const FAMILY_CASES: [(&str, &str, i64); 7] = [
    // head_dim 24 ≠ 64 / 4, per-head q/k norms, tied; pad <|endoftext|> = 997.
    ("m_qwen3", "models/tiny-qwen3", 997),
    // sliding_window 8; pad = eos <|eot_id|> = 899.
    ("m_mistral", "models/tiny-mistral", 899),
    // post-norms, q/k norms over the whole projection.
    ("m_olmo2", "models/tiny-olmo2", 899),
    // NoPE on layers 1 and 3, tied.
    ("m_smollm3", "models/tiny-smollm3", 899),
    // sandwich (1 + w) norms, soft-caps 3 (scores) and 5 (logits), alternating windows of 8.
    ("m_gemma2", "models/tiny-gemma2", 997),
    // per-head q/k norms, local and global RoPE (linear ×2), sliding_window_pattern 2.
    ("m_gemma3", "models/tiny-gemma3", 997),
    // fused qkv_proj / gate_up_proj, RoPE on half of each head, sliding_window 16.
    ("m_phi3", "models/tiny-phi3", 899),
];

#[test]
fn every_family_matches_transformers() {
    for (case, model_dir, pad) in FAMILY_CASES {
        check_case(case, model_dir, pad, 48);
    }
}

#[test]
fn trained_final_models_in_transformers5_layout_match() {
    let families = FAMILY_CASES.map(|(case, _, pad)| (case, pad, 48));
    let cases = [("a_qwen_kto_sgd", 997, usize::MAX), ("c_llama_weighted_adamw_ga2_trunc", 899, 48)];
    for (case, pad, max_length) in cases.into_iter().chain(families) {
        let device = Device::flex();
        let folder = fixture(&format!("trl/{case}/final_model"));
        let (config, model) = load_model(&folder, &device, &LoadOptions::default()).expect("final_model loads");
        assert!(config.raw.get("rope_parameters").is_some(), "{case}: transformers-5 layout");
        let got = logps(&model, &rows(case, "completion_ids", max_length), pad, &device);
        let expected = read_jsonl(&format!("trl/{case}/final_model_logps.jsonl"));
        assert_eq!(got.len(), expected.len());
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_close!(*g, e["logp"].as_f64().expect("logp"), CROSS_FRAMEWORK, "{case} final_model row {i}");
        }
    }
}

/// bf16 compute (weights, activations and matmul outputs in bf16; RMSNorm reductions,
/// log-softmax and the sums in f32) against the f32 log-probs of the same model. bf16 keeps 8
/// significant bits (relative rounding 2^-8 = 3.9e-3) and every layer's output is rounded again,
/// so a sequence log-prob, a sum of picked logits minus log-sum-exps, moves relative to its size
/// by a small multiple of 2^-8. Stated bound: `|bf16 - f32| <= 4 * 2^-8 * |f32|` per sequence
/// (measured worst: tiny-qwen2 1.19 * 2^-8; over the other families up to 2.29 * 2^-8, SmolLM3).
const BF16_RELATIVE: f64 = 4.0 / 256.0;

#[test]
fn bf16_log_probs_track_f32_within_bf16_precision() {
    let device = Device::flex();
    let families = FAMILY_CASES.map(|(case, model, pad)| (case, model, pad, 48));
    for (case, model_dir, pad, max_length) in
        [("a_qwen_kto_sgd", "models/tiny-qwen2", 997, usize::MAX)].into_iter().chain(families)
    {
        let folder = fixture(model_dir);
        let (_, f32_model) = load_model(&folder, &device, &LoadOptions::default()).expect("f32");
        let options = LoadOptions { dtype: burn::tensor::FloatDType::BF16 };
        let (_, bf16_model) = load_model(&folder, &device, &options).expect("flex computes in bf16");
        let rows = rows(case, "completion_ids", max_length);
        let exact = logps(&f32_model, &rows, pad, &device);
        let half = logps(&bf16_model, &rows, pad, &device);
        let mut worst: f64 = 0.0;
        for (i, (h, e)) in zip_eq(&half, &exact, case).enumerate() {
            let relative = f64::from((h - e).abs()) / f64::from(e.abs());
            worst = worst.max(relative);
            assert!(relative <= BF16_RELATIVE, "{case} row {i}: bf16 {h} vs f32 {e}: relative {relative:e}");
        }
        // Not vacuous: the bf16 model really rounds (the log-probs differ somewhere).
        assert!(worst > 0.0, "{case}: bf16 and f32 agree bit for bit: the bf16 path did not run");
        eprintln!("{case}: bf16 vs f32: worst relative difference {worst:e} ({:.2} x 2^-8)", worst * 256.0);
    }
}

/// Gradients through the first batch of a prompt-sharing pair equal those of a plain pass: the
/// cache only keeps the keys and values the forward computes anyway.
#[test]
fn prompt_sharing_keeps_the_policy_gradient() {
    let device = Device::flex().autodiff();
    let (_, model) = load_model(&fixture("models/tiny-qwen2"), &device, &LoadOptions::default()).expect("loads");
    let frozen = model.clone().valid();
    let rows_a = rows("a_qwen_kto_sgd", "completion_ids", usize::MAX);
    let rows_b = rows("a_qwen_kto_sgd", "KL_completion_ids", usize::MAX);
    let sequences = |rows: &[Row], device: &Device| {
        let (input_ids, attention_mask, completion_mask) = batch(&rows[..4], 997, device);
        SequenceBatch { input_ids, attention_mask, completion_mask }
    };
    let (a, b) = (sequences(&rows_a, &device), sequences(&rows_b, &device.clone().without_autodiff()));
    assert!(shared_prefix_len(&a, &b) > 0, "the rows share their prompts");
    let config = LogpsConfig::new();
    let (paired, _) = paired_completion_logps(&model, &a, &config, &frozen, &b, &config);
    let plain = kto_core::completion_logps(&model, a.input_ids, a.attention_mask, a.completion_mask, &config);
    let q_proj = model.model.layers[0].self_attn.q_proj.as_ref().expect("q_proj").linear.weight.val();
    let (g_paired, g_plain) = (paired.logps.sum().backward(), plain.logps.sum().backward());
    let (g_paired, g_plain) = (
        q_proj.grad(&g_paired).expect("a gradient").into_data(),
        q_proj.grad(&g_plain).expect("a gradient").into_data(),
    );
    assert_eq!(g_paired, g_plain);
}

/// The policy under autodiff and a reference with the same weights on the plain device give
/// bit-identical matched and KL log-probs through the trainer's prompt-sharing pass, so TRL's
/// exact `kl == 0` and zero rewards at step 1 are kto's too (issue #16, item 1: flex's fused
/// softmax, which autodiff does not forward to, made them differ by ~1e-6).
#[test]
fn autodiff_policy_and_plain_reference_give_bit_identical_log_probs() {
    for (backend, device) in parity_devices() {
        let cases = [
            ("a_qwen_kto_sgd", "models/tiny-qwen2", 997),
            ("c_llama_weighted_adamw_ga2_trunc", "models/tiny-llama", 899),
        ];
        for (case, model_dir, pad) in cases.into_iter().chain(FAMILY_CASES) {
            let train = device.clone().autodiff();
            let (_, policy) = load_model(&fixture(model_dir), &train, &LoadOptions::default()).expect("loads");
            let (_, reference) = load_model(&fixture(model_dir), &device, &LoadOptions::default()).expect("loads");
            let frozen = policy.clone().valid();
            let (rows_a, rows_b) = (rows(case, "completion_ids", 48), rows(case, "KL_completion_ids", 48));
            let config = LogpsConfig::new().with_chunk(32);
            for (m, k) in zip_eq(rows_a.chunks(4), rows_b.chunks(4), "batches") {
                let sequences = |rows: &[Row], device: &Device| {
                    let (input_ids, attention_mask, completion_mask) = batch(rows, pad, device);
                    SequenceBatch { input_ids, attention_mask, completion_mask }
                };
                let (a, b) = (sequences(m, &train), sequences(k, &device));
                let (pa, pb) = paired_completion_logps(&policy, &a, &config, &frozen, &b, &config);
                let (ra, rb) = paired_completion_logps(&reference, &a.inner(), &config, &reference, &b, &config);
                let bits = |t: Tensor<1>| t.inner().into_data().iter::<f32>().map(f32::to_bits).collect::<Vec<_>>();
                assert_eq!(bits(pa.logps), bits(ra.logps), "{backend} {case}: matched log-probs");
                assert_eq!(bits(pb.logps), bits(rb.logps), "{backend} {case}: KL log-probs");
            }
        }
    }
}

/// PEFT's own LoRA adapters on `all-linear` (saved by PEFT, `target_modules` resolved to module
/// paths; tests/fixtures/gen/model_families.py) load onto every family and give PEFT's
/// log-probs; saved back by kto, the adapter has exactly PEFT's tensor names, shapes and values,
/// so `PeftModel.from_pretrained` reads it as it reads its own.
#[test]
fn peft_adapters_of_every_family_load_and_save_as_peft_writes_them() {
    let device = Device::flex();
    for (case, model_dir, pad) in FAMILY_CASES {
        let (_, base) = load_model(&fixture(model_dir), &device, &LoadOptions::default()).expect("loads");
        let folder = fixture(&format!("trl/{case}/peft_adapter"));
        let (model, config) = kto_models::load_adapter(base, &folder).expect("PEFT's adapter loads");
        let expected = read_jsonl(&format!("trl/{case}/peft_logps.jsonl"));
        let got = logps(&model, &rows(case, "completion_ids", 48)[..expected.len()], pad, &device);
        for (i, (g, e)) in zip_eq(&got, &expected, case).enumerate() {
            assert_close!(*g, e["logp"].as_f64().expect("logp"), CROSS_FRAMEWORK, "{case} row {i} with PEFT's adapter");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        kto_models::save_adapter(&model, &config, model_dir, dir.path()).expect("saves");
        let sorted = |path: &std::path::Path| {
            let mut t = kto_models::load_tensor_file(&path.join("adapter_model.safetensors")).expect("adapter");
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        let (ours, theirs) = (sorted(dir.path()), sorted(&folder));
        let names =
            |t: &[(String, Vec<usize>, Vec<f32>)]| t.iter().map(|x| (x.0.clone(), x.1.clone())).collect::<Vec<_>>();
        assert_eq!(names(&ours), names(&theirs), "{case}: adapter tensor names and shapes");
        assert!(ours.iter().zip(&theirs).all(|(a, b)| a.2 == b.2), "{case}: adapter values");
    }
}
