"""Upgrades and failures with calls in progress, on `bench.scale_out`'s multi-node cluster.

    .venv/bin/python -m bench.upgrades     # ~5 min → bench/results/upgrades.{md,json,png}

The cluster is `bench.scale_out`'s (a head with no CPUs, running the Serve controller, HAProxy and the
memory actor; worker nodes offering `voice_worker`), here with three workers, and the app deployed
from the same derived config with fixed replica counts (two of each deployment, on different nodes;
the third worker is the spare a real cluster's autoscaler would add) and long-term memory on: the
memory actor journals every finished turn (`memory_journal_path`) and Letta is held down (its address
refuses connections), so no turn ever leaves the journal and the journal after the run holds exactly
the turns the routers handed over.

Ten callers (`bench.load`'s microphone clients) talk all the time; a caller whose connection ends
reconnects at once as the same user. While they talk:

1. **router upgrade**: a new config (the router's `num_cpus` changed, so Serve replaces its replicas)
   is deployed with `serve deploy`; each old router replica drains (`serve_app.api.drain`);
2. **stage upgrade**: the same for the STT stage;
3. **node killed**: every process of the worker node that holds a router replica gets SIGKILL.

Measured per caller: turns completed, error events (by code), connections ended by the server's
restart notice or cut, turns cut, turns with no reply on an open connection (hanging), and each
reconnect's time (connection ended → the next `session.created`). Per event: how long the rollout or
recovery took and what the callers saw meanwhile. Memory: every reply a caller saw complete (its
response id is the journal's turn id) against the journal's rows. Sessions per router replica, from
HAProxy's stats: new sessions land on the new replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from tqdm import tqdm

from bench.latency import start_sim_llm
from bench.load import RunResult, SessionLog, room_noise, run_client, to_frames, utterances
from bench.scale_out import (
    APP,
    DEPLOYMENTS,
    LocalCluster,
    _interrupted,
    derived_config,
    short,
    wait_ready,
)
from testkit.serve_cluster import ROOT, free_port, session_members

WORKERS = ("worker-1", "worker-2", "worker-3")
WORKER_CPUS = 2
REPLICAS = 2  # of every deployment: one lost replica leaves one serving
RECONNECT_TARGET_S = 5.0
# What each upgrade changes: a replica's resources, which Serve cannot change in place, so it replaces
# the replicas (a rolling update), as a new image or new code would.
UPGRADES = {"router upgrade": ("Router", 0.3), "stage upgrade": ("STTDeployment", 0.55)}


# ---------------------------------------------------------------------------------------------- config
def upgrade_config(port: int, llm_base: str, journal: Path, drain: bool = True) -> dict[str, Any]:
    """`bench.scale_out`'s derived config with `REPLICAS` of each deployment (autoscaling pinned) and
    long-term memory on, against a Letta that is down; `drain`: the router's own session drain."""
    config = derived_config(port, llm_base)
    app = config["applications"][0]
    app["args"] |= {
        "letta_base_url": f"http://127.0.0.1:{free_port()}",  # nothing listens: Letta is down
        "memory_journal_path": str(journal),
        "drain_sessions": drain,
    }
    for deployment in app["deployments"]:
        deployment["autoscaling_config"] |= {"min_replicas": REPLICAS, "max_replicas": REPLICAS}
    return config


def with_num_cpus(config: dict[str, Any], deployment: str, num_cpus: float) -> dict[str, Any]:
    changed = json.loads(json.dumps(config))
    for d in changed["applications"][0]["deployments"]:
        if d["name"] == deployment:
            d["ray_actor_options"]["num_cpus"] = num_cpus
    return changed


# ---------------------------------------------------------------------------------------------- state
@dataclass
class Replica:
    id: str
    state: str
    node: str


