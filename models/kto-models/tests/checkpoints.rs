//! Hugging Face folders out and back in: bit-exact round trips, sharding, bf16 on disk, strict
//! error reports.

use std::path::Path;

use burn::prelude::*;
use kto_models::{Error, LoadOptions, SaveOptions, StorageDType, TensorProblem, load_model, named_tensors, save_model};
use kto_testkit::fixture;

type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

fn load(folder: &Path) -> (kto_models::DecoderConfig, kto_models::TransformerLm) {
    load_model(folder, &Device::flex(), &LoadOptions::default()).expect("model loads")
}

fn assert_bit_exact(a: &Named, b: &Named) {
    assert_eq!(a.len(), b.len(), "tensor count");
    for ((ka, sa, va), (kb, sb, vb)) in a.iter().zip(b) {
        assert_eq!((ka, sa), (kb, sb));
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{ka} differs");
    }
}

#[test]
fn load_save_load_is_bit_exact_and_keeps_hf_layout() {
    let families =
        ["qwen3", "mistral", "olmo2", "smollm3", "gemma2", "gemma3", "phi3"].map(|f| format!("models/tiny-{f}"));
    for model in ["models/tiny-qwen2", "models/tiny-llama"].into_iter().chain(families.iter().map(String::as_str)) {
        let src = fixture(model);
        let (config, lm) = load(&src);
        let dir = tempfile::tempdir().expect("temp dir");
        let out = dir.path().join("saved");
        save_model(&lm, &config, Some(&src), &out, &SaveOptions::default()).expect("saves");
        for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
            assert_eq!(out.join(f).is_file(), src.join(f).is_file(), "{model}: {f} written when the source has it");
        }
        // The keys, shapes and values transformers wrote, no more and no fewer.
        let keys = |folder: &Path| {
            let mut t = kto_models::load_tensor_file(&folder.join("model.safetensors")).expect("tensors");
            t.sort_by(|a, b| a.0.cmp(&b.0));
            t
        };
        let (theirs, ours) = (keys(&src), keys(&out));
        assert_eq!(
            ours.iter().map(|t| (&t.0, &t.1)).collect::<Vec<_>>(),
            theirs.iter().map(|t| (&t.0, &t.1)).collect::<Vec<_>>(),
            "{model}: saved keys and shapes"
        );
        assert!(ours.iter().zip(&theirs).all(|(a, b)| a.2 == b.2), "{model}: saved values");
        let (config2, lm2) = load(&out);
        assert_eq!(config2.tie_word_embeddings, config.tie_word_embeddings);
        let (a, b) = (named_tensors(&lm), named_tensors(&lm2));
        assert_bit_exact(&a, &b);
        // Tied embeddings are omitted, as transformers saves them.
        assert_eq!(a.iter().any(|(k, _, _)| k == "lm_head.weight"), !config.tie_word_embeddings, "{model}");
        // PyTorch layout: q_proj.weight is [n_heads * head_dim, d_model]; Phi-3's fused
        // qkv_proj.weight [(n_heads + 2 n_kv_heads) * head_dim, d_model].
        let (key, rows) = match config.fused_projections {
            false => ("q_proj", config.num_heads),
            true => ("qkv_proj", config.num_heads + 2 * config.num_kv_heads),
        };
        let q = a.iter().find(|(k, _, _)| *k == format!("model.layers.0.self_attn.{key}.weight")).expect(key);
        assert_eq!(q.1, vec![rows * config.head_dim, config.hidden_size], "{model}");
    }
}

#[test]
fn sharded_copies_load_to_identical_weights() {
    let src = fixture("models/tiny-llama");
    let (config, lm) = load(&src);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("sharded");
    // 200 kB shards split the 0.8 MB model into several files.
    save_model(&lm, &config, Some(&src), &out, &SaveOptions { max_shard_bytes: 200_000, ..SaveOptions::default() })
        .expect("saves");
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(!out.join("model.safetensors").exists());
    let shards = std::fs::read_dir(&out)
        .expect("folder")
        .filter(|e| e.as_ref().expect("entry").file_name().to_string_lossy().starts_with("model-0"))
        .count();
    assert!(shards >= 4, "{shards} shards");
    let (_, sharded) = load(&out);
    assert_bit_exact(&named_tensors(&lm), &named_tensors(&sharded));
}

