//! The training loop around [`Trainer::train_step`]: epochs and micro-batch positions as
//! transformers counts them, logging, evaluation and checkpoint points, TR-DPO reference syncs.
//! Data, evaluation and saving are the caller's, through [`FitHooks`].

use burn::module::Module;

use crate::batch::KtoBatch;
use crate::error::Result;
use crate::lm::CausalLm;
use crate::metrics::{EvalMetrics, LogRecord};
use crate::trainer::{StepReport, Trainer};

/// When evaluation runs (transformers' `eval_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalEvery {
    /// Never (`no`).
    #[default]
    Never,
    /// Every this many optimizer steps (`steps` with `eval_steps`).
    Steps(u64),
    /// At the end of every epoch (`epoch`).
    Epoch,
}

/// The loop's schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// Optimizer steps to run in total.
    pub max_steps: u64,
    /// Micro-batches in one epoch over all devices (`ceil(rows / per_device_train_batch_size)`).
    pub micro_batches_per_epoch: u64,
    /// Micro-batches per optimizer step; an epoch's last step takes what is left.
    pub gradient_accumulation_steps: u64,
    /// Log every this many steps.
    pub logging_steps: u64,
    /// Evaluation points.
    pub eval_every: EvalEvery,
    /// Checkpoint every this many steps.
    pub save_steps: Option<u64>,
    /// TR-DPO: `(ref_model_mixup_alpha, ref_model_sync_steps)`.
    pub sync_ref: Option<(f64, u64)>,
}

impl FitConfig {
    /// Micro-steps in one epoch on `devices` data-parallel devices (one micro-batch per device
    /// each; the last may leave devices idle): `ceil(micro_batches_per_epoch / devices)`, the
    /// length of each device's share of the data.
    pub fn micro_steps_per_epoch(micro_batches_per_epoch: u64, devices: u64) -> u64 {
        micro_batches_per_epoch.div_ceil(devices.max(1))
    }

    /// transformers' steps per epoch:
    /// `ceil(micro_steps_per_epoch / gradient_accumulation_steps)`.
    pub fn steps_per_epoch(micro_batches_per_epoch: u64, gradient_accumulation_steps: u64, devices: u64) -> u64 {
        Self::micro_steps_per_epoch(micro_batches_per_epoch, devices).div_ceil(gradient_accumulation_steps.max(1))
    }

    /// Total steps: `max_steps` when positive, else `ceil(num_train_epochs × steps_per_epoch)`.
    pub fn total_steps(max_steps: u64, num_train_epochs: f64, steps_per_epoch: u64) -> u64 {
        if max_steps > 0 { max_steps } else { (num_train_epochs * steps_per_epoch as f64).ceil() as u64 }
    }
}

/// Where a run is: optimizer steps done and micro-steps consumed (across epochs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Optimizer steps done.
    pub step: u64,
    /// Micro-steps consumed since the start of training: micro-batches on one device; on `N`
    /// devices each micro-step takes up to `N` consecutive micro-batches, one per device.
    pub micro_batches: u64,
}

impl Position {
    /// The fractional epoch transformers logs: micro-steps consumed / micro-steps per epoch
    /// ([`FitConfig::micro_steps_per_epoch`]; the micro-batches per epoch on one device).
    pub fn epoch(&self, micro_steps_per_epoch: u64) -> f64 {
        self.micro_batches as f64 / micro_steps_per_epoch.max(1) as f64
    }
}

/// What the loop asks of its caller.
pub trait FitHooks<M> {
    /// Micro-batch `index` (0-based, counted over all devices) of epoch `epoch` (0-based).
    /// On `N` devices, micro-step `m` of an epoch hands batches `m·N .. m·N + N` to devices
    /// `0 .. N` (accelerate's round-robin sharding), so every batch is used once.
    ///
    /// # Errors
    /// Whatever producing the batch can fail with.
    fn micro_batch(&mut self, epoch: u64, index: u64) -> Result<KtoBatch>;

    /// After every optimizer step.
    fn on_step(&mut self, _report: &StepReport, _position: &Position) {}

    /// A log event: a training log ([`Trainer::log`]) or an evaluation.
    ///
    /// # Errors
    /// Whatever recording it can fail with.
    fn on_log(&mut self, record: &LogRecord) -> Result<()>;

    /// At an evaluation point; returns what to log (`None`: nothing was evaluated).
    ///
    /// # Errors
    /// Whatever evaluating can fail with.
    fn evaluate(&mut self, _trainer: &Trainer<M>, _position: &Position) -> Result<Option<EvalMetrics>> {
        Ok(None)
    }

