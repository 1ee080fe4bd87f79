//! Generation with the KV cache equals generation that recomputes the whole prefix.

use burn::prelude::*;
use kto_models::{GenerationConfig, LoadOptions, generate, load_model};
use kto_testkit::fixture;

#[test]
fn cached_generation_equals_recomputation_token_for_token() {
    for model in ["models/tiny-qwen2", "models/tiny-llama"] {
        let device = Device::flex();
        let folder = fixture(model);
        let (config, lm) = load_model(&folder, &device, &LoadOptions::default()).expect("loads");
        let defaults = GenerationConfig::from_folder(&folder, &config.eos_token_ids).expect("generation config");
        assert!(!defaults.eos_token_ids.is_empty(), "{model}: EOS from the folder");
        let prompt = [346u32, 25, 318, 271, 220, 18, 399, 220, 22, 30];
        for sampled in [false, true] {
            let base = GenerationConfig {
                max_new_tokens: 24,
                do_sample: sampled,
                temperature: 0.8,
                top_k: 50,
                top_p: 0.95,
                seed: 17,
                eos_token_ids: vec![],
                use_cache: true,
            };
            let cached = generate(&lm, &prompt, &base, &device);
            let recomputed = generate(&lm, &prompt, &GenerationConfig { use_cache: false, ..base.clone() }, &device);
            assert_eq!(cached.len(), 24);
            assert_eq!(cached, recomputed, "{model} sampled={sampled}");
        }
        // Stops at an EOS token: make the first greedy token an EOS.
        let greedy = GenerationConfig { max_new_tokens: 5, ..GenerationConfig::default() };
        let first = generate(&lm, &prompt, &greedy, &device)[0];
        let stop = GenerationConfig { eos_token_ids: vec![first], ..greedy };
        assert_eq!(generate(&lm, &prompt, &stop, &device), vec![first]);
    }
}

/// Greedy generation with the KV cache equals transformers' (`model.generate`, eager attention,
/// 24 new tokens, no EOS stop; tests/fixtures/gen/model_families.py) for every family beyond
/// Llama/Qwen2: Mistral's 23-token prompts plus 24 new tokens run far past its window of 8, so
/// the cache's keys outside the window must be masked, and SmolLM3's NoPE layers must skip RoPE
/// at every cached position too.
#[test]
fn greedy_generation_equals_transformers_for_every_family() {
    for family in ["qwen3", "mistral", "olmo2", "smollm3", "gemma2", "gemma3", "phi3"] {
        let device = Device::flex();
        let (_, lm) =
            load_model(&fixture(&format!("models/tiny-{family}")), &device, &LoadOptions::default()).expect("loads");
        let greedy = GenerationConfig { max_new_tokens: 24, eos_token_ids: vec![], ..GenerationConfig::default() };
        let expected = kto_testkit::read_jsonl(&format!("trl/m_{family}/generation.jsonl"));
        assert_eq!(expected.len(), 3, "{family}: three prompts");
        for (i, row) in expected.iter().enumerate() {
            let ids = |key: &str| -> Vec<u32> {
                row[key].as_array().expect(key).iter().map(|v| v.as_u64().expect("id") as u32).collect()
            };
            let got = generate(&lm, &ids("prompt_ids"), &greedy, &device);
            assert_eq!(got, ids("new_ids"), "{family} prompt {i}: greedy continuation");
        }
    }
}
