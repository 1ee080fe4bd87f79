//! A corpus of real chat templates (the 72 TRL 1.16 ships: Qwen, Llama 3, Gemma, Phi-3,
//! DeepSeek, GLM, gpt-oss, LFM2, Nemotron, Cohere, SmolVLM, and their `_training` variants with
//! `{% generation %}` blocks) rendered by kto as transformers 5.24 renders them
//! (tests/fixtures/gen/chat_template_corpus.py): the same text for every conversation transformers
//! renders, and an error where it raises one.

use kto_data::{HfTokenizer, Message};
use kto_testkit::{fixture, read_jsonl};

#[test]
fn real_chat_templates_render_as_transformers_renders_them() {
    let expected = read_jsonl("templates/expected.jsonl");
    assert_eq!(expected.len(), 288, "72 templates × 4 renderings");
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
        match (entry.get("text").and_then(|t| t.as_str()), ours) {
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
    assert_eq!(rendered, 272, "every rendering transformers produces");
}
