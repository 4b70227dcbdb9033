"""Soak: N microphone sessions for M minutes against `serve run serve_config.yaml`, watching for leaks.

    .venv/bin/python -m bench.soak                          # 50 sessions × 10 minutes (saturates 2 cores)
    .venv/bin/python -m bench.soak --sessions 5 --minutes 2  # a smoke run

The clients, the simulated providers, the server start and the per-process measurements are
`bench.load`'s (its `ray-serve` target): each session streams microphone audio in real time and asks
question after question until the time is up (a reply not ended within 30 s is an error). Every ~10 s it
samples, for every Ray process of the app (routers, stage replicas, controller, proxy, GCS, raylet, the
actors): RSS, threads (`/proc/PID/status`) and open file descriptors (`/proc/PID/fd`); and from `/metrics`
(the whole deployment) the `voice_event_loop_tasks` and `voice_sessions_open` gauges. After the last session
has closed it waits for the gauges to settle.

Reported: turns completed, errors, orchestration overhead p50/p95 per minute, RSS growth per process from
the end of the warm-up (the first 2 minutes) to the end of the load, threads / fds / tasks at the start of
the measurement vs its end, and sessions and tasks after every session has closed against the idle figures
before the first one opened → `bench/results/soak.{md,json,png}`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from bench.latency import start_sim_llm
from bench.load import (
    RunResult,
    Target,
    cpu_by_process,
    machine_busy_seconds,
    measure,
    overhead_ms,
    percentile,
    process_label,
    room_noise,
    run_client,
    start_target,
    to_frames,
    utterances,
)
from testkit.serve_cluster import ROOT

GAUGES = ("voice_sessions_open", "voice_event_loop_tasks")
SETTLE_S = 60.0  # after the last session closed: how long the gauges may take to come back
RSS_GROWTH_LIMIT = 0.10


# ---------------------------------------------------------------------------------------------- samples
def process_stats(pids: set[int]) -> dict[str, dict[str, Any]]:
    """RSS (MB), threads and open file descriptors of each live process, keyed `label-pid`."""
    stats = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:  # exited meanwhile
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        kind = process_label(command)
        stats[f"{kind}-{pid}"] = {
            "kind": kind,
            "pid": pid,
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024 if "VmRSS" in fields else 0.0,
            "threads": int(fields["Threads"]),
            "fds": fds,
        }
    return stats


def gauges(base_url: str) -> dict[str, float]:
    """The deployment's gauges from `/metrics` (NaN when it does not answer)."""
    values = dict.fromkeys(GAUGES, float("nan"))
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return values
    for family in text_string_to_metric_families(text):
        if family.name in values and family.samples:
            values[family.name] = sum(s.value for s in family.samples)
    return values


def take_sample(target: Target, base_url: str, t0: float, phase: str) -> dict[str, Any]:
    return {
        "t": round(time.monotonic() - t0, 1),
        "phase": phase,
        "busy_s": machine_busy_seconds(),
        "processes": process_stats(target.pids()),
        **gauges(base_url),
    }


