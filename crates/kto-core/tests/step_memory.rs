//! What a training run holds: between steps, the policy, the reference and AdamW's two moments
//! (16 bytes per f32 parameter, nothing more); during a step, on top of that, the gradients and
//! a few temporaries (one parameter's update, the activations), never a second copy of the
//! weights. Held copies were the largest avoidable cost at 0.5B parameters: the `kto train`
//! caller kept its own handle on the loaded policy (1.9 GB for the whole run), and every update
//! then had to allocate new weights instead of writing into the old ones. This binary counts
//! every heap byte (peak_alloc's counting allocator) around two steps of a model of many equal
//! parameters, so one parameter's temporaries are small beside a copy of all of them.
//!
//! One test only, so nothing else allocates while it measures.

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use kto_core::{
    CausalLm, KlMode, KtoBatch, KtoLossConfig, LogpsConfig, OptimizerKind, OptimizerStorage, Reference, Schedule,
    ScheduleKind, SequenceBatch, Trainer, TrainerConfig,
};
use peak_alloc::PeakAlloc;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

const MIB: f64 = 1024.0 * 1024.0;

/// Many parameters of equal size, so that one parameter's update temporaries are small beside
/// a copy of all of them: an embedding, `LAYERS` square linear maps with residuals, a head.
#[derive(Module, Debug)]
struct Wide {
    embed: Embedding,
    layers: Vec<Linear>,
    head: Linear,
}

const VOCAB: usize = 256;
const D_MODEL: usize = 256;
const LAYERS: usize = 14;

impl Wide {
    fn new(device: &Device) -> Self {
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        Self {
            embed: EmbeddingConfig::new(VOCAB, D_MODEL).init(device),
            layers: (0..LAYERS).map(|_| linear(D_MODEL, D_MODEL)).collect(),
            head: linear(D_MODEL, VOCAB),
        }
    }

    fn parameters() -> usize {
        VOCAB * D_MODEL * 2 + LAYERS * D_MODEL * D_MODEL
    }
}

impl CausalLm for Wide {
    fn hidden_states(&self, input_ids: Tensor<2, Int>, _attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        // Position-wise only: no position sees a later one.
        let mut h = self.embed.forward(input_ids);
        for layer in &self.layers {
            h = h.clone() + burn::tensor::activation::tanh(layer.forward(h));
        }
        h
    }

    fn project(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.head.forward(hidden)
    }

    fn vocab_size(&self) -> usize {
        VOCAB
    }
}

fn batch(offset: i64, device: &Device) -> KtoBatch {
    let (rows, seq) = (2, 8);
    let sequences = |shift: i64| {
        let ids: Vec<i64> = (0..(rows * seq) as i64).map(|i| (i * 37 + shift + offset) % VOCAB as i64).collect();
        let completion: Vec<bool> = (0..rows).flat_map(|_| (0..seq).map(|t| t >= seq / 2)).collect();
        SequenceBatch::from_host(ids, vec![true; rows * seq], completion, [rows, seq], device)
    };
    KtoBatch {
        matched: sequences(0),
        kl: Some(sequences(11)),
        desirable: Tensor::from_data(TensorData::new(vec![true, false], [rows]), device),
        reference_logps: None,
        reference_kl_logps: None,
    }
}

fn config() -> TrainerConfig {
    TrainerConfig {
        loss: KtoLossConfig::new(),
        optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
        storage: OptimizerStorage::default(),
        schedule: Schedule { kind: ScheduleKind::Linear, learning_rate: 1e-3, warmup_steps: 0, total_steps: 4 },
        max_grad_norm: Some(1.0),
        gradient_accumulation_steps: 1,
        per_device_train_batch_size: 2,
        kl_mode: KlMode::MicroBatch,
        logps: LogpsConfig::new(),
    }
}

#[test]
fn a_step_adds_the_gradients_and_temporaries_but_no_second_copy_of_the_weights() {
    let weights = (Wide::parameters() * 4) as f64; // f32
    let largest = (D_MODEL * D_MODEL * 4) as f64; // every parameter is 256 x 256
    for (name, device) in kto_testkit::cpu_devices() {
        let train = device.clone().autodiff();
        let new_trainer = || {
            device.seed(3);
            let policy = Wide::new(&train);
            device.seed(3);
            let reference = Wide::new(&device); // loaded apart from the policy, as `kto train` does
            Trainer::new(config(), policy, Reference::Model(reference)).expect("valid settings")
        };
        // A first run pays the backend's one-time allocations (thread pools, caches).
        let mut warm_up = new_trainer();
        for offset in 0..2 {
            warm_up.train_step(&[batch(offset, &train)]).expect("warm-up step");
        }
        drop(warm_up);

        let before = HEAP.current_usage();
        let mut trainer = new_trainer();
        trainer.train_step(&[batch(0, &train)]).expect("step 1");

        // Between steps: the policy, the reference and AdamW's two moments.
        let between = HEAP.current_usage();
        let held = (between - before) as f64;
        assert!(
            held < 4.0 * weights + 0.5 * MIB,
            "{name}: {:.2} MiB held between steps, expected 4 x {:.2} MiB",
            held / MIB,
            weights / MIB
        );

        // During a step: the gradients (one weights' worth), a few parameters' temporaries and
        // the activations (a few hundred KiB here).
        HEAP.reset_peak_usage();
        trainer.train_step(&[batch(1, &train)]).expect("step 2");
        let step_peak = (HEAP.peak_usage() - between) as f64;
        let allowed = weights + 3.0 * largest + 0.5 * MIB;
        eprintln!(
            "{name}: weights {:.2} MiB, held between steps {:.2} MiB, step peak above that {:.2} MiB",
            weights / MIB,
            held / MIB,
            step_peak / MIB
        );
        assert!(
            step_peak < allowed,
            "{name}: the step's peak is {:.2} MiB above what lives between steps, allowed {:.2} MiB \
             (the weights are {:.2} MiB)",
            step_peak / MIB,
            allowed / MIB,
            weights / MIB
        );
        drop(trainer);
    }
}
