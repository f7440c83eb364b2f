"""The official OpenAI and Anthropic Python SDKs against a running h3gate.

Usage: sdk_check.py BASE_URL CA_FILE HTTP2(0|1)
Every call's result is asserted here; the last line printed is a JSON
summary the Rust test asserts on too. Exit status 0 only if all passed.
"""
import json
import sys

import anthropic
import openai

base, ca, http2 = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
FIVE = "The quick brown fox jumps"
WEATHER_OPENAI = [{
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}]
WEATHER_ANTHROPIC = [{
    "name": "weather",
    "description": "Weather by city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}]
summary = {}


# Each SDK's own HTTP client class (they may use different httpx packages).
oa = openai.OpenAI(base_url=base + "/v1", api_key="test-not-a-key", max_retries=0,
                   http_client=openai.DefaultHttpxClient(verify=ca, http2=http2))
an = anthropic.Anthropic(base_url=base, api_key="test-not-a-key", max_retries=0,
                         http_client=anthropic.DefaultHttpxClient(verify=ca, http2=http2))

# --- OpenAI SDK -------------------------------------------------------------
for model in ["gpt-4o-mini", "claude-x"]:  # OpenAI upstream; Anthropic upstream (translated)
    r = oa.chat.completions.create(
        model=model, max_tokens=5,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content == FIVE, r
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 5, r.usage
    summary[f"openai.chat.{model}"] = r.choices[0].message.content

    stream = oa.chat.completions.create(
        model=model, max_tokens=5, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hi"}])
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == FIVE, text
    assert usage is not None and usage.completion_tokens == 5, usage
    summary[f"openai.stream.{model}"] = text

    r = oa.chat.completions.create(
        model=model, tools=WEATHER_OPENAI,
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls", r
    assert call.function.name == "weather" and json.loads(call.function.arguments) == {"city": "mock"}, call
    summary[f"openai.tools.{model}"] = call.function.name

    # Streamed tool call, assembled by the SDK's own helper.
    with oa.chat.completions.stream(
            model=model, tools=WEATHER_OPENAI,
            messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert json.loads(call.function.arguments) == {"city": "mock"}, call
    summary[f"openai.stream_tools.{model}"] = call.function.arguments

e = oa.embeddings.create(model="gpt-4o-mini", input=["a", "b"])
assert len(e.data) == 2 and len(e.data[0].embedding) == 8, e
summary["openai.embeddings"] = len(e.data)

ids = [m.id for m in oa.models.list()]
assert "gpt-4o-mini" in ids, ids
assert oa.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
summary["openai.models"] = len(ids)

# The Responses API, unchanged SDK calls (OpenAI-family upstream).
r = oa.responses.create(model="gpt-4o-mini", input="Hi", max_output_tokens=5)
assert r.output_text == FIVE and r.status == "completed", r
assert r.usage.input_tokens == 7 and r.usage.output_tokens == 5, r.usage
assert "_h3g" in r.id, r.id
summary["openai.responses"] = r.output_text
again = oa.responses.retrieve(r.id)
assert again.id == r.id, again
chained = oa.responses.create(model="gpt-4o-mini", input="And?", previous_response_id=r.id)
assert chained.output_text == FIVE, chained
text, completed = "", None
for event in oa.responses.create(model="gpt-4o-mini", input="Hi", stream=True):
    if event.type == "response.output_text.delta":
        text += event.delta
    elif event.type == "response.completed":
        completed = event.response
assert text == FIVE and completed is not None and completed.usage.output_tokens == 5, (text, completed)
assert "_h3g" in completed.id, completed.id
summary["openai.responses.stream"] = text
with oa.responses.stream(model="gpt-4o-mini", input="Weather in Paris?",
                         tools=[{"type": "function", "name": "weather", "description": "Weather by city",
                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]) as s:
    final = s.get_final_response()
call = [o for o in final.output if o.type == "function_call"][0]
assert call.name == "weather" and json.loads(call.arguments) == {"city": "mock"}, call
summary["openai.responses.tools"] = call.name
deleted = oa.responses.delete(r.id)
summary["openai.responses.deleted"] = True
try:
    oa.responses.retrieve("resp_not_from_the_gateway")
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as err:
    assert err.body["code"] == "response_not_found", err.body

try:
    oa.chat.completions.create(model="nonexistent", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as err:
    assert err.body["code"] == "model_not_found", err.body
    summary["openai.error"] = err.status_code

# --- Anthropic SDK ----------------------------------------------------------
for model in ["claude-x", "gpt-4o-mini"]:  # Anthropic upstream; OpenAI upstream (translated)
    m = an.messages.create(model=model, max_tokens=5, system="Be brief.",
                           messages=[{"role": "user", "content": "Hi"}])
    assert m.content[0].text == FIVE, m
    assert m.usage.input_tokens == 7 and m.usage.output_tokens == 5, m.usage
    assert m.stop_reason == "max_tokens", m
    summary[f"anthropic.messages.{model}"] = m.content[0].text

    with an.messages.stream(model=model, max_tokens=5,
                            messages=[{"role": "user", "content": "Hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == FIVE, text
    assert final.usage.output_tokens == 5, final.usage
    summary[f"anthropic.stream.{model}"] = text

    m = an.messages.create(model=model, max_tokens=100, tools=WEATHER_ANTHROPIC,
                           messages=[{"role": "user", "content": "Weather in Paris?"}])
    use = [b for b in m.content if b.type == "tool_use"][0]
    assert m.stop_reason == "tool_use" and use.name == "weather" and use.input == {"city": "mock"}, m
    summary[f"anthropic.tools.{model}"] = use.name

    with an.messages.stream(model=model, max_tokens=100, tools=WEATHER_ANTHROPIC,
                            messages=[{"role": "user", "content": "Weather in Paris?"}]) as s:
        final = s.get_final_message()
    use = [b for b in final.content if b.type == "tool_use"][0]
    assert use.input == {"city": "mock"}, final
    summary[f"anthropic.stream_tools.{model}"] = use.input

    # The tool result goes back and the model answers in text.
    m = an.messages.create(model=model, max_tokens=5, tools=WEATHER_ANTHROPIC, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": "weather", "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]},
    ])
    assert m.content[0].type == "text" and m.content[0].text == FIVE, m
    summary[f"anthropic.tool_result.{model}"] = m.content[0].text

n = an.messages.count_tokens(model="claude-x", messages=[{"role": "user", "content": "Hi"}])
assert n.input_tokens == 42, n
summary["anthropic.count_tokens"] = n.input_tokens

try:
    an.messages.create(model="nonexistent", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected NotFoundError")
except anthropic.NotFoundError as err:
    assert err.body["error"]["type"] == "not_found_error", err.body
    summary["anthropic.error"] = err.status_code

print(json.dumps(summary))
