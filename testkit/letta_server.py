"""A real Letta server (0.16.8, the last release of its Python server) with its own Postgres, for tests.

Letta runs from its own virtual environment (its pins clash with the project's), installed once into a
cache directory and reused; Postgres 16 + pgvector come from the `pgserver` wheel in that environment.

    with LettaServer() as letta:
        client = Letta(base_url=letta.base_url)
        ...

Everything started here (Postgres, the Letta process) is stopped by `stop()`; ports are picked free on
127.0.0.1, and all state lives in private temporary directories.

As a script, `python -m testkit.letta_server --install-only` prepares the cache; without it, it runs a server
until interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from letta_client.types import EmbeddingConfigParam, LlmConfigParam

LETTA_VERSION = "0.16.8"
CONSTRAINTS = Path(__file__).with_name("letta") / f"constraints-{LETTA_VERSION}.txt"
# asyncpg is used by the server but not declared by it; pg8000 drives the schema creation; pgserver
# brings the Postgres + pgvector binaries (not in Letta's lock, so left unpinned by the constraints).
PACKAGES = [f"letta[server]=={LETTA_VERSION}", "asyncpg", "pgvector", "pg8000", "pgserver"]
PG_USER = "postgres"  # Postgres refuses to run as root; when root, it runs as this user
DB_ROLE = "letta"
DB_NAME = "letta"

# The wheel ships no migrations: build the schema from the ORM, then back messages.sequence_id with a
# sequence as the migrations would.
_SCHEMA_SCRIPT = """
import sys
from sqlalchemy import create_engine, text
import letta.orm
from letta.orm.base import Base

engine = create_engine(sys.argv[1])
with engine.begin() as conn:
    conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
Base.metadata.create_all(engine)
with engine.begin() as conn:
    conn.execute(text("CREATE SEQUENCE IF NOT EXISTS message_sequence_id_seq"))
    conn.execute(text(
        "ALTER TABLE messages ALTER COLUMN sequence_id SET DEFAULT nextval('message_sequence_id_seq')"
    ))
engine.dispose()
"""


def sim_llm_config(sim_base_url: str, model: str) -> LlmConfigParam:
    """A Letta agent LLM config whose calls go to an OpenAI-compatible (simulated) server."""
    return {
        "model": model,
        "model_endpoint_type": "openai",
        "model_endpoint": sim_base_url,
        "context_window": 32_000,
    }


def sim_embedding_config(sim_base_url: str) -> EmbeddingConfigParam:
    return {
        "embedding_endpoint_type": "openai",
        "embedding_endpoint": sim_base_url,
        "embedding_model": "text-embedding-3-small",
        "embedding_dim": 1536,
    }


def memory_args(letta_base_url: str, sim_base_url: str, model: str, journal: Path) -> dict[str, Any]:
    """The voice agent's settings that put its long-term memory on a Letta server whose agents think
    and embed through an OpenAI-compatible (simulated) server."""
    return {
        "letta_base_url": letta_base_url,
        "letta_llm_config": dict(sim_llm_config(sim_base_url, model)),
        "letta_embedding_config": dict(sim_embedding_config(sim_base_url)),
        "memory_journal_path": str(journal),
    }


def default_cache_dir() -> Path:
    override = os.environ.get("VOICE_AGENT_LETTA_CACHE")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "voice-agent" / f"letta-{LETTA_VERSION}"


def _install_fingerprint() -> str:
    # Reinstall when the pins or the package list change.
    digest = hashlib.sha256(CONSTRAINTS.read_bytes())
    digest.update("\n".join(PACKAGES).encode())
    return digest.hexdigest()


def ensure_letta_venv(cache_dir: Path | None = None) -> Path:
    """Install Letta into `<cache_dir>/venv` unless already there; returns the venv's directory."""
    cache = cache_dir or default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / "venv"
    stamp = cache / "installed.sha256"
    fingerprint = _install_fingerprint()
    # A file lock, so that parallel test sessions do not install over each other.
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text().strip() == fingerprint and (venv / "bin" / "letta").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        python = sys.executable if sys.version_info[:2] == (3, 11) else "python3.11"
        uv = shutil.which("uv")
        if uv:
            subprocess.run([uv, "venv", "-q", "-p", python, str(venv)], check=True)
            install = [uv, "pip", "install", "-q", "-p", str(venv / "bin" / "python")]
        else:
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            install = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*install, *PACKAGES, "-c", str(CONSTRAINTS)], check=True)
        stamp.write_text(fingerprint + "\n")
    return venv


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_pg_user() -> None:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER], check=True
        )


