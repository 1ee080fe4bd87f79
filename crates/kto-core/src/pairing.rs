//! KL partners: which completion each row is scored with for the KL estimate.
//!
//! KTO estimates `z₀` from *mismatched* pairs: row `i` keeps its own prompt and borrows another
//! row's completion. TRL builds the pairs once at preprocessing with a `+1` rotation inside
//! consecutive chunks of `per_device_train_batch_size` rows, which is only right when batches
//! are exactly those chunks (sequential sampling). Here the pairing is a function of the batch
//! itself ([`kl_partners`]), so it stays a valid in-batch derangement under any sampler; on
//! consecutive chunks it equals TRL's ([`kl_partners_chunked`]).
//!
//! When one KL estimate spans an accumulation window, the pairs span it too: the window's rows
//! (all its micro-batches on one device) rotate as one batch ([`kl_partners_windowed`]), so
//! batch 1 × GA 4 pairs rows exactly as TRL's batch 4 × GA 1 does.

/// KL partner of each row of a batch of `batch` rows: row `i` takes the completion of row
/// `i - 1`, row 0 the completion of the last row. For `batch > 1` no row is its own partner;
/// a batch of one is paired with itself, as TRL does for a trailing chunk of one row.
pub fn kl_partners(batch: usize) -> Vec<usize> {
    (0..batch).map(|i| if i == 0 { batch - 1 } else { i - 1 }).collect()
}

/// TRL's preprocessing-time pairing over a whole dataset of `rows` rows: the `+1` rotation inside
/// consecutive chunks of `chunk` rows (`per_device_train_batch_size`); a final partial chunk
/// rotates within itself. Returns dataset indices.
///
/// # Panics
/// When `chunk == 0`.
pub fn kl_partners_chunked(rows: usize, chunk: usize) -> Vec<usize> {
    assert!(chunk > 0, "chunk must be > 0");
    (0..rows)
        .step_by(chunk)
        .flat_map(|start| {
            let len = chunk.min(rows - start);
            kl_partners(len).into_iter().map(move |p| start + p)
        })
        .collect()
}

/// Which micro-batches form a device's accumulation window, in sequential order: batches of
/// `batch` rows, micro-step `m` hands batches `m·devices .. m·devices + devices` to devices
/// `0 .. devices` (accelerate's round-robin), and each optimizer step takes
/// `gradient_accumulation_steps` micro-steps (an epoch's last step what is left). Returns, for
/// micro-batch `index` (counted over all devices, as [`crate::FitHooks::micro_batch`] counts it)
/// of an epoch of `batches` micro-batches, the indices of every micro-batch in its device's
/// window, in order.
///
/// # Panics
/// When `devices` or `gradient_accumulation_steps` is 0.
pub fn window_micro_batches(
    index: usize,
    batches: usize,
    gradient_accumulation_steps: usize,
    devices: usize,
) -> Vec<usize> {
    assert!(devices > 0 && gradient_accumulation_steps > 0, "devices and gradient_accumulation_steps must be > 0");
    let per_epoch = batches.div_ceil(devices);
    let (micro_step, device) = (index / devices, index % devices);
    let first = micro_step / gradient_accumulation_steps * gradient_accumulation_steps;
    let last = (first + gradient_accumulation_steps).min(per_epoch);
    (first..last).map(|m| m * devices + device).filter(|&b| b < batches).collect()
}

