"""Start time: `serve run serve_config.yaml` as `scripts/run.sh` runs it (its own local Ray, the Serve
environment of `serve_app/serve_env.py`, the offline engines when no OpenAI key is set) until `/readyz`
answers 200, and where the time goes.

    .venv/bin/python -m bench.start                       # 3 starts per variant, alternated (~5 min)
    .venv/bin/python -m bench.start --runs 1 --variants shipped

Variants, run in turn so that the machine's noise falls on each alike:
- `shipped`: serve_config.yaml as it is;
- `runtime-env`: the same, with the Serve settings of `serve_app/serve_env.py` that replicas read given as
  the application's `runtime_env` instead of the processes' environment (a common way to write them), to
  show what that costs.

Phases, in seconds since `serve run` was started (from its log): the local Ray instance is up, Serve is up
(controller, proxy, HAProxy), the application is built, each stage replica has loaded its engine, and
`/readyz` answers 200. Also the CPU seconds the app's processes had used by then, all cores together.
→ `bench/results/start.{md,json,png}`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from tqdm import tqdm

from bench.load import process_cpu_seconds
from serve_app.serve_env import SERVE_ENV
from testkit.serve_cluster import ROOT, free_port, serve_env, session_members

# Log lines that mark each phase; the replicas log their engine once it is loaded and warmed up.
PHASES: dict[str, str] = {
    "ray": "Started a local Ray instance",
    "serve": "Started Serve in namespace",
    "built": "Imported and built app",
    "stt": "STT engine:",
    "tts": "TTS engine:",
    "llm": "LLM engine:",
    "router": "voice agent engines:",
}
# The settings a replica reads at start, which `runtime-env` moves into the application's runtime_env.
REPLICA_SETTINGS = ("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP")
VARIANTS = ("shipped", "runtime-env")
TIMEOUT_S = 180.0


def write_config(workdir: Path, variant: str, port: int) -> Path:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    if variant == "runtime-env":
        env_vars = {name: SERVE_ENV[name] for name in REPLICA_SETTINGS}
        config["applications"][0]["runtime_env"] = {"env_vars": env_vars}
    path = workdir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU of the live processes and of their finished children."""
    return sum(process_cpu_seconds(pid, with_children=True) or 0.0 for pid in pids)


def start_once(variant: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="vst-", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    config = write_config(workdir, variant, port)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(
        {
            "RAY_TMPDIR": str(workdir),
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            **serve_env(workdir),
        }
    )
    if variant == "runtime-env":
        for name in REPLICA_SETTINGS:
            env.pop(name, None)
    marks: dict[str, float] = {}
    started = time.monotonic()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "serve"), "run", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    log_lines: list[str] = []

    def read_log() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            log_lines.append(line)
            for phase, needle in PHASES.items():
                if needle in line and phase not in marks:
                    marks[phase] = time.monotonic() - started

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        while "ready" not in marks:
            if process.poll() is not None or time.monotonic() - started > TIMEOUT_S:
                raise RuntimeError("serve run did not get ready:\n" + "".join(log_lines[-40:]))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    marks["ready"] = time.monotonic() - started
                    break
            time.sleep(0.1)
        marks["cpu_s"] = cpu_seconds(session_members(process.pid))
    finally:
        stop(process, workdir)
    return {"variant": variant, **marks}


def stop(process: subprocess.Popen[str], workdir: Path) -> None:
    """`serve run` stops its local Ray on SIGTERM; then whatever of ours is left (HAProxy, started by a
    Ray actor, is found by the private directory on its command line)."""
    members = session_members(process.pid)
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in session_members(process.pid) | members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["pkill", "-KILL", "-f", "--", str(workdir)], check=False)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        row: dict[str, Any] = {"variant": variant, "runs": len(mine)}
        for key in (*PHASES, "ready", "cpu_s"):
            values = [r[key] for r in mine if key in r]
            row[key] = statistics.median(values) if values else float("nan")
        row["ready_min"] = min(r["ready"] for r in mine)
        row["ready_max"] = max(r["ready"] for r in mine)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | runs | Ray up | Serve up | app built | STT | TTS | LLM | router | `/readyz` 200"
        " (min–max) | CPU s |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['runs']} | {r['ray']:.1f} | {r['serve']:.1f} | {r['built']:.1f}"
            f" | {r['stt']:.1f} | {r['tts']:.1f} | {r['llm']:.1f} | {r['router']:.1f}"
            f" | **{r['ready']:.1f}** ({r['ready_min']:.1f}–{r['ready_max']:.1f}) | {r['cpu_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segments = [
        ("ray", "Ray up"),
        ("serve", "Serve up"),
        ("built", "app built"),
        ("ready", "replicas → /readyz"),
    ]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(rows)))
    for i, r in enumerate(rows):
        left = 0.0
        for j, (key, label) in enumerate(segments):
            ax.barh(i, r[key] - left, left=left, color=f"C{j}", label=label if i == 0 else None)
            left = r[key]
        ax.text(left + 0.3, i, f"{left:.1f} s", va="center")
    ax.axvline(15, color="red", ls="--", lw=1, label="target 15 s")
    ax.set_yticks(range(len(rows)), [r["variant"] for r in rows])
    ax.set_xlabel("seconds since `serve run` (median)")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="starts per variant")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # One unmeasured start first: the first run on a machine also compiles bytecode and fills page caches.
    start_once(args.variants[0])
    runs = []
    order = [v for _ in range(args.runs) for v in args.variants]
    for variant in tqdm(order, desc="starts", unit="start"):
        runs.append(start_once(variant))
    rows = summarize(runs)
    text = table(rows)
    print(text)
    (out / "start.md").write_text(text + "\n")
    (out / "start.json").write_text(json.dumps({"runs": runs, "summary": rows}, indent=2))
    plot(rows, out / "start.png")
    print(f"results in {out}/start.*")


if __name__ == "__main__":
    main()
