"""A server tool that is an HTTP endpoint: each call is POSTed to it as JSON, and its answer's body is
the output the model reads.

The endpoint receives (README "Server tools"):

    {"tool": "get_weather", "call_id": "call_abc", "arguments": {...}, "user": "ada", "session_id": "sess_x"}

`user` is the caller the router authenticated (never anything the model wrote), so the endpoint may act
for that user alone; `call_id` is the same if the call is ever sent twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from actors.tools.base import ToolContext, ToolDefinition, ToolError
from actors.tools.settings import WebhookToolConfig

# The most of an answer the model is given: a prompt is no place for a whole web page.
MAX_OUTPUT_CHARS = 16_000
# How much of a 4xx answer's body the model hears: it usually says what was wrong with the arguments.
MAX_REFUSAL_CHARS = 300


class WebhookTool:
    """`config` with its headers' secrets already read (`expand_secrets`); calls go through `client`,
    which the owner closes."""

    def __init__(
        self, config: WebhookToolConfig, headers: Mapping[str, str], client: httpx.AsyncClient
    ) -> None:
        self._config = config
        self._headers = dict(headers)
        self._client = client
        self.definition = ToolDefinition(
            name=config.name,
            description=config.description,
            parameters=config.parameters,
            timeout_s=config.timeout_s,
            cancel_safe=config.cancel_safe,
        )

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        name = self._config.name
        body = {
            "tool": name,
            "call_id": context.call_id,
            "arguments": arguments,
            "user": context.user_id,
            "session_id": context.session_id,
        }
        try:
            # Redirects are not followed: the call goes to the configured URL and nowhere else. The
            # toolbox's timeout (the same) ends a slow call first, as a plain timeout; this one bounds
            # a call made without it.
            response = await self._client.post(
                self._config.url, json=body, headers=self._headers, timeout=self._config.timeout_s + 1
            )
        except httpx.TimeoutException as exc:
            raise ToolError(f"{name} did not answer within {self._config.timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise ToolError(f"{name} could not be reached") from exc
        if response.status_code >= 400 and response.status_code < 500:
            said = response.text.strip()[:MAX_REFUSAL_CHARS]
            raise ToolError(
                f"{name} refused the call (HTTP {response.status_code})" + (f": {said}" if said else "")
            )
        if not response.is_success:
            raise ToolError(f"{name} failed (HTTP {response.status_code})")
        return response.text[:MAX_OUTPUT_CHARS]
