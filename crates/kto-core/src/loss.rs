//! The KTO loss and its unpaired APO-zero variant, with TRL's weighting and reduction.

use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use crate::error::{Error, Result};

crate::choice! {
    /// Which objective [`kto_loss`] computes (TRL's `loss_type`).
    pub enum LossType("loss_type") {
        /// `"kto"`: KTO (Ethayarajh et al. 2024, arXiv:2402.01306, eq. 7) with the KL reference
        /// point `z₀`.
        Kto = "kto",
        /// `"apo_zero_unpaired"`: unpaired APO-zero, no reference point (no KL passes at all).
        ApoZeroUnpaired = "apo_zero_unpaired",
    }
}

impl LossType {
    /// Whether the objective needs the KL estimate (and so the KL-pair forwards).
    pub fn uses_kl(self) -> bool {
        self == LossType::Kto
    }
}

/// Hyper-parameters of [`kto_loss`]; names and defaults are TRL's `KTOConfig` fields.
#[derive(Config, Debug)]
pub struct KtoLossConfig {
    /// `β`: scales the log-ratio inside the sigmoid; higher keeps the policy closer to the
    /// reference.
    #[config(default = 0.1)]
    pub beta: f64,
    /// The objective.
    #[config(default = "LossType::Kto")]
    pub loss_type: LossType,
    /// `λ_D`: weight of each desirable example's loss.
    #[config(default = 1.0)]
    pub desirable_weight: f64,
    /// `λ_U`: weight of each undesirable example's loss.
    #[config(default = 1.0)]
    pub undesirable_weight: f64,
}

impl KtoLossConfig {
    /// Checks the values a user can get wrong.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a non-finite or non-positive `beta` or a non-finite or
    /// negative weight.
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(Error::InvalidConfig { field: "beta", reason: format!("must be > 0, got {}", self.beta) });
        }
        for (field, value) in
            [("desirable_weight", self.desirable_weight), ("undesirable_weight", self.undesirable_weight)]
        {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::InvalidConfig { field, reason: format!("must be >= 0, got {value}") });
            }
        }
        Ok(())
    }
}

/// What [`kto_loss`] returns.
#[derive(Debug, Clone)]
pub struct KtoLoss {
    /// Mean over the micro-batch rows of the weighted per-example losses. `[1]`
    pub loss: Tensor<1>,
    /// Weighted per-example losses, in row order. `[batch]`
    pub losses: Tensor<1>,
    /// Implicit rewards `β · (policy_logps - reference_logps)`, detached (the KL is not
    /// subtracted, as in TRL). `[batch]`
    pub rewards: Tensor<1>,
}

