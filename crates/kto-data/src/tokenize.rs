//! TRL 1.16's tokenization of unpaired examples, its `max_length` filter and its KL pairs.

use crate::error::{Error, Result};
use crate::record::{Content, Example};
use crate::tokenizer::{HfTokenizer, Message, TemplateInputs};

kto_core::choice! {
    /// How classic TRL cuts a prompt that is over `max_prompt_length` ([`TokenizeConfig::max_prompt_length`]).
    pub enum TruncationMode("truncation_mode", default = KeepEnd) {
        /// Keep the last tokens (classic TRL's default), after the BOS token when the prompt starts
        /// with one.
        KeepEnd = "keep_end",
        /// Keep the first tokens.
        KeepStart = "keep_start",
    }
}

/// Settings of [`tokenize_examples`] (TRL `KTOConfig` names).
#[derive(Debug, Clone)]
pub struct TokenizeConfig {
    /// Rows whose prompt alone has at least this many tokens are dropped; the collator keeps the
    /// first `max_length` tokens of prompt + completion. `None` disables both. TRL default 1024.
    pub max_length: Option<usize>,
    /// Classic TRL's prompt budget (removed in TRL 1.16, where it is ignored). When set, a row
    /// longer than `max_length` has its prompt cut to `max_prompt_length` tokens (as
    /// `truncation_mode` says) and then its completion to `max_length - max_prompt_length`, so no
    /// row is dropped. Requires `max_length`, and must be below it.
    pub max_prompt_length: Option<usize>,
    /// Which end of the prompt `max_prompt_length` keeps.
    pub truncation_mode: TruncationMode,
    /// KL pairs are formed in consecutive chunks of this many rows (`per_device_train_batch_size`).
    pub per_device_train_batch_size: usize,
    /// Build KL completions (`false` for `apo_zero_unpaired`).
    pub kl_pairs: bool,
    /// One KL estimate per accumulation window (`kl_estimate: accumulation_window`): the pairs
    /// rotate over each device's whole window instead of each batch. `None`: TRL's chunks.
    pub kl_window: Option<KlWindow>,
}

/// The accumulation window KL pairs span ([`TokenizeConfig::kl_window`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KlWindow {
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Data-parallel devices (batches go round-robin to them).
    pub devices: usize,
}

impl TokenizeConfig {
    /// TRL 1.16's defaults: `max_length` 1024, no prompt budget, KL pairs in chunks of
    /// `per_device_train_batch_size`.
    pub fn trl(per_device_train_batch_size: usize) -> Self {
        Self {
            max_length: Some(1024),
            max_prompt_length: None,
            truncation_mode: TruncationMode::KeepEnd,
            per_device_train_batch_size,
            kl_pairs: true,
            kl_window: None,
        }
    }

    /// Checks the lengths fit together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::Config { message });
        if self.max_length == Some(0) {
            return bad("max_length must be at least 1".into());
        }
        if self.per_device_train_batch_size == 0 {
            return bad("per_device_train_batch_size must be at least 1".into());
        }
        if self.kl_window.is_some_and(|w| w.gradient_accumulation_steps == 0 || w.devices == 0) {
            return bad("the KL window needs gradient_accumulation_steps and devices of at least 1".into());
        }
        match (self.max_prompt_length, self.max_length) {
            (Some(_), None) => bad("max_prompt_length needs max_length (the total budget)".into()),
            (Some(p), Some(l)) if p >= l => {
                bad(format!("max_prompt_length ({p}) must be below max_length ({l}) to leave room for the completion"))
            }
            _ => Ok(()),
        }
    }
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
    /// Precomputed reference log-probability of the completion, when the dataset has one.
    pub ref_logps: Option<f64>,
    /// Precomputed reference log-probability of the KL completion, when the dataset has one.
    pub ref_kl_logps: Option<f64>,
    /// Tokens `max_prompt_length` removed from the prompt and the completion.
    pub truncated: (usize, usize),
}

impl TokenizedRow {
    /// Prompt plus completion tokens.
    pub fn len(&self) -> usize {
        self.prompt_ids.len() + self.completion_ids.len()
    }

    /// Never true for a row [`tokenize_examples`] returns (it rejects rows without completion
    /// tokens).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    /// Its prompt token ids.
    pub prompt_ids: Vec<u32>,
    /// Its completion token ids.
    pub completion_ids: Vec<u32>,
}

