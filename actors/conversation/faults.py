"""Stage and provider failures, and the one mapping from an exception to what a client may see.

Clients get a short code and a sentence; never an exception's text, which can carry tracebacks,
process ids, addresses or actor ids (a dead Ray replica's error names all of them). The details go to
the server log where the failure is caught.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE_NAMES = {"stt": "speech recogniser", "llm": "language model", "tts": "speech synthesiser"}

# Exceptions (by class name, so this module needs neither Ray nor gRPC) that mean the stage's process
# or connection went away, rather than that it answered with an error.
_GONE = frozenset(
    {
        "ActorDiedError",
        "ActorUnavailableError",
        "RayActorError",
        "WorkerCrashedError",
        "NodeDiedError",
        "ActorUnschedulableError",
        "AioRpcError",
        "DeploymentUnavailableError",
    }
)


class ProviderFailure(Exception):
    """A provider (an HTTP API behind a stage) could not produce the result. Subclasses carry the
    public code and message as class attributes, so they survive pickling across Ray unchanged."""

    code = "provider_failed"
    public_message = "The provider failed."


class LLMUnavailable(ProviderFailure):
    code = "llm_unavailable"
    public_message = "The language model is not reachable right now."


class LLMTimeout(ProviderFailure):
    code = "llm_timeout"
    public_message = "The language model did not start answering in time."


class LLMStalled(ProviderFailure):
    code = "llm_stalled"
    public_message = "The language model stopped answering in the middle of the reply."


class StageError(Exception):
    """Which stage a failure came from; the cause is the exception it wraps (`raise ... from`)."""

    def __init__(self, stage: str) -> None:
        super().__init__(stage)
        self.stage = stage


@dataclass(frozen=True)
class PublicError:
    code: str
    message: str


def public_error(exc: BaseException, stage: str | None = None) -> PublicError:
    """The code and message a client may see for `exc`, raised by `stage` ("stt", "llm", "tts")."""
    if isinstance(exc, StageError):
        stage = exc.stage
        exc = exc.__cause__ or exc
    # Ray re-raises a replica's exception as a subclass of both RayTaskError and the original class,
    # so an isinstance check sees our own failures through it.
    if isinstance(exc, ProviderFailure):
        return PublicError(exc.code, exc.public_message)
    name = STAGE_NAMES.get(stage or "", "service")
    prefix = stage or "stage"
    if isinstance(exc, TimeoutError):
        return PublicError(f"{prefix}_timeout", f"The {name} did not answer in time.")
    if _GONE & {cls.__name__ for cls in type(exc).__mro__}:
        return PublicError(f"{prefix}_unavailable", f"The {name} is unavailable right now; try again soon.")
    return PublicError(f"{prefix}_failed", f"The {name} failed.")
