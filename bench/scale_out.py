"""Scale-out proof: each stage autoscaling on its own load across a real multi-node Ray cluster.

    .venv/bin/python -m bench.scale_out    # the measured run (~8 min) → bench/results/scale_out.*
    .venv/bin/python -m bench.scale_out --sessions 4 --ramp-s 20 --hold-s 30 --tail-s 40   # a smoke run

`bench.upgrades` runs upgrades and a node failure under live sessions on the same cluster.

The cluster is three `ray start --block` nodes on this machine, each on free ports and its own temp dir:
a head with no CPUs (GCS, dashboard, Serve controller and the HAProxy ingress; no replica can land
there) and two worker nodes that offer the custom resource `voice_worker`, which every deployment of
the benchmark's config asks for. The app is deployed with `serve deploy` through the dashboard (as
KubeRay does) from a config derived from `serve_config.yaml` (see `derived_config` for each change and
why): the simulated providers of `bench.load`, one HTTP proxy on the head, and the same autoscaling
policies with smaller targets and shorter delays, so that ten sessions on two shared cores cross them
within minutes.

The load is `bench.load`'s microphone clients (`run_client`), ramped 0 → N → 0: one session starts
every ramp-s / N seconds, all hold for hold-s, then one ends every ramp-s / N seconds. Every
`--sample-s` seconds the benchmark reads Serve's application details from the dashboard (each
deployment's target and its running replicas with their nodes), the node names from the state API,
and the Ray metrics of the controller: each stage's load as its policy sees it (`voice_autoscaling_load`)
and the ongoing requests Serve's default policy would have divided (`serve_autoscaling_total_requests`),
both means over the same look-back window; HAProxy's view of the router replicas; and the CPU of every
process of the cluster. Every turn keeps its end time and latencies; every error its time.

Reported (→ bench/results/scale_out.{md,json,png}): per phase, turns, errors, client e2e and
orchestration overhead p50 / p95, the replicas of each deployment and the busy cores; the same latencies
while replicas were starting, draining, or neither; per deployment, when its load crossed its target,
when its replicas rose and fell, and where they ran; per deployment, the two signals at the plateau
(mean and coefficient of variation per session) and the CPU one work item costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from ray.util.state import list_nodes
from tqdm import tqdm

from bench.latency import SIM_ARGS, percentile, start_sim_llm
from bench.load import (
    RunResult,
    machine_busy_seconds,
    overhead_ms,
    process_cpu_seconds,
    room_noise,
    run_client,
    to_frames,
    utterances,
)
from testkit.serve_cluster import ROOT, free_port, serve_env, session_members, stop_ray_sessions

APP = "voice-agent"
DEPLOYMENTS = ("Router", "STTDeployment", "LLMDeployment", "TTSDeployment")
WORKER_RESOURCE = "voice_worker"
WORKERS = ("worker-1", "worker-2")
# Like the manifest's worker pods (2 CPUs each); both share this machine's two cores.
WORKER_CPUS = 2
# The benchmark's autoscaling: the shipped signals and policies, with targets that ten sessions cross,
# delays short enough for a run of minutes, and 1 → 2 replicas: every scale-up starts a process on the
# two cores everything here shares, so one step per deployment shows the scaling while disturbing the
# calls the least.
BENCH_AUTOSCALING: dict[str, dict[str, Any]] = {
    # Per session (measured): 1 session, ~0.54 utterances, ~0.056 replies, ~0.03 phrases in progress.
    # Each deployment crosses its target at another point of the ramp, so their new replicas do not
    # all start at once: STT at ~4 sessions, LLM at ~5, TTS at ~6, the router at 9.
    "Router": {"target_ongoing_requests": 8},  # sessions per router
    "STTDeployment": {"target_per_replica": 2.0},  # utterances in progress per replica
    "LLMDeployment": {"target_per_replica": 0.25},  # replies being generated per replica
    "TTSDeployment": {"target_per_replica": 0.18},  # phrases being synthesised per replica
}
BENCH_DELAYS = {"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 5, "downscale_delay_s": 30}


# ---------------------------------------------------------------------------------------------- cluster
@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    temp_dir: Path
    metrics_port: int


class LocalCluster:
    """A head node with no CPUs and worker nodes offering `WORKER_RESOURCE`, each `ray start --block` in
    its own session on free ports with its own temp dir; `stop()` ends exactly those sessions."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        # HAProxy's sockets live here: their paths must stay under 97 bytes.
        self.private_dir = Path(tempfile.mkdtemp(prefix="vsh-", dir="/tmp"))
        self.env = cluster_env(self.private_dir)
        self.nodes: list[Node] = []
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        # Short and private: Ray's Unix socket paths must stay under 108 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix="vso-", dir="/tmp"))
        metrics_port = free_port()
        env = {**self.env, "RAY_TMPDIR": str(temp_dir)}
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            f"--node-name={name}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={metrics_port}",
            *args,
        ]
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.nodes.append(Node(name, process, temp_dir, metrics_port))

    def start(self, workers: tuple[str, ...], worker_cpus: float) -> None:
        self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--num-cpus=0",  # no workloads on the head
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ],
        )
        self.wait_dashboard()
        # One at a time: nodes starting together on two busy cores can miss Ray's start-up deadline.
        for joined, name in enumerate(workers, start=2):
            self._start(
                name,
                [
                    f"--address=127.0.0.1:{self.gcs_port}",
                    f"--num-cpus={worker_cpus}",
                    f"--resources={json.dumps({WORKER_RESOURCE: 100})}",
                ],
            )
            self.wait_nodes(joined)

    def check_alive(self) -> None:
        for node in self.nodes:
            if node.process.poll() is not None:
                log = (self.workdir / f"{node.name}.log").read_text()[-3000:]
                raise RuntimeError(f"Ray node {node.name} exited:\n{log}")

    def wait_dashboard(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.dashboard_url}/api/version", timeout=5).status_code == 200:
                    return
            time.sleep(1)
        raise TimeoutError("the head node's dashboard did not answer")

    def wait_nodes(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if len(self.node_names()) >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes did not join")

    def node_names(self) -> dict[str, str]:
        """Node id → node name of the live nodes (state API)."""
        nodes = list_nodes(
            address=self.dashboard_url, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False
        )
        return {n.node_id: n.node_name for n in nodes}

    def deploy(self, config_path: Path) -> None:
        """`serve deploy` through the dashboard's REST API, as KubeRay applies a RayService."""
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "serve"),
                "deploy",
                "-a",
                self.dashboard_url,
                str(config_path),
            ],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"serve deploy failed:\n{result.stderr[-4000:]}")

    def haproxy_servers(self) -> list[dict[str, str]]:
        """HAProxy's view of the router replicas (its stats page): one row per server."""
        port = self.env["RAY_SERVE_HAPROXY_STATS_PORT"]
        text = httpx.get(f"http://127.0.0.1:{port}/stats;csv", timeout=5).text.lstrip("# ")
        rows = list(csv.DictReader(io.StringIO(text)))
        return [
            r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND") and r["pxname"].startswith("http-")
        ]

    def stop(self) -> None:
        stop_ray_sessions([n.process for n in self.nodes])
        for path in [self.private_dir, *(n.temp_dir for n in self.nodes)]:
            shutil.rmtree(path, ignore_errors=True)


