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
