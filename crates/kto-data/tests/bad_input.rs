//! Bad records get an error naming the file, line and field.

use std::io::Write;

use kto_data::read_jsonl;

fn error_for(lines: &[&str]) -> String {
    let mut file = tempfile::Builder::new().suffix(".jsonl").tempfile().expect("temp file");
    for l in lines {
        writeln!(file, "{l}").expect("write");
    }
    let path = file.path().to_path_buf();
    let err = read_jsonl(&path).expect_err("bad input").to_string();
    err.replace(&path.display().to_string(), "data.jsonl")
}

const OK: &str = r#"{"prompt": "Q?", "completion": " A.", "label": true}"#;

#[test]
fn each_bad_record_kind_has_its_message() {
    assert_eq!(
        error_for(&[OK, r#"{"prompt": "Q?", "completion": " A.", "label": "yes"}"#]),
        r#"data.jsonl:2: field "label": expected a boolean (or 0/1), found "yes""#
    );
    assert_eq!(error_for(&[OK, r#"{"prompt": "Q?", "label": true}"#]), r#"data.jsonl:2: field "completion": missing"#);
    assert_eq!(
        error_for(&[OK, r#"{"prompt": 3, "completion": " A.", "label": true}"#]),
        r#"data.jsonl:2: field "prompt": expected a string, found 3"#
    );
    assert_eq!(
        error_for(&[OK, r#"{"prompt": "Q?", "completion": "", "label": false}"#]),
        r#"data.jsonl:2: field "completion": is empty"#
    );
    assert!(error_for(&[OK, "{not json"]).starts_with("data.jsonl:2: invalid JSON: "));
    assert_eq!(
        error_for(&[
            r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "robot", "content": "x"}], "label": true}"#
        ]),
        r#"data.jsonl:1: field "completion": message 0: unknown role "robot""#
    );
    assert_eq!(
        error_for(&[OK, r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": " A.", "label": true}"#]),
        r#"data.jsonl:2: field "prompt": mixes formats: line 1 is standard"#
    );
    assert_eq!(
        error_for(&[OK, r#"{"prompt": "Q?", "chosen": " A.", "rejected": " B."}"#]),
        "data.jsonl:2: record is PairedExplicit but line 1 is Unpaired; a dataset must use one format"
    );
    assert_eq!(error_for(&[""]), "data.jsonl: the dataset is empty");
    assert_eq!(
        error_for(&[r#"{"chosen": "", "rejected": "x"}"#]),
        r#"data.jsonl:1: field "chosen": is empty, cannot extract an implicit prompt"#
    );
}

#[test]
fn integer_labels_are_accepted_like_trl() {
    let mut file = tempfile::Builder::new().suffix(".jsonl").tempfile().expect("temp file");
    writeln!(file, r#"{{"prompt": "Q?", "completion": " A.", "label": 1}}"#).expect("write");
    writeln!(file, r#"{{"prompt": "Q?", "completion": " B.", "label": 0}}"#).expect("write");
    let rows = read_jsonl(file.path()).expect("valid");
    assert_eq!(rows.iter().map(|r| r.label).collect::<Vec<_>>(), vec![true, false]);
}

#[test]
fn json_arrays_and_messages_are_located_too() {
    let mut file = tempfile::Builder::new().suffix(".json").tempfile().expect("temp file");
    write!(file, r#"[{{"prompt": "Q?", "completion": " A.", "label": true}}, {{"prompt": "Q?", "completion": " A.", "label": null}}]"#)
        .expect("write");
    let err = kto_data::load_dataset(file.path().to_str().expect("utf-8"), "train").expect_err("bad label").to_string();
    assert_eq!(
        err.replace(&file.path().display().to_string(), "data.json"),
        r#"data.json: row 1: field "label": expected a boolean (or 0/1), found null"#
    );

    assert_eq!(
        error_for(&[
            r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant"}], "label": true}"#
        ]),
        r#"data.jsonl:1: field "completion": message 0: expected {"role": string, "content": string}, found {"role":"assistant"}"#
    );
    assert_eq!(
        error_for(&[r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": "x", "label": true}"#]),
        r#"data.jsonl:1: field "completion": mixes formats: line 1 is conversational"#
    );
    assert_eq!(
        error_for(&[r#"{"prompt": "Q", "completion": "A", "label": true, "tools": 3}"#]),
        r#"data.jsonl:1: field "tools": expected a list of tools, found 3"#
    );
    assert_eq!(
        error_for(&[r#"{"prompt": "Q", "completion": "A", "label": true, "images": []}"#]),
        r#"data.jsonl:1: field "images": vision datasets are not supported (text-only models)"#
    );
}

/// A tokenizer folder with tiny-qwen2's vocabulary and the given chat template.
fn tokenizer_with_template(template: &str) -> (tempfile::TempDir, kto_data::HfTokenizer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = kto_testkit::fixture("models/tiny-qwen2");
    std::fs::copy(source.join("tokenizer.json"), dir.path().join("tokenizer.json")).expect("copy");
    let mut config = kto_testkit::read_json("models/tiny-qwen2/tokenizer_config.json");
    config["chat_template"] = template.into();
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).expect("write");
    let tokenizer = kto_data::HfTokenizer::from_folder(dir.path()).expect("loads");
    (dir, tokenizer)
}

fn tokenize_error(lines: &[&str], template: &str) -> String {
    let mut file = tempfile::Builder::new().suffix(".jsonl").tempfile().expect("temp file");
    for l in lines {
        writeln!(file, "{l}").expect("write");
    }
    let examples = read_jsonl(file.path()).expect("reads");
    let (dir, tokenizer) = tokenizer_with_template(template);
    let err = kto_data::tokenize_examples(&examples, &tokenizer, &kto_data::TokenizeConfig::trl(2))
        .expect_err("fails")
        .to_string();
    err.replace(&file.path().display().to_string(), "data.jsonl").replace(&dir.path().display().to_string(), "TOK")
}

const CHAT_OK: &str = r#"{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}], "label": true}"#;

#[test]
fn a_template_that_raises_names_the_row() {
    let template = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}\
                    {% endif %}{{ m.content }}{% endfor %}";
    let with_system = r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "completion": [{"role": "assistant", "content": "Hello"}], "label": false}"#;
    assert_eq!(
        tokenize_error(&[CHAT_OK, with_system], template),
        r#"data.jsonl:2: field "prompt": TOK: chat template: System role not supported (template line 1)"#
    );
}

#[test]
fn a_row_left_without_completion_tokens_is_an_error() {
    // A template that drops assistant turns: prompt + completion renders exactly as the prompt.
    let template = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}";
    assert_eq!(
        tokenize_error(&[CHAT_OK], template),
        r#"data.jsonl:1: field "completion": no completion tokens after tokenization (the prompt has 2 tokens and prompt + completion 2); nothing would be trained on this row"#
    );
}

#[test]
fn inconsistent_lengths_are_rejected_before_any_work() {
    let config = kto_data::TokenizeConfig {
        max_prompt_length: Some(64),
        max_length: Some(64),
        ..kto_data::TokenizeConfig::trl(2)
    };
    assert_eq!(
        config.validate().expect_err("budget").to_string(),
        "invalid settings: max_prompt_length (64) must be below max_length (64) to leave room for the completion"
    );
    let config =
        kto_data::TokenizeConfig { max_prompt_length: Some(8), max_length: None, ..kto_data::TokenizeConfig::trl(2) };
    assert_eq!(
        config.validate().expect_err("needs total").to_string(),
        "invalid settings: max_prompt_length needs max_length (the total budget)"
    );
}
