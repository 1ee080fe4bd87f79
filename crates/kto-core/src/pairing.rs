//! KL partners: which completion each row is scored with for the KL estimate.
//!
//! KTO estimates `z₀` from *mismatched* pairs: row `i` keeps its own prompt and borrows another
//! row's completion. TRL builds the pairs once at preprocessing with a `+1` rotation inside
//! consecutive chunks of `per_device_train_batch_size` rows, which is only right when batches
//! are exactly those chunks (sequential sampling). Here the pairing is a function of the batch
//! itself ([`kl_partners`]), so it stays a valid in-batch derangement under any sampler; on
//! consecutive chunks it equals TRL's ([`kl_partners_chunked`]).

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

    proptest! {
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
