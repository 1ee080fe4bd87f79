//! A corpus of real chat templates (the 72 TRL 1.16 ships: Qwen, Llama 3, Gemma, Phi-3,
//! DeepSeek, GLM, gpt-oss, LFM2, Nemotron, Cohere, SmolVLM, and their `_training` variants with
//! `{% generation %}` blocks; plus 3 of families TRL lacks, from tests/fixtures/gen/templates_extra/:
//! Mistral Nemo's "v3-tekken" template, OLMo 2 Instruct and SmolLM3) rendered by kto as
//! transformers 5.24 renders them (tests/fixtures/gen/chat_template_corpus.py): the same text for
//! every conversation transformers renders, and an error where it raises one.
//!
//! Templates that print the date were rendered for a fixed day; the test puts kto's rendering of
//! each of their `strftime_now` formats for today in its place (so the corpus holds on any day).

use kto_data::{HfTokenizer, Message};
use kto_testkit::{fixture, read_jsonl};

#[test]
fn real_chat_templates_render_as_transformers_renders_them() {
    let expected = read_jsonl("templates/expected.jsonl");
    assert_eq!(expected.len(), 300, "75 templates × 4 renderings");
    let mut mismatches = Vec::new();
    let mut rendered = 0;
    for entry in &expected {
        let name = entry["template"].as_str().expect("template");
        let dir = tempfile::tempdir().expect("temp dir");
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixture(&format!("models/tiny-qwen2/{file}")), dir.path().join(file)).expect("copy");
        }
        std::fs::copy(fixture(&format!("templates/{name}")), dir.path().join("chat_template.jinja")).expect("copy");
        let at = format!("{name} {} {}", entry["conversation"], entry["case"]);
        let tokenizer = match HfTokenizer::from_folder(dir.path()) {
            Ok(t) => t,
            Err(e) => {
                mismatches.push(format!("{at}: does not compile: {e}"));
                continue;
            }
        };
        let messages: Vec<Message> = serde_json::from_value(entry["messages"].clone()).expect("messages");
        let generation = entry["add_generation_prompt"].as_bool().expect("flag");
        let ours = tokenizer.apply_chat_template(&messages, generation);
        let want = entry.get("text").and_then(|t| t.as_str()).map(|text| today(text, entry));
        match (want.as_deref(), ours) {
            (Some(want), Ok(got)) if got == want => rendered += 1,
            (Some(want), Ok(got)) => {
                mismatches.push(format!("{at}: renders\n{got:?}\nwhere transformers renders\n{want:?}"))
            }
            (Some(_), Err(e)) => mismatches.push(format!("{at}: fails where transformers renders: {e}")),
            (None, Err(_)) => {}
            (None, Ok(got)) => {
                mismatches.push(format!("{at}: renders {got:?} where transformers raises {}", entry["error"]))
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} renderings differ:\n{}",
        mismatches.len(),
        expected.len(),
        mismatches.join("\n\n")
    );
    assert_eq!(rendered, 284, "every rendering transformers produces");
}

/// `text` with each fixed-day date the entry records (`"dates"`: `[format, text]` pairs) replaced
/// by kto's `strftime_now(format)` today, rendered through a one-line template.
fn today(text: &str, entry: &serde_json::Value) -> String {
    let mut out = text.to_string();
    for pair in entry.get("dates").and_then(|d| d.as_array()).into_iter().flatten() {
        let (format, fixed) = (pair[0].as_str().expect("format"), pair[1].as_str().expect("text"));
        let dir = tempfile::tempdir().expect("temp dir");
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(fixture(&format!("models/tiny-qwen2/{file}")), dir.path().join(file)).expect("copy");
        }
        std::fs::write(dir.path().join("chat_template.jinja"), format!("{{{{ strftime_now({format:?}) }}}}"))
            .expect("write");
        let now =
            HfTokenizer::from_folder(dir.path()).expect("compiles").apply_chat_template(&[], false).expect("renders");
        assert!(out.contains(fixed), "{fixed} in {out:?}");
        out = out.replace(fixed, &now);
    }
    out
}
