"""Schemathesis against the served OpenAPI document, in process (ASGI): valid and invalid requests for
every operation. No request may get a 5xx; every rejected one gets a 4xx in OpenAI's error shape whose
message says what is wrong; every answer matches the document (status, content type, body schema)."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from testkit.harness import KEY, Harness

harness = Harness()
schema = schemathesis.openapi.from_asgi("/openapi.json", harness.http.app)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    deterministic=True,  # the same examples every run: a failure here is reproducible
    database="none",
)


def errors_say_what_is_wrong(ctx: Any, response: Any, case: Any) -> bool | None:
    if 400 <= response.status_code < 500:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"4xx body is not OpenAI's error shape: {body!r}"
        assert set(error) == {"message", "type", "param", "code"}, error
        assert isinstance(error["message"], str) and len(error["message"]) > 10, error
    return None


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_contract(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {KEY}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
            errors_say_what_is_wrong,
        ],
    )
