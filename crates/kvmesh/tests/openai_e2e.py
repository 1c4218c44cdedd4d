#!/usr/bin/env python3
"""A real OpenAI client against a running `kvmesh serve` (started by serve_cli.rs).

Usage: openai_e2e.py BASE_URL MODEL

Checks, each with an assertion that says what went wrong:
- a streamed chat completion gives a sensible answer;
- a second request sharing a long system prompt reports cached_tokens > 0 (and the first
  reports 0, present rather than missing);
- stream_options.include_usage yields a final chunk with empty choices and the usage;
- the client's typed errors: BadRequestError (400), NotFoundError (404);
- models.list() names the served model;
- /metrics parses with prometheus_client's parser and has the vLLM-named families.

Exit code 0 when all pass; prints "N passed, 0 failed".
"""

import sys
import urllib.request

import openai
from prometheus_client.parser import text_string_to_metric_families

BASE, MODEL = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=120)
passed = 0


def check(name, fn):
    global passed
    fn()
    passed += 1
    print(f"ok: {name}", flush=True)


SYSTEM = (
    "You are the help desk of a public library. Answer in one short sentence. "
    "The library opens at eight and closes at eight, Monday to Saturday. "
    "Members may borrow ten books for three weeks, and renew them twice online. "
    "Late returns cost ten cents a day. The reading room is quiet; the cafe is not."
)


def streamed_chat():
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=24,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text, f"answer without Paris: {text!r}"


def shared_prefix_is_cached():
    def ask(q):
        return client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            temperature=0,
            max_tokens=8,
        )

    first = ask("When do you open?")
    second = ask("How many books can I borrow?")
    c1 = first.usage.prompt_tokens_details.cached_tokens
    c2 = second.usage.prompt_tokens_details.cached_tokens
    assert c1 == 0, f"first request cached_tokens {c1!r}"
    assert c2 is not None and c2 > 0, f"second request cached_tokens {c2!r}"
    assert c2 < second.usage.prompt_tokens


def include_usage_chunk():
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="The three primary colors are",
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [], f"last chunk has choices: {last}"
    assert last.usage is not None and last.usage.completion_tokens == 6, last.usage
    assert all(c.usage is None for c in chunks[:-1])


def typed_errors():
    try:
        client.completions.create(model=MODEL, prompt="x", max_tokens=-1)
        raise AssertionError("max_tokens=-1 accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "max_tokens" in str(e), e
    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404, e


def models_list():
    ids = [m.id for m in client.models.list().data]
    assert ids == [MODEL], ids


def metrics_parse():
    root = BASE.rsplit("/v1", 1)[0]
    text = urllib.request.urlopen(f"{root}/metrics", timeout=30).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in [
        "kvmesh:time_to_first_token_seconds",
        "kvmesh:inter_token_latency_seconds",
        "kvmesh:e2e_request_latency_seconds",
        "kvmesh:request_queue_time_seconds",
        "kvmesh:prompt_tokens",
        "kvmesh:generation_tokens",
        "kvmesh:prefix_cache_queries",
        "kvmesh:prefix_cache_hits",
        "kvmesh:num_preemptions",
        "kvmesh:request_success",
        "kvmesh:num_requests_running",
        "kvmesh:num_requests_waiting",
        "kvmesh:kv_cache_usage_perc",
        "kvmesh:kv_blocks",
        "kvmesh:routing_decisions",
    ]:
        assert name in families, f"{name} missing from /metrics ({sorted(families)})"
    hits = sum(s.value for s in families["kvmesh:prefix_cache_hits"].samples)
    assert hits > 0, "no prefix cache hits counted"
    workers = {s.labels["worker"] for s in families["kvmesh:num_requests_running"].samples}
    assert workers == {"0", "1"}, workers


for name, fn in [
    ("streamed chat", streamed_chat),
    ("shared prefix cached", shared_prefix_is_cached),
    ("include_usage chunk", include_usage_chunk),
    ("typed errors", typed_errors),
    ("models.list", models_list),
    ("metrics parse", metrics_parse),
]:
    check(name, fn)
print(f"{passed} passed, 0 failed")
