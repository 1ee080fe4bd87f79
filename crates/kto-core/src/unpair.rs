//! Paired preference data (`chosen`/`rejected`) to KTO's unpaired examples, with TRL 1.16's
//! exact rules, on in-memory records.
//!
//! Two steps, as TRL applies them:
//! 1. **Implicit prompts** ([`extract_prompt`]): records without a `prompt` get the longest
//!    common prefix of `chosen` and `rejected` (characters for text, whole messages for
//!    conversations) as their prompt.
//! 2. **Unpairing** ([`unpair`]): TRL runs a batched `map` with blocks of
//!    [`TRL_UNPAIR_BLOCK`] rows, and each block emits *all its chosen rows first, then all its
//!    rejected rows*. With TRL's sequential sampling that makes most batches single-label; the
//!    order is reproduced here on purpose so the numbers match, and documented so users know to
//!    shuffle.

use std::borrow::Cow;

use crate::error::{Error, Result};

/// Rows per block of TRL's batched unpairing map (the `datasets` default `batch_size`).
pub const TRL_UNPAIR_BLOCK: usize = 1000;

/// Content a prompt can be extracted from: a string (compared character by character, as Python
/// indexes `str`) or a conversation (compared message by message).
pub trait PromptContent: Sized {
    /// The unit of comparison: `char` for text, a message for conversations.
    type Unit: PartialEq + Clone;
    /// The content as units.
    fn units(&self) -> Cow<'_, [Self::Unit]>;
    /// Rebuilds content from units.
    fn from_units(units: &[Self::Unit]) -> Self;
    /// TRL's space rule compares the unit with `" "`; only text units can be equal to it.
    fn is_space(_unit: &Self::Unit) -> bool {
        false
    }
}

impl PromptContent for String {
    type Unit = char;
    fn units(&self) -> Cow<'_, [char]> {
        Cow::Owned(self.chars().collect())
    }
    fn from_units(units: &[char]) -> Self {
        units.iter().collect()
    }
    fn is_space(unit: &char) -> bool {
        *unit == ' '
    }
}

impl<M: PartialEq + Clone> PromptContent for Vec<M> {
    type Unit = M;
    fn units(&self) -> Cow<'_, [M]> {
        Cow::Borrowed(self.as_slice())
    }
    fn from_units(units: &[M]) -> Self {
        units.to_vec()
    }
}

/// The three parts [`extract_prompt`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractedPrompt<C> {
    /// The shared prefix.
    pub prompt: C,
    /// `chosen` without the prompt.
    pub chosen: C,
    /// `rejected` without the prompt.
    pub rejected: C,
}

/// TRL's `extract_prompt`: splits `chosen` and `rejected` at their first differing unit.
///
/// Reproduced exactly, quirks included:
/// - **space rule**: when the unit just before the split is a space, the split moves one unit
///   left, so the space starts the completions (`"… Assistant:"` + `" Sure"`);
/// - **no-break quirk**: when one is a prefix of the other (or they are equal) the loop never
///   breaks and the split lands at `min_len - 1`, not `min_len`: the last common unit goes to the
///   completions;
/// - **index −1**: a difference at the very first unit checks the *last* unit of `chosen` for
///   the space rule (Python's `chosen[-1]`), and if it is a space the split index becomes `-1`,
///   which Python slicing reads as "all but the last unit" for the prompt and "the last unit"
///   for both completions.
///
/// # Errors
/// [`Error::EmptyPairedField`] (with `row`) when `chosen` or `rejected` is empty, where TRL
/// crashes.
pub fn extract_prompt<C: PromptContent>(chosen: &C, rejected: &C, row: usize) -> Result<ExtractedPrompt<C>> {
    let (c, r) = (chosen.units(), rejected.units());
    for (field, units) in [("chosen", c.len()), ("rejected", r.len())] {
        if units == 0 {
            return Err(Error::EmptyPairedField { row, field });
        }
    }
    let min_len = c.len().min(r.len());
    let mut split = min_len as isize - 1; // the no-break value
    for i in 0..min_len {
        if c[i] != r[i] {
            let before = if i == 0 { &c[c.len() - 1] } else { &c[i - 1] };
            split = if C::is_space(before) { i as isize - 1 } else { i as isize };
            break;
        }
    }
    Ok(ExtractedPrompt {
        prompt: C::from_units(&c[..py_index(split, c.len())]),
        chosen: C::from_units(&c[py_index(split, c.len())..]),
        rejected: C::from_units(&r[py_index(split, r.len())..]),
    })
}

