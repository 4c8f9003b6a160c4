//! Chat templates rendered by the engine equal the same templates rendered by Python
//! `jinja2` the way `transformers` renders them (`scripts/chat_template_reference.py`),
//! on conversations that exercise whitespace control, slicing, Python string methods,
//! namespaces, filters, `tojson` and `raise_exception`.

use std::io::Write;
use std::process::{Command, Stdio};

use pyagent_engine::chat::{ChatError, ChatMessage, ChatTemplate};
use serde_json::Value;

const TEMPLATES: &[&str] = &["chatml_default_system", "header_trim", "inst_alternating", "blocks_namespace"];

fn conversations() -> Vec<(Vec<ChatMessage>, bool)> {
    let m = ChatMessage::new;
    vec![
        (vec![m("user", "Hi")], true),
        (vec![m("user", "Hi")], false),
        (vec![m("system", "  Be terse.\n"), m("user", "What is 2+2?"), m("assistant", " 4 "), m("user", "And 3+3?")], true),
        (vec![m("user", "  leading and trailing  \n"), m("assistant", "é ü 漢字 🙂 \"quoted\" <b>&</b>")], false),
        (vec![m("user", "line one\r\nline two\n\n"), m("assistant", "ok"), m("user", "{{ not a tag }} {% raw %}")], true),
        (vec![m("assistant", "I speak first"), m("user", "out of order")], true),
        (vec![m("system", "sys"), m("shout", "quiet please")], true),
        (vec![], true),
    ]
}

#[allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failure here is the test failing
fn python_render(template: &str, cases: &[(Vec<ChatMessage>, bool)]) -> Vec<Value> {
    // Written by hand so that each message's keys keep their order (role, then content),
    // as in a request: `tojson` shows it.
    let text = |s: &str| Value::String(s.to_owned()).to_string();
    let case = |(messages, add): &(Vec<ChatMessage>, bool)| {
        let messages: Vec<String> = messages.iter().map(|m| format!(r#"{{"role": {}, "content": {}}}"#, text(&m.role), text(&m.content))).collect();
        format!(r#"{{"messages": [{}], "add_generation_prompt": {add}}}"#, messages.join(", "))
    };
    let cases: Vec<String> = cases.iter().map(case).collect();
    let job = format!(r#"{{"template": {}, "bos_token": "<s>", "eos_token": "</s>", "cases": [{}]}}"#, text(template), cases.join(", "));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chat_template_reference.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/install-deps.sh installs it and jinja2)");
    child.stdin.take().unwrap().write_all(job.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Python reference failed (is jinja2 installed? scripts/install-deps.sh): {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Renders every conversation with `source` both ways; returns how many were compared.
#[allow(clippy::unwrap_used)] // test code
fn compare(name: &str, source: &str, cases: &[(Vec<ChatMessage>, bool)]) -> usize {
    let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
    let expected = python_render(source, cases);
    assert_eq!(expected.len(), cases.len());
    for ((messages, add), want) in cases.iter().zip(&expected) {
        let got = template.render(messages, *add);
        match (want.get("text").and_then(Value::as_str), want.get("refused").and_then(Value::as_str), &got) {
            (Some(text), _, Ok(ours)) => assert_eq!(ours, text, "{name}: {messages:?} add_generation_prompt={add}"),
            (_, Some(reason), Err(ChatError::Refused(ours))) => assert_eq!(ours, reason, "{name}: {messages:?}"),
            // Both fail on something else (e.g. `messages[0]` of no messages).
            (None, None, Err(ChatError::Render(_))) if want.get("error").is_some() => {}
            _ => panic!("{name}: {messages:?}: Python gave {want}, the engine {got:?}"),
        }
    }
    expected.len()
}

#[test]
fn the_prepared_smollm2_models_template_renders_as_python_jinja2_renders_it() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/models/smollm2/config.json");
    let Ok(text) = std::fs::read_to_string(config) else {
        eprintln!("\n!!!!! SKIPPED SmolLM2 chat-template test: run scripts/prepare-model.sh smollm2 target/models/smollm2 !!!!!\n");
        return;
    };
    let config: Value = serde_json::from_str(&text).unwrap();
    let source = config["chat_template"].as_str().expect("the converted SmolLM2 config has its chat template");
    assert_eq!(compare("smollm2", source, &conversations()), conversations().len());
}

#[test]
fn templates_render_as_python_jinja2_renders_them() {
    let cases = conversations();
    let mut compared = 0;
    for name in TEMPLATES {
        let path = format!("{}/tests/chat_templates/{name}.jinja", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(&path).unwrap();
        compared += compare(name, &source, &cases);
    }
    assert_eq!(compared, TEMPLATES.len() * cases.len());
    // The refusal case really was refused by the alternating template.
    let source = std::fs::read_to_string(format!("{}/tests/chat_templates/inst_alternating.jinja", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let t = ChatTemplate::new(&source, "<s>", "</s>").unwrap();
    assert!(matches!(t.render(&cases[5].0, true), Err(ChatError::Refused(_))));
}