    /// At a checkpoint point.
    ///
    /// # Errors
    /// Whatever saving can fail with.
    fn save(&mut self, _trainer: &Trainer<M>, _position: &Position) -> Result<()> {
        Ok(())
    }
}

/// Runs optimizer steps from `start` until `config.max_steps`, and returns the final position.
///
/// # Errors
/// The first error of a step (a non-finite loss or gradient stops the run there) or of a hook.
pub fn fit<M: CausalLm + Module + Clone + Send + Sync>(
    trainer: &mut Trainer<M>,
    config: &FitConfig,
    start: Position,
    hooks: &mut impl FitHooks<M>,
) -> Result<Position> {
    let batches = config.micro_batches_per_epoch.max(1);
    let devices = trainer.devices() as u64;
    let per_epoch = FitConfig::micro_steps_per_epoch(batches, devices);
    let ga = config.gradient_accumulation_steps.max(1);
    let mut position = start;
    while position.step < config.max_steps {
        let epoch = position.micro_batches / per_epoch;
        let index = position.micro_batches % per_epoch;
        let n = ga.min(per_epoch - index);
        let micro = (index..index + n)
            .map(|m| (m * devices..((m + 1) * devices).min(batches)).map(|b| hooks.micro_batch(epoch, b)).collect())
            .collect::<Result<Vec<Vec<KtoBatch>>>>()?;
        let report = trainer.train_step_parallel(&micro)?;
        position.step += 1;
        position.micro_batches += n;
        hooks.on_step(&report, &position);
        let step = position.step;
        if config.logging_steps > 0 && step.is_multiple_of(config.logging_steps) {
            hooks.on_log(&trainer.log(position.epoch(per_epoch)))?;
        }
        if let Some((alpha, every)) = config.sync_ref
            && every > 0
            && step.is_multiple_of(every)
        {
            trainer.sync_reference(alpha);
        }
        let epoch_ended = index + n == per_epoch;
        let evaluate = match config.eval_every {
            EvalEvery::Never => false,
            // transformers 5.24 also evaluates at the last step when it is not a multiple.
            EvalEvery::Steps(k) => k > 0 && (step.is_multiple_of(k) || step == config.max_steps),
            EvalEvery::Epoch => epoch_ended,
        };
        if evaluate && let Some(eval) = hooks.evaluate(trainer, &position)? {
            hooks.on_log(&LogRecord::Eval { eval, epoch: position.epoch(per_epoch), step })?;
        }
        if config.save_steps.is_some_and(|k| k > 0 && step.is_multiple_of(k)) {
            hooks.save(trainer, &position)?;
        }
    }
    Ok(position)
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;
    use crate::test_lm::TinyLm;
    use crate::trainer::KlMode;
    use crate::trainer::test_support::{batch, config, trainer};

    #[test]
    fn fit_hands_each_device_its_own_batches_once_per_epoch() {
        struct Recorder {
            device: Device,
            asked: Vec<(u64, u64)>,
        }
        impl FitHooks<TinyLm> for Recorder {
            fn micro_batch(&mut self, epoch: u64, index: u64) -> Result<KtoBatch> {
                self.asked.push((epoch, index));
                Ok(batch(4, index as i64, &self.device))
            }
            fn on_log(&mut self, _record: &LogRecord) -> Result<()> {
                Ok(())
            }
        }
        let (trainer, device) = trainer(config(4, 1, KlMode::MicroBatch));
        let mut trainer = trainer.with_devices(std::slice::from_ref(&device));
        // 5 batches on 2 devices: 3 micro-steps per epoch ([0, 1], [2, 3], [4]); 1 per step.
        assert_eq!(FitConfig::micro_steps_per_epoch(5, 2), 3);
        assert_eq!(FitConfig::steps_per_epoch(5, 1, 2), 3);
        let config = FitConfig {
            max_steps: 4,
            micro_batches_per_epoch: 5,
            gradient_accumulation_steps: 1,
            logging_steps: 0,
            eval_every: EvalEvery::Never,
            save_steps: None,
            sync_ref: None,
        };
        let mut hooks = Recorder { device, asked: Vec::new() };
        let end = fit(&mut trainer, &config, Position::default(), &mut hooks).expect("fits");
        assert_eq!(hooks.asked, vec![(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1)]);
        assert_eq!(end, Position { step: 4, micro_batches: 4 });
        assert!((end.epoch(3) - 4.0 / 3.0).abs() < 1e-12);
    }
}
