"""Structured outputs through the official Python `openai` client against a running minisgl
server (the GPU machine's check; the npm client is covered by tests/structured_test.ts).

Checks, each printed as one JSON line: `chat.completions.parse` with a pydantic model
(response_format json_schema, strict), SGLang's `regex` and `ebnf` through `extra_body`, and
`tool_choice: required` giving tool calls whose arguments parse. Exits 1 if one fails.

    python3 bench/peers/openai_structured.py --base-url http://127.0.0.1:30000/v1 --model NAME
"""
import argparse
import json
import re
import sys

from openai import OpenAI
from pydantic import BaseModel, Field


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    city: str = Field(max_length=24)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    client = OpenAI(base_url=a.base_url, api_key="unused", max_retries=0)
    user = [{"role": "user", "content": "Invent a person: name, age and city."}]
    failures = 0

    def report(check: str, ok: bool, detail: object) -> None:
        nonlocal failures
        failures += 0 if ok else 1
        print(json.dumps({"check": check, "ok": ok, "detail": detail}), flush=True)

    # Newer clients have chat.completions.parse; older ones beta.chat.completions.parse.
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    for seed in (1, 2, 3):
        r = parse(model=a.model, messages=user, response_format=Person, seed=seed,
                  max_tokens=200)
        c = r.choices[0]
        ok = c.finish_reason == "stop" and isinstance(c.message.parsed, Person)
        report("parse(pydantic)", ok, c.message.content)

    pattern = "(yes|no), [0-9]{1,3}"
    r = client.chat.completions.create(model=a.model, messages=user, max_tokens=20,
                                       extra_body={"regex": pattern})
    text = r.choices[0].message.content or ""
    report("extra_body regex", re.fullmatch(pattern, text) is not None, text)

    grammar = 'root ::= answer ", " [0-9]{1,3}\nanswer ::= "yes" | "no"'
    r = client.chat.completions.create(model=a.model, messages=user, max_tokens=20,
                                       extra_body={"ebnf": grammar})
    text = r.choices[0].message.content or ""
    report("extra_body ebnf", re.fullmatch(pattern, text) is not None, text)

    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 24}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    r = client.chat.completions.create(
        model=a.model, max_tokens=100, tools=[tool], tool_choice="required",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    c = r.choices[0]
    calls = c.message.tool_calls or []
    ok = c.finish_reason == "tool_calls" and len(calls) > 0 and all(
        "city" in json.loads(t.function.arguments) for t in calls)
    report("tool_choice required", ok, [t.function.arguments for t in calls])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
