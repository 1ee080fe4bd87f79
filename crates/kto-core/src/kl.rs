//! The KL reference point `z₀` of KTO, estimated from mismatched (KL) pairs.

use burn::prelude::*;

/// What [`kl_estimate`] returns.
#[derive(Debug, Clone)]
pub struct KlEstimate {
    /// `max(mean(policy - reference), 0)`, detached: the `z₀` fed to [`crate::kto_loss`]. `[1]`
    pub kl: Tensor<1>,
    /// The mean before clamping, for logging (`kl_unclamped`). `[1]`
    pub unclamped: Tensor<1>,
}

/// Batch estimate of `KL(π_θ ‖ π_ref)` from KL-pair log-probs, TRL's `kl`.
///
/// The mean runs over every row of the micro-batch (both labels); no gradient flows through it
/// (TRL runs the policy's KL forward under `no_grad`; pass detached or non-autodiff inputs to
/// save the graph, the result is detached either way).
///
/// # Shapes
/// - `policy_kl_logps`, `reference_kl_logps`: `[batch]`, summed log-probs of each row's KL
///   completion under its own prompt
/// - returns: [`KlEstimate`] with `[1]` tensors
///
/// # Panics
/// When the shapes disagree or `batch == 0`.
pub fn kl_estimate(policy_kl_logps: Tensor<1>, reference_kl_logps: Tensor<1>) -> KlEstimate {
    let [batch] = policy_kl_logps.dims();
    assert!(batch > 0, "kl_estimate needs at least one row");
    burn::tensor::assert_shape!(reference_kl_logps, [batch]);
    let unclamped = (policy_kl_logps.detach() - reference_kl_logps.detach()).mean();
    KlEstimate { kl: unclamped.clone().clamp_min(0.0), unclamped }
}

/// Combines per-device KL means as TRL does across processes: the mean of the per-device means
/// (every device weighs the same, whatever its row count), then clamped at 0.
///
/// Returns `(kl, unclamped)`.
///
/// # Panics
/// When `per_device_means` is empty.
pub fn combine_device_kl(per_device_means: &[f64]) -> (f64, f64) {
    assert!(!per_device_means.is_empty(), "combine_device_kl needs at least one device");
    let unclamped = per_device_means.iter().sum::<f64>() / per_device_means.len() as f64;
    (unclamped.max(0.0), unclamped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kto_testkit::{EXACT_MATH, assert_close};

    #[test]
    fn mean_of_differences_clamped_at_zero() {
        let device = kto_testkit::device();
        // differences 1, -2, 4, -1 -> mean 0.5
        let est = kl_estimate(
            Tensor::from_floats([-10.0, -12.0, -6.0, -9.0], &device),
            Tensor::from_floats([-11.0, -10.0, -10.0, -8.0], &device),
        );
        assert_close!(est.kl.into_scalar::<f32>(), 0.5, EXACT_MATH);
        // differences -1, -3 -> mean -2, clamped to 0
        let est =
            kl_estimate(Tensor::from_floats([-11.0, -13.0], &device), Tensor::from_floats([-10.0, -10.0], &device));
        assert_close!(est.kl.into_scalar::<f32>(), 0.0, EXACT_MATH);
        assert_close!(est.unclamped.into_scalar::<f32>(), -2.0, EXACT_MATH);
    }

    #[test]
    fn device_means_weigh_equally() {
        // (0.3 + -0.1) / 2 = 0.1; (-0.3 + 0.1) / 2 = -0.1 -> 0
        let (kl, raw) = combine_device_kl(&[0.3, -0.1]);
        assert_close!(kl, 0.1, EXACT_MATH);
        assert_close!(raw, 0.1, EXACT_MATH);
        assert_eq!(combine_device_kl(&[-0.3, 0.1]).0, 0.0);
    }
}
