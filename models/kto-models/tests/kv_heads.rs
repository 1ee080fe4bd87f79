//! Multi-query and grouped-query attention: a model with `n_kv_heads < n_heads` must equal the
//! multi-head model whose key/value heads are its shared heads repeated, in transformers'
//! `repeat_kv` order (query head `j` reads kv head `j / (n_heads / n_kv_heads)`).

use std::path::Path;

use burn::prelude::*;
use kto_core::CausalLm;
use kto_models::{LoadOptions, load_model, named_tensors};
use kto_testkit::{EXACT_MATH, fixture, tolerance};

/// Writes tiny-llama with `kv_heads` key/value heads, each query head `j` reading the original kv
/// head `pick(j_kv)`.
fn variant(dir: &Path, kv_heads: usize, pick: impl Fn(usize) -> usize) {
    let src = fixture("models/tiny-llama");
    let (config, model) = load_model(&src, &Device::flex(), &LoadOptions::default()).expect("loads");
    let hd = config.head_dim;
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = named_tensors(&model)
        .into_iter()
        .map(|(key, shape, values)| {
            if key.ends_with("k_proj.weight") || key.ends_with("v_proj.weight") {
                let d_in = shape[1];
                let mut out = Vec::with_capacity(kv_heads * hd * d_in);
                for head in 0..kv_heads {
                    let from = pick(head);
                    out.extend_from_slice(&values[from * hd * d_in..(from + 1) * hd * d_in]);
                }
                (key, vec![kv_heads * hd, d_in], out)
            } else {
                (key, shape, values)
            }
        })
        .collect();
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> =
        tensors.into_iter().map(|(k, s, v)| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect(), s)).collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("view"))
        })
        .collect();
    std::fs::create_dir_all(dir).expect("dir");
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).expect("write");
    let mut raw = config.raw.clone();
    raw["num_key_value_heads"] = serde_json::json!(kv_heads);
    std::fs::write(dir.join("config.json"), serde_json::to_string(&raw).expect("json")).expect("write config");
}

#[test]
fn shared_kv_heads_equal_repeated_ones() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let device = Device::flex();
    let ids = Tensor::<2, Int>::from_ints([[893, 5, 17, 300, 42, 7, 99, 12]], &device);
    let mask = Tensor::<2, Bool>::from_bool(TensorData::from([[true; 8]]), &device);
    let logits = |dir: &Path| {
        let (_, m) = load_model(dir, &device, &LoadOptions::default()).expect("variant loads");
        m.logits(ids.clone(), mask.clone()).into_data()
    };
    // Multi-query: one kv head (the original head 0) shared by all 4 query heads.
    variant(&tmp.path().join("mqa"), 1, |_| 0);
    variant(&tmp.path().join("mqa-as-mha"), 4, |_| 0);
    logits(&tmp.path().join("mqa"))
        .assert_approx_eq::<f32>(&logits(&tmp.path().join("mqa-as-mha")), tolerance(EXACT_MATH));
    // Grouped: 2 kv heads; query heads 0,1 read kv head 0 and 2,3 read kv head 1.
    variant(&tmp.path().join("gqa"), 2, |h| h);
    variant(&tmp.path().join("gqa-as-mha"), 4, |h| h / 2);
    logits(&tmp.path().join("gqa"))
        .assert_approx_eq::<f32>(&logits(&tmp.path().join("gqa-as-mha")), tolerance(EXACT_MATH));
}
