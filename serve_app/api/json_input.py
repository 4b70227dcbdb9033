"""Parsing JSON from clients (WebSocket events, REST bodies) so that any input is either a value or a
`JsonInputError` whose message says what is wrong: never a RecursionError, a surprise ValueError, or a
value that breaks something further on (NaN, lone surrogates, absurd nesting).
"""

from __future__ import annotations

import json
from typing import Any

# Realtime events and REST bodies are at most a few levels deep; 64 leaves room for clients' extra fields
# while keeping every later walk over the value (validation, logging, echoing) far from recursion limits.
MAX_DEPTH = 64


class JsonInputError(ValueError):
    """Why a client's JSON was refused; `reason` completes a sentence such as "the event ..."."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _no_constant(name: str) -> Any:
    raise JsonInputError(f"contains {name}, which is not valid JSON")


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` for untrusted input: every failure is a `JsonInputError`."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except UnicodeDecodeError:
        raise JsonInputError("is not valid UTF-8") from None
    except RecursionError:
        # The C decoder gives up near the interpreter's recursion limit, far deeper than `max_depth`.
        raise JsonInputError(f"is nested deeper than {max_depth} levels") from None
    except ValueError:
        # The only other ValueError json.loads raises: an integer longer than Python converts (4300 digits).
        raise JsonInputError("contains a number with too many digits") from None
    _check(value, max_depth)
    return value


def _check(value: Any, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` and strings that cannot be UTF-8 (lone surrogate escapes)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise JsonInputError(f"is nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key in item:
                    _check_text(key)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JsonInputError("contains a lone UTF-16 surrogate (\\ud800-\\udfff) in a string") from None
