//! TRL 1.16's tokenization of unpaired examples, its `max_length` filter and its KL pairs.

use crate::error::Result;
use crate::record::{Content, Example};
use crate::tokenizer::{HfTokenizer, Message};

/// Settings of [`tokenize_examples`] (TRL `KTOConfig` names).
#[derive(Debug, Clone)]
pub struct TokenizeConfig {
    /// Rows whose prompt alone has at least this many tokens are dropped; the collator keeps the
    /// first `max_length` tokens of prompt + completion. `None` disables both. TRL default 1024.
    pub max_length: Option<usize>,
    /// KL pairs are formed in consecutive chunks of this many rows (`per_device_train_batch_size`).
    pub per_device_train_batch_size: usize,
    /// Build KL completions (`false` for `apo_zero_unpaired`).
    pub kl_pairs: bool,
}

/// One example after tokenization.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedRow {
    /// Index of the source record (see [`Example::source_row`]).
    pub source_row: usize,
    /// `true` for desirable.
    pub label: bool,
    /// Prompt token ids (cut to the prefix shared with prompt + completion).
    pub prompt_ids: Vec<u32>,
    /// Completion token ids.
    pub completion_ids: Vec<u32>,
    /// The completion this row is paired with for the KL estimate.
    pub kl_completion_ids: Option<Vec<u32>>,
}

/// A row removed by the `max_length` filter.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedRow {
    /// Index of the source record.
    pub source_row: usize,
    /// `true` for desirable.
    pub label: bool,
    /// Why, e.g. `len(prompt_ids)=88 >= max_length=48`.
    pub reason: String,
}

/// What [`tokenize_examples`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    /// Kept rows in training order.
    pub rows: Vec<TokenizedRow>,
    /// Rows the `max_length` filter dropped.
    pub dropped: Vec<DroppedRow>,
    /// TRL's one-time warning when a tokenized prompt is not a prefix of prompt + completion.
    pub prefix_warning: Option<String>,
    /// Number of rows whose prompt lost tokens to that mismatch.
    pub prefix_mismatches: usize,
}

/// Tokenizes examples exactly as TRL 1.16's `KTOTrainer` preprocessing does:
///
/// - standard data: the EOS text is appended to the completion unless already there; prompt and
///   prompt + completion are tokenized with the tokenizer's special tokens;
/// - conversational data: the chat template renders the prompt with the generation prompt and
///   prompt + completion without it; both are tokenized without extra special tokens;
/// - the completion is what follows the longest common prefix of the two token lists, and the
///   prompt is cut to that prefix (with a one-time warning when it loses tokens);
/// - rows whose prompt has `max_length` tokens or more are dropped, then KL completions rotate by
///   one inside consecutive chunks of `per_device_train_batch_size` rows.
///
/// # Errors
/// Tokenizer and chat-template errors.
pub fn tokenize_examples(examples: &[Example], tokenizer: &HfTokenizer, config: &TokenizeConfig) -> Result<Tokenized> {
    let eos = tokenizer.eos_token.clone().unwrap_or_default();
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut prefix_warning = None;
    let mut prefix_mismatches = 0;
    for ex in examples {
        let (prompt_ids, full_ids) = match (&ex.prompt, &ex.completion) {
            (Content::Text(prompt), Content::Text(completion)) => {
                let completion =
                    if completion.ends_with(&eos) { completion.clone() } else { format!("{completion}{eos}") };
                (tokenizer.encode(prompt, true)?, tokenizer.encode(&format!("{prompt}{completion}"), true)?)
            }
            (prompt, completion) => {
                let prompt = messages(prompt);
                let mut all = prompt.clone();
                all.extend(messages(completion));
                let prompt_text = tokenizer.apply_chat_template(&prompt, true)?;
                let full_text = tokenizer.apply_chat_template(&all, false)?;
                (tokenizer.encode(&prompt_text, false)?, tokenizer.encode(&full_text, false)?)
            }
        };
        let shared = prompt_ids.iter().zip(&full_ids).take_while(|(a, b)| a == b).count();
        if shared < prompt_ids.len() {
            prefix_mismatches += 1;
            if prefix_warning.is_none() {
                let left_out = tokenizer.decode(&prompt_ids[shared..], false)?;
                prefix_warning = Some(prefix_message(&left_out));
            }
        }
        let row = TokenizedRow {
            source_row: ex.source_row,
            label: ex.label,
            prompt_ids: prompt_ids[..shared].to_vec(),
            completion_ids: full_ids[shared..].to_vec(),
            kl_completion_ids: None,
        };
        match config.max_length {
            Some(max) if row.prompt_ids.len() >= max => dropped.push(DroppedRow {
                source_row: row.source_row,
                label: row.label,
                reason: format!("len(prompt_ids)={} >= max_length={max}", row.prompt_ids.len()),
            }),
            _ => kept.push(row),
        }
    }
    if config.kl_pairs {
        let partners = kto_core::kl_partners_chunked(kept.len(), config.per_device_train_batch_size.max(1));
        let completions: Vec<Vec<u32>> = kept.iter().map(|r| r.completion_ids.clone()).collect();
        for (row, partner) in kept.iter_mut().zip(partners) {
            row.kl_completion_ids = Some(completions[partner].clone());
        }
    }
    Ok(Tokenized { rows: kept, dropped, prefix_warning, prefix_mismatches })
}

fn messages(content: &Content) -> Vec<Message> {
    match content {
        Content::Messages(m) => m.clone(),
        Content::Text(t) => vec![Message { role: "user".into(), content: t.clone() }],
    }
}

/// TRL 1.16's warning, with the left-out text as Python's `repr` would show it.
fn prefix_message(left_out: &str) -> String {
    format!(
        "The tokenized prompt is not a prefix of the tokenized prompt+completion, usually because the chat template \
         renders the prompt alone differently or because tokens merge across the boundary. The completion starts \
         where they diverge, and this end of the prompt is left out of the training sequence: {}. The model is \
         trained on a context that differs from the one it sees at inference. To avoid it, use a chat template that \
         renders the prompt the same way in both cases, or end the prompt on a token boundary. This warning is shown \
         once, but it likely applies to every example in the dataset.",
        py_repr(left_out)
    )
}

/// Python's `repr` of a string (quotes and the common escapes).
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}
