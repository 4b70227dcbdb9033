"""The Grafana dashboard of the voice metrics (`k8s/base/dashboards/voice-agent.json`).

Built with Grafana's own typed SDK (grafana-foundation-sdk, generated from Grafana's dashboard schema),
so the JSON has only fields Grafana defines. Two kinds of series, both scraped by `k8s/base/podmonitor.yaml`:

- the app's own (`voice_*`, prometheus_client): the router's `/metrics` answers them for the whole
  deployment (every router replica's figures merged, plus the memory actor's), so it is scraped on one pod;
- Ray's (`ray_*`): Serve's replica, queue and latency metrics, and `ray_voice_autoscaling_load` from
  `serve_app/autoscaling.py` (Ray prefixes every `ray.util.metrics` name with `ray_`), on every pod's
  metrics port.

`python -m serve_app.programs.k8s_manifests` writes it; the tests check that every query names a metric
the app or Ray exports.
"""

from __future__ import annotations

import json
from typing import Any

from grafana_foundation_sdk.builders import common, dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, TooltipDisplayMode
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

from actors.conversation.metrics import TURN_METRIC_NAMES

UID = "voice-agent"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
APP = 'application="voice-agent"'
RATE = "[$__rate_interval]"


def _quantiles(metric: str, label: str, by: str = "") -> list[tuple[str, str]]:
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{label}{RATE})))",
            f"{legend}p{int(q * 100)}",
        )
        for q in (0.5, 0.95)
    ]


def _panel(title: str, unit: str, queries: list[tuple[str, str]], description: str, x: int, y: int) -> Any:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .grid_pos(_grid(x, y))
        .legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .calcs([])
        )
        .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI))
        .line_width(1)
        .fill_opacity(10)
    )
    for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
    return panel


def _grid(x: int, y: int) -> GridPos:
    return GridPos(h=8, w=12, x=x, y=y)


def _rows() -> list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]]:
    turn = [
        (
            f"Turn: {name.replace('_', ' ')}",
            "ms",
            _quantiles(f"voice_{name}_ms", ""),
            f"Per-turn {name} (response.done metadata), p50 and p95 over the deployment.",
        )
        for name in TURN_METRIC_NAMES
    ]
    stages = [
        (
            "Stage call latency (Serve)",
            "ms",
            _quantiles("ray_serve_deployment_processing_latency_ms", f"{{{APP}}}", "deployment"),
            "Time a replica spends on one call, per deployment (a streamed call: until its last item).",
        ),
        (
            "Turns and errors",
            "reqps",
            [
                ("sum by (status) (rate(voice_turns_total[$__rate_interval]))", "{{status}}"),
                ("sum by (code) (rate(voice_client_errors_total[$__rate_interval]))", "error {{code}}"),
                (
                    "sum by (outcome) (rate(voice_preemptive_replies_total[$__rate_interval]))",
                    "early {{outcome}}",
                ),
            ],
            "Finished responses by status, error events sent to clients by code, early replies used or not.",
        ),
    ]
    load = [
        (
            "Sessions",
            "short",
            [
                ("sum(voice_sessions_open)", "realtime sessions"),
                ("sum(voice_rest_requests_in_flight)", "REST requests"),
            ],
            "What the routers hold now.",
        ),
        (
            "Replicas per deployment",
            "short",
            [
                (
                    f"sum by (deployment) (ray_serve_deployment_replica_healthy{{{APP}}})",
                    "{{deployment}} running",
                ),
                (
                    f"max by (deployment) (ray_serve_autoscaling_target_replicas{{{APP}}})",
                    "{{deployment}} target",
                ),
            ],
            "Healthy replicas and the autoscaler's target.",
        ),
        (
            "Autoscaling load",
            "short",
            [
                ("max by (deployment) (ray_voice_autoscaling_load)", "{{deployment}} work in progress"),
                (
                    f"max by (deployment) (ray_serve_autoscaling_total_requests{{{APP}}})",
                    "{{deployment}} ongoing",
                ),
            ],
            "Each stage's work in progress as its policy divides it (utterances, replies, phrases), and "
            "Serve's ongoing requests (the router's sessions).",
        ),
        (
            "Queue depth",
            "short",
            [
                (
                    f"sum by (deployment) (ray_serve_deployment_queued_queries{{{APP}}})",
                    "{{deployment}} queued",
                ),
                (
                    f"sum by (deployment) (ray_serve_replica_processing_queries{{{APP}}})",
                    "{{deployment}} processing",
                ),
                ("sum(voice_event_loop_tasks)", "router loop tasks"),
            ],
            "Calls waiting at the callers' handles for a replica, calls being processed, the routers' tasks.",
        ),
    ]
    memory = [
        (
            "Memory lag",
            "s",
            _quantiles("voice_memory_lag_seconds", ""),
            "Turn end to confirmed in Letta.",
        ),
        (
            "Memory queue",
            "short",
            [
                ("sum(voice_memory_queue_depth)", "turns not yet in Letta"),
                ("sum(voice_memory_facts_queue_depth)", "facts not yet in Letta"),
                ("sum(rate(voice_memory_backend_errors_total[$__rate_interval]))", "failed writes / s"),
            ],
            "The journal's backlog and failed Letta writes.",
        ),
        (
            "Letta writes",
            "s",
            _quantiles("voice_memory_flush_seconds", ""),
            "Duration of one write to Letta.",
        ),
        (
            "Memory journal",
            "bytes",
            [("sum(voice_memory_journal_bytes)", "journal on disk")],
            "Size of the journal on the head pod's volume.",
        ),
    ]
    # What breaks first as the cluster grows (README "Capacity plan").
    limits = [
        (
            "Serve controller loop",
            "s",
            [
                ("max(ray_serve_controller_control_loop_duration_s)", "last control loop"),
                ("max(rate(ray_serve_controller_num_control_loops[$__rate_interval]))", "loops / s"),
            ],
            "One controller runs every deployment's autoscaling and health checks; its loop slows first "
            "as replicas grow.",
        ),
        (
            "HAProxy processes",
            "short",
            [("max by (node_id) (ray_serve_haproxy_process_count)", "{{node_id}}")],
            "Each router replica added or removed reloads HAProxy on every node; the old process keeps its "
            "WebSockets until they end (RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S).",
        ),
    ]
    return [
        ("Turn latency", turn),
        ("Stages", stages),
        ("Load, replicas and queues", load),
        ("Memory", memory),
        ("Capacity limits", limits),
    ]


def build() -> Any:
    board = (
        dashboard.Dashboard("Voice agent")
        .uid(UID)
        .tags(["voice-agent", "ray-serve"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    y = 0
    next_id = 1
    for row_title, panels in _rows():
        board = board.with_row(dashboard.Row(row_title).id(next_id).grid_pos(_row_grid(y)))
        next_id += 1
        y += 1
        for i, (title, unit, queries, description) in enumerate(panels):
            x = 12 * (i % 2)
            board = board.with_panel(_panel(title, unit, queries, description, x, y).id(next_id))
            next_id += 1
            if i % 2 == 1 or i == len(panels) - 1:
                y += 8
    return board.build()


def _row_grid(y: int) -> GridPos:
    return GridPos(h=1, w=24, x=0, y=y)


def dashboard_json() -> dict[str, Any]:
    """The dashboard as Grafana imports it."""
    encoded: dict[str, Any] = json.loads(json.dumps(build(), cls=JSONEncoder))
    return encoded