@dataclass
class Snapshot:
    t: float
    replicas: dict[str, list[Replica]]  # deployment → its replicas
    # router replica id → sessions open to it through the current HAProxy process (not through the older
    # processes a reload leaves holding the connections made before it)
    sessions: dict[str, int]
    haproxy_up: dict[str, bool]  # router replica id → HAProxy sends it connections

    def running(self, deployment: str) -> set[str]:
        return {r.id for r in self.replicas.get(deployment, []) if r.state == "RUNNING"}

    def others(self, deployment: str) -> int:
        """Replicas starting, stopping or otherwise not running."""
        return sum(r.state != "RUNNING" for r in self.replicas.get(deployment, []))


class Observer:
    """Serve's view (dashboard) and HAProxy's (its stats page) of the replicas."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.node_names = cluster.node_names()
        self.client = httpx.Client(timeout=10)

    def snapshot(self, t: float) -> Snapshot:
        details = self.client.get(f"{self.cluster.dashboard_url}/api/serve/applications/").json()
        app = (details.get("applications") or {}).get(APP) or {}
        replicas = {
            name: [
                Replica(
                    r["replica_id"],
                    r["state"],
                    self.node_names.get(r.get("node_id") or "", (r.get("node_id") or "?")[:8]),
                )
                for r in d["replicas"]
            ]
            for name, d in (app.get("deployments") or {}).items()
        }
        sessions: dict[str, int] = {}
        up: dict[str, bool] = {}
        try:
            for server in self.cluster.haproxy_servers():
                if server["svname"].startswith("SERVE_REPLICA"):
                    # The server name holds the replica id (matched against Serve's ids).
                    routers = [r.id for r in replicas.get("Router", []) if r.id in server["svname"]]
                    replica_id = routers[0] if routers else server["svname"]
                    sessions[replica_id] = int(server["scur"] or 0)
                    up[replica_id] = server["status"] == "UP"
        except httpx.HTTPError:
            pass
        return Snapshot(t, replicas, sessions, up)


# ---------------------------------------------------------------------------------------------- run
@dataclass
class Event:
    name: str
    at: float  # s since the callers started
    done_at: float | None = None  # the rollout finished / the replicas were back
    detail: str = ""


@dataclass
class Run:
    started: float
    callers: list[list[SessionLog]]
    snapshots: list[Snapshot] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    result: RunResult = field(default_factory=lambda: RunResult("upgrades", 0))
    ended: float = math.nan  # s since the callers started, when they hung up

    def t(self, monotonic: float) -> float:
        return monotonic - self.started


async def caller(run: Run, ws_url: str, index: int, until: float, material: Any, noise: Any) -> None:
    """One user: talks until `until`, reconnecting at once whenever a connection ends."""
    await asyncio.sleep(index * 0.5)
    while time.monotonic() < until:
        log = SessionLog(time.monotonic())
        run.callers[index].append(log)
        await run_client(ws_url, index, 0, material, noise, run.result, None, until, start_after_s=0, log=log)
        if log.opened_at is None:
            await asyncio.sleep(0.2)  # refused or unreachable: try again shortly


async def wait_until(run: Run, done: Any, within_s: float, observer: Observer) -> float | None:
    """Snapshots every second until `done(snapshot)` holds; when it did (s), or None at the timeout."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        snap = await asyncio.to_thread(observer.snapshot, run.t(time.monotonic()))
        run.snapshots.append(snap)
        if done(snap):
            return snap.t
        await asyncio.sleep(1.0)
    return None


async def sample_for(run: Run, seconds: float, observer: Observer) -> None:
    await wait_until(run, lambda s: False, seconds, observer)


