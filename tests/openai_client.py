"""Checks a node's OpenAI-compatible API with the official `openai` client (PyPI) and raw
HTTP: models, chat and text completions (whole and streamed, with usage and logprobs),
OpenAI-shaped errors after which the server keeps serving, and the bearer key.

usage: openai_client.py BASE_URL MODEL [API_KEY]   (exit 0: every check passed)
"""
import json
import sys
import urllib.error
import urllib.request

import openai

BASE, MODEL = sys.argv[1], sys.argv[2]
KEY = sys.argv[3] if len(sys.argv) > 3 else None
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY or "unused", max_retries=0, timeout=120)
LONG = "Tell me about the history of the swarm, the nodes, and the peers that keep it. " * 3
CHAT = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": LONG}]
checks = 0


def check(condition, what):
    global checks
    if not condition:
        sys.exit(f"FAILED: {what}")
    checks += 1


def raw(method, path, body=None, headers=None, key=KEY):
    """(status, headers, body bytes) of a plain HTTP request."""
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def openai_error(status, body, param=None):
    check(status >= 400, f"an error status, got {status}")
    err = json.loads(body)["error"]
    check(set(err) == {"message", "type", "param", "code"}, f"OpenAI's four error fields: {err}")
    check(err["message"], "an error message")
    if param is not None:
        check(err["param"] == param, f"param {param!r}: {err}")


def still_serving():
    check(any(m.id == MODEL for m in client.models.list().data), "the server keeps serving")


# Models.
models = client.models.list()
check(any(m.id == MODEL for m in models.data), f"{MODEL} listed: {models}")
check(client.models.retrieve(MODEL).id == MODEL, "models.retrieve")
status, _, body = raw("GET", "/v1/models")
check(status == 200 and json.loads(body)["object"] == "list" and isinstance(json.loads(body)["data"], list), "/v1/models wraps in data")

# Chat, whole and streamed: the same greedy text; the stream follows OpenAI's rules.
whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0, seed=7)
choice = whole.choices[0]
check(whole.object == "chat.completion" and choice.message.role == "assistant", "a chat completion")
check(isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length"), f"content and finish: {choice}")
u = whole.usage
check(u.total_tokens == u.prompt_tokens + u.completion_tokens and u.completion_tokens > 0, f"usage adds up: {u}")
again = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0, seed=7)
check(again.choices[0].message.content == choice.message.content, "greedy is repeatable")
check(again.usage.prompt_tokens_details.cached_tokens > 0, f"the repeated prompt reuses KV blocks: {again.usage}")

chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}))
check(chunks[0].choices[0].delta.role == "assistant", "the first chunk carries the role")
check(len({c.id for c in chunks}) == 1, "one id for all chunks")
check(all(c.object == "chat.completion.chunk" for c in chunks), "chunk objects")
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
check(len(finishes) == 1, f"finish_reason in exactly one chunk: {finishes}")
check(chunks[-1].choices == [] and chunks[-1].usage is not None, "usage comes last, with empty choices")
check(all(c.usage is None for c in chunks[:-1]), "usage is null before the last chunk")
last = chunks[-1].usage
check(last.total_tokens == last.prompt_tokens + last.completion_tokens == u.total_tokens, f"streamed usage: {last}")
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(streamed == choice.message.content, f"streamed == non-streamed: {streamed!r} vs {choice.message.content!r}")

# Raw stream: content type and the closing [DONE].
status, headers, body = raw("POST", "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 8, "temperature": 0, "stream": True})
check(status == 200 and headers["Content-Type"].startswith("text/event-stream"), f"text/event-stream: {headers['Content-Type']}")
events = [line[len("data: "):] for line in body.decode().splitlines() if line.startswith("data: ")]
check(events[-1] == "[DONE]", "the stream ends with data: [DONE]")
check(all("error" not in json.loads(e) for e in events[:-1]), "no error events")

# Stop strings: the text ends before the stop string.
text = choice.message.content
if len(text) > 6:
    stop = text[4:6]
    cut = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, temperature=0, stop=[stop])
    check(cut.choices[0].message.content == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop", "stop string cuts the text")

# Text completions, whole and streamed.
comp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0)
check(comp.object == "text_completion" and comp.choices[0].finish_reason in ("stop", "length"), "a completion")
parts = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=16, temperature=0, stream=True))
check("".join(p.choices[0].text for p in parts if p.choices) == comp.choices[0].text, "streamed completion == whole")
check(sum(1 for p in parts if p.choices and p.choices[0].finish_reason) == 1, "one finish_reason in a completion stream")
tokens = client.completions.create(model=MODEL, prompt=[5, 6, 7, 8], max_tokens=4, temperature=0)
check(tokens.usage.prompt_tokens == 4, "token-id prompts")

