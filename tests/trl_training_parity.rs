//! Training parity with TRL 1.16: the reference cases run through kto's data pipeline and
//! `kto_core::Trainer`, every logged step compared with TRL's `metrics.jsonl` and the final
//! weights with TRL's `final_model/`, on flex and ndarray.

use burn::prelude::*;
use kto::core::{
    KlMode, KtoLossConfig, LogpsConfig, LossType, OptimizerKind, OptimizerStorage, Reference, Schedule, ScheduleKind,
    Trainer, TrainerConfig, reference_logps,
};
use kto::data::{
    CollateConfig, HfTokenizer, KlPairing, KlWindow, TokenizeConfig, collate, read_jsonl, tokenize_examples,
};
use kto::models::{
    LoadOptions, TransformerLm, load_adapter, load_model, load_tensor_file, named_tensors, save_adapter,
};
use kto_testkit::{cpu_devices, fixture, read_json, read_jsonl as read_fixture};
use serde_json::Value;

/// Every tolerance below sits within 10x of the largest deviation measured over all nine
/// cases on flex and ndarray (the figures in brackets; `cargo test --workspace --test
/// trl_training_parity -- --nocapture` prints each case's worst final-weight ratio).
///
/// The step loss, absolute [1.07e-6].
const LOSS_ABS: f64 = 4e-6;
/// Absolute floor of every other metric.
const METRIC_ABS: f64 = 1e-6;
/// `grad_norm`, relative [3.6e-5].
const GRAD_NORM_REL: f64 = 1e-4;
/// `logps/*` (mean sequence log-probs), relative [5.9e-7].
const LOGP_REL: f64 = 2e-6;
/// `entropy` [2.0e-7] and `logits/*` [2.8e-6], relative.
const TOKEN_STAT_REL: f64 = 1e-5;
/// `kl` and `rewards/*` are differences of two summed f32 log-probs, so they cannot be closer
/// to TRL's than the f32 spacing of those sums (a sum of -267 nats is only resolved to 3.05e-5,
/// in TRL's numbers as in ours). Their tolerance is this many units in the last place of the
/// step's largest `|logps/*|` (times β for rewards) [5.75]; where TRL logs an exact 0 ours must
/// be an exact 0.
const DIFFERENCE_ULPS: f64 = 8.0;
/// Final weights, per element, relative to the largest element of that tensor's own update in
/// TRL's run (`max (|ours - trl| - ulp(trl))⁺ / max |trl - initial|`, one f32 rounding of the
/// last step allowed), so a tensor that did not train fails.
/// Under SGD [8.1e-4].
const WEIGHT_UPDATE_REL_SGD: f32 = 2e-3;
/// Under AdamW [1.78e-2]: each element's step is its gradient over its own running RMS, so an
/// element with a tiny gradient turns the f32 noise of that gradient into a full-size step.
const WEIGHT_UPDATE_REL_ADAMW: f32 = 3e-2;
/// Per-step parameter norms: weights within this much per element, absolute [6.2e-5 on the
/// final weights], keep a norm within `WEIGHT_ABS · sqrt(numel)`.
const WEIGHT_ABS: f32 = 1e-4;

/// The spacing of f32 values at `x`.
fn f32_ulp(x: f64) -> f64 {
    let x = x.abs() as f32;
    f64::from(f32::from_bits(x.to_bits() + 1) - x)
}

/// The tolerance of a metric that is a difference of sequence log-probs (see
/// [`DIFFERENCE_ULPS`]), `None` for other metrics.
fn difference_tolerance(key: &str, beta: f64, logged: &serde_json::Map<String, Value>) -> Option<f64> {
    let logp = |k: &str| logged.get(k).and_then(Value::as_f64).map_or(0.0, f64::abs);
    let ulp = f32_ulp(logp("logps/chosen").max(logp("logps/rejected")));
    match key {
        "kl" | "kl_unclamped" => Some(DIFFERENCE_ULPS * ulp),
        "rewards/chosen" | "rewards/rejected" | "rewards/margins" => Some(DIFFERENCE_ULPS * beta * ulp),
        _ => None,
    }
}

