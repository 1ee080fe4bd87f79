//! Gradient checkpointing (burn's balanced strategy on the autodiff device) recomputes
//! activations during backward and must give the same gradients as storing them.

use burn::prelude::*;
use kto_core::sequence_logps;
use kto_models::{LoadOptions, load_model};
use kto_testkit::{EXACT_MATH, fixture, tolerance};

fn q_proj_gradient(device: Device) -> TensorData {
    let (_, model) = load_model(&fixture("models/tiny-llama"), &device, &LoadOptions::default()).expect("loads");
    let ids = Tensor::<2, Int>::from_ints([[893, 10, 20, 30, 40, 50], [893, 60, 70, 80, 899, 899]], &device);
    let mask =
        Tensor::<2, Bool>::from_bool(TensorData::from([[true; 6], [true, true, true, true, false, false]]), &device);
    let completion = Tensor::<2, Bool>::from_bool(
        TensorData::from([[false, false, true, true, true, true], [false, false, true, true, false, false]]),
        &device,
    );
    let loss = sequence_logps(&model, ids, mask, completion, 4).sum();
    let grads = loss.backward();
    model.model.layers[0]
        .self_attn
        .q_proj
        .as_ref()
        .expect("q_proj")
        .weight
        .val()
        .grad(&grads)
        .expect("q_proj is trained")
        .into_data()
}

#[test]
fn checkpointed_backward_equals_the_stored_one() {
    let plain = q_proj_gradient(Device::flex().autodiff());
    let checkpointed = q_proj_gradient(Device::flex().autodiff().gradient_checkpointing());
    checkpointed.assert_approx_eq::<f32>(&plain, tolerance(EXACT_MATH));
    assert!(plain.iter::<f32>().any(|g| g != 0.0), "a real gradient");
}