# ---------------------------------------------------------------------------------------------- run
async def soak(
    target: Target,
    sessions: int,
    seconds: float,
    interval: float,
    material: list,
    noise: list[str],
) -> tuple[RunResult, list[dict[str, Any]], dict[str, Any]]:
    base_url = target.ws_url.replace("ws://", "http://", 1).removesuffix("/v1")
    # Unmeasured turns first, on every router (the ingress spreads concurrent sessions): a router's first
    # sessions set up its stage handles (connections, their background tasks) once. Then the idle figures.
    await measure(target, 4, 1, material, noise)
    await asyncio.sleep(2 * 5.0)  # every router has reported its figures since that session closed
    t0 = time.monotonic()
    idle = await asyncio.to_thread(take_sample, target, base_url, t0, "idle")
    samples = [idle]
    result = RunResult(target.name, sessions)
    cpu_before = cpu_by_process(target.pids())
    busy_before = machine_busy_seconds()
    until = t0 + seconds

    async def sampler() -> None:
        # Every `interval` up to the deadline, the last one at it ("load": every session open), then
        # while the sessions finish their last turn ("closing").
        k = 1
        while True:
            at = min(t0 + k * interval, until) if time.monotonic() < until else t0 + k * interval
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            phase = "load" if at <= until else "closing"
            samples.append(await asyncio.to_thread(take_sample, target, base_url, t0, phase))
            k += 1

    async def ticker(bar: tqdm) -> None:
        while True:
            await asyncio.sleep(1)
            bar.n = min(seconds, round(time.monotonic() - t0))
            bar.set_postfix(turns=len(result.turns), errors=len(result.errors), refresh=False)
            bar.refresh()

    with tqdm(total=int(seconds), desc=f"soak ×{sessions}", unit="s") as bar:
        background = [asyncio.create_task(sampler()), asyncio.create_task(ticker(bar))]
        try:
            await asyncio.gather(
                *(
                    run_client(target.ws_url, i, 0, material, noise, result, None, until)
                    for i in range(sessions)
                )
            )
        finally:
            for task in background:
                task.cancel()
    load_end = time.monotonic()
    result.wall_s = load_end - t0
    cpu_after = cpu_by_process(target.pids())
    result.cpu_by_process = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()}
    result.cpu_s = sum(result.cpu_by_process.values())
    result.machine_cores = (machine_busy_seconds() - busy_before) / result.wall_s

    # Every session has closed: the gauges come back (each router reports every 5 s).
    idle_routers = sum(1 for p in idle["processes"].values() if p["kind"] == "Router")
    settled = False
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        await asyncio.sleep(5)
        last = await asyncio.to_thread(take_sample, target, base_url, t0, "after")
        samples.append(last)
        routers = sum(1 for p in last["processes"].values() if p["kind"] == "Router")
        tasks_per_router = last["voice_event_loop_tasks"] / max(routers, 1)
        if last["voice_sessions_open"] == 0 and tasks_per_router <= idle["voice_event_loop_tasks"] / max(
            idle_routers, 1
        ):
            settled = True
            break
    after = {
        "settled": settled,
        "settle_s": round(samples[-1]["t"] - (load_end - t0), 1),
        "load_s": round(load_end - t0, 1),
        "t0": t0,
    }
    return result, samples, after