/// The KTO loss of one micro-batch of unpaired examples.
///
/// With `lr_i = policy_logps_i - reference_logps_i` and `z₀ = max(kl, 0)` (detached):
///
/// | `loss_type` | desirable `ℓ_i` | undesirable `ℓ_i` |
/// | --- | --- | --- |
/// | `kto` (eq. 7) | `1 - σ(β (lr_i - z₀))` | `1 - σ(β (z₀ - lr_i))` |
/// | `apo_zero_unpaired` | `1 - σ(β lr_i)` | `σ(β lr_i)` |
///
/// Each `ℓ_i` is multiplied by its class weight (`λ_D` or `λ_U`) and the loss is the plain mean
/// over the rows of the micro-batch (TRL's `nanmean`, *not* normalised by the weights). A
/// micro-batch holding one class only is fine: the arithmetic is masked, not split.
/// Dividing by the number of gradient-accumulation steps is the trainer's job.
///
/// # Shapes
/// - `policy_logps`, `reference_logps`: `[batch]`, summed completion log-probs
/// - `desirable`: `[batch]`, `true` for a thumbs-up example
/// - `kl`: `[1]`, the reference point; clamped at 0 and detached here; ignored by
///   `apo_zero_unpaired`
///
/// # Panics
/// When the shapes disagree.
pub fn kto_loss(
    config: &KtoLossConfig,
    policy_logps: Tensor<1>,
    reference_logps: Tensor<1>,
    desirable: Tensor<1, Bool>,
    kl: Tensor<1>,
) -> KtoLoss {
    let [batch] = policy_logps.dims();
    burn::tensor::assert_shape!(reference_logps, [batch]);
    burn::tensor::assert_shape!(desirable, [batch]);
    burn::tensor::assert_shape!(kl, [1]);
    let beta = config.beta;
    let logratio = policy_logps - reference_logps;
    let rewards = logratio.clone().detach() * beta;

    let (desirable_loss, undesirable_loss) = match config.loss_type {
        LossType::Kto => {
            let z0 = kl.clamp_min(0.0).detach().expand([batch]);
            (sigmoid((logratio.clone() - z0.clone()) * beta).neg() + 1.0, sigmoid((z0 - logratio) * beta).neg() + 1.0)
        }
        LossType::ApoZeroUnpaired => (sigmoid(logratio.clone() * beta).neg() + 1.0, sigmoid(logratio * beta)),
    };
    let weights =
        desirable.clone().float() * (config.desirable_weight - config.undesirable_weight) + config.undesirable_weight;
    let losses = undesirable_loss.mask_where(desirable, desirable_loss) * weights;
    KtoLoss { loss: losses.clone().mean(), losses, rewards }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kto_testkit::{EXACT_MATH, assert_close};
    use proptest::prelude::*;

    fn run(
        config: &KtoLossConfig,
        policy: [f32; 4],
        reference: [f32; 4],
        labels: [bool; 4],
        kl: f32,
    ) -> (f32, Vec<f32>) {
        let device = kto_testkit::device();
        let out = kto_loss(
            config,
            Tensor::from_floats(policy, &device),
            Tensor::from_floats(reference, &device),
            Tensor::from_bool(TensorData::from(labels), &device),
            Tensor::from_floats([kl], &device),
        );
        (out.loss.into_scalar::<f32>(), out.losses.into_data().iter::<f32>().collect())
    }

    #[test]
    fn equal_policy_and_reference_give_half_weight() {
        // lr = 0, kl = 0: every ℓ = 1 - σ(0) = 0.5; weights 1 and 1.33 on 2 + 2 rows:
        // mean(0.5, 0.5, 0.665, 0.665) = 0.5825 (not normalised by the weights).
        let config = KtoLossConfig::new().with_undesirable_weight(1.33);
        let (loss, losses) = run(&config, [-3.0; 4], [-3.0; 4], [true, true, false, false], 0.0);
        assert_close!(loss, 0.5825, EXACT_MATH);
        assert_close!(losses[2], 0.665, EXACT_MATH);
    }

    #[test]
    fn kl_shifts_the_reference_point_and_negative_kl_is_clamped() {
        // lr = 2, β = 0.5, kl = 1: desirable 1 - σ(0.5) = 0.3775406688, undesirable 1 - σ(-0.5) = 0.6224593312.
        let config = KtoLossConfig::new().with_beta(0.5);
        let (_, losses) = run(&config, [0.0; 4], [-2.0; 4], [true, false, true, false], 1.0);
        assert_close!(losses[0], 0.3775406688, EXACT_MATH);
        assert_close!(losses[1], 0.6224593312, EXACT_MATH);
        // kl = -5 clamps to 0: desirable 1 - σ(1) = 0.2689414214.
        let (_, losses) = run(&config, [0.0; 4], [-2.0; 4], [true, false, true, false], -5.0);
        assert_close!(losses[0], 0.2689414214, EXACT_MATH);
    }

    #[test]
    fn apo_zero_ignores_kl() {
        // lr = 2, β = 0.5: desirable 1 - σ(1) = 0.2689414214, undesirable σ(1) = 0.7310585786.
        let config = KtoLossConfig::new().with_beta(0.5).with_loss_type(LossType::ApoZeroUnpaired);
        let (_, losses) = run(&config, [0.0; 4], [-2.0; 4], [true, false, true, false], 3.0);
        assert_close!(losses[0], 0.2689414214, EXACT_MATH);
        assert_close!(losses[1], 0.7310585786, EXACT_MATH);
    }

    #[test]
    fn no_gradient_flows_through_the_kl_term() {
        let device = kto_testkit::device().autodiff();
        let policy = Tensor::<1>::from_floats([-4.0, -6.0, -5.0], &device).require_grad();
        let policy_kl = Tensor::<1>::from_floats([-3.0, -2.0, -9.0], &device).require_grad();
        let reference = Tensor::<1>::from_floats([-5.0, -5.0, -5.0], &device);
        let reference_kl = Tensor::<1>::from_floats([-4.0, -4.0, -4.0], &device);
        let desirable = Tensor::<1, Bool>::from_bool(TensorData::from([true, false, true]), &device);
        // kl = mean(1, 2, -5) = -2/3 -> clamped 0; shift it positive so the clamp is not what
        // stops the gradient: differences (2, 3, -4) -> mean 1/3 > 0.
        let kl = crate::kl_estimate(policy_kl.clone() + 1.0, reference_kl);
        let out = kto_loss(&KtoLossConfig::new(), policy.clone(), reference, desirable, kl.kl);
        let grads = out.loss.backward();
        let kl_grad = policy_kl.grad(&grads);
        assert!(
            kl_grad.is_none_or(|g| g.into_data().iter::<f32>().all(|v| v == 0.0)),
            "the KL pair log-probs must receive no gradient"
        );
        let policy_grad = policy.grad(&grads).expect("policy log-probs are trained");
        assert!(policy_grad.into_data().iter::<f32>().all(|v| v != 0.0));
    }

    proptest! {
        /// Each weighted per-example loss lies in [0, weight], so the mean lies in [0, max(λ_D, λ_U)].
        #[test]
        fn loss_is_bounded_by_the_largest_weight(
            lr in proptest::collection::vec(-50.0f32..50.0, 4),
            labels in proptest::collection::vec(any::<bool>(), 4),
            kl in -5.0f32..5.0, beta in 0.01f64..2.0, w_d in 0.0f64..3.0, w_u in 0.0f64..3.0,
            apo in any::<bool>(),
        ) {
            let config = KtoLossConfig::new().with_beta(beta).with_desirable_weight(w_d).with_undesirable_weight(w_u)
                .with_loss_type(if apo { LossType::ApoZeroUnpaired } else { LossType::Kto });
            let labels: [bool; 4] = labels.try_into().expect("4 labels");
            let (loss, losses) = run(&config, [lr[0], lr[1], lr[2], lr[3]], [0.0; 4], labels, kl);
            let max_w = w_d.max(w_u) as f32;
            prop_assert!(loss >= 0.0 && loss <= max_w + 1e-6, "loss {}", loss);
            for (l, d) in losses.iter().zip(labels) {
                let w = if d { w_d } else { w_u } as f32;
                prop_assert!(*l >= 0.0 && *l <= w + 1e-6);
            }
        }

        /// Raising the log-ratio lowers a desirable example's loss and raises an undesirable one's.
        #[test]
        fn loss_is_monotone_in_the_logratio(lr in -20.0f32..20.0, step in 0.01f32..5.0, kl in 0.0f32..2.0, apo in any::<bool>()) {
            let config = KtoLossConfig::new().with_beta(0.5)
                .with_loss_type(if apo { LossType::ApoZeroUnpaired } else { LossType::Kto });
            let labels = [true, false, true, false];
            let (_, low) = run(&config, [lr; 4], [0.0; 4], labels, kl);
            let (_, high) = run(&config, [lr + step; 4], [0.0; 4], labels, kl);
            prop_assert!(high[0] <= low[0] && high[1] >= low[1], "{:?} -> {:?}", low, high);
        }
    }

    #[test]
    fn validate_names_the_field() {
        let err = KtoLossConfig::new().with_beta(-0.1).validate().unwrap_err();
        assert_eq!(err.to_string(), "beta must be > 0, got -0.1");
        let err = KtoLossConfig::new().with_undesirable_weight(f64::NAN).validate().unwrap_err();
        assert_eq!(err.to_string(), "undesirable_weight must be >= 0, got NaN");
        assert_eq!(
            "sigmoid".parse::<LossType>().unwrap_err().to_string(),
            "unknown value `sigmoid` for `loss_type` (expected one of: kto, apo_zero_unpaired)"
        );
    }
}
