"""`/v1/chat/completions` and `/v1/models` as code written for OpenAI calls them, through the official
`openai` SDK: which parameters are honoured, which are accepted and ignored, and which are refused with a
400 in OpenAI's error shape (the README's compatibility matrix)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from testkit.harness import Harness

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def api() -> Iterator[Harness]:
    harness = Harness()
    with harness.http:
        yield harness


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_p": 0.5},
        {"presence_penalty": 0.5, "frequency_penalty": 0.5},
        {"seed": 7},
        {"n": 1},
        {"tools": []},
        {"logprobs": False},
        {"response_format": {"type": "text"}},
        {"metadata": {"app": "x"}, "store": False},
    ],
    ids=lambda kwargs: ",".join(kwargs),
)
def test_accepted_and_ignored(api: Harness, kwargs: dict[str, Any]) -> None:
    reply = api.client.chat.completions.create(model="gpt-4o-mini", messages=HI, **kwargs)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "Hello there. How are you?"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"n": 2}, "one choice per request"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "the legacy function calling; use `tools`"),
        ({"logprobs": True}, "the engines do not report them"),
        ({"stop": ["\n"]}, "the engines end replies on their own"),
        ({"response_format": {"type": "json_object"}}, "text replies only"),
        ({"max_tokens": 100_000}, "the limit is 4096"),
        ({"temperature": 3}, "less than or equal to 2"),
        ({"user": "no spaces"}, "is not valid"),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_refused_with_a_clear_400(api: Harness, kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.client.chat.completions.create(model="gpt-4o-mini", messages=HI, **kwargs)  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict) and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_image_content_is_refused(api: Harness) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError, match="messages"):
        api.client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}],
        )