/// Final tensors against TRL's, each relative to TRL's own update of it (see
/// [`WEIGHT_UPDATE_REL_SGD`]). Returns the worst ratio.
fn compare_final(
    case: &str,
    tolerance: f32,
    initial: &[(String, Vec<f32>)],
    ours: &[(String, Vec<f32>)],
    theirs: &[(String, Vec<f32>)],
) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{case}: tensor count");
    assert_eq!(initial.len(), theirs.len(), "{case}: tensor count of the initial weights");
    let mut worst = 0.0f32;
    for (((name, a), (name_b, b)), (name_i, init)) in ours.iter().zip(theirs).zip(initial) {
        assert_eq!((name, name), (name_b, name_i), "{case}: tensor order");
        assert_eq!((a.len(), a.len()), (b.len(), init.len()), "{case}: {name} size");
        let update = b.iter().zip(init).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        // Each element beyond one unit in the last place of TRL's value: both runs round the
        // last `p - step` to an f32, and a step a hair apart can land on neighbouring floats
        // (1.2e-7 at 1.0, which is 2.7e-3 of a norm weight's 4.5e-5 update in m_smollm3).
        let beyond_ulp = |x: &f32, y: &f32| ((x - y).abs() - f32_ulp(f64::from(*y)) as f32).max(0.0);
        let diff = a.iter().zip(b).map(|(x, y)| beyond_ulp(x, y)).fold(0.0f32, f32::max);
        if update == 0.0 {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert_eq!(diff, 0.0, "{case}: {name} did not move in TRL's run but ours differs by {diff:e}");
            continue;
        }
        let ratio = diff / update;
        worst = worst.max(ratio);
        assert!(
            ratio <= tolerance,
            "{case}: {name} differs from TRL's final weights by {diff:e}, {ratio:e} of TRL's update {update:e}"
        );
    }
    eprintln!("{case}: final weights within {worst:e} of TRL's update");
    worst
}

fn tensors(list: Vec<(String, Vec<usize>, Vec<f32>)>) -> Vec<(String, Vec<f32>)> {
    list.into_iter().map(|(name, _, values)| (name, values)).collect()
}

struct Case {
    name: &'static str,
    model: &'static str,
    dataset: &'static str,
}

/// Another batch layout for a case's rows: `batch_size` rows per micro-batch, `ga` micro-batches
/// per step, one KL estimate per micro-batch or per window.
#[derive(Debug, Clone, Copy)]
struct Layout {
    batch_size: usize,
    ga: usize,
    kl_mode: KlMode,
}

/// What a run logged at each step, and its final weights (`None` for LoRA).
struct Outcome {
    logged: Vec<Vec<(String, f64)>>,
    final_weights: Option<Vec<(String, Vec<f32>)>>,
}

/// Runs a case in TRL's layout, checking every step and the final weights against TRL's.
fn run(case: &Case, device: &Device) -> Outcome {
    run_in(case, device, None)
}

