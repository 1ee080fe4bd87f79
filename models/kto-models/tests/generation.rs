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
