//! The desirable/undesirable weight heuristic (KTO paper, eq. 8) with TRL's exact condition,
//! constant, rounding and message.
//!
//! The paper recommends `λ_D n_D / (λ_U n_U) ∈ [1, 4/3]`. TRL checks it at preprocessing and only
//! warns. The numbers here are TRL's, quirks included: the factor is `1.33` (not `4/3`), the
//! bounds are rounded to 2 decimals with Python's `round` (exact value of the binary float,
//! ties to even), and `N_U` is computed from the already clamped `N_D`.

/// TRL's upper factor of the eq. 8 ratio (the paper's `4/3`, as TRL writes it).
pub const WEIGHT_RATIO_UPPER: f64 = 1.33;

/// The recommended ranges for the two weights, given the label counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightAdvice {
    /// `N_D = max(#desirable, 1)`.
    pub n_desirable: usize,
    /// `N_U = max(#rows - N_D, 1)`.
    pub n_undesirable: usize,
    /// `[round(N_U λ_U / N_D, 2), round(1.33 N_U λ_U / N_D, 2)]`: where `desirable_weight`
    /// should lie if `undesirable_weight` is kept.
    pub desirable_range: (f64, f64),
    /// `[round(N_D λ_D / N_U / 1.33, 2), round(N_D λ_D / N_U, 2)]`: where `undesirable_weight`
    /// should lie if `desirable_weight` is kept.
    pub undesirable_range: (f64, f64),
    /// Whether either weight already lies in its range (then TRL does not warn).
    pub in_range: bool,
}

/// Recommended weight ranges for a dataset with `n_desirable` and `n_undesirable` examples and
/// the configured weights. `None` when TRL skips the check (`N_D == N_U`).
pub fn recommended_weight_ranges(
    n_desirable: usize,
    n_undesirable: usize,
    desirable_weight: f64,
    undesirable_weight: f64,
) -> Option<WeightAdvice> {
    let rows = n_desirable + n_undesirable;
    let n_d = n_desirable.max(1);
    let n_u = rows.saturating_sub(n_d).max(1);
    if n_d == n_u {
        return None;
    }
    let (nd, nu) = (n_d as f64, n_u as f64);
    let desirable_range = (
        py_round(nu * undesirable_weight / nd * 1.0, 2),
        py_round(nu * undesirable_weight / nd * WEIGHT_RATIO_UPPER, 2),
    );
    let undesirable_range =
        (py_round(nd * desirable_weight / nu / WEIGHT_RATIO_UPPER, 2), py_round(nd * desirable_weight / nu / 1.0, 2));
    let within = |w: f64, (lo, hi): (f64, f64)| lo <= w && w <= hi;
    let in_range = within(desirable_weight, desirable_range) || within(undesirable_weight, undesirable_range);
    Some(WeightAdvice { n_desirable: n_d, n_undesirable: n_u, desirable_range, undesirable_range, in_range })
}

/// TRL's warning text when neither weight is in its recommended range, else `None`.
pub fn weight_warning(
    n_desirable: usize,
    n_undesirable: usize,
    desirable_weight: f64,
    undesirable_weight: f64,
) -> Option<String> {
    let advice = recommended_weight_ranges(n_desirable, n_undesirable, desirable_weight, undesirable_weight)?;
    if advice.in_range {
        return None;
    }
    let (d_lo, d_hi) = advice.desirable_range;
    let (u_lo, u_hi) = advice.undesirable_range;
    Some(format!(
        "You have different amounts of desirable/positive and undesirable/negative examples but the weights on \
         the desirable and undesirable losses don't seem to be in an ideal range. Based on your data, we recommend \
         EITHER desirable_weight in [{}, {}] or undesirable_weight in [{}, {}] (but NOT BOTH). See the documentation \
         on how to optimally set these weights.",
        py_float_repr(d_lo),
        py_float_repr(d_hi),
        py_float_repr(u_lo),
        py_float_repr(u_hi),
    ))
}

/// A warning when every example has the same label (the loss still trains: each term only needs
/// its own class and the KL baseline, but nothing contrasts the two classes), else `None`.
pub fn one_class_warning(n_desirable: usize, n_undesirable: usize) -> Option<String> {
    let rows = n_desirable + n_undesirable;
    let (class, other) = match (n_desirable, n_undesirable) {
        (0, 0) => return None,
        (_, 0) => ("desirable", "undesirable"),
        (0, _) => ("undesirable", "desirable"),
        _ => return None,
    };
    Some(format!(
        "All {rows} training examples are {class} and none is {other}: KTO still trains (each example is pushed \
         against the KL baseline), but the {other} term of the loss is empty, its metrics are not logged, and \
         the desirable/undesirable weights have no effect. Add {other} examples if you have them."
    ))
}