/// Python's slice bound for an index that may be `-1`, clamped into `0..=len`.
fn py_index(index: isize, len: usize) -> usize {
    if index < 0 { len.saturating_sub(index.unsigned_abs()) } else { (index as usize).min(len) }
}

/// One paired preference record; `extra` carries the dataset's other columns through.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedExample<C, X = ()> {
    /// The prompt, or `None` for implicit-prompt data.
    pub prompt: Option<C>,
    /// The preferred completion.
    pub chosen: C,
    /// The dispreferred completion.
    pub rejected: C,
    /// Other columns, duplicated onto both unpaired rows.
    pub extra: X,
}

impl<C, X> PairedExample<C, X> {
    /// The same record with its contents converted by `f` (e.g. from a dynamic content type to
    /// the text or message type [`unpair`] compares).
    pub fn map_content<D>(self, f: impl Fn(C) -> D) -> PairedExample<D, X> {
        PairedExample {
            prompt: self.prompt.map(&f),
            chosen: f(self.chosen),
            rejected: f(self.rejected),
            extra: self.extra,
        }
    }
}

/// One unpaired KTO example.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedExample<C, X = ()> {
    /// The prompt.
    pub prompt: C,
    /// The completion being judged.
    pub completion: C,
    /// `true` for desirable (thumbs-up), `false` for undesirable.
    pub label: bool,
    /// Other columns of the source record.
    pub extra: X,
}