# Sampling with a seed is repeatable.
warm = [client.completions.create(model=MODEL, prompt="Once", max_tokens=12, temperature=0.9, top_p=0.9, seed=42).choices[0].text for _ in range(2)]
check(warm[0] == warm[1], "same seed, same text")

# Log-probabilities.
lp = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
check(len(content) == lp.usage.completion_tokens, "one logprob per token")
for t in content:
    check(len(t.top_logprobs) == 3 and t.logprob <= 0, f"three alternatives: {t}")
    check(t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5, "greedy picks the most likely")
streamed_lp = [t for c in client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, stream=True)
               if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
check([t.token for t in streamed_lp] == [t.token for t in content], "streamed logprobs == whole")
clp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2).choices[0].logprobs
check(len(clp.tokens) == len(clp.token_logprobs) == len(clp.top_logprobs) == len(clp.text_offset) == 6, f"completion logprobs: {clp}")

# Bad requests: 4xx in OpenAI's shape; the server keeps serving after each.
for call, exc, param in [
    (lambda: client.chat.completions.create(model=MODEL, messages=[]), openai.BadRequestError, "messages"),
    (lambda: client.chat.completions.create(model="no-such-model", messages=CHAT), openai.NotFoundError, "model"),
    (lambda: client.chat.completions.create(model=MODEL, messages=CHAT, n=2), openai.BadRequestError, "n"),
    (lambda: client.chat.completions.create(model=MODEL, messages=CHAT, logprobs=True, top_logprobs=21), openai.BadRequestError, "top_logprobs"),
    (lambda: client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10**6), openai.BadRequestError, "messages"),
    (lambda: client.completions.create(model=MODEL, prompt=[10**6]), openai.BadRequestError, "prompt"),
]:
    try:
        call()
        check(False, f"{param}: an error")
    except exc as e:
        check(e.body is not None and e.body.get("param") == param, f"{param}: {e.body}")
    still_serving()
status, _, body = raw("POST", "/v1/chat/completions", {"model": MODEL})
openai_error(status, body, "messages")
status, _, body = raw("POST", "/v1/chat/completions", b"{not json")
check(status == 400, "malformed JSON is a 400")
openai_error(status, body)
status, _, body = raw("POST", "/v1/completions", b"[" * (5 << 20))
check(status == 413, f"a 5 MiB body is a 413, got {status}")
openai_error(status, body)
status, _, body = raw("GET", "/v1/nothing-here")
check(status == 404, "unknown path")
openai_error(status, body)
still_serving()

# Health, readiness, metrics.
status, _, body = raw("GET", "/healthz", key=None)
check(status == 200, "healthz")
status, _, body = raw("GET", "/readyz", key=None)
check(status == 200 and json.loads(body)["ready"] is True and MODEL in json.loads(body)["models"], f"readyz: {body}")
status, _, body = raw("GET", "/metrics")
metrics = body.decode()
for name in ["pyagent_http_requests_total", "pyagent_generated_tokens_total", "pyagent_time_to_first_token_seconds_bucket", "pyagent_queue_depth", "pyagent_kv_blocks_stored", "pyagent_connected_peers", "pyagent_lookahead_tokens{"]:
    check(name in metrics, f"/metrics has {name}")

# The bearer key.
if KEY:
    for key in [None, "wrong-key-0123456789"]:
        status, headers, body = raw("GET", "/v1/models", key=key)
        check(status == 401, f"key {key!r}: 401, got {status}")
        openai_error(status, body)
    try:
        openai.OpenAI(base_url=BASE + "/v1", api_key="wrong-key-0123456789", max_retries=0).models.list()
        check(False, "a wrong key is refused")
    except openai.AuthenticationError:
        checks += 1
    still_serving()

print(f"openai client: {checks} checks passed")
