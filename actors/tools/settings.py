"""How server tools are declared (`Settings.tools`, `Settings.mcp_servers`): HTTP webhooks, and MCP
servers in the shape of OpenAI Realtime's `mcp` tool, plus a `command` for servers spoken to over stdio.

Secrets never sit in the configuration: a header or environment value may name environment
variables as `${NAME}`, read from the router process's environment when it starts (`expand_secrets`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# What OpenAI accepts as a function name; the model sees server tools by these names.
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SERVER_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _http_url(value: str, what: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"{what} must be an http(s) URL")
    return value


def _check_refs(values: Mapping[str, str], what: str) -> None:
    for key, value in values.items():
        if "$" in SECRET_REF.sub("", value):
            raise ValueError(f"{what} {key!r}: write an environment variable as ${{NAME}}")


class WebhookToolConfig(BaseModel):
    """A tool the server runs by POSTing the call to `url` (README "Server tools")."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    url: str
    headers: dict[str, str] = Field(default_factory=dict)  # values may hold ${ENV_VAR}
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    cancel_safe: bool = True  # False for calls with effects that must not be abandoned half-way

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not TOOL_NAME.match(value):
            raise ValueError("a tool name is 1 to 64 letters, digits, '_' or '-'")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _http_url(value, "a webhook tool's url")

    @field_validator("parameters")
    @classmethod
    def _check_parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        return object_schema(value)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        _check_refs(value, "header")
        return value


class McpServerConfig(BaseModel):
    """An MCP server whose tools the model may call: OpenAI Realtime's `mcp` tool shape
    (`server_label`, `server_url`, `allowed_tools`, `headers`) over streamable HTTP, or `command` and
    `args` for a server the router starts and speaks to over stdio."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["mcp"] = "mcp"
    server_label: str
    server_url: str | None = None  # streamable HTTP
    headers: dict[str, str] = Field(default_factory=dict)  # values may hold ${ENV_VAR}
    command: str | None = None  # stdio: the program, started by the router
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)  # the program's environment; values may hold ${ENV_VAR}
    cwd: str | None = None
    allowed_tools: list[str] | None = None  # None: all the server lists
    timeout_s: float = Field(default=10.0, gt=0, le=300)  # one call
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)  # connecting and listing its tools
    cancel_safe: bool = True
    # OpenAI's approval flow is not offered: the router calls the allowed tools as the model asks.
    require_approval: Literal["never"] = "never"

    @field_validator("server_label")
    @classmethod
    def _check_label(cls, value: str) -> str:
        if not SERVER_LABEL.match(value):
            raise ValueError("a server_label is 1 to 32 letters, digits, '_' or '-'")
        return value

    @field_validator("allowed_tools", mode="before")
    @classmethod
    def _tool_names(cls, value: Any) -> Any:
        # OpenAI also takes a filter object; its `tool_names` is the same list.
        if isinstance(value, dict) and set(value) <= {"tool_names", "read_only"}:
            if value.get("read_only"):
                raise ValueError("allowed_tools.read_only is not supported: list the tools by name")
            return value.get("tool_names", [])
        return value

    @field_validator("headers", "env")
    @classmethod
    def _check_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        _check_refs(value, "value of")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.server_url is None) == (self.command is None):
            raise ValueError(f"MCP server {self.server_label!r}: give either server_url or command")
        if self.server_url is not None:
            _http_url(self.server_url, f"MCP server {self.server_label!r}: server_url")
            if self.args or self.env or self.cwd:
                raise ValueError(f"MCP server {self.server_label!r}: args, env and cwd go with command")
        elif self.headers:
            raise ValueError(f"MCP server {self.server_label!r}: headers go with server_url")
        return self


def object_schema(value: dict[str, Any]) -> dict[str, Any]:
    """`value` if it is a valid JSON schema of an object (what a tool's parameters must be)."""
    if value.get("type") != "object":
        raise ValueError('parameters must be a JSON schema with "type": "object"')
    try:
        jsonschema.Draft202012Validator.check_schema(value)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"parameters is not a valid JSON schema: {exc.message}") from exc
    return value


def unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"two {what} are named {name!r}")
        seen.add(name)


def expand_secrets(values: Mapping[str, str], environ: Mapping[str, str], what: str) -> dict[str, str]:
    """`values` with each `${NAME}` replaced by that environment variable; a variable that is not set
    is an error naming it (never its value)."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ValueError(f"{what} names the environment variable {name}, which is not set")
        return environ[name]

    return {key: SECRET_REF.sub(lookup, value) for key, value in values.items()}