async def scenario(
    run: Run,
    cluster: LocalCluster,
    config: dict[str, Any],
    workdir: Path,
    observer: Observer,
    settle_s: float,
    only_router: bool = False,
) -> None:
    await sample_for(run, settle_s, observer)
    for name, (deployment, num_cpus) in UPGRADES.items():
        if only_router and deployment != "Router":
            continue
        before = run.snapshots[-1].running(deployment)
        config = with_num_cpus(config, deployment, num_cpus)
        path = workdir / f"{name.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        event = Event(name, run.t(time.monotonic()), detail=f"{short(deployment)} num_cpus → {num_cpus}")
        run.events.append(event)
        await asyncio.to_thread(cluster.deploy, path)

        def rolled(s: Snapshot, d: str = deployment, old: set[str] = before) -> bool:
            now = s.running(d)
            return len(now) >= REPLICAS and not now & old and not s.others(d)

        event.done_at = await wait_until(run, rolled, 180, observer)
        await sample_for(run, settle_s, observer)
    if only_router:
        return
    # Kill the worker node that holds a router replica (the most replicas, if several do).
    snap = run.snapshots[-1]
    per_node = Counter(r.node for rs in snap.replicas.values() for r in rs if r.state == "RUNNING")
    router_nodes = {r.node for r in snap.replicas.get("Router", []) if r.state == "RUNNING"}
    victim = max(router_nodes, key=lambda n: per_node[n])
    node = next(n for n in cluster.nodes if n.name == victim)
    lost = {d: {r.id for r in rs if r.node == victim} for d, rs in snap.replicas.items()}
    event = Event(
        "node killed",
        run.t(time.monotonic()),
        detail=f"{victim}: " + ", ".join(f"{short(d)} {len(ids)}" for d, ids in lost.items() if ids),
    )
    run.events.append(event)
    for pid in session_members(node.process.pid) | {node.process.pid}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def recovered(s: Snapshot) -> bool:
        return all(
            len(s.running(d)) >= REPLICAS and not s.running(d) & lost.get(d, set()) for d in DEPLOYMENTS
        )

    event.done_at = await wait_until(run, recovered, 240, observer)
    await sample_for(run, settle_s, observer)


async def measure(
    ws_url: str, cluster: LocalCluster, config: dict[str, Any], workdir: Path, args: Any
) -> Run:
    material = utterances()
    noise = to_frames(room_noise(10, seed=11))
    run = Run(time.monotonic(), [[] for _ in range(args.sessions)])
    observer = Observer(cluster)
    far = time.monotonic() + 3600  # the callers run until the scenario is over
    tasks = [asyncio.create_task(caller(run, ws_url, i, far, material, noise)) for i in range(args.sessions)]
    with tqdm(desc="upgrades", unit="event", total=1 if args.no_drain else len(UPGRADES) + 1) as bar:

        async def progress() -> None:
            while True:
                await asyncio.sleep(2)
                bar.n = sum(e.done_at is not None for e in run.events)
                turns = sum(len(log.completed) for logs in run.callers for log in logs)
                bar.set_postfix_str(
                    f"{run.events[-1].name if run.events else 'talking'}, {turns} turns,"
                    f" {sum(len(logs) for logs in run.callers) - args.sessions} reconnects",
                    refresh=True,
                )

        ticker = asyncio.create_task(progress())
        try:
            await scenario(run, cluster, config, workdir, observer, args.settle_s, args.no_drain)
        finally:
            ticker.cancel()
    run.ended = run.t(time.monotonic())
    # The callers hang up (a turn in progress now is dropped by us, and counted nowhere).
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return run


