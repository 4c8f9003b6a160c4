//! `decode_source` against CPython itself: every file of `tests/fixtures/encodings/` is
//! decoded here and by the `python3` on this machine (`compile()` decides whether CPython
//! accepts the bytes, `tokenize.detect_encoding` + `bytes.decode` gives its text). A file
//! CPython refuses must be refused here; a file decoded here must be CPython's text,
//! character for character; a file CPython accepts but this crate does not decode must be
//! refused as an unsupported encoding, with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;

use pyagent_agents::python::{DecodeError, decode_source};

const CPYTHON: &str = r#"
import io, json, os, sys, tokenize
out = {}
root = sys.argv[1]
for name in sorted(os.listdir(root)):
    data = open(os.path.join(root, name), 'rb').read()
    try:
        compile(data, name, 'exec')
    except SyntaxError as e:
        out[name] = {"accepted": False, "why": str(e.msg)}
        continue
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    out[name] = {"accepted": True, "text": data.decode(encoding), "encoding": encoding}
print(json.dumps(out))
"#;

#[test]
fn decodes_exactly_as_cpython_or_refuses_with_the_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encodings");
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(CPYTHON)
        .arg(&root)
        .output()
        .expect("python3 runs (scripts/install-deps.sh installs it)");
    assert!(output.status.success(), "python3 failed: {}", String::from_utf8_lossy(&output.stderr));
    let cpython: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(cpython.len() >= 20, "fixtures missing: {}", cpython.len());
    let (mut same, mut both_refuse, mut unsupported) = (0, 0, Vec::new());
    for (name, verdict) in &cpython {
        let bytes = std::fs::read(root.join(name)).unwrap();
        let ours = decode_source(&bytes);
        let accepted = verdict["accepted"].as_bool().unwrap();
        match (&ours, accepted) {
            (Ok(text), true) => {
                assert_eq!(text, verdict["text"].as_str().unwrap(), "{name}: text differs from CPython's");
                same += 1;
            }
            (Ok(text), false) => panic!("{name}: CPython refuses it ({}) but it was decoded as {text:?}", verdict["why"]),
            (Err(_), false) => both_refuse += 1,
            (Err(DecodeError::Unsupported(encoding)), true) => unsupported.push(format!("{name} ({encoding})")),
            (Err(e), true) => panic!("{name}: CPython decodes it as {} but it was refused: {e}", verdict["encoding"]),
        }
    }
    eprintln!("identical: {same}, refused by both: {both_refuse}, unsupported here: {unsupported:?}");
    assert!(same >= 10 && both_refuse >= 5, "the fixtures must exercise both sides");
    // The encodings deliberately left out are the non-Latin-1 8-bit codecs and UTF-7/16.
    assert!(unsupported.len() <= 4, "{unsupported:?}");
}