# ---------------------------------------------------------------------------------------------- report
def per_minute(result: RunResult, t0: float) -> list[dict[str, Any]]:
    minutes: dict[int, list[float]] = defaultdict(list)
    e2e: dict[int, list[float]] = defaultdict(list)
    for turn in result.turns:
        minute = int((turn.ended_at - t0) // 60)
        e2e[minute].append(turn.client_e2e_ms)
        if {"e2e_latency", "end_of_turn_delay"} <= turn.server.keys():
            minutes[minute].append(overhead_ms(turn))
    return [
        {
            "minute": m + 1,
            "turns": len(e2e[m]),
            "overhead_p50": percentile(minutes[m], 50),
            "overhead_p95": percentile(minutes[m], 95),
            "e2e_p50": percentile(e2e[m], 50),
        }
        for m in sorted(e2e)
    ]


def nearest(samples: list[dict[str, Any]], t: float, phase: str = "load") -> dict[str, Any]:
    return min((s for s in samples if s["phase"] == phase), key=lambda s: abs(s["t"] - t))


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread if spread else float("nan")


def processes_report(measured: list[dict[str, Any]], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Each process alive at both the start and the end of the measured samples: its figures then, the
    trend of its RSS in between, and its figures after every session closed (None: it had exited)."""
    start, end = measured[0], measured[-1]
    rows = []
    for key, first in sorted(start["processes"].items(), key=lambda kv: (kv[1]["kind"], kv[1]["pid"])):
        last = end["processes"].get(key)
        if last is None:
            continue
        closed = after["processes"].get(key)
        trend = [(s["t"], s["processes"][key]["rss_mb"]) for s in measured if key in s["processes"]]
        rows.append(
            {
                "process": key,
                "kind": first["kind"],
                "rss_start_mb": round(first["rss_mb"], 1),
                "rss_end_mb": round(last["rss_mb"], 1),
                "rss_growth": (last["rss_mb"] - first["rss_mb"]) / first["rss_mb"]
                if first["rss_mb"]
                else 0.0,
                "rss_mb_per_min": round(slope_per_minute(trend), 3),
                "rss_after_mb": round(closed["rss_mb"], 1) if closed else None,
                "threads": [first["threads"], last["threads"], closed["threads"] if closed else None],
                "fds": [first["fds"], last["fds"], closed["fds"] if closed else None],
            }
        )
    return rows


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def report(
    args: argparse.Namespace,
    result: RunResult,
    samples: list[dict[str, Any]],
    after: dict[str, Any],
    startup_s: float,
) -> tuple[str, dict[str, Any]]:
    t0 = after["t0"]  # time.monotonic() when the first session started
    warmup_s = args.warmup_minutes * 60
    idle = samples[0]
    start = nearest(samples, warmup_s)
    end = [s for s in samples if s["phase"] == "load"][-1]
    measured = [s for s in samples if s["phase"] == "load" and start["t"] <= s["t"] <= end["t"]]
    closed = samples[-1]
    rows = processes_report(measured, closed)
    # The gauges move with every turn: the mean of the first and of the last minute measured.
    first_minute = [s for s in measured if s["t"] < start["t"] + 60]
    last_minute = [s for s in measured if s["t"] > end["t"] - 60]

    def routers(sample: dict[str, Any]) -> int:
        return sum(1 for p in sample["processes"].values() if p["kind"] == "Router")

    started_later = sorted(set(end["processes"]) - set(start["processes"]))
    gone = sorted(set(start["processes"]) - set(end["processes"]))
    minutes = per_minute(result, t0)
    over = [overhead_ms(t) for t in result.turns if {"e2e_latency", "end_of_turn_delay"} <= t.server.keys()]
    measured = [
        overhead_ms(t) for t in result.turns if t.ended_at - t0 >= warmup_s and "e2e_latency" in t.server
    ]
    worst = max(rows, key=lambda r: r["rss_growth"]) if rows else None
    app_cores = result.cpu_s / result.wall_s
    summary = {
        "date": datetime.date.today().isoformat(),
        "sessions": args.sessions,
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "turns": len(result.turns),
        "errors": len(result.errors),
        "error_kinds": sorted(set(result.errors))[:10],
        "overhead_p50": percentile(over, 50),
        "overhead_p95": percentile(over, 95),
        "overhead_p50_after_warmup": percentile(measured, 50),
        "overhead_p95_after_warmup": percentile(measured, 95),
        "max_send_lag_ms": result.max_send_lag_ms,
        "machine_cores": result.machine_cores,
        "cpu_count": os.cpu_count(),
        "app_cores": app_cores,
        "max_rss_growth": worst["rss_growth"] if worst else float("nan"),
        "max_rss_growth_process": worst["process"] if worst else None,
        "rss_growth_ok": bool(worst is None or worst["rss_growth"] < RSS_GROWTH_LIMIT),
        # Over the processes alive at both ends (a replica started meanwhile would count as growth).
        "threads_start_end": [sum(r["threads"][i] for r in rows) for i in (0, 1)],
        "fds_start_end": [sum(r["fds"][i] for r in rows) for i in (0, 1)],
        "loop_tasks": {
            "idle": idle["voice_event_loop_tasks"],
            "start": start["voice_event_loop_tasks"],
            "end": end["voice_event_loop_tasks"],
            "first_minute_mean": mean([s["voice_event_loop_tasks"] for s in first_minute]),
            "last_minute_mean": mean([s["voice_event_loop_tasks"] for s in last_minute]),
            "after_close": closed["voice_event_loop_tasks"],
            "idle_per_router": idle["voice_event_loop_tasks"] / max(routers(idle), 1),
            "after_close_per_router": closed["voice_event_loop_tasks"] / max(routers(closed), 1),
        },
        "sessions_open": {
            "start": start["voice_sessions_open"],
            "end": end["voice_sessions_open"],
            "after_close": closed["voice_sessions_open"],
        },
        "routers": {"idle": routers(idle), "end": routers(end), "after_close": routers(closed)},
        "settled_after_close": after["settled"],
        "settle_s": after["settle_s"],
        "processes_started_during_measurement": started_later,
        "processes_gone_during_measurement": gone,
        "startup_s": startup_s,
    }
    cores_by_kind: dict[str, float] = defaultdict(float)
    for key, cpu in result.cpu_by_process.items():
        cores_by_kind[key.rsplit("-", 1)[0]] += cpu / result.wall_s
    summary["cores_by_kind"] = {
        k: round(v, 3) for k, v in sorted(cores_by_kind.items(), key=lambda kv: -kv[1])
    }

    s = summary
    lines = [
        f"Soak {s['date']}: {s['sessions']} sessions × {s['minutes']} min (`python -m bench.soak --sessions "
        f"{s['sessions']} --minutes {s['minutes']}`), warm-up {s['warmup_minutes']} min; machine "
        f"{s['machine_cores']:.2f} of {s['cpu_count']} cores busy, the app {s['app_cores']:.2f}.",
        "",
        "| turns | errors | overhead p50 | p95 | p50 / p95 after warm-up | max RSS growth | threads | fds |"
        " loop tasks | sessions open after close |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {s['turns']} | {s['errors']} | {s['overhead_p50']:.0f} | {s['overhead_p95']:.0f}"
        f" | {s['overhead_p50_after_warmup']:.0f} / {s['overhead_p95_after_warmup']:.0f}"
        f" | {100 * s['max_rss_growth']:+.1f} % ({s['max_rss_growth_process']})"
        f" | {s['threads_start_end'][0]} → {s['threads_start_end'][1]}"
        f" | {s['fds_start_end'][0]} → {s['fds_start_end'][1]}"
        f" | {s['loop_tasks']['first_minute_mean']:.0f} → {s['loop_tasks']['last_minute_mean']:.0f}"
        f" (minute means); idle {s['loop_tasks']['idle']:.0f} on {s['routers']['idle']} routers,"
        f" after close {s['loop_tasks']['after_close']:.0f} on {s['routers']['after_close']}"
        f" | {s['sessions_open']['after_close']:.0f} |",
        "",
    ]
    if s["error_kinds"]:
        lines += ["errors: " + "; ".join(s["error_kinds"]), ""]
    lines += [
        f"Routers: {s['routers']['idle']} idle, {s['routers']['end']} at the end; loop tasks per router"
        f" {s['loop_tasks']['idle_per_router']:.1f} idle, {s['loop_tasks']['after_close_per_router']:.1f}"
        f" after close."
        f" Gauges after the last session closed: {'settled' if s['settled_after_close'] else 'NOT settled'}"
        f" within {s['settle_s']:.0f} s."
        f" Started during the measurement: {', '.join(started_later) or 'none'};"
        f" gone: {', '.join(gone) or 'none'}.",
        "",
        "| minute | turns | overhead p50 | p95 | client e2e p50 |",
        "|---|---|---|---|---|",
        *(
            f"| {m['minute']}{' (turns in flight at the end)' if m['minute'] > args.minutes else ''}"
            f" | {m['turns']} | {m['overhead_p50']:.0f} | {m['overhead_p95']:.0f}"
            f" | {m['e2e_p50']:.0f} |"
            for m in minutes
        ),
        "",
        f"Per process (threads and fds: start → end (after close)), from the end of the warm-up"
        f" (t = {start['t']:.0f} s) to the end of the load"
        f" (t = {end['t']:.0f} s), and after every session closed (t = {closed['t']:.0f} s):",
        "",
        "| process | RSS MB | growth | MB / min | RSS after close | threads | fds | cores |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['process']} | {r['rss_start_mb']:.0f} → {r['rss_end_mb']:.0f}"
            f" | {100 * r['rss_growth']:+.1f} % | {r['rss_mb_per_min']:+.2f}"
            f" | {'exited' if r['rss_after_mb'] is None else round(r['rss_after_mb'])}"
            f" | {r['threads'][0]} → {r['threads'][1]} ({r['threads'][2] if closed_ else '–'})"
            f" | {r['fds'][0]} → {r['fds'][1]} ({r['fds'][2] if closed_ else '–'})"
            f" | {result.cpu_by_process.get(r['process'], 0.0) / result.wall_s:.2f} |"
            for r in rows
            for closed_ in [r["rss_after_mb"] is not None]
        ),
    ]
    data = {
        "summary": summary,
        "per_minute": minutes,
        "processes": rows,
        "samples": samples,
    }
    return "\n".join(lines) + "\n", data


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [s for s in data["samples"] if s["phase"] != "idle"]
    kinds = sorted({p["kind"] for s in samples for p in s["processes"].values()})
    colors = plt.get_cmap("tab20")
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    times = [s["t"] / 60 for s in samples]
    for ax, (key, title) in zip(
        axes[0],
        (("rss_mb", "RSS MB per process kind (sum)"), ("threads", "threads"), ("fds", "open fds")),
        strict=True,
    ):
        for i, kind in enumerate(kinds):
            values = [
                sum(p[key] for p in s["processes"].values() if p["kind"] == kind) or float("nan")
                for s in samples
            ]
            ax.plot(times, values, label=kind, color=colors(i % 20), ls="-" if i < 20 else "--")
        ax.set_title(title)
        ax.set_yscale("log")
        ax.set_xlabel("minutes")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    ax = axes[1][0]
    ax.plot(times, [s["voice_event_loop_tasks"] for s in samples], label="voice_event_loop_tasks")
    ax.plot(times, [s["voice_sessions_open"] for s in samples], label="voice_sessions_open")
    ax.axhline(data["samples"][0]["voice_event_loop_tasks"], color="grey", ls=":", label="tasks when idle")
    ax.set_title("/metrics gauges (whole deployment)")
    ax.set_xlabel("minutes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1][1]
    minutes = data["per_minute"]
    ax.plot([m["minute"] for m in minutes], [m["overhead_p50"] for m in minutes], marker="o", label="p50")
    ax.plot([m["minute"] for m in minutes], [m["overhead_p95"] for m in minutes], marker="o", label="p95")
    ax.set_title("orchestration overhead per minute (ms)")
    ax.set_xlabel("minute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1][2]
    busy = [
        (b["busy_s"] - a["busy_s"]) / (b["t"] - a["t"])
        for a, b in itertools.pairwise(samples)
        if b["t"] > a["t"]
    ]
    ax.plot(times[1 : len(busy) + 1], busy)
    ax.set_title(f"machine busy cores (of {os.cpu_count()})")
    ax.set_xlabel("minutes")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------- main
async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any timing
    workdir = Path(tempfile.mkdtemp(prefix="voice-soak-"))
    material = utterances()
    noise = to_frames(room_noise(10, seed=11))
    print(f"{len(material)} questions; work dir {workdir}")
    sim_llm, llm_base = start_sim_llm(workdir)
    try:
        target = start_target("ray-serve", llm_base, workdir, dict(v.split("=", 1) for v in args.serve_env))
        try:
            result, samples, after = await soak(
                target, args.sessions, args.minutes * 60, args.interval, material, noise
            )
        finally:
            target.stop()
    finally:
        sim_llm.terminate()
        sim_llm.wait()
    text, data = report(args, result, samples, after, target.startup_s)
    print("\n" + text)
    stem = args.name
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (out / f"{stem}.md").write_text(text)
    plot(data, out / f"{stem}.png")
    print(f"results in {out}/{stem}.{{md,json,png}}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument(
        "--warmup-minutes", type=float, help="not counted for growth (default: 2, or a fifth of a short run)"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--serve-env", nargs="*", default=[], metavar="KEY=VALUE", help="environment of the Ray cluster"
    )
    parser.add_argument("--name", default="soak", help="result file stem")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if args.warmup_minutes is None:
        args.warmup_minutes = min(2.0, args.minutes / 5)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