/// What [`tokenize_examples`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    /// Kept rows in training order.
    pub rows: Vec<TokenizedRow>,
    /// Rows the `max_length` filter dropped.
    pub dropped: Vec<DroppedRow>,
    /// Every source row in processing order: `Ok(i)` is `rows[i]`, `Err(i)` is `dropped[i]`.
    pub order: Vec<std::result::Result<usize, usize>>,
    /// TRL's one-time warning when a tokenized prompt is not a prefix of prompt + completion.
    pub prefix_warning: Option<String>,
    /// Number of rows whose prompt lost tokens to that mismatch.
    pub prefix_mismatches: usize,
}

/// Tokenizes examples exactly as TRL 1.16's `KTOTrainer` preprocessing does, in parallel:
///
/// - standard data: the EOS text is appended to the completion unless already there; prompt and
///   prompt + completion are tokenized with the tokenizer's special tokens;
/// - conversational data: the chat template (with the row's `tools` and `chat_template_kwargs`)
///   renders the prompt with the generation prompt and prompt + completion without it; both are
///   tokenized without extra special tokens;
/// - the completion is what follows the longest common prefix of the two token lists, and the
///   prompt is cut to that prefix (with a one-time warning when it loses tokens);
/// - with `max_prompt_length` (classic TRL), over-long rows are cut (see [`TokenizeConfig`]);
/// - rows whose prompt has `max_length` tokens or more are dropped, then KL completions rotate by
///   one inside consecutive chunks of `per_device_train_batch_size` rows (or over each device's
///   accumulation window, [`TokenizeConfig::kl_window`]).
///
/// # Errors
/// [`Error::Config`] for inconsistent lengths; `file:line: field "prompt": chat template: ...`
/// when the template raises for a row; `file:line: field "completion": ...` for a row left with
/// no completion tokens.
pub fn tokenize_examples(examples: &[Example], tokenizer: &HfTokenizer, config: &TokenizeConfig) -> Result<Tokenized> {
    use rayon::prelude::*;
    config.validate()?;
    let eos = tokenizer.eos_token.clone().unwrap_or_default();
    let bos = tokenizer.bos_token.as_deref().and_then(|t| tokenizer.token_id(t));
    let encoded: Vec<(TokenizedRow, bool)> =
        examples.par_iter().map(|ex| tokenize_one(ex, tokenizer, &eos, bos, config)).collect::<Result<_>>()?;
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut order = Vec::with_capacity(encoded.len());
    let mut prefix_warning = None;
    let mut prefix_mismatches = 0;
    for ((row, mismatch), ex) in encoded.into_iter().zip(examples) {
        if mismatch {
            prefix_mismatches += 1;
            if prefix_warning.is_none() {
                prefix_warning = Some(prefix_message(&left_out_text(ex, tokenizer, &eos)?));
            }
        }
        match config.max_length {
            Some(max) if row.prompt_ids.len() >= max => {
                order.push(Err(dropped.len()));
                dropped.push(DroppedRow {
                    source_row: row.source_row,
                    label: row.label,
                    reason: format!("len(prompt_ids)={} >= max_length={max}", row.prompt_ids.len()),
                    prompt_ids: row.prompt_ids,
                    completion_ids: row.completion_ids,
                });
            }
            _ => {
                order.push(Ok(kept.len()));
                kept.push(row);
            }
        }
    }
    if config.kl_pairs {
        let batch = config.per_device_train_batch_size.max(1);
        let partners = match config.kl_window {
            None => kto_core::kl_partners_chunked(kept.len(), batch),
            Some(w) => kto_core::kl_partners_windowed(kept.len(), batch, w.gradient_accumulation_steps, w.devices),
        };
        let completions: Vec<Vec<u32>> = kept.iter().map(|r| r.completion_ids.clone()).collect();
        for (row, partner) in kept.iter_mut().zip(partners) {
            row.kl_completion_ids = Some(completions[partner].clone());
        }
    }
    Ok(Tokenized { rows: kept, dropped, order, prefix_warning, prefix_mismatches })
}