/// Converts paired records into unpaired examples in TRL 1.16's exact order.
///
/// When the records have no prompt, [`extract_prompt`] runs on each first. Then, per block of
/// `block` records ([`TRL_UNPAIR_BLOCK`] to match TRL), the block's `chosen` rows are emitted
/// (label `true`) followed by its `rejected` rows (label `false`). `n` pairs give `n`
/// desirable and `n` undesirable examples.
///
/// # Errors
/// - [`Error::MixedPromptPresence`] when some records have a prompt and others do not;
/// - [`Error::EmptyPairedField`] from prompt extraction.
///
/// # Panics
/// When `block == 0`.
pub fn unpair<C, X>(records: Vec<PairedExample<C, X>>, block: usize) -> Result<Vec<UnpairedExample<C, X>>>
where
    C: PromptContent + Clone,
    X: Clone,
{
    assert!(block > 0, "unpair block must be > 0");
    let explicit = records.first().is_none_or(|r| r.prompt.is_some());
    let describe = |has: bool| if has { "has a prompt" } else { "has no prompt" };
    let mut prepared = Vec::with_capacity(records.len());
    for (row, record) in records.into_iter().enumerate() {
        if record.prompt.is_some() != explicit {
            return Err(Error::MixedPromptPresence {
                first_row: 0,
                row,
                found: describe(record.prompt.is_some()),
                expected: describe(explicit),
            });
        }
        let (prompt, chosen, rejected) = match record.prompt {
            Some(prompt) => (prompt, record.chosen, record.rejected),
            None => {
                let parts = extract_prompt(&record.chosen, &record.rejected, row)?;
                (parts.prompt, parts.chosen, parts.rejected)
            }
        };
        prepared.push((prompt, chosen, rejected, record.extra));
    }

    let mut out = Vec::with_capacity(prepared.len() * 2);
    for chunk in prepared.chunks(block) {
        for (prompt, chosen, _, extra) in chunk {
            out.push(UnpairedExample {
                prompt: prompt.clone(),
                completion: chosen.clone(),
                label: true,
                extra: extra.clone(),
            });
        }
        for (prompt, _, rejected, extra) in chunk {
            out.push(UnpairedExample {
                prompt: prompt.clone(),
                completion: rejected.clone(),
                label: false,
                extra: extra.clone(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(chosen: &str, rejected: &str) -> (String, String, String) {
        let e = extract_prompt(&chosen.to_string(), &rejected.to_string(), 0).expect("non-empty");
        (e.prompt, e.chosen, e.rejected)
    }

    #[test]
    fn space_before_the_split_goes_to_the_completions() {
        let (p, c, r) = split("Q: hi\nA: Sure, I can.", "Q: hi\nA: Sure, whatever.");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("Q: hi\nA: Sure,", " I can.", " whatever."));
        let (p, c, r) = split("The sky is blue.", "The sky is green.");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("The sky is", " blue.", " green."));
    }

    #[test]
    fn prefix_pairs_keep_the_last_common_unit_in_the_completions() {
        // No differing unit: the loop ends at min_len - 1 = 2, so "ab" / "c" / "cd".
        let (p, c, r) = split("abc", "abcd");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("ab", "c", "cd"));
        let (p, c, r) = split("same", "same");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("sam", "e", "e"));
    }

    #[test]
    fn first_unit_difference_reads_the_last_unit_like_python() {
        // i = 0 and chosen[-1] == " ": split = -1 -> prompt "ab", completions "…[-1:]".
        let (p, c, r) = split("ab ", "xyz");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("ab", " ", "z"));
        let (p, c, r) = split("ab", "xy");
        assert_eq!((p.as_str(), c.as_str(), r.as_str()), ("", "ab", "xy"));
    }

    #[test]
    fn conversations_split_by_whole_messages() {
        let m = |s: &str| s.to_string();
        let chosen = vec![m("user: hi"), m("assistant: hello")];
        let rejected = vec![m("user: hi"), m("assistant: go away")];
        let e = extract_prompt(&chosen, &rejected, 0).expect("non-empty");
        assert_eq!(e.prompt, vec![m("user: hi")]);
        assert_eq!(e.chosen, vec![m("assistant: hello")]);
        assert_eq!(e.rejected, vec![m("assistant: go away")]);
    }

    #[test]
    fn empty_and_mixed_records_are_errors() {
        let err = extract_prompt(&String::new(), &"x".to_string(), 3).unwrap_err();
        assert_eq!(err.to_string(), "row 3: field `chosen`: is empty, cannot extract an implicit prompt");
        let rec = |prompt: Option<&str>| PairedExample {
            prompt: prompt.map(str::to_string),
            chosen: "a b".to_string(),
            rejected: "a c".to_string(),
            extra: (),
        };
        let err = unpair(vec![rec(Some("p")), rec(None)], TRL_UNPAIR_BLOCK).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 1: field `prompt`: has no prompt but row 0 has a prompt; a dataset must use one paired format"
        );
    }

    #[test]
    fn blocks_emit_chosen_then_rejected() {
        let recs: Vec<_> = (0..5)
            .map(|i| PairedExample {
                prompt: Some(format!("p{i}")),
                chosen: format!("c{i}"),
                rejected: format!("r{i}"),
                extra: i,
            })
            .collect();
        let out = unpair(recs, 2).expect("valid");
        let got: Vec<_> = out.iter().map(|u| (u.completion.as_str(), u.label, u.extra)).collect();
        assert_eq!(
            got,
            vec![
                ("c0", true, 0),
                ("c1", true, 1),
                ("r0", false, 0),
                ("r1", false, 1),
                ("c2", true, 2),
                ("c3", true, 3),
                ("r2", false, 2),
                ("r3", false, 3),
                ("c4", true, 4),
                ("r4", false, 4)
            ]
        );
    }

    proptest! {
        #[test]
        fn n_pairs_give_n_of_each_label_with_prompts_kept(n in 0usize..40, block in 1usize..9) {
            let recs: Vec<_> = (0..n)
                .map(|i| PairedExample { prompt: Some(format!("p{i}")), chosen: format!("c{i}"), rejected: format!("r{i}"), extra: i })
                .collect();
            let out = unpair(recs, block).expect("valid");
            prop_assert_eq!(out.len(), 2 * n);
            prop_assert_eq!(out.iter().filter(|u| u.label).count(), n);
            for u in &out {
                prop_assert_eq!(&u.prompt, &format!("p{}", u.extra));
                let expected = if u.label { format!("c{}", u.extra) } else { format!("r{}", u.extra) };
                prop_assert_eq!(&u.completion, &expected);
            }
        }

        #[test]
        fn extraction_reassembles_both_sides(a in "[ab ]{1,12}", b in "[ab ]{1,12}") {
            let e = extract_prompt(&a, &b, 0).expect("non-empty");
            // Outside the index −1 quirk, prompt + completion gives back the input.
            if a.chars().next() == b.chars().next() || !a.ends_with(' ') {
                prop_assert_eq!(format!("{}{}", e.prompt, e.chosen), a.clone());
                prop_assert_eq!(format!("{}{}", e.prompt, e.rejected), b.clone());
            }
        }
    }
}