#[test]
fn half_precision_copies_load_to_the_rounded_weights() {
    let src = fixture("models/tiny-qwen2");
    let (config, lm) = load(&src);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("bf16");
    save_model(
        &lm,
        &config,
        Some(&src),
        &out,
        &SaveOptions { dtype: Some(StorageDType::BF16), ..SaveOptions::default() },
    )
    .expect("saves");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).expect("config")).expect("json");
    assert_eq!(raw["torch_dtype"], "bfloat16");
    // Loaded into f32 (ndarray has no bf16) through the same path as any bf16 checkpoint.
    #[allow(deprecated)]
    let (_, bf) = load_model(&out, &Device::ndarray(), &LoadOptions::default()).expect("bf16 folder loads");
    let rounded: Named = named_tensors(&lm)
        .into_iter()
        .map(|(k, s, v)| (k, s, v.into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect()))
        .collect();
    assert_bit_exact(&rounded, &named_tensors(&bf));

    // The same for float16.
    let out = dir.path().join("f16");
    save_model(&lm, &config, None, &out, &SaveOptions { dtype: Some(StorageDType::F16), ..SaveOptions::default() })
        .expect("saves");
    let (_, f16_model) = load(&out);
    let rounded: Named = named_tensors(&lm)
        .into_iter()
        .map(|(k, s, v)| (k, s, v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect()))
        .collect();
    assert_bit_exact(&rounded, &named_tensors(&f16_model));
}

#[test]
fn every_checkpoint_problem_is_reported_at_once() {
    let src = fixture("models/tiny-llama");
    let (config, lm) = load(&src);
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("broken");
    save_model(&lm, &config, None, &out, &SaveOptions::default()).expect("saves");
    // Rewrite the file without one tensor, with a stray one and a wrongly shaped one.
    let bytes = std::fs::read(out.join("model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid file");
    let mut tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| k != "model.norm.weight")
        .map(|(k, v)| {
            if k == "model.layers.1.mlp.up_proj.weight" {
                let view = safetensors::tensor::TensorView::new(v.dtype(), vec![80, 128], v.data()).expect("reshape");
                (k, view)
            } else {
                (k, v)
            }
        })
        .collect();
    let extra = [0u8; 8];
    tensors.push((
        "model.extra.weight".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &extra).expect("view"),
    ));
    safetensors::serialize_to_file(tensors, None, &out.join("model.safetensors")).expect("write");

    let err = load_model(&out, &Device::flex(), &LoadOptions::default()).expect_err("broken checkpoint");
    let Error::Checkpoint { problems, .. } = &err else { panic!("unexpected error {err}") };
    assert_eq!(
        problems,
        &vec![
            TensorProblem::ShapeMismatch {
                file: "model.safetensors".into(),
                key: "model.layers.1.mlp.up_proj.weight".into(),
                expected: vec![160, 64],
                found: vec![80, 128],
            },
            TensorProblem::Missing { key: "model.norm.weight".into() },
            TensorProblem::Unexpected { file: "model.safetensors".into(), key: "model.extra.weight".into() },
        ]
    );
    let text = err.to_string();
    assert!(text.ends_with(
        "checkpoint does not match the model:\n  model.safetensors: tensor `model.layers.1.mlp.up_proj.weight`: expected shape [160, 64], found [80, 128]\n  missing tensor `model.norm.weight`\n  model.safetensors: unexpected tensor `model.extra.weight`"
    ), "{text}");
}

#[test]
fn bf16_compute_is_refused_on_ndarray() {
    #[allow(deprecated)]
    let err = load_model(
        &fixture("models/tiny-qwen2"),
        &Device::ndarray(),
        &LoadOptions { dtype: burn::tensor::FloatDType::BF16 },
    )
    .expect_err("ndarray has no bf16");
    assert_eq!(err.to_string(), "the device does not support BF16 tensors; load in f32 instead");
}