# ---------------------------------------------------------------------------------------------- analysis
def journaled(path: Path) -> dict[str, str]:
    """turn id → user id of every row of the memory journal (read after the cluster has stopped)."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT turn_id, user_id FROM turns").fetchall())


@dataclass
class Gap:
    """A caller without a session: from the end of one connection to the next `session.created`."""

    caller: int
    lost_at: float  # s since the start
    reconnect_s: float | None  # None: no new session before the run ended
    notice: bool  # the server said `server_restarting` and closed with 1012 first
    close_code: int | None


def gaps(run: Run) -> list[Gap]:
    result = []
    for i, logs in enumerate(run.callers):
        lost: SessionLog | None = None
        for log in logs:
            if log.opened_at is not None and lost is not None:
                assert lost.closed_at is not None
                result.append(
                    Gap(
                        i,
                        run.t(lost.closed_at),
                        log.opened_at - lost.closed_at,
                        lost.close_code == 1012,
                        lost.close_code,
                    )
                )
                lost = None
            if log.opened_at is not None and log.closed_at is not None and run.t(log.closed_at) < run.ended:
                lost = log
        if lost is not None and lost.closed_at is not None:
            result.append(Gap(i, run.t(lost.closed_at), None, lost.close_code == 1012, lost.close_code))
    return result


def window_of(run: Run, t: float) -> str:
    """The event whose window `t` falls in (from the event until the next one), or `before`."""
    name = "before"
    for event in run.events:
        if t >= event.at:
            name = event.name
    return name


def in_window(run: Run, outcome: str, start: float, end: float) -> int:
    """How many questions of every caller ended with `outcome` (a `SessionLog` list) in [start, end)."""
    return sum(
        start <= run.t(at) < end for logs in run.callers for log in logs for at in getattr(log, outcome)
    )


def event_rows(run: Run) -> list[dict[str, Any]]:
    all_gaps = gaps(run)
    errors = [(run.t(at), code) for logs in run.callers for log in logs for at, code in log.errors]
    turn_ends = [run.t(turn.ended_at) for turn in run.result.turns]
    rows = []
    bounds = [("before", 0.0), *((e.name, e.at) for e in run.events)]
    for k, (name, start) in enumerate(bounds):
        end = bounds[k + 1][1] if k + 1 < len(bounds) else run.ended
        event = next((e for e in run.events if e.name == name), None)
        mine = [g for g in all_gaps if window_of(run, g.lost_at) == name]
        reconnects = [g.reconnect_s for g in mine if g.reconnect_s is not None]
        rows.append(
            {
                "window": name,
                "from_s": start,
                "to_s": end,
                "detail": event.detail if event else "",
                "done_after_s": None if event is None or event.done_at is None else event.done_at - event.at,
                "turns": sum(start <= t < end for t in turn_ends),
                "errors": dict(Counter(code for t, code in errors if start <= t < end)),
                "notices": sum(g.notice for g in mine),
                "cut": sum(not g.notice for g in mine),
                "cut_turns": in_window(run, "cut_turns", start, end),
                "failed_turns": in_window(run, "failed_turns", start, end),
                "hanging_turns": in_window(run, "timed_out_turns", start, end),
                "reconnect_p50_s": statistics.median(reconnects) if reconnects else None,
                "reconnect_max_s": max(reconnects) if reconnects else None,
                "not_reconnected": sum(g.reconnect_s is None for g in mine),
            }
        )
    return rows


def caller_rows(run: Run) -> list[dict[str, Any]]:
    all_gaps = gaps(run)
    rows = []
    for i, logs in enumerate(run.callers):
        mine = [g for g in all_gaps if g.caller == i]
        reconnects = [g.reconnect_s for g in mine if g.reconnect_s is not None]
        rows.append(
            {
                "caller": i,
                "connections": sum(log.opened_at is not None for log in logs),
                "failed_attempts": sum(log.opened_at is None for log in logs),
                "turns": sum(len(log.completed) for log in logs),
                "errors": dict(Counter(code for log in logs for _, code in log.errors)),
                "notices": sum(g.notice for g in mine),
                "cut": sum(not g.notice for g in mine),
                "cut_turns": sum(len(log.cut_turns) for log in logs),
                "failed_turns": sum(len(log.failed_turns) for log in logs),
                "hanging_turns": sum(len(log.timed_out_turns) for log in logs),
                "reconnect_max_s": max(reconnects) if reconnects else None,
            }
        )
    return rows


def memory_row(run: Run, journal: dict[str, str]) -> dict[str, Any]:
    acknowledged = {
        turn_id: f"load-{i}"
        for i, logs in enumerate(run.callers)
        for log in logs
        for turn_id in log.completed
    }
    lost = sorted(t for t in acknowledged if t not in journal)
    wrong_user = sorted(t for t, user in acknowledged.items() if t in journal and journal[t] != user)
    return {
        "acknowledged": len(acknowledged),
        "journaled": len(journal),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "wrong_user": len(wrong_user),
        "journaled_not_acknowledged": len(set(journal) - set(acknowledged)),
    }


def open_sessions(run: Run, t: float) -> int:
    """Callers with an open session at `t` (s since the start)."""
    return sum(
        log.opened_at is not None
        and run.t(log.opened_at) <= t
        and (log.closed_at is None or run.t(log.closed_at) > t)
        for logs in run.callers
        for log in logs
    )


def placement_rows(run: Run) -> list[dict[str, Any]]:
    """Per event: the replicas it replaced, and the sessions open once they had all stopped (which the
    new replicas therefore hold)."""
    rows = []
    for event in run.events:
        before = [s for s in run.snapshots if s.t < event.at]
        after = [s for s in run.snapshots if event.done_at is not None and s.t >= event.done_at]
        if not before or not after:
            continue
        old, new = before[-1], after[0]
        for d in DEPLOYMENTS:
            gone = old.running(d) - new.running(d)
            if not gone:
                continue
            rows.append(
                {
                    "event": event.name,
                    "deployment": d,
                    "old": sorted(r[:8] for r in gone),
                    "new": sorted(r[:8] for r in new.running(d) - old.running(d)),
                    "old_left": sum(r.id in gone for r in new.replicas.get(d, [])),
                    "at_s": new.t,
                    "open_sessions": open_sessions(run, new.t),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------- report
def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _codes(errors: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(errors.items())) or "0"


def report(run: Run, rows: dict[str, Any]) -> str:
    sessions = len(run.callers)
    lines = [
        f"{sessions} callers talking all the time; {run.ended:.0f} s. Times in s since the first caller.",
        "",
        "| window | from s | change | done after s | turns completed | error events | told to reconnect"
        " (1012) | cut | turns cut | turns failed | turns hanging | reconnect p50 s | max s |",
        "|" + "---|" * 13,
    ]
    for r in rows["events"]:
        lines.append(
            f"| {r['window']} | {r['from_s']:.0f} | {r['detail'] or '—'} | {_f(r['done_after_s'], 0)}"
            f" | {r['turns']} | {_codes(r['errors'])} | {r['notices']} | {r['cut']} | {r['cut_turns']}"
            f" | {r['failed_turns']} | {r['hanging_turns']} | {_f(r['reconnect_p50_s'])}"
            f" | {_f(r['reconnect_max_s'])} |"
        )
    lines += [
        "",
        "| caller | connections | turns completed | error events | told to reconnect | cut | turns cut"
        " | turns failed | turns hanging | longest reconnect s |",
        "|" + "---|" * 10,
    ]
    for r in rows["callers"]:
        lines.append(
            f"| load-{r['caller']} | {r['connections']} | {r['turns']} | {_codes(r['errors'])}"
            f" | {r['notices']} | {r['cut']} | {r['cut_turns']} | {r['failed_turns']} | {r['hanging_turns']}"
            f" | {_f(r['reconnect_max_s'])} |"
        )
    m = rows["memory"]
    lines += [
        "",
        f"Memory journal: {m['acknowledged']} replies the callers saw complete, {m['journaled']} turns"
        f" journaled; **{m['lost']} lost** (acknowledged, not journaled), {m['wrong_user']} under another"
        f" user, {m['journaled_not_acknowledged']} journaled that no caller saw complete.",
        "",
        "| event | deployment | replicas replaced | by | all old ones gone at s | sessions open then"
        " (all on new replicas) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows["placement"]:
        lines.append(
            f"| {r['event']} | {short(r['deployment'])} | {', '.join(r['old'])} | {', '.join(r['new'])}"
            f" | {r['at_s']:.0f} | {r['open_sessions']} |"
        )
    return "\n".join(lines)


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(12, 9), sharex=True, height_ratios=(3, 2))
    ax = axes[0]
    for i, logs in enumerate(run.callers):
        for log in logs:
            if log.opened_at is None:
                ax.plot([run.t(log.connected_at)], [i], "x", color="grey", ms=4)
                continue
            end = run.t(log.closed_at) if log.closed_at is not None else run.ended
            colour = "tab:orange" if log.close_code == 1012 else "tab:blue"
            ax.broken_barh([(run.t(log.opened_at), end - run.t(log.opened_at))], (i - 0.3, 0.6), color=colour)
            for at, _code in log.errors:
                ax.plot([run.t(at)], [i], "v", color="red", ms=5)
    ax.set_yticks(range(len(run.callers)), [f"load-{i}" for i in range(len(run.callers))], fontsize=7)
    ax.set_title(
        "each caller's connections (orange: ended by the restart notice, blue: otherwise;"
        " red ▼ error events; grey x failed attempts)"
    )
    ax = axes[1]
    times = [snap.t for snap in run.snapshots]
    for d in DEPLOYMENTS:
        ax.step(
            times, [len(snap.running(d)) for snap in run.snapshots], where="post", label=f"{short(d)} running"
        )
    ax.step(
        times,
        [sum(snap.others(d) for d in DEPLOYMENTS) for snap in run.snapshots],
        where="post",
        color="grey",
        ls=":",
        label="replicas starting or stopping",
    )
    ax.set_ylabel("replicas")
    ax.set_title("replicas per deployment (dashed: a change deployed or a node killed; dotted green: done)")
    ax.legend(fontsize=7, loc="upper right", ncol=3)
    ax.set_xlabel("seconds since the first caller")
    for a in axes:
        a.grid(alpha=0.3)
        for event in run.events:
            a.axvline(event.at, color="black", lw=0.8, ls="--")
            if event.done_at is not None:
                a.axvline(event.done_at, color="green", lw=0.8, ls=":")
    for event in run.events:
        axes[0].text(event.at, len(run.callers) - 0.2, f" {event.name}", fontsize=8, va="bottom")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=10, help="callers talking at once")
    parser.add_argument("--settle-s", type=float, default=30, help="seconds of talking between events")
    parser.add_argument(
        "--no-drain",
        action="store_true",
        help="the router upgrade only, with the router's session drain off (`drain_sessions: false`):"
        " what Serve and HAProxy do to the sessions of a replaced replica by themselves",
    )
    parser.add_argument("--name", default="upgrades", help="result file stem")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="voice-upgrades-"))
    print(f"work dir {workdir}", flush=True)
    journal_path = workdir / "memory-journal.db"
    sim_llm, llm_base = start_sim_llm(workdir)
    cluster = LocalCluster(workdir)
    try:
        cluster.start(WORKERS, WORKER_CPUS)
        port = free_port()
        config = upgrade_config(port, llm_base, journal_path, drain=not args.no_drain)
        config_path = workdir / "serve_config.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cluster.deploy(config_path)
        wait_ready(f"http://127.0.0.1:{port}", cluster)
        run = asyncio.run(measure(f"ws://127.0.0.1:{port}/v1", cluster, config, workdir, args))
    finally:
        cluster.stop()
        sim_llm.terminate()
        sim_llm.wait()
    journal = journaled(journal_path)
    rows = {
        "events": event_rows(run),
        "callers": caller_rows(run),
        "memory": memory_row(run, journal),
        "placement": placement_rows(run),
    }
    text = report(run, rows)
    print("\n" + text)
    (out / f"{args.name}.md").write_text(text + "\n")
    (out / f"{args.name}.json").write_text(
        json.dumps(
            {
                "events": [vars(e) for e in run.events],
                "rows": rows,
                "gaps": [vars(g) for g in gaps(run)],
                "callers": [[vars(log) for log in logs] for logs in run.callers],
                "snapshots": [
                    {
                        "t": s.t,
                        "sessions": s.sessions,
                        "replicas": {d: [vars(r) for r in rs] for d, rs in s.replicas.items()},
                    }
                    for s in run.snapshots
                ],
                "started": run.started,
            },
            indent=1,
            default=str,
        )
    )
    plot(run, out / f"{args.name}.png")
    print(f"results in {out}/{args.name}.{{md,json,png}}")


if __name__ == "__main__":
    main()