/// Runs a case in TRL's layout or in `layout`, checking every step and the final weights
/// against TRL's.
fn run_in(case: &Case, device: &Device, layout: Option<Layout>) -> Outcome {
    let summary = read_json(&format!("trl/{}/summary.json", case.name));
    let cfg = &summary["kto_config"];
    let f = |k: &str| cfg[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    let u = |k: &str| cfg[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
    let layout = layout.unwrap_or(Layout {
        batch_size: u("per_device_train_batch_size"),
        ga: u("gradient_accumulation_steps"),
        kl_mode: KlMode::MicroBatch,
    });
    let (batch_size, ga) = (layout.batch_size, layout.ga);
    let max_steps = u("max_steps") as u64;
    let loss_type = cfg["loss_type"].as_str().expect("loss_type").parse::<LossType>().expect("loss type");
    let max_length = cfg["max_length"].as_u64().map(|v| v as usize);

    let folder = fixture(case.model);
    let tokenizer = HfTokenizer::from_folder(&folder).expect("tokenizer");
    let examples = read_jsonl(&fixture(case.dataset)).expect("dataset");
    let kl_window = (layout.kl_mode == KlMode::AccumulationWindow)
        .then_some(KlWindow { gradient_accumulation_steps: ga, devices: 1 });
    let tokenize =
        TokenizeConfig { max_length, kl_pairs: loss_type.uses_kl(), kl_window, ..TokenizeConfig::trl(batch_size) };
    let mut rows = tokenize_examples(&examples, &tokenizer, &tokenize).expect("tokenizes").rows;
    let collate_config = CollateConfig {
        pad_id: tokenizer.pad_id().expect("pad"),
        max_length,
        pad_to_multiple_of: None,
        kl: if loss_type.uses_kl() { KlPairing::FromRows } else { KlPairing::Off },
    };

    let train_device = device.clone().autodiff();
    let (_, policy) = load_model(&folder, &train_device, &LoadOptions::default()).expect("policy");
    let (_, reference) = load_model(&folder, device, &LoadOptions::default()).expect("reference");
    // LoRA (case g): TRL's initial adapter on the frozen base; the reference is the same model
    // with the adapters off, sharing the base weights.
    let lora = case.name.starts_with("g_");
    let (policy, reference) = if lora {
        let (policy, _) =
            load_adapter(policy, &fixture(&format!("trl/{}/initial_adapter", case.name))).expect("initial adapter");
        let reference = policy.without_adapters().valid();
        (policy, reference)
    } else {
        (policy, reference)
    };
    let reference = if cfg["precompute_ref_log_probs"] == true {
        // TRL's init-time pass: the reference over the training batches, in order.
        for chunk in rows.chunks_mut(batch_size) {
            let batch = collate(&chunk.iter().collect::<Vec<_>>(), &collate_config).to_device(device);
            let (logps, kl) = reference_logps(&reference, &batch, &LogpsConfig::new());
            for (k, row) in chunk.iter_mut().enumerate() {
                row.ref_logps = Some(f64::from(logps[k]));
                row.ref_kl_logps = kl.as_ref().map(|kl| f64::from(kl[k]));
            }
        }
        Reference::Precomputed
    } else {
        Reference::Model(reference)
    };
    let optimizer = match cfg["optim"].as_str().expect("optim") {
        "sgd" => OptimizerKind::Sgd { weight_decay: f("weight_decay") },
        _ => OptimizerKind::AdamW {
            beta1: f("adam_beta1"),
            beta2: f("adam_beta2"),
            eps: f("adam_epsilon"),
            weight_decay: f("weight_decay"),
        },
    };
    let config = TrainerConfig {
        loss: KtoLossConfig::new()
            .with_beta(f("beta"))
            .with_loss_type(loss_type)
            .with_desirable_weight(f("desirable_weight"))
            .with_undesirable_weight(f("undesirable_weight")),
        optimizer,
        storage: OptimizerStorage::default(),
        schedule: Schedule {
            kind: cfg["lr_scheduler_type"].as_str().expect("schedule").parse::<ScheduleKind>().expect("known"),
            learning_rate: f("learning_rate"),
            warmup_steps: u("warmup_steps") as u64,
            total_steps: max_steps,
        },
        max_grad_norm: Some(f("max_grad_norm")),
        gradient_accumulation_steps: ga,
        per_device_train_batch_size: batch_size,
        kl_mode: layout.kl_mode,
        logps: LogpsConfig::new(),
    };
    let weight_tolerance =
        if matches!(optimizer, OptimizerKind::Sgd { .. }) { WEIGHT_UPDATE_REL_SGD } else { WEIGHT_UPDATE_REL_ADAMW };
    let mut trainer: Trainer<TransformerLm> = Trainer::new(config, policy, reference).expect("valid config");

    let micro_per_epoch = rows.len().div_ceil(batch_size);
    let expected = read_fixture(&format!("trl/{}/metrics.jsonl", case.name));
    let norms = read_fixture(&format!("trl/{}/param_norms.jsonl", case.name));
    assert_eq!(expected.len(), max_steps as usize, "{}: TRL logged one entry per step", case.name);
    assert_eq!(norms.len(), max_steps as usize, "{}: TRL recorded norms after every step", case.name);
    let mut micro_done = 0usize;
    let mut history = Vec::new();
    for step in 1..=max_steps {
        let micro: Vec<_> = (0..ga)
            .map(|k| {
                let index = (micro_done + k) % micro_per_epoch;
                let batch: Vec<_> =
                    rows[index * batch_size..((index + 1) * batch_size).min(rows.len())].iter().collect();
                collate(&batch, &collate_config).to_device(&train_device)
            })
            .collect();
        micro_done += ga;
        trainer.train_step(&micro).unwrap_or_else(|e| panic!("{} step {step}: {e}", case.name));
        let logged = trainer.log(micro_done as f64 / micro_per_epoch as f64).entries();
        let want = &expected[step as usize - 1];
        compare(case.name, step, f("beta"), &logged, want);
        history.push(logged);
        if lora {
            compare_adapter_norms(case.name, step, trainer.policy(), &norms[step as usize - 1]);
        } else {
            compare_param_norms(case.name, step, trainer.policy(), &norms[step as usize - 1]);
        }
    }
    if lora {
        // The trained adapter against TRL + PEFT's, in PEFT's layout.
        let dir = tempfile::tempdir().expect("temp dir");
        let config = kto::models::LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: kto::models::LoraTargets::parse("q_proj,v_proj").expect("targets"),
            use_rslora: false,
        };
        save_adapter(&trainer.into_policy().valid(), &config, "tiny-qwen2", dir.path()).expect("saves");
        let ours = load_tensor_file(&dir.path().join("adapter_model.safetensors")).expect("ours");
        let theirs = load_tensor_file(&fixture(&format!("trl/{}/final_adapter/adapter_model.safetensors", case.name)))
            .expect("TRL");
        let initial =
            load_tensor_file(&fixture(&format!("trl/{}/initial_adapter/adapter_model.safetensors", case.name)))
                .expect("initial adapter");
        let shapes =
            |l: &[(String, Vec<usize>, Vec<f32>)]| l.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect::<Vec<_>>();
        assert_eq!(shapes(&ours), shapes(&theirs), "{}: adapter names and shapes", case.name);
        compare_final(case.name, weight_tolerance, &tensors(initial), &tensors(ours), &tensors(theirs));
        return Outcome { logged: history, final_weights: None };
    }
    let ours = tensors(named_tensors(&trainer.into_policy().valid()));
    let final_model = fixture(&format!("trl/{}/final_model", case.name));
    if !final_model.is_dir() {
        return Outcome { logged: history, final_weights: Some(ours) };
    }

    // Final weights against TRL's final_model/.
    let (_, trl_final) = load_model(&final_model, device, &LoadOptions::default()).expect("final");
    let (_, initial) = load_model(&folder, device, &LoadOptions::default()).expect("initial");
    let theirs = tensors(named_tensors(&trl_final));
    compare_final(case.name, weight_tolerance, &tensors(named_tensors(&initial)), &ours, &theirs);
    Outcome { logged: history, final_weights: Some(ours) }
}

/// The L2 norm of every adapter matrix after a step against TRL's (PEFT's names).
fn compare_adapter_norms(case: &str, step: u64, policy: &TransformerLm, want: &Value) {
    let norms = want["norms"].as_object().expect("norms");
    let mut seen = 0;
    for (prefix, proj) in policy.projections() {
        let Some(adapter) = &proj.lora else { continue };
        for (part, t) in [("lora_A", adapter.a.val()), ("lora_B", adapter.b.val())] {
            let key = format!("base_model.model.{prefix}.{part}.default.weight");
            let expected = norms[&key].as_f64().unwrap_or_else(|| panic!("{case}: TRL has no norm for {key}"));
            let values = t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
            let got = values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
            let bound = f64::from(WEIGHT_ABS) * (values.len() as f64).sqrt();
            assert!((got - expected).abs() <= bound, "{case} step {step}: ‖{key}‖ = {got}, TRL {expected}");
            seen += 1;
        }
    }
    assert_eq!(seen, norms.len(), "{case}: every trainable tensor compared");
}

/// The L2 norm of every parameter after a step against TRL's `param_norms.jsonl`: weights within
/// `WEIGHT_ABS` per element keep a norm within `WEIGHT_ABS · sqrt(numel)`.
fn compare_param_norms(case: &str, step: u64, policy: &TransformerLm, want: &Value) {
    assert_eq!(want["step"].as_u64(), Some(step));
    let norms = want["norms"].as_object().expect("norms");
    let ours = named_tensors(policy);
    assert_eq!(ours.len(), norms.len(), "{case}: parameter count");
    for (name, _, values) in ours {
        let expected = norms[&name].as_f64().unwrap_or_else(|| panic!("{case}: TRL has no norm for {name}"));
        let got = values.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        let bound = f64::from(WEIGHT_ABS) * (values.len() as f64).sqrt();
        assert!((got - expected).abs() <= bound, "{case} step {step}: ‖{name}‖ = {got}, TRL {expected}");
    }
}

fn compare(case: &str, step: u64, beta: f64, logged: &[(String, f64)], want: &Value) {
    let want = want.as_object().expect("metrics object");
    let ours: std::collections::BTreeMap<&str, f64> = logged.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for (key, value) in want {
        let expected = value.as_f64().unwrap_or_else(|| panic!("{key}"));
        let got = *ours.get(key.as_str()).unwrap_or_else(|| panic!("{case} step {step}: `{key}` not logged: {ours:?}"));
        let diff = (got - expected).abs();
        let ok = match key.as_str() {
            "loss" => diff <= LOSS_ABS,
            "grad_norm" => diff <= METRIC_ABS.max(GRAD_NORM_REL * expected.abs()),
            "logps/chosen" | "logps/rejected" => diff <= METRIC_ABS.max(LOGP_REL * expected.abs()),
            "entropy" | "logits/chosen" | "logits/rejected" => diff <= METRIC_ABS.max(TOKEN_STAT_REL * expected.abs()),
            _ => match difference_tolerance(key, beta, want) {
                // TRL's exact 0 (policy equal to the reference, or a clamped KL) is ours too.
                Some(_) if expected == 0.0 => got == 0.0,
                Some(tolerance) => diff <= tolerance,
                // num_tokens, learning_rate, epoch, step: counts and schedule values.
                None => diff <= 1e-12 * expected.abs().max(1.0),
            },
        };
        assert!(ok, "{case} step {step}: {key} = {got}, TRL logged {expected} (off by {diff:e})");
    }
    // Where every logged reward is TRL's exact 0, policy and reference gave bit-identical
    // log-probs, so the unclamped KL is exactly 0 too.
    let rewards: Vec<f64> =
        ["rewards/chosen", "rewards/rejected"].iter().filter_map(|k| want.get(*k).and_then(Value::as_f64)).collect();
    if !rewards.is_empty() && rewards.iter().all(|r| *r == 0.0) && ours.contains_key("kl_unclamped") {
        assert_eq!(
            ours["kl_unclamped"], 0.0,
            "{case} step {step}: kl_unclamped with the policy equal to the reference"
        );
    }
    for key in ours.keys() {
        let ours_only = ["kl_unclamped", "count/desirable", "count/undesirable"];
        assert!(want.contains_key(*key) || ours_only.contains(key), "{case} step {step}: extra key `{key}`");
    }
}

fn case(name: &'static str) -> Case {
    let model = match name.strip_prefix("m_") {
        // The families beyond Llama/Qwen2: tests/fixtures/models/tiny-<family>.
        Some("qwen3") => "models/tiny-qwen3",
        Some("mistral") => "models/tiny-mistral",
        Some("olmo2") => "models/tiny-olmo2",
        Some("smollm3") => "models/tiny-smollm3",
        Some("gemma2") => "models/tiny-gemma2",
        Some("gemma3") => "models/tiny-gemma3",
        Some("phi3") => "models/tiny-phi3",
        Some(other) => panic!("no fixture model for family {other}"),
        None if name.contains("llama") => "models/tiny-llama",
        None => "models/tiny-qwen2",
    };
    let dataset = match &name[..1] {
        "d" | "i" => "datasets/kto_conversational.jsonl",
        "e" => "datasets/pairwise_explicit.jsonl",
        "h" => "datasets/pairwise_implicit.jsonl",
        _ => "datasets/kto_standard.jsonl",
    };
    Case { name, model, dataset }
}

fn on_both_backends(name: &'static str) {
    for (_, device) in cpu_devices() {
        run(&case(name), &device);
    }
}

/// Batch 1 × GA 4 with one KL estimate per window trains as TRL's batch 4 × GA 1 (case a): the
/// window's four rows pair as TRL's batch of four, its KL is one estimate over them, and its
/// metrics are one record of them. TRL's metrics and final weights at the usual tolerances, and
/// kto's own batch-4 run within `SAME_RUN_REL` (kl and rewards within `DIFFERENCE_ULPS`): the
/// same rows, pairs and gradient, summed in another order over other padding widths.
#[test]
fn batch_one_with_the_window_kl_trains_as_trls_batch_four() {
    /// Metrics and final weights of two layouts of one run, relative to `max(|value|, 1)`: f32
    /// sums in another order (a log-prob of -124 is resolved to 7.6e-6, 6e-8 of it).
    const SAME_RUN_REL: f64 = 1e-6;
    let case = case("a_qwen_kto_sgd");
    for (backend, device) in cpu_devices() {
        let window = run_in(&case, &device, Some(Layout { batch_size: 1, ga: 4, kl_mode: KlMode::AccumulationWindow }));
        let batch = run(&case, &device);
        assert_eq!(window.logged.len(), batch.logged.len(), "{backend}: steps");
        for (step, (a, b)) in window.logged.iter().zip(&batch.logged).enumerate() {
            assert_eq!(a.len(), b.len(), "{backend} step {}: logged keys", step + 1);
            for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                assert_eq!(ka, kb, "{backend} step {}: key order", step + 1);
                // kl and rewards are differences of f32 sums: resolved only to the sums' spacing.
                let want: serde_json::Map<String, Value> =
                    b.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
                let tolerance = difference_tolerance(ka, 0.1, &want).unwrap_or(SAME_RUN_REL * vb.abs().max(1.0));
                assert!((va - vb).abs() <= tolerance, "{backend} step {}: {ka} {va} vs batch 4's {vb}", step + 1);
            }
        }
        let (a, b) = (window.final_weights.expect("full model"), batch.final_weights.expect("full model"));
        assert_eq!(a.len(), b.len(), "{backend}: tensor count");
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert_eq!(x.len(), y.len(), "{backend}: {name} size");
            let diff = x.iter().zip(y).map(|(p, q)| f64::from((p - q).abs())).fold(0.0, f64::max);
            assert!(diff <= SAME_RUN_REL, "{backend}: {name} differs from batch 4's by {diff:e}");
        }
    }
}