class LettaServer:
    """Postgres + `letta server` on free 127.0.0.1 ports; `start()` returns once /v1/health/ answers."""

    def __init__(
        self,
        workdir: Path | None = None,
        cache_dir: Path | None = None,
        startup_timeout_s: float = 180.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="letta-"))
        self.cache_dir = cache_dir or default_cache_dir()
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = extra_env or {}
        self.base_url = ""
        self.pg_uri = ""
        self.timings: dict[str, float] = {}  # seconds per start phase
        self._as_root = os.geteuid() == 0
        self._pg_dir: Path | None = None
        self._pg_bin: Path | None = None
        self._pg_started = False
        self._letta: subprocess.Popen[bytes] | None = None
        self._letta_log: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LettaServer:
        try:
            t0 = time.monotonic()
            venv = ensure_letta_venv(self.cache_dir)
            t1 = time.monotonic()
            self._start_postgres(venv)
            t2 = time.monotonic()
            self._create_schema(venv)
            t3 = time.monotonic()
            self._start_letta(venv)
            t4 = time.monotonic()
        except BaseException:
            self.stop()
            raise
        self.timings = {"install": t1 - t0, "postgres": t2 - t1, "schema": t3 - t2, "letta": t4 - t3}
        return self

    def stop(self) -> None:
        self.stop_letta()
        if self._pg_started and self._pg_dir is not None and self._pg_bin is not None:
            data = self._pg_dir / "data"
            result = subprocess.run(
                [
                    *self._as_pg(),
                    str(self._pg_bin / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
            )
            if result.returncode != 0:
                self._kill_postmaster(data)
            self._pg_started = False
        if self._pg_dir is not None:
            shutil.rmtree(self._pg_dir, ignore_errors=True)
            self._pg_dir = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_letta(self) -> None:
        """Stop the Letta process alone, as in an outage; Postgres and every agent's data stay."""
        if self._letta is not None:
            self._stop_process_group(self._letta)
            self._letta = None

    def restart_letta(self) -> None:
        """Start Letta again on the same port and database, after `stop_letta`."""
        if self._letta is None:
            port = int(self.base_url.rsplit(":", 1)[1])
            self._start_letta(ensure_letta_venv(self.cache_dir), fixed_port=port)

    def __enter__(self) -> LettaServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of Letta's log, for failure messages."""
        if self._letta_log is None or not self._letta_log.exists():
            return ""
        return self._letta_log.read_text(errors="replace")[-chars:]

    # -- Postgres --------------------------------------------------------------------------------

    def _as_pg(self) -> list[str]:
        return ["runuser", "-u", PG_USER, "--"] if self._as_root else []

    def _pg_binaries(self, venv: Path) -> Path:
        found = list((venv / "lib").glob("python3*/site-packages/pgserver/pginstall"))
        if not found:
            raise RuntimeError(f"pgserver binaries missing under {venv}")
        pginstall = found[0]
        if not self._as_root:
            return pginstall / "bin"
        # The postgres user cannot reach a cache under root's 0700 home: use a world-readable copy.
        check = subprocess.run([*self._as_pg(), "test", "-x", str(pginstall / "bin" / "postgres")])
        if check.returncode == 0:
            return pginstall / "bin"
        # Keep the wheel's layout: the binaries find their libraries at $ORIGIN/../../../pgserver.libs.
        site = pginstall.parent.parent
        shared = Path(tempfile.gettempdir()) / f"voice-agent-pgserver-{_install_fingerprint()[:12]}"
        if not (shared / "pgserver" / "pginstall" / "bin" / "postgres").exists():
            staging = Path(tempfile.mkdtemp(prefix="pgserver-", dir=shared.parent))
            shutil.copytree(pginstall, staging / "pgserver" / "pginstall", symlinks=True)
            shutil.copytree(site / "pgserver.libs", staging / "pgserver.libs", symlinks=True)
            staging.chmod(0o755)
            (staging / "pgserver").chmod(0o755)
            with contextlib.suppress(OSError):  # another session may have won the race
                staging.rename(shared)
            shutil.rmtree(staging, ignore_errors=True)
        return shared / "pgserver" / "pginstall" / "bin"

    def _start_postgres(self, venv: Path) -> None:
        if self._as_root:
            _ensure_pg_user()
        self._pg_bin = self._pg_binaries(venv)
        # Outside the workdir: the postgres user must be able to reach it, and socket paths are short.
        self._pg_dir = Path(tempfile.mkdtemp(prefix="letta-pg-"))
        data, sock = self._pg_dir / "data", self._pg_dir / "sock"
        sock.mkdir()
        if self._as_root:
            ids = pwd.getpwnam(PG_USER)
            for path in (self._pg_dir, sock):
                os.chown(path, ids.pw_uid, ids.pw_gid)
        init_flags = ["--auth=trust", "-E", "UTF8", "--no-sync"]
        subprocess.run(
            [*self._as_pg(), str(self._pg_bin / "initdb"), "-D", str(data), "-U", DB_ROLE, *init_flags],
            check=True,
            capture_output=True,
        )
        for _attempt in range(5):  # the free port can be taken between probing and binding
            port = _free_port()
            # fsync off: a throwaway database, and commits are on the latency path being measured.
            options = (
                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
            )
            start_flags = ["-l", str(self._pg_dir / "postgres.log"), "-w", "-t", "60", "start"]
            result = subprocess.run(
                [*self._as_pg(), str(self._pg_bin / "pg_ctl"), "-D", str(data), "-o", options, *start_flags],
                capture_output=True,
            )
            if result.returncode == 0:
                break
        else:
            log = (self._pg_dir / "postgres.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Postgres failed to start:\n{log}")
        self._pg_started = True
        address = ["-h", "127.0.0.1", "-p", str(port)]
        subprocess.run(
            [*self._as_pg(), str(self._pg_bin / "createdb"), *address, "-U", DB_ROLE, DB_NAME],
            check=True,
            capture_output=True,
        )
        self.pg_uri = f"postgresql://{DB_ROLE}@127.0.0.1:{port}/{DB_NAME}"

    def _kill_postmaster(self, data: Path) -> None:
        # Fallback when pg_ctl cannot stop it: the postmaster's PID is the first line of its pid file.
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    # -- Letta -----------------------------------------------------------------------------------

    def _env(self, venv: Path) -> dict[str, str]:
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        # A clean environment: no provider keys (Letta would list their models over the internet, and
        # send real keys to test endpoints), no project PYTHONPATH or venv leaking into Letta's own.
        env = {
            "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "LETTA_PG_URI": f"{self.pg_uri}?ssl=disable",
            # Without pooling, messages.create stalls 30-60 s at random.
            "LETTA_DISABLE_SQLALCHEMY_POOLING": "false",
        }
        env.update(self.extra_env)
        return env

    def _create_schema(self, venv: Path) -> None:
        url = self.pg_uri.replace("postgresql://", "postgresql+pg8000://", 1)
        result = subprocess.run(
            [str(venv / "bin" / "python"), "-c", _SCHEMA_SCRIPT, url],
            env=self._env(venv),
            cwd=self.workdir,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"Letta schema creation failed:\n{result.stderr[-4000:]}")

    def _start_letta(self, venv: Path, fixed_port: int | None = None) -> None:
        self._letta_log = self.workdir / "letta.log"
        for _attempt in range(3):  # a free port can be taken between probing and binding
            port = fixed_port or _free_port()
            with open(self._letta_log, "ab") as log:
                self._letta = subprocess.Popen(
                    [str(venv / "bin" / "letta"), "server", "--host", "127.0.0.1", "--port", str(port)],
                    env=self._env(venv),
                    cwd=self.workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, so stop() reaches its children
                )
            self.base_url = f"http://127.0.0.1:{port}"
            if self._wait_healthy(self._letta):
                return
            self._stop_process_group(self._letta)
            self._letta = None
        raise RuntimeError(f"Letta server did not become healthy:\n{self.log_tail()}")

    def _wait_healthy(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.base_url}/v1/health/", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        return False

    @staticmethod
    def _stop_process_group(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=f"Run a local Letta {LETTA_VERSION} server with Postgres")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--install-only", action="store_true", help="prepare the cached venv and exit")
    args = parser.parse_args()
    if args.install_only:
        t0 = time.monotonic()
        venv = ensure_letta_venv(args.cache_dir)
        print(f"Letta {LETTA_VERSION} ready in {venv} ({time.monotonic() - t0:.1f} s)")
        return
    # SIGTERM as Ctrl-C, so that `with` stops Postgres and Letta on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with LettaServer(cache_dir=args.cache_dir) as server:
        print(f"Letta at {server.base_url} (Postgres {server.pg_uri}); timings {server.timings}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