/// Checks every token id of the rows that reach the model against its vocabulary of
/// `vocab_size` ids (its embedding table), so a pre-tokenized row or a tokenizer with tokens
/// added past the table is refused by row and field instead of indexing out of range.
///
/// # Errors
/// `file:line: field "prompt_ids": token id 1030 is outside the model's vocabulary (1024 ids)`
/// (`prompt`/`completion` for text rows, whose ids the tokenizer made).
pub fn check_vocabulary(tokenized: &Tokenized, examples: &[Example], vocab_size: usize) -> Result<()> {
    assert_eq!(examples.len(), tokenized.order.len(), "invariant: one slot per example");
    for (ex, slot) in examples.iter().zip(&tokenized.order) {
        let Ok(k) = slot else { continue }; // dropped rows never reach the model
        let row = &tokenized.rows[*k];
        for (field, ids, content) in
            [("prompt", &row.prompt_ids, &ex.prompt), ("completion", &row.completion_ids, &ex.completion)]
        {
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
                let field = match content {
                    Content::Tokens(_) => format!("{field}_ids"),
                    _ => field.to_string(),
                };
                return Err(Error::Record {
                    at: ex.at.clone(),
                    field: Some(field),
                    reason: format!("token id {id} is outside the model's vocabulary ({vocab_size} ids)"),
                });
            }
        }
    }
    Ok(())
}

/// Whether the kept rows carry the reference's log-probs from dataset columns (`ref_logps` /
/// `ref_KL_logps`, or classic TRL's `reference_logps` / `reference_KL_logps`), so training
/// needs no reference model: `false` when no row has them.
///
/// A row's `ref_KL_logps` belongs to one KL pair: when the row also records the completion it
/// was scored with (`KL_completion_ids`, as TRL's processed datasets have, or
/// `kl_completion_ids`, as `kto logps` writes), it must be this run's pair.
///
/// # Errors
/// `file:line: field "ref_logps": ...` for the first row without it when others have it (and
/// the same for `ref_KL_logps` when `kl` is set), or whose recorded KL completion is not the one
/// this run pairs it with.
pub fn dataset_reference(tokenized: &Tokenized, examples: &[Example], kl: bool) -> Result<bool> {
    assert_eq!(examples.len(), tokenized.order.len(), "invariant: one slot per example");
    let kept =
        || examples.iter().zip(&tokenized.order).filter_map(|(ex, slot)| slot.ok().map(|k| (ex, &tokenized.rows[k])));
    let Some((first, _)) = kept().find(|(_, row)| row.ref_logps.is_some() || row.ref_kl_logps.is_some()) else {
        return Ok(false);
    };
    for (ex, row) in kept() {
        let missing = |field: &str| Error::Record {
            at: ex.at.clone(),
            field: Some(field.into()),
            reason: format!(
                "missing, while {} has the reference's log-probs: every row needs them, or none (to score them with a reference model)",
                first.at
            ),
        };
        if row.ref_logps.is_none() {
            return Err(missing("ref_logps"));
        }
        if kl && row.ref_kl_logps.is_none() {
            return Err(missing("ref_KL_logps"));
        }
        let recorded = ["KL_completion_ids", "kl_completion_ids"].into_iter().find_map(|k| ex.extra.get(k));
        if let (true, Some(recorded), Some(ours)) = (kl, recorded, &row.kl_completion_ids) {
            let recorded: Option<Vec<u32>> = recorded
                .as_array()
                .and_then(|ids| ids.iter().map(|v| v.as_u64().and_then(|i| u32::try_from(i).ok())).collect());
            if recorded.as_ref() != Some(ours) {
                return Err(Error::Record {
                    at: ex.at.clone(),
                    field: Some("ref_KL_logps".into()),
                    reason: "was scored with another KL completion than this run pairs the row with (the pairs follow per_device_train_batch_size, gradient_accumulation_steps under accumulation_window, and the rows kept by max_length): recompute it with this run's settings".into(),
                });
            }
        }
    }
    Ok(true)
}