def cluster_env(private_dir: Path) -> dict[str, str]:
    """Every node's environment: the Serve settings `scripts/run.sh` exports (with HAProxy's files and
    ports private to this cluster), the project on the path, no key for a real provider."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": str(ROOT),
            "OPENAI_API_KEY": "sim",  # the simulated LLM server takes any key
            # Ray metrics every 2 s instead of 10: only how finely the benchmark sees the autoscalers'
            # inputs (they reach the controller on their own path).
            "RAY_metrics_report_interval_ms": "2000",
            **serve_env(private_dir),
        }
    )
    return env


def derived_config(port: int, llm_base: str) -> dict[str, Any]:
    """serve_config.yaml with what this benchmark needs changed, and nothing else:

    - `proxy_location: HeadOnly`: every node here has the same address, so a proxy per node would bind
      the same port; one ingress on the head (as a single Kubernetes Service in front would be);
    - the HTTP port free-picked (the host stays 0.0.0.0: HAProxy on the head reaches each router replica
      at the machine's address, which a replica listening on 127.0.0.1 would refuse);
    - the simulated providers of `bench.load` (`args`);
    - every deployment asks for one unit of `WORKER_RESOURCE`, which only the worker nodes offer (the
      head has no CPUs either: replicas need some), and one replica of a deployment per node;
    - `BENCH_AUTOSCALING` targets and `BENCH_DELAYS`: same signals and policies, scaled to this machine.
    """
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"] = {**app["args"], **SIM_ARGS, "llm_base_url": llm_base}
    for deployment in app["deployments"]:
        deployment["ray_actor_options"]["resources"] = {WORKER_RESOURCE: 1}
        # Ray spreads replicas over nodes only as a best effort (one round robin over every actor the
        # controller starts): one per node puts a deployment's second replica on the other worker.
        deployment["max_replicas_per_node"] = 1
        autoscaling = deployment["autoscaling_config"]
        autoscaling.update(BENCH_DELAYS)
        override = BENCH_AUTOSCALING[deployment["name"]]
        if "policy" in autoscaling:
            autoscaling["policy"]["policy_kwargs"].update(override)
        else:
            autoscaling.update(override)
    return config


# ---------------------------------------------------------------------------------------------- sampling
@dataclass
class Sample:
    t: float  # seconds since the load started
    sessions: int
    machine_cores: float  # busy cores of the whole machine since the previous sample
    cluster_cores: float = 0.0  # of them, every process of our Ray nodes (replicas included)
    cores: dict[str, float] = field(default_factory=dict)  # deployment → its replicas' busy cores
    routers_up: int = 0  # router replicas HAProxy sends connections to
    via_fallback: int = 0  # connections HAProxy handed to Serve's Python proxy (no router was up)
    target: dict[str, int] = field(default_factory=dict)  # deployment → Serve's target replicas
    running: dict[str, dict[str, int]] = field(default_factory=dict)  # deployment → node → replicas
    starting: dict[str, int] = field(default_factory=dict)  # deployment → replicas starting
    stopping: dict[str, int] = field(default_factory=dict)  # deployment → replicas draining, stopping
    load: dict[str, float] = field(default_factory=dict)  # deployment → its policy's input
    serve_ongoing: dict[str, float] = field(default_factory=dict)  # what Serve's default policy divides

    def replicas(self, deployment: str) -> int:
        return sum(self.running.get(deployment, {}).values())


class Sampler:
    """Reads the cluster's state: Serve's application details (dashboard) and the autoscalers' inputs
    (the controller's Ray metrics)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.node_names = cluster.node_names()
        self.client = httpx.Client(timeout=10)
        self._busy = (time.monotonic(), machine_busy_seconds())
        self._cpu: dict[int, float] = {}  # CPU seconds of each process at the previous sample

    def _cpu_since_last(self, pids: set[int]) -> dict[int, float]:
        """CPU seconds each process used since the previous sample (0 for one seen the first time)."""
        used = {}
        for pid in pids:
            now = process_cpu_seconds(pid)
            if now is not None:
                used[pid] = now - self._cpu.get(pid, now)
                self._cpu[pid] = now
        return used

    def metrics(self) -> dict[str, dict[str, float]]:
        """The autoscalers' inputs per deployment, from the Ray metrics the head node exports (the
        Serve controller runs there): metric name → deployment → value."""
        wanted = ("ray_serve_autoscaling_total_requests", "ray_voice_autoscaling_load")
        series: dict[str, dict[str, float]] = defaultdict(dict)
        head = self.cluster.nodes[0]
        with contextlib.suppress(httpx.HTTPError):
            text = self.client.get(f"http://127.0.0.1:{head.metrics_port}/metrics").text
            # The export is ~1 MB: parse only the lines we read.
            lines = "\n".join(line for line in text.splitlines() if line.startswith(wanted))
            for family in text_string_to_metric_families(lines):
                for sample in family.samples:
                    if sample.labels.get("application", APP) == APP:
                        series[sample.name][sample.labels["deployment"]] = sample.value
        return series

    def sample(self, t: float, sessions: int) -> Sample:
        now, busy = time.monotonic(), machine_busy_seconds()
        elapsed = max(1e-6, now - self._busy[0])
        result = Sample(t, sessions, (busy - self._busy[1]) / elapsed)
        self._busy = (now, busy)
        used = self._cpu_since_last(
            set().union(*(session_members(n.process.pid) for n in self.cluster.nodes))
        )
        result.cluster_cores = sum(used.values()) / elapsed
        details = self.client.get(f"{self.cluster.dashboard_url}/api/serve/applications/").json()
        app = (details.get("applications") or {}).get(APP)
        for name, deployment in ((app or {}).get("deployments") or {}).items():
            result.target[name] = deployment["target_num_replicas"]
            per_node: dict[str, int] = defaultdict(int)
            for replica in deployment["replicas"]:
                result.cores[name] = (
                    result.cores.get(name, 0.0) + used.get(replica.get("pid") or 0, 0.0) / elapsed
                )
                if replica["state"] == "RUNNING":
                    node = self.node_names.get(replica["node_id"]) or replica["node_id"][:8]
                    per_node[node] += 1
                else:
                    states = result.stopping if replica["state"] == "STOPPING" else result.starting
                    states[name] = states.get(name, 0) + 1
            result.running[name] = dict(per_node)
        with contextlib.suppress(httpx.HTTPError):
            for server in self.cluster.haproxy_servers():
                if server["svname"].startswith("SERVE_REPLICA"):
                    result.routers_up += server["status"] == "UP"
                else:
                    result.via_fallback += int(server["scur"] or 0)
        metrics = self.metrics()
        result.serve_ongoing = metrics.get("ray_serve_autoscaling_total_requests", {})
        result.load = dict(metrics.get("ray_voice_autoscaling_load", {}))
        # The router's policy is Serve's own: ongoing requests, one per open session.
        result.load["Router"] = result.serve_ongoing.get("Router", 0.0)
        return result


# ---------------------------------------------------------------------------------------------- load
@dataclass
class Plan:
    sessions: int
    ramp_s: float
    hold_s: float
    tail_s: float

    @property
    def step_s(self) -> float:
        return self.ramp_s / self.sessions

    def start_s(self, i: int) -> float:
        return i * self.step_s

    def end_s(self, i: int) -> float:
        return self.ramp_s + self.hold_s + i * self.step_s

    @property
    def total_s(self) -> float:
        return self.end_s(self.sessions - 1) + self.tail_s

    def phase(self, t: float) -> str:
        if t < 0:
            return "idle before"
        if t < self.ramp_s:
            return "ramp up"
        if t < self.ramp_s + self.hold_s:
            return "plateau"
        if t < self.end_s(self.sessions - 1):
            return "ramp down"
        return "after"


PHASES = ("idle before", "ramp up", "plateau", "ramp down", "after")


@dataclass
class Run:
    plan: Plan
    started: float  # time.monotonic() when the load started
    result: RunResult
    samples: list[Sample] = field(default_factory=list)
    open_sessions: int = 0

    def t(self, monotonic: float) -> float:
        return monotonic - self.started


async def drive(run: Run, ws_url: str, sampler: Sampler, sample_s: float) -> None:
    """The sessions of the plan, and a sample every `sample_s` from now (before the load starts, for
    the idle baseline) until `tail_s` after the last session's end."""
    material = utterances()
    noise = to_frames(room_noise(10, seed=11))
    plan = run.plan
    sampled_from = run.t(time.monotonic())

    async def session(i: int) -> None:
        await asyncio.sleep(max(0.0, run.started + plan.start_s(i) - time.monotonic()))
        run.open_sessions += 1
        try:
            until = run.started + plan.end_s(i)
            await run_client(ws_url, i, 0, material, noise, run.result, None, until, start_after_s=0)
        finally:
            run.open_sessions -= 1

    async def sample_until(deadline: float, bar: tqdm) -> None:
        while time.monotonic() < deadline:
            next_at = time.monotonic() + sample_s
            t = run.t(time.monotonic())
            sample = await asyncio.to_thread(sampler.sample, t, run.open_sessions)
            run.samples.append(sample)
            bar.n = round(min(bar.total, t - sampled_from))
            bar.set_postfix_str(
                f"{run.open_sessions} sessions, replicas "
                + " ".join(f"{short(d)} {sample.replicas(d)}" for d in DEPLOYMENTS)
                + f", {len(run.result.turns)} turns, {len(run.result.errors)} errors",
                refresh=False,
            )
            bar.refresh()
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    with tqdm(total=round(plan.total_s - sampled_from), desc="scale-out", unit="s") as bar:
        sessions = [asyncio.create_task(session(i)) for i in range(plan.sessions)]
        sampler_task = asyncio.create_task(sample_until(run.started + plan.total_s, bar))
        await asyncio.gather(*sessions)
        await sampler_task


def short(deployment: str) -> str:
    return deployment.removesuffix("Deployment")


# ---------------------------------------------------------------------------------------------- analysis
def scaling_state(sample: Sample) -> str:
    """`scaling up` while a deployment has replicas starting or fewer running than its target,
    `scaling down` while one has replicas draining or more running than its target, else `steady`."""
    if any(sample.replicas(d) < sample.target.get(d, 0) or sample.starting.get(d, 0) for d in DEPLOYMENTS):
        return "scaling up"
    if any(sample.replicas(d) > sample.target.get(d, 0) or sample.stopping.get(d, 0) for d in DEPLOYMENTS):
        return "scaling down"
    return "steady"


def sample_at(samples: list[Sample], t: float) -> Sample:
    """The last sample taken at or before `t` (the first one before any)."""
    before = [s for s in samples if s.t <= t]
    return before[-1] if before else samples[0]


def target_of(deployment: str) -> float:
    override = BENCH_AUTOSCALING[deployment]
    return float(override.get("target_per_replica", override.get("target_ongoing_requests", 1)))


@dataclass
class TurnPoint:
    t: float  # when the reply ended, seconds since the load started
    client_e2e_ms: float
    overhead_ms: float | None


def turn_points(run: Run) -> list[TurnPoint]:
    return [
        TurnPoint(
            run.t(turn.ended_at),
            turn.client_e2e_ms,
            overhead_ms(turn) if {"e2e_latency", "end_of_turn_delay"} <= turn.server.keys() else None,
        )
        for turn in run.result.turns
    ]


def latency_row(points: list[TurnPoint], errors: int) -> dict[str, Any]:
    e2e = [p.client_e2e_ms for p in points]
    over = [p.overhead_ms for p in points if p.overhead_ms is not None]
    return {
        "turns": len(points),
        "errors": errors,
        "e2e_p50": percentile(e2e, 50),
        "e2e_p95": percentile(e2e, 95),
        "overhead_p50": percentile(over, 50),
        "overhead_p95": percentile(over, 95),
    }


def phase_rows(run: Run) -> list[dict[str, Any]]:
    points = turn_points(run)
    error_t = [run.t(t) for t in run.result.error_times]
    rows = []
    for phase in PHASES:
        samples = [s for s in run.samples if run.plan.phase(s.t) == phase]
        if not samples:
            continue
        row = {
            "phase": phase,
            "from_s": samples[0].t,
            "to_s": samples[-1].t,
            "sessions": max(s.sessions for s in samples),
            **latency_row(
                [p for p in points if run.plan.phase(p.t) == phase],
                sum(run.plan.phase(t) == phase for t in error_t),
            ),
            "machine_cores": statistics.mean(s.machine_cores for s in samples),
            "cluster_cores": statistics.mean(s.cluster_cores for s in samples),
        }
        for d in DEPLOYMENTS:
            counts = [s.replicas(d) for s in samples]
            row[d] = (min(counts), max(counts))
        rows.append(row)
    return rows


def scaling_rows(run: Run) -> list[dict[str, Any]]:
    """Turn latency and errors by what the cluster was doing when the turn ended (or the error came)."""
    points = turn_points(run)
    error_t = [run.t(t) for t in run.result.error_times]
    rows = []
    for state in ("steady", "scaling up", "scaling down"):
        mine = [p for p in points if scaling_state(sample_at(run.samples, p.t)) == state]
        errors = sum(scaling_state(sample_at(run.samples, t)) == state for t in error_t)
        rows.append({"state": state, **latency_row(mine, errors)})
    plateau = [
        p
        for p in points
        if run.plan.phase(p.t) == "plateau" and scaling_state(sample_at(run.samples, p.t)) == "steady"
    ]
    rows.append({"state": "steady, plateau only", **latency_row(plateau, 0)})
    return rows


def deployment_rows(run: Run) -> list[dict[str, Any]]:
    """Per deployment: its signal against its target over time, and what the replicas did."""
    rows = []
    min_replicas = BENCH_DELAYS["min_replicas"]
    load_ends = run.plan.end_s(run.plan.sessions - 1)
    for d in DEPLOYMENTS:
        target = target_of(d)
        loaded = [s for s in run.samples if s.t >= 0]
        crossed = next((s.t for s in loaded if s.load.get(d, 0.0) > target * min_replicas), None)
        rose = next((s.t for s in loaded if s.replicas(d) > min_replicas), None)
        peak = max(loaded, key=lambda s: (s.replicas(d), -s.t))
        # The load falls for good once no later sample asks for more than the minimum.
        above = [s.t for s in loaded if s.load.get(d, 0.0) > target * min_replicas]
        fell = next((s.t for s in loaded if above and s.t > above[-1]), None)
        back = next(
            (
                s.t
                for s in loaded
                if fell is not None
                and s.t >= fell
                and all(x.replicas(d) == min_replicas for x in loaded if x.t >= s.t)
            ),
            None,
        )
        on_every_worker = next(
            (s.t for s in loaded if all(s.running.get(d, {}).get(w, 0) >= 1 for w in WORKERS)), None
        )
        plateau = [s.load.get(d, 0.0) for s in loaded if run.plan.phase(s.t) == "plateau"]
        rows.append(
            {
                "deployment": d,
                "signal": "ongoing requests (sessions)" if d == "Router" else POLICY_METRIC[d],
                "target_per_replica": target,
                "plateau_load": statistics.mean(plateau) if plateau else float("nan"),
                "peak_replicas": peak.replicas(d),
                "peak_at_s": peak.t,
                "peak_placement": dict(sorted(peak.running.get(d, {}).items())),
                "on_every_worker_at_s": on_every_worker,
                "load_crossed_s": crossed,
                "replicas_rose_s": rose,
                "rise_after_s": None if crossed is None or rose is None else rose - crossed,
                "load_fell_s": fell,
                "back_to_min_s": back,
                "fall_after_s": None if fell is None or back is None else back - fell,
                "load_ended_s": load_ends,
            }
        )
    return rows


POLICY_METRIC = {"STTDeployment": "utterances", "LLMDeployment": "replies", "TTSDeployment": "phrases"}


def signal_rows(run: Run) -> list[dict[str, Any]]:
    """At the plateau: each stage's reported load against the ongoing requests Serve's default policy
    would divide, both per open session, with their sample-to-sample spread; and what one work item
    (a session for the router) costs its deployment in CPU, above what an idle replica costs."""
    plateau = [s for s in run.samples if run.plan.phase(s.t) == "plateau" and s.sessions]
    idle = [s for s in run.samples if run.plan.phase(s.t) == "idle before"][1:]  # the first has no CPU delta
    rows = []
    for d in DEPLOYMENTS:
        ours = [s.load.get(d, 0.0) / s.sessions for s in plateau]
        serve = [s.serve_ongoing.get(d, 0.0) / s.sessions for s in plateau]
        idle_per_replica = _mean([s.cores.get(d, 0.0) / max(1, s.replicas(d)) for s in idle])
        # A replica starting or stopping spends CPU on itself, not on the work: steady samples only.
        steady = [s for s in plateau if not s.starting.get(d) and not s.stopping.get(d)]
        items = _mean([float(s.sessions) if d == "Router" else s.load.get(d, 0.0) for s in steady])
        busy = _mean([s.cores.get(d, 0.0) - idle_per_replica * s.replicas(d) for s in steady])
        rows.append(
            {
                "deployment": d,
                "signal": "ongoing requests (sessions)" if d == "Router" else POLICY_METRIC[d],
                "ours_per_session": _mean(ours),
                "ours_cv": _cv(ours),
                "serve_per_session": _mean(serve),
                "serve_cv": _cv(serve),
                "serve_zero_share": sum(v == 0 for v in serve) / len(serve) if serve else float("nan"),
                "samples": len(plateau),
                "idle_cores_per_replica": idle_per_replica,
                "cores_per_item": busy / items if items else float("nan"),
            }
        )
    return rows


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("nan")


def _cv(values: list[float]) -> float:
    """Coefficient of variation: standard deviation ÷ mean."""
    if len(values) < 2 or statistics.mean(values) == 0:
        return float("nan")
    return statistics.stdev(values) / statistics.mean(values)


# ---------------------------------------------------------------------------------------------- report
def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def report(run: Run, rows: dict[str, list[dict[str, Any]]]) -> str:
    plan = run.plan
    lines = [
        f"{plan.sessions} sessions: one more every {plan.step_s:.1f} s for {plan.ramp_s:.0f} s, all for"
        f" {plan.hold_s:.0f} s, one fewer every {plan.step_s:.1f} s; then {plan.tail_s:.0f} s without load."
        f" {len(run.samples)} samples. Times in s since the first session opened.",
        "",
        "| phase | s | sessions | turns | errors | client e2e p50 | p95 | overhead p50 | p95 |"
        " Router | STT | LLM | TTS | busy cores: machine | our Ray nodes |",
        "|" + "---|" * 15,
    ]
    for r in rows["phases"]:
        replicas = " | ".join(
            f"{r[d][0]}" if r[d][0] == r[d][1] else f"{r[d][0]}–{r[d][1]}" for d in DEPLOYMENTS
        )
        lines.append(
            f"| {r['phase']} | {r['from_s']:.0f}–{r['to_s']:.0f} | {r['sessions']} | {r['turns']}"
            f" | {r['errors']} | {r['e2e_p50']:.0f} | {r['e2e_p95']:.0f}"
            f" | {r['overhead_p50']:.0f} | {r['overhead_p95']:.0f}"
            f" | {replicas} | {r['machine_cores']:.2f} | {r['cluster_cores']:.2f} |"
        )
    loaded = [x for x in run.samples if x.t >= 0]
    fallback = max(x.via_fallback for x in loaded)
    lines += [
        "",
        f"HAProxy (the ingress on the head) sent connections to {min(x.routers_up for x in loaded)}–"
        f"{max(x.routers_up for x in loaded)} router replicas; "
        + (f"up to {fallback} at a time" if fallback else "none")
        + " went to Serve's fallback proxy instead.",
    ]
    lines += [
        "",
        "| while the cluster was | turns | errors | client e2e p50 | p95 | overhead p50 | p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows["scaling"]:
        lines.append(
            f"| {r['state']} | {r['turns']} | {r['errors']} | {r['e2e_p50']:.0f} | {r['e2e_p95']:.0f}"
            f" | {r['overhead_p50']:.0f} | {r['overhead_p95']:.0f} |"
        )
    lines += [
        "",
        "| deployment | signal | target / replica | plateau load | load > target at | replicas up at"
        " | after | peak replicas (per node) | one on each worker at | load back under at | back to 1 at |"
        " after |",
        "|" + "---|" * 12,
    ]
    for r in rows["deployments"]:
        placement = ", ".join(f"{node} {n}" for node, n in r["peak_placement"].items())
        lines.append(
            f"| {r['deployment']} | {r['signal']} | {r['target_per_replica']:g} | {r['plateau_load']:.2f}"
            f" | {_s(r['load_crossed_s'])} | {_s(r['replicas_rose_s'])} | {_s(r['rise_after_s'])}"
            f" | {r['peak_replicas']} ({placement}) | {_s(r['on_every_worker_at_s'])}"
            f" | {_s(r['load_fell_s'])} | {_s(r['back_to_min_s'])} | {_s(r['fall_after_s'])} |"
        )
    lines += [
        "",
        "At the plateau, per open session: each stage's reported load (what its policy divides) against the"
        " ongoing requests Serve's default policy would divide (the controller's aggregate), with their"
        " coefficient of variation between samples; and the CPU of the deployment's replicas: an idle"
        " replica, and each work item above that (a session for the router):",
        "",
        "| deployment | signal | per session | CV | Serve's ongoing requests per session | CV | at 0 |"
        " idle replica cores | cores per item |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows["signals"]:
        lines.append(
            f"| {r['deployment']} | {r['signal']} | {r['ours_per_session']:.3f} | {r['ours_cv']:.2f}"
            f" | {r['serve_per_session']:.3f} | {r['serve_cv']:.2f} | {100 * r['serve_zero_share']:.0f} %"
            f" | {r['idle_cores_per_replica']:.3f} | {r['cores_per_item']:.3f} |"
        )
    if run.result.errors:
        kinds = sorted(set(run.result.errors))[:5]
        lines += ["", f"Errors: {kinds}"]
    return "\n".join(lines)


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = run.samples
    t = [s.t for s in samples]
    colours = dict(zip(DEPLOYMENTS, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    fig, axes = plt.subplots(5, 1, figsize=(12, 14), sharex=True)
    ax = axes[0]
    ax.step(t, [s.sessions for s in samples], where="post", color="black")
    ax.set_ylabel("open sessions")
    cores = ax.twinx()
    cores.plot(t, [s.machine_cores for s in samples], color="grey", alpha=0.6, lw=0.8)
    cores.plot(t, [s.cluster_cores for s in samples], color="tab:purple", alpha=0.6, lw=0.8)
    cores.set_ylabel("busy cores")
    ax.set_title(
        "load: open sessions (black); busy cores (right) of the machine (grey) and of our Ray nodes (purple)"
    )
    ax = axes[1]
    for d in DEPLOYMENTS:
        ax.step(
            t, [s.replicas(d) for s in samples], where="post", color=colours[d], label=f"{short(d)} running"
        )
        ax.step(t, [s.target.get(d, 0) for s in samples], where="post", color=colours[d], ls=":", alpha=0.7)
    ax.set_ylabel("replicas")
    ax.set_title("replicas per deployment (running; dotted: Serve's target)")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[2]
    rows = [(d, node) for d in DEPLOYMENTS for node in ("head", *WORKERS)]
    for row, (d, node) in enumerate(rows):
        spans: list[tuple[float, float]] = []
        for a, b in itertools.pairwise(samples):
            if a.running.get(d, {}).get(node, 0):
                if spans and abs(spans[-1][0] + spans[-1][1] - a.t) < 1e-6:
                    spans[-1] = (spans[-1][0], b.t - spans[-1][0])  # extend the bar
                else:
                    spans.append((a.t, b.t - a.t))
        ax.broken_barh(spans, (row - 0.35, 0.7), color=colours[d])
    ax.set_yticks(range(len(rows)), [f"{short(d)} on {node}" for d, node in rows], fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.invert_yaxis()
    ax.set_title("placement: when a replica of each deployment ran on each node (none may on the head)")
    ax = axes[3]
    for d in DEPLOYMENTS:
        target = target_of(d)
        ax.plot(t, [s.load.get(d, 0.0) / target for s in samples], color=colours[d], label=short(d))
        if d != "Router":
            ax.plot(
                t,
                [s.serve_ongoing.get(d, 0.0) / target for s in samples],
                color=colours[d],
                ls=":",
                alpha=0.6,
            )
    ax.axhline(1, color="black", lw=0.6)
    ax.set_ylim(0, 6)  # Serve's point samples jump far higher: clipped
    ax.set_ylabel("load ÷ target")
    ax.set_title(
        "signal ÷ target per replica: above 1 a deployment wants a second replica"
        " (dotted: Serve's ongoing requests ÷ the same, clipped)"
    )
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[4]
    points = turn_points(run)
    ax.scatter([p.t for p in points], [p.client_e2e_ms for p in points], s=6, label="client e2e")
    ax.scatter(
        [p.t for p in points if p.overhead_ms is not None],
        [p.overhead_ms for p in points if p.overhead_ms is not None],
        s=6,
        label="orchestration overhead",
    )
    for e in run.result.error_times:
        ax.axvline(run.t(e), color="red", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_xlabel("seconds since the first session opened")
    ax.set_title("turn latency at the reply's end (red lines: errors)")
    ax.legend(fontsize=8, loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
        for edge in (
            0,
            run.plan.ramp_s,
            run.plan.ramp_s + run.plan.hold_s,
            run.plan.end_s(run.plan.sessions - 1),
        ):
            ax.axvline(edge, color="grey", lw=0.5, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------------------- main
def wait_ready(base_url: str, cluster: LocalCluster, timeout: float = 240.0) -> None:
    """Until /readyz answers 200 (every stage has loaded its engine) and HAProxy sends connections to
    a router replica itself, not to Serve's fallback proxy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            ready = httpx.get(f"{base_url}/readyz", timeout=10).status_code == 200
            servers = cluster.haproxy_servers()
            if ready and any(
                s["svname"].startswith("SERVE_REPLICA") and s["status"] == "UP" for s in servers
            ):
                return
        time.sleep(1)
    raise TimeoutError(f"the agent was not ready (or HAProxy has no router up) in {timeout:.0f} s")


async def measure(run: Run, ws_url: str, sampler: Sampler, sample_s: float) -> None:
    warm = RunResult("warm-up", 1)
    # One unmeasured turn first, as bench.load does: the first reply pays one-time costs.
    await run_client(
        ws_url, 0, 1, utterances(), to_frames(room_noise(10, seed=11)), warm, None, start_after_s=0
    )
    run.started = time.monotonic() + BASELINE_S
    await drive(run, ws_url, sampler, sample_s)


BASELINE_S = 10.0  # idle samples before the first session


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the `finally` in main stops the cluster


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=10, help="sessions at the plateau")
    parser.add_argument("--ramp-s", type=float, default=100, help="seconds to open (and to close) them all")
    parser.add_argument("--hold-s", type=float, default=120, help="seconds at the plateau")
    parser.add_argument("--tail-s", type=float, default=90, help="seconds sampled after the last session")
    parser.add_argument("--sample-s", type=float, default=2, help="seconds between samples")
    parser.add_argument("--name", default="scale_out", help="result file stem")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="voice-scale-out-"))
    print(f"work dir {workdir}", flush=True)
    plan = Plan(args.sessions, args.ramp_s, args.hold_s, args.tail_s)
    run = Run(plan, started=math.inf, result=RunResult("scale-out", args.sessions))
    sim_llm, llm_base = start_sim_llm(workdir)
    cluster = LocalCluster(workdir)
    started = time.monotonic()
    try:
        cluster.start(WORKERS, WORKER_CPUS)
        nodes_up = time.monotonic() - started
        port = free_port()
        config_path = workdir / "serve_config.yaml"
        config_path.write_text(yaml.safe_dump(derived_config(port, llm_base), sort_keys=False))
        cluster.deploy(config_path)
        wait_ready(f"http://127.0.0.1:{port}", cluster)
        print(
            f"3 nodes up after {nodes_up:.0f} s, the app ready after {time.monotonic() - started:.0f} s",
            flush=True,
        )
        asyncio.run(measure(run, f"ws://127.0.0.1:{port}/v1", Sampler(cluster), args.sample_s))
    finally:
        cluster.stop()
        sim_llm.terminate()
        sim_llm.wait()
    rows = {
        "phases": phase_rows(run),
        "scaling": scaling_rows(run),
        "deployments": deployment_rows(run),
        "signals": signal_rows(run),
    }
    text = report(run, rows)
    print("\n" + text)
    (out / f"{args.name}.md").write_text(text + "\n")
    (out / f"{args.name}.json").write_text(
        json.dumps(
            {
                "plan": vars(plan),
                "autoscaling": {"targets": BENCH_AUTOSCALING, "delays": BENCH_DELAYS},
                "rows": rows,
                "samples": [vars(s) for s in run.samples],
                "turns": [vars(p) for p in turn_points(run)],
                "errors": [
                    [run.t(t), e] for t, e in zip(run.result.error_times, run.result.errors, strict=True)
                ],
            },
            indent=1,
        )
    )
    plot(run, out / f"{args.name}.png")
    print(f"results in {out}/{args.name}.{{md,json,png}}")


if __name__ == "__main__":
    main()
