//! Your own burn model trained with kto-core: implement [`CausalLm`] (hidden states + output head)
//! and hand it to [`Trainer`]. No files, no tokenizer: the batches are built from token ids.
//!
//! The model here is deliberately small: token embeddings, a causal running mean over the prefix
//! (each position sees only itself and earlier tokens), a SiLU MLP with a residual connection and
//! a linear head. Any burn `Module` with the same two methods works, a transformer included.
//!
//! ```sh
//! cargo run --release --example custom_model
//! ```

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::silu;
use kto::core::{
    CausalLm, KlMode, KtoBatch, KtoLossConfig, LogpsConfig, OptimizerKind, OptimizerStorage, Reference, Schedule,
    ScheduleKind, SequenceBatch, Trainer, TrainerConfig,
};

const VOCAB: usize = 64;
const D_MODEL: usize = 32;
const BATCH: usize = 4;
const PROMPT: usize = 6;
const COMPLETION: usize = 5;

#[derive(Module, Debug)]
struct PrefixMeanLm {
    embed_tokens: Embedding,
    up: Linear,
    down: Linear,
    lm_head: Linear,
}

impl PrefixMeanLm {
    fn new(device: &Device) -> Self {
        Self {
            embed_tokens: EmbeddingConfig::new(VOCAB, D_MODEL).init(device),
            up: LinearConfig::new(D_MODEL, 4 * D_MODEL).init(device),
            down: LinearConfig::new(4 * D_MODEL, D_MODEL).init(device),
            lm_head: LinearConfig::new(D_MODEL, VOCAB).with_bias(false).init(device),
        }
    }
}

impl CausalLm for PrefixMeanLm {
    /// `[batch, seq]` ids to `[batch, seq, d_model]` states; position `t` depends on tokens `0..=t`.
    fn hidden_states(&self, input_ids: Tensor<2, Int>, _attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        // Right padding only follows the real tokens, and a causal model never looks ahead, so
        // the mask is not needed here; a model with attention would mask padded keys.
        let [_, seq] = input_ids.dims();
        let device = input_ids.device();
        let x = self.embed_tokens.forward(input_ids); // [batch, seq, d_model]
        let counts = Tensor::<1, Int>::arange(1..seq as i64 + 1, &device).float().reshape([1, seq, 1]);
        let mean = x.cumsum(1) / counts; // running mean over the prefix
        mean.clone() + self.down.forward(silu(self.up.forward(mean)))
    }

    fn project(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.lm_head.forward(hidden)
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }
}

/// A batch of rows `prompt + completion`; row `r`'s KL pair is its prompt with row `r - 1`'s
/// completion (TRL's rotation inside the batch). Desirable completions repeat the prompt's first
/// token; undesirable ones count upwards, so the two labels are easy to tell apart.
fn batch(step: usize, device: &Device) -> KtoBatch {
    let seq = PROMPT + COMPLETION;
    let prompt = |r: usize, t: usize| ((step * 7 + r * 13 + t * 3) % (VOCAB - 1) + 1) as i64;
    let desirable = |r: usize| (r + step).is_multiple_of(2);
    let completion = |r: usize, t: usize| {
        if desirable(r) { prompt(r, 0) } else { ((r + t) % (VOCAB - 1) + 1) as i64 }
    };
    let sequences = |partner: &dyn Fn(usize) -> usize| {
        let ids: Vec<i64> = (0..BATCH)
            .flat_map(|r| (0..seq).map(move |t| (r, t)))
            .map(|(r, t)| if t < PROMPT { prompt(r, t) } else { completion(partner(r), t) })
            .collect();
        let scored: Vec<bool> = (0..BATCH * seq).map(|i| i % seq >= PROMPT).collect();
        SequenceBatch::from_host(ids, vec![true; BATCH * seq], scored, [BATCH, seq], device)
    };
    let labels: Vec<bool> = (0..BATCH).map(desirable).collect();
    KtoBatch {
        matched: sequences(&|r| r),
        kl: Some(sequences(&|r| (r + BATCH - 1) % BATCH)),
        desirable: Tensor::from_data(TensorData::new(labels, [BATCH]), device),
        reference_logps: None,
        reference_kl_logps: None,
    }
}

fn main() -> Result<(), kto::core::Error> {
    let device = Device::flex();
    device.seed(0);
    let train_device = device.clone().autodiff();
    let policy = PrefixMeanLm::new(&train_device);
    let reference = policy.clone().valid(); // frozen copy of the starting weights

    let config = TrainerConfig {
        loss: KtoLossConfig::new().with_beta(0.1),
        optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        storage: OptimizerStorage::default(),
        schedule: Schedule { kind: ScheduleKind::Constant, learning_rate: 5e-3, warmup_steps: 0, total_steps: 40 },
        max_grad_norm: Some(1.0),
        gradient_accumulation_steps: 1,
        per_device_train_batch_size: BATCH,
        kl_mode: KlMode::MicroBatch,
        logps: LogpsConfig::new(),
    };
    let mut trainer = Trainer::new(config, policy, Reference::Model(reference))?;
    let mut margins = Vec::new();
    for step in 0..40 {
        trainer.train_step(&[batch(step, &train_device)])?;
        let logged = trainer.log(0.0);
        let margin = logged.get("rewards/margins");
        if let Some(m) = margin {
            margins.push(m);
        }
        if step % 10 == 9 {
            println!("step {:>2}: rewards/margins {:+.4}", step + 1, margin.unwrap_or(f64::NAN));
        }
    }
    // KTO pushes desirable completions up and undesirable ones down relative to the reference.
    let (first, last) = (margins[0], margins[margins.len() - 1]);
    assert!(last > first, "the reward margin should grow: {first} -> {last}");
    println!("rewards/margins {first:+.4} -> {last:+.4}");
    Ok(())
}