/// The KL partners of a whole dataset of `rows` rows in sequential order when one KL estimate
/// spans each device's accumulation window (see [`window_micro_batches`]): every window's rows
/// rotate by one as a single batch. With one device this is [`kl_partners_chunked`] over chunks
/// of `batch × gradient_accumulation_steps` rows. Returns dataset indices.
///
/// # Panics
/// When `batch`, `gradient_accumulation_steps` or `devices` is 0.
pub fn kl_partners_windowed(
    rows: usize,
    batch: usize,
    gradient_accumulation_steps: usize,
    devices: usize,
) -> Vec<usize> {
    assert!(batch > 0, "batch must be > 0");
    let batches = rows.div_ceil(batch);
    let rows_of = |b: usize| b * batch..((b + 1) * batch).min(rows);
    let mut partners = vec![0; rows];
    for b in 0..batches {
        let window = window_micro_batches(b, batches, gradient_accumulation_steps, devices);
        if window[0] != b {
            continue; // each window once, from its first micro-batch
        }
        let members: Vec<usize> = window.iter().flat_map(|&w| rows_of(w)).collect();
        for (i, p) in kl_partners(members.len()).into_iter().enumerate() {
            partners[members[i]] = members[p];
        }
    }
    partners
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rotation_by_one() {
        assert_eq!(kl_partners(4), vec![3, 0, 1, 2]);
        assert_eq!(kl_partners(1), vec![0]);
        assert_eq!(kl_partners(0), Vec::<usize>::new());
        // 10 rows in chunks of 4: [3,0,1,2] [7,4,5,6] [9,8]
        assert_eq!(kl_partners_chunked(10, 4), vec![3, 0, 1, 2, 7, 4, 5, 6, 9, 8]);
        // a trailing chunk of one row is self-paired (TRL's zen split with batch 2)
        assert_eq!(kl_partners_chunked(5, 2), vec![1, 0, 3, 2, 4]);
    }

    #[test]
    fn windows_follow_the_devices_round_robin() {
        // 10 batches on 2 devices, GA 2: device 0 gets 0,2,4,6,8 and device 1 gets 1,3,5,7,9;
        // per epoch 5 micro-steps: windows [0,1] [2,3] [4] of micro-steps.
        assert_eq!(window_micro_batches(0, 10, 2, 2), vec![0, 2]);
        assert_eq!(window_micro_batches(2, 10, 2, 2), vec![0, 2]);
        assert_eq!(window_micro_batches(3, 10, 2, 2), vec![1, 3]);
        assert_eq!(window_micro_batches(9, 10, 2, 2), vec![9]);
        // 9 batches: the last micro-step leaves device 1 idle.
        assert_eq!(window_micro_batches(8, 9, 2, 2), vec![8]);
        // 7 rows, batch 2, GA 2, one device: windows of rows [0..4) and [4..7).
        assert_eq!(kl_partners_windowed(7, 2, 2, 1), vec![3, 0, 1, 2, 6, 4, 5]);
        // batch 1 × GA 4 pairs as batch 4 × GA 1 (TRL's preprocessing chunks of 4).
        assert_eq!(kl_partners_windowed(10, 1, 4, 1), kl_partners_chunked(10, 4));
        // 8 rows, batch 1, GA 2, two devices: device 0's window is rows 0 and 2, device 1's 1 and 3.
        assert_eq!(kl_partners_windowed(8, 1, 2, 2), vec![2, 3, 0, 1, 6, 7, 4, 5]);
    }

    proptest! {
        #[test]
        fn windowed_pairing_is_a_derangement_within_each_window(
            rows in 1usize..120, batch in 1usize..6, ga in 1usize..5, devices in 1usize..4,
        ) {
            let partners = kl_partners_windowed(rows, batch, ga, devices);
            prop_assert_eq!(partners.len(), rows);
            let mut seen = vec![false; rows];
            let batches = rows.div_ceil(batch);
            for b in 0..batches {
                let window: Vec<usize> = window_micro_batches(b, batches, ga, devices)
                    .into_iter()
                    .flat_map(|w| w * batch..((w + 1) * batch).min(rows))
                    .collect();
                for i in b * batch..((b + 1) * batch).min(rows) {
                    prop_assert!(window.contains(&partners[i]), "partner outside the window");
                    prop_assert!(window.len() == 1 || partners[i] != i, "self-paired in a window of {}", window.len());
                    prop_assert!(!seen[partners[i]]);
                    seen[partners[i]] = true;
                }
            }
        }

        #[test]
        fn one_device_windows_are_chunks_of_batch_times_accumulation(rows in 0usize..200, batch in 1usize..6, ga in 1usize..5) {
            prop_assert_eq!(kl_partners_windowed(rows, batch, ga, 1), kl_partners_chunked(rows, batch * ga));
        }

        #[test]
        fn in_batch_pairing_is_a_derangement(batch in 2usize..64) {
            let partners = kl_partners(batch);
            let mut seen = vec![false; batch];
            for (i, &p) in partners.iter().enumerate() {
                prop_assert!(p < batch);
                prop_assert_ne!(p, i);
                prop_assert!(!seen[p]);
                seen[p] = true;
            }
        }

        #[test]
        fn chunked_pairing_equals_in_batch_pairing_of_each_chunk(rows in 0usize..200, chunk in 1usize..17) {
            let global = kl_partners_chunked(rows, chunk);
            prop_assert_eq!(global.len(), rows);
            for (b, start) in (0..rows).step_by(chunk).enumerate() {
                let len = chunk.min(rows - start);
                let local: Vec<usize> = global[start..start + len].iter().map(|p| p - start).collect();
                prop_assert_eq!(local, kl_partners(len), "chunk {}", b);
            }
        }
    }
}