/// Python's `round(x, ndigits)` for floats: rounds the *exact* decimal value of the binary
/// float, ties to even.
pub(crate) fn py_round(x: f64, ndigits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust prints the exact binary value with enough digits (f64 has at most 1074 fractional
    // decimal digits; 1100 covers every case).
    let exact = format!("{:.1100}", x.abs());
    let (int_part, frac_part) = exact.split_once('.').expect("fixed-point formatting has a dot");
    let kept = &frac_part[..ndigits];
    let rest = &frac_part[ndigits..];
    let mut digits: Vec<u8> = int_part.bytes().chain(kept.bytes()).map(|b| b - b'0').collect();
    let first_dropped = rest.as_bytes()[0] - b'0';
    let beyond_nonzero = rest.bytes().skip(1).any(|b| b != b'0');
    let last_odd = digits.last().is_some_and(|d| d % 2 == 1);
    let round_up = first_dropped > 5 || (first_dropped == 5 && (beyond_nonzero || last_odd));
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, 1);
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - ndigits;
    let text: String = digits[..split].iter().map(|d| char::from(b'0' + d)).collect::<String>()
        + "."
        + &digits[split..].iter().map(|d| char::from(b'0' + d)).collect::<String>();
    let value: f64 = text.parse().expect("digits form a decimal number");
    if x.is_sign_negative() { -value } else { value }
}

/// Python's `repr(float)`: the shortest round-trip digits, with `.0` on integral values and
/// scientific notation outside `[1e-4, 1e16)`.
pub fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let abs = x.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        // Rust's `{:e}` is shortest round-trip too: "1.5e-5" -> Python "1.5e-05".
        let s = format!("{x:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("integer exponent");
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{x}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_class_datasets_warn_and_mixed_ones_do_not() {
        let all_good = one_class_warning(12, 0).expect("warns");
        assert!(all_good.starts_with("All 12 training examples are desirable and none is undesirable"), "{all_good}");
        assert!(one_class_warning(0, 3).expect("warns").starts_with("All 3 training examples are undesirable"));
        assert_eq!(one_class_warning(1, 1), None);
        assert_eq!(one_class_warning(0, 0), None, "an empty dataset is an error elsewhere");
    }

    #[test]
    fn python_round_and_repr() {
        assert_eq!(py_round(0.125, 2), 0.12); // exact tie, to even
        assert_eq!(py_round(0.375, 2), 0.38);
        assert_eq!(py_round(2.675, 2), 2.67); // binary value is below the tie
        assert_eq!(py_round(1.005, 2), 1.0);
        assert_eq!(py_round(0.995, 2), 0.99);
        assert_eq!(py_round(9.999, 2), 10.0);
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(0.6), "0.6");
        assert_eq!(py_float_repr(1.67), "1.67");
        assert_eq!(py_float_repr(0.0), "0.0");
        assert_eq!(py_float_repr(1.5e-5), "1.5e-05");
        assert_eq!(py_float_repr(1e16), "1e+16");
    }

    #[test]
    fn zen_worked_example() {
        // 10 desirable / 7 undesirable, weights 1/1 (spec §7): dL = 0.7, dH = 0.93, uL = 1.07, uH = 1.43, warns.
        let a = recommended_weight_ranges(10, 7, 1.0, 1.0).expect("unbalanced");
        assert_eq!(a.desirable_range, (0.7, 0.93));
        assert_eq!(a.undesirable_range, (1.07, 1.43));
        assert!(!a.in_range);
    }

    #[test]
    fn clamps_like_trl() {
        // All 5 rows undesirable: N_D = max(0, 1) = 1, N_U = max(5 - 1, 1) = 4.
        let a = recommended_weight_ranges(0, 5, 1.0, 1.0).expect("unbalanced");
        assert_eq!((a.n_desirable, a.n_undesirable), (1, 4));
        // 1 desirable, 1 undesirable after clamping: balanced, no check.
        assert!(recommended_weight_ranges(1, 1, 1.0, 5.0).is_none());
    }

    proptest! {
        /// A weight TRL accepts meets the eq. 8 bound up to the 2-decimal rounding of the range:
        /// either λ_D N_D / (λ_U N_U) ∈ [1, 1.33] with λ_D in the desirable range, or the same
        /// with λ_U in the undesirable range.
        #[test]
        fn accepted_weights_satisfy_eq8(n_d in 1usize..500, n_u in 1usize..500, w in 0.05f64..4.0) {
            prop_assume!(n_d != n_u);
            let a = recommended_weight_ranges(n_d, n_u, w, 1.0).expect("unbalanced");
            if a.desirable_range.0 <= w && w <= a.desirable_range.1 {
                let ratio = w * n_d as f64 / n_u as f64;
                // rounding the bounds to 0.01 moves the ratio by at most 0.005 * N_D / N_U
                let slack = 0.005 * n_d as f64 / n_u as f64 + 1e-12;
                prop_assert!(ratio >= 1.0 - slack && ratio <= 1.33 + slack, "ratio {}", ratio);
            }
        }
    }
}