#[test]
fn case_a_qwen_kto_sgd() {
    on_both_backends("a_qwen_kto_sgd");
}

#[test]
fn case_b_qwen_apo_sgd() {
    on_both_backends("b_qwen_apo_sgd");
}

#[test]
fn case_c_llama_weighted_adamw_ga2_trunc() {
    on_both_backends("c_llama_weighted_adamw_ga2_trunc");
}

#[test]
fn case_d_qwen_conversational() {
    on_both_backends("d_qwen_conversational");
}

#[test]
fn case_e_qwen_pairwise_explicit() {
    on_both_backends("e_qwen_pairwise_explicit");
}

#[test]
fn case_f_llama_precompute_ref() {
    on_both_backends("f_llama_precompute_ref");
}

#[test]
fn case_g_qwen_lora() {
    on_both_backends("g_qwen_lora");
}

#[test]
fn case_h_qwen_pairwise_implicit() {
    on_both_backends("h_qwen_pairwise_implicit");
}

#[test]
fn case_i_llama_conversational() {
    on_both_backends("i_llama_conversational");
}

/// The families beyond Llama/Qwen2 (tests/fixtures/gen/model_families.py): kto_standard, SGD
/// lr 1e-2, batch 4, 4 steps, max_length 48; every step's metrics and the final weights. (SGD:
/// AdamW's per-element normalisation turns f32 noise in near-zero gradients into full steps,
/// see `WEIGHT_UPDATE_REL_ADAMW`; the AdamW path is cases c and f.)
#[test]
fn family_qwen3() {
    on_both_backends("m_qwen3");
}

#[test]
fn family_mistral_with_a_sliding_window() {
    on_both_backends("m_mistral");
}

#[test]
fn family_olmo2() {
    on_both_backends("m_olmo2");
}

#[test]
fn family_smollm3_with_nope_layers() {
    on_both_backends("m_smollm3");
}

#[test]
fn family_gemma2_with_soft_caps() {
    on_both_backends("m_gemma2");
}

#[test]
fn family_gemma3_with_local_and_global_rope() {
    on_both_backends("m_gemma3");
}

#[test]
fn family_phi3_with_fused_projections() {
    on_both_backends("m_phi3");
}