/// The prompt and prompt + completion token ids of one example, untruncated.
fn encode_pair(ex: &Example, tokenizer: &HfTokenizer, eos: &str) -> Result<(Vec<u32>, Vec<u32>)> {
    let row_err =
        |field: &str, e: Error| Error::Record { at: ex.at.clone(), field: Some(field.into()), reason: e.to_string() };
    Ok(match (&ex.prompt, &ex.completion) {
        (Content::Tokens(prompt), Content::Tokens(completion)) => {
            (prompt.clone(), prompt.iter().chain(completion).copied().collect())
        }
        (Content::Text(prompt), Content::Text(completion)) => {
            let completion = if completion.ends_with(eos) { completion.clone() } else { format!("{completion}{eos}") };
            (
                tokenizer.encode(prompt, true).map_err(|e| row_err("prompt", e))?,
                tokenizer.encode(&format!("{prompt}{completion}"), true).map_err(|e| row_err("completion", e))?,
            )
        }
        (prompt, completion) => {
            let prompt = messages(prompt);
            let mut all = prompt.clone();
            all.extend(messages(completion));
            let inputs = TemplateInputs { tools: ex.tools.as_ref(), kwargs: ex.chat_template_kwargs.as_ref() };
            let prompt_text = tokenizer.render_chat(&prompt, true, inputs).map_err(|e| row_err("prompt", e))?;
            let full_text = tokenizer.render_chat(&all, false, inputs).map_err(|e| row_err("completion", e))?;
            (
                tokenizer.encode(&prompt_text, false).map_err(|e| row_err("prompt", e))?,
                tokenizer.encode(&full_text, false).map_err(|e| row_err("completion", e))?,
            )
        }
    })
}

/// One row, and whether its prompt was not a prefix of prompt + completion.
fn tokenize_one(
    ex: &Example,
    tokenizer: &HfTokenizer,
    eos: &str,
    bos: Option<u32>,
    config: &TokenizeConfig,
) -> Result<(TokenizedRow, bool)> {
    let (prompt_ids, full_ids) = encode_pair(ex, tokenizer, eos)?;
    let shared = prompt_ids.iter().zip(&full_ids).take_while(|(a, b)| a == b).count();
    let mut prompt = prompt_ids[..shared].to_vec();
    let mut completion = full_ids[shared..].to_vec();
    let mut truncated = (0, 0);
    if let (Some(budget), Some(max)) = (config.max_prompt_length, config.max_length)
        && prompt.len() + completion.len() > max
    {
        let before = (prompt.len(), completion.len());
        prompt = cut_prompt(prompt, budget, config.truncation_mode, bos);
        if prompt.len() + completion.len() > max {
            completion.truncate(max - budget);
        }
        truncated = (before.0 - prompt.len(), before.1 - completion.len());
    }
    if completion.is_empty() {
        return Err(Error::Record {
            at: ex.at.clone(),
            field: Some("completion".into()),
            reason: format!(
                "no completion tokens after tokenization (the prompt has {} tokens and prompt + completion {}); \
                 nothing would be trained on this row",
                prompt_ids.len(),
                full_ids.len()
            ),
        });
    }
    let row = TokenizedRow {
        source_row: ex.source_row,
        label: ex.label,
        prompt_ids: prompt,
        completion_ids: completion,
        kl_completion_ids: None,
        ref_logps: ex.ref_logps,
        ref_kl_logps: ex.ref_kl_logps,
        truncated,
    };
    Ok((row, shared < prompt_ids.len()))
}

/// Classic TRL's prompt truncation to `budget` tokens; `keep_end` keeps a leading BOS (classic TRL
/// adds BOS after truncating, so its prompts always start with it).
fn cut_prompt(prompt: Vec<u32>, budget: usize, mode: TruncationMode, bos: Option<u32>) -> Vec<u32> {
    if prompt.len() <= budget {
        return prompt;
    }
    match mode {
        TruncationMode::KeepStart => prompt[..budget].to_vec(),
        TruncationMode::KeepEnd => match (bos, prompt.first()) {
            (Some(b), Some(&first)) if first == b && budget > 0 => {
                let mut out = vec![b];
                out.extend_from_slice(&prompt[prompt.len() - (budget - 1)..]);
                out
            }
            _ => prompt[prompt.len() - budget..].to_vec(),
        },
    }
}

/// The text of the prompt tokens a mismatching row leaves out (for TRL's warning).
fn left_out_text(ex: &Example, tokenizer: &HfTokenizer, eos: &str) -> Result<String> {
    let (prompt_ids, full_ids) = encode_pair(ex, tokenizer, eos)?;
    let shared = prompt_ids.iter().zip(&full_ids).take_while(|(a, b)| a == b).count();
    tokenizer.decode(&prompt_ids[shared..], false)
}

fn messages(content: &Content) -> Vec<Message> {
    match content {
        Content::Messages(m) => m.clone(),
        Content::Text(t) => vec![Message::new("user", t.clone())],
        Content::Tokens(_) => unreachable!("invariant: pre-tokenized rows never reach the chat template"),
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
