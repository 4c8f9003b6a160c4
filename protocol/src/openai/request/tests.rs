use super::*;
use serde_json::json;

fn chat(v: Value) -> Result<Generation, ApiError> {
    parse_chat(v.to_string().as_bytes())
}

fn completion(v: Value) -> Result<Generation, ApiError> {
    parse_completion(v.to_string().as_bytes())
}

fn param_of(r: Result<Generation, ApiError>) -> (u16, Option<String>) {
    let e = r.unwrap_err();
    (e.status, e.param)
}

#[test]
fn a_full_chat_request_is_read_with_every_parameter() {
    let g = chat(json!({
        "model": "smollm2", "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": null},
        ],
        "max_completion_tokens": 7, "max_tokens": 99, "temperature": 0, "top_p": 0.5, "seed": -3,
        "stop": ["\n", "END"], "n": 1, "logprobs": true, "top_logprobs": 20, "stream": true,
        "stream_options": {"include_usage": true}, "user": "ignored", "frequency_penalty": 0,
    }))
    .unwrap();
    assert_eq!(g.model, "smollm2");
    assert_eq!(
        g.prompt,
        PromptInput::Chat(vec![
            Message { role: "system".into(), content: "Be brief.".into() },
            Message { role: "user".into(), content: "Hi there".into() },
            Message { role: "assistant".into(), content: String::new() },
        ])
    );
    assert_eq!(g.max_tokens, Some(7), "max_completion_tokens wins over max_tokens");
    assert_eq!((g.temperature, g.top_p, g.seed), (0.0, 0.5, Some((-3i64) as u64)));
    assert_eq!(g.stop, vec!["\n".to_owned(), "END".to_owned()]);
    assert_eq!(g.logprobs, Some(20));
    assert!(g.stream && g.include_usage);
}

#[test]
fn defaults_follow_openai() {
    let g = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]})).unwrap();
    assert_eq!((g.max_tokens, g.temperature, g.top_p, g.seed, g.logprobs, g.stream, g.include_usage), (None, 1.0, 1.0, None, None, false, false));
    assert!(g.stop.is_empty());
    let g = chat(json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": "END", "logprobs": true})).unwrap();
    assert_eq!((g.stop, g.logprobs), (vec!["END".to_owned()], Some(0)));
}

#[test]
fn every_bad_chat_parameter_is_a_400_that_names_it() {
    let user = json!([{"role": "user", "content": "x"}]);
    let cases = [
        (json!({"messages": user}), "model"),
        (json!({"model": 3, "messages": user}), "model"),
        (json!({"model": "m"}), "messages"),
        (json!({"model": "m", "messages": []}), "messages"),
        (json!({"model": "m", "messages": "hi"}), "messages"),
        (json!({"model": "m", "messages": [{"content": "x"}]}), "messages[0].role"),
        (json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
        (json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}), "messages[0].role"),
        (json!({"model": "m", "messages": [{"role": "user"}]}), "messages[0].content"),
        (json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), "messages[0].content[0]"),
        (json!({"model": "m", "messages": user, "n": 2}), "n"),
        (json!({"model": "m", "messages": user, "top_logprobs": 21, "logprobs": true}), "top_logprobs"),
        (json!({"model": "m", "messages": user, "top_logprobs": 2}), "top_logprobs"),
        (json!({"model": "m", "messages": user, "temperature": 2.5}), "temperature"),
        (json!({"model": "m", "messages": user, "temperature": "hot"}), "temperature"),
        (json!({"model": "m", "messages": user, "top_p": 0}), "top_p"),
        (json!({"model": "m", "messages": user, "max_tokens": 0}), "max_tokens"),
        (json!({"model": "m", "messages": user, "max_tokens": 1.5}), "max_tokens"),
        (json!({"model": "m", "messages": user, "max_completion_tokens": -1}), "max_completion_tokens"),
        (json!({"model": "m", "messages": user, "stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"model": "m", "messages": user, "stop": [""]}), "stop"),
        (json!({"model": "m", "messages": user, "stop": 5}), "stop"),
        (json!({"model": "m", "messages": user, "stream": "yes"}), "stream"),
        (json!({"model": "m", "messages": user, "stream_options": {"include_usage": true}}), "stream_options"),
        (json!({"model": "m", "messages": user, "frequency_penalty": 0.5}), "frequency_penalty"),
        (json!({"model": "m", "messages": user, "tools": [{"type": "function"}]}), "tools"),
        (json!({"model": "m", "messages": user, "response_format": {"type": "json_object"}}), "response_format"),
        (json!({"model": "m", "messages": user, "logit_bias": {"1": 5}}), "logit_bias"),
    ];
    for (body, param) in cases {
        assert_eq!(param_of(chat(body.clone())), (400, Some(param.to_owned())), "{body}");
    }
}

#[test]
fn bodies_that_are_not_json_objects_are_refused_without_a_param() {
    for body in [&b"{"[..], b"[]", b"\"x\"", b"", &[0xff, 0xfe][..]] {
        assert_eq!(param_of(parse_chat(body)), (400, None), "{body:?}");
        assert_eq!(param_of(parse_completion(body)), (400, None), "{body:?}");
    }
}

#[test]
fn completion_prompts_come_as_text_or_token_ids() {
    assert_eq!(completion(json!({"model": "m", "prompt": "Once"})).unwrap().prompt, PromptInput::Text("Once".into()));
    assert_eq!(completion(json!({"model": "m", "prompt": ["Once"]})).unwrap().prompt, PromptInput::Text("Once".into()));
    assert_eq!(completion(json!({"model": "m", "prompt": [1, 2, 3]})).unwrap().prompt, PromptInput::Tokens(vec![1, 2, 3]));
    assert_eq!(completion(json!({"model": "m", "prompt": [[4, 5]]})).unwrap().prompt, PromptInput::Tokens(vec![4, 5]));
    assert_eq!(completion(json!({"model": "m", "prompt": "x", "logprobs": 3})).unwrap().logprobs, Some(3));
    for body in [
        json!({"model": "m"}),
        json!({"model": "m", "prompt": ""}),
        json!({"model": "m", "prompt": []}),
        json!({"model": "m", "prompt": ["a", "b"]}),
        json!({"model": "m", "prompt": [1, -2]}),
        json!({"model": "m", "prompt": [1, 5_000_000_000u64]}),
        json!({"model": "m", "prompt": {"text": "x"}}),
        json!({"model": "m", "prompt": "x", "logprobs": 21}),
        json!({"model": "m", "prompt": "x", "echo": true}),
        json!({"model": "m", "prompt": "x", "best_of": 3}),
        json!({"model": "m", "prompt": "x", "suffix": "tail"}),
    ] {
        let e = completion(body.clone()).unwrap_err();
        assert_eq!(e.status, 400, "{body}");
        assert!(e.param.is_some(), "{body}");
    }
}
