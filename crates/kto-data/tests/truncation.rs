//! Classic TRL's `max_prompt_length` + `truncation_mode`, checked against the untruncated
//! tokenization: over-long rows keep `max_prompt_length` prompt tokens (the end after BOS, or
//! the start) and the first `max_length - max_prompt_length` completion tokens; none is dropped.

use kto_data::{HfTokenizer, TokenizeConfig, TruncationMode, read_jsonl, tokenize_examples};
use kto_testkit::{fixture, zip_eq};

const LLAMA_BOS: u32 = 893;

fn rows(config: TokenizeConfig) -> Vec<kto_data::TokenizedRow> {
    let tokenizer = HfTokenizer::from_folder(&fixture("models/tiny-llama")).expect("tokenizer");
    let examples = read_jsonl(&fixture("datasets/kto_standard.jsonl")).expect("dataset");
    tokenize_examples(&examples, &tokenizer, &config).expect("tokenizes").rows
}

#[test]
fn prompt_budget_cuts_instead_of_dropping() {
    let full = rows(TokenizeConfig { max_length: None, ..TokenizeConfig::trl(4) });
    for mode in [TruncationMode::KeepEnd, TruncationMode::KeepStart] {
        let cut = rows(TokenizeConfig {
            max_length: Some(48),
            max_prompt_length: Some(24),
            truncation_mode: mode,
            ..TokenizeConfig::trl(4)
        });
        assert_eq!(cut.len(), 64, "{mode:?}: no row is dropped (TRL 1.16 drops 4 at max_length 48)");
        let mut n_cut = 0;
        for (c, f) in zip_eq(&cut, &full, "rows") {
            assert_eq!(c.source_row, f.source_row);
            if f.len() <= 48 {
                assert_eq!((&c.prompt_ids, &c.completion_ids), (&f.prompt_ids, &f.completion_ids), "short rows stay");
                assert_eq!(c.truncated, (0, 0));
                continue;
            }
            n_cut += 1;
            assert!(c.len() <= 48, "row {}: {} tokens", c.source_row, c.len());
            let p = f.prompt_ids.len().min(24);
            assert_eq!(c.prompt_ids.len(), p, "row {}", c.source_row);
            match mode {
                TruncationMode::KeepStart => assert_eq!(c.prompt_ids, f.prompt_ids[..p]),
                TruncationMode::KeepEnd => {
                    assert_eq!(c.prompt_ids[0], LLAMA_BOS, "BOS survives keep_end");
                    assert_eq!(c.prompt_ids[1..], f.prompt_ids[f.prompt_ids.len() - (p - 1)..]);
                }
            }
            // The completion keeps its start; it is cut to 48 - 24 = 24 tokens only when the
            // cut prompt is still too long for it.
            let keep = if p + f.completion_ids.len() > 48 { 24 } else { f.completion_ids.len() };
            assert_eq!(c.completion_ids, f.completion_ids[..keep], "row {}", c.source_row);
            assert_eq!(c.truncated, (f.prompt_ids.len() - p, f.completion_ids.len() - keep));
        }
        assert!(n_cut >= 4, "{mode:?}: the rows TRL 1.16 drops are among the cut ones ({n_cut})");
    }
}
