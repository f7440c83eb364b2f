"""The official SDKs, with their default retries, against a budget refusal.

Usage: budget_refusal.py BASE_URL CA_FILE API_KEY
A 429 whose budget lasts until its period ends carries
`x-should-retry: false`: each SDK must raise at once (no retry) with the
refusal's code. Prints a JSON summary as the last line.
"""
import json
import sys

import anthropic
import openai

base, ca, key = sys.argv[1], sys.argv[2], sys.argv[3]
summary = {}

# Default max_retries (2): a plain 429 would be retried twice.
oa = openai.OpenAI(base_url=base + "/v1", api_key=key,
                   http_client=openai.DefaultHttpxClient(verify=ca))
an = anthropic.Anthropic(base_url=base, api_key=key,
                         http_client=anthropic.DefaultHttpxClient(verify=ca))
try:
    oa.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                               messages=[{"role": "user", "content": "Hi"}])
    raise SystemExit("openai: the request was not refused")
except openai.RateLimitError as e:
    assert e.status_code == 429, e
    assert e.code == "insufficient_quota", e.body
    assert e.response.headers.get("x-should-retry") == "false"
    summary["openai"] = e.code
try:
    an.messages.create(model="gpt-4o-mini", max_tokens=5,
                       messages=[{"role": "user", "content": "Hi"}])
    raise SystemExit("anthropic: the request was not refused")
except anthropic.RateLimitError as e:
    assert e.status_code == 429, e
    assert "budget" in str(e.body), e.body
    summary["anthropic"] = e.body["error"]["type"]
print(json.dumps(summary))
