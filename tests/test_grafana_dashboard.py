"""The Grafana dashboard (k8s/base/dashboards/voice-agent.json): valid against Grafana's own dashboard
models, and every PromQL query names a metric that the app or Ray really exports."""

from __future__ import annotations

import ast
import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard
from prometheus_client import REGISTRY, CollectorRegistry

from serve_app.programs.grafana_dashboard import dashboard_json

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "k8s" / "base" / "dashboards" / "voice-agent.json"
RAY_PACKAGE = Path(ray.__file__).parent

plugins.register_default_plugins()  # panel options and Prometheus queries decode to their typed models


# -------------------------------------------------------------------------- what the app exports
def _sample_names(kind: str, name: str) -> set[str]:
    """The series names a metric family exposes, by Prometheus' text-format conventions."""
    if kind == "counter":
        return {name if name.endswith("_total") else f"{name}_total"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


def _project_modules() -> Iterator[str]:
    for package in ("actors", "serve_app"):
        for path in (ROOT / package).rglob("*.py"):
            if "prometheus_client import" in path.read_text():
                yield ".".join(path.relative_to(ROOT).with_suffix("").parts)


def app_metric_names() -> set[str]:
    """Every series of the app's prometheus_client metrics: the registries after importing every module
    that defines some (the router's /metrics serves the default registry and the memory actor's)."""
    registries: list[CollectorRegistry] = [REGISTRY]
    for module in _project_modules():
        loaded = importlib.import_module(module)
        registries += [v for v in vars(loaded).values() if isinstance(v, CollectorRegistry)]
    names: set[str] = set()
    for registry in registries:
        # Described, not collected: collecting runs callback gauges (the router's loop-task count needs
        # its event loop). The registry keeps its collectors in `_collector_to_names`.
        for collector, registered in list(registry._collector_to_names.items()):
            if not hasattr(collector, "describe"):  # Python's own (gc, process): the names it registered
                names |= set(registered)
                continue
            for family in collector.describe():
                names |= _sample_names(family.type, family.name)
    return names


_RAY_KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram"}


def _name_pattern(node: ast.expr | None) -> str | None:
    """A metric name argument as a regular expression: a literal, or an f-string whose fields (e.g. the
    protocol in Serve's `serve_num_{protocol}_requests`) match any name part."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        parts = [re.escape(v.value) if isinstance(v, ast.Constant) else "[a-z0-9_]+" for v in node.values]
        return "".join(parts)
    return None


def _ray_metric_definitions(path: Path) -> Iterator[tuple[str, str]]:
    """(kind, name pattern) of every ray.util.metrics metric a source file defines."""
    text = path.read_text(errors="replace")
    if "metrics" not in text:
        return
    tree = ast.parse(text)
    direct = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "ray.util.metrics"
        for alias in node.names
        if alias.name in _RAY_KINDS
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "metrics":
            kind = func.attr
        elif isinstance(func, ast.Name) and func.id in direct:
            kind = func.id
        else:
            continue
        if kind not in _RAY_KINDS:
            continue
        name = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
        pattern = _name_pattern(name)
        if pattern is not None:
            yield _RAY_KINDS[kind], pattern


def ray_metric_patterns() -> set[str]:
    """Ray's Prometheus series (as regular expressions) for the ray.util.metrics definitions in Serve and
    in this project: Ray's exporter prefixes each name with `ray_`."""
    sources = [*(RAY_PACKAGE / "serve").rglob("*.py"), *(ROOT / "serve_app").rglob("*.py")]
    patterns: set[str] = set()
    for path in sources:
        if "/tests/" in str(path):
            continue
        for kind, name in _ray_metric_definitions(path):
            patterns |= _sample_names(kind, f"ray_{name}")
    return patterns


class Exported:
    """The names the app's and Ray's exporters produce."""

    def __init__(self) -> None:
        self.names = app_metric_names()
        self.ray = re.compile("|".join(f"(?:{p})" for p in sorted(ray_metric_patterns())))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.names or self.ray.fullmatch(name) is not None)

    def missing(self, names: set[str]) -> set[str]:
        return {n for n in names if n not in self}


# --------------------------------------------------------------------------------- PromQL names
_NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not a function or aggregation
    (followed by a parenthesis), a keyword, a label, a duration or a string."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for found in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", text):
        if text[found.end() :].lstrip().startswith("("):
            continue
        if found.group(0).lower() not in _NOT_METRICS:
            names.add(found.group(0))
    return names


def test_metric_names_are_read_out_of_promql() -> None:
    quantile = (
        "histogram_quantile(0.95, sum by (le, deployment) "
        '(rate(ray_serve_x_bucket{application="a b"}[$__rate_interval])))'
    )
    assert metric_names(quantile) == {"ray_serve_x_bucket"}
    ratio = "sum(voice_a) / ignoring(x) sum without (pod) (voice_b) > bool 0.5"
    assert metric_names(ratio) == {"voice_a", "voice_b"}
    assert metric_names('max by (deployment) (ray_voice_autoscaling_load{metric=~"utt.*"} offset 5m)') == {
        "ray_voice_autoscaling_load"
    }


def test_the_derived_names_follow_rays_own_dashboards() -> None:
    # Ray's own Serve dashboards query these series: the prefix and suffix rules above must produce them.
    dashboards = RAY_PACKAGE / "dashboard" / "modules" / "metrics" / "dashboards"
    panels = (dashboards / "serve_dashboard_panels.py").read_text()
    used = set(re.findall(r"\bray_serve_\w+", panels))
    assert len(used) > 10
    assert Exported().missing(used) == set()


# ------------------------------------------------------------------------------------ the dashboard
def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_the_committed_dashboard_is_the_generated_one() -> None:
    assert json.loads(DASHBOARD.read_text()) == dashboard_json()


def test_the_dashboard_is_valid_for_grafanas_dashboard_models() -> None:
    board = json.loads(DASHBOARD.read_text())
    # Decoded into Grafana's typed models and encoded again, nothing may be lost or added: an unknown or
    # misplaced key anywhere (dashboard, panel, options, field config, query) would not survive.
    assert json.loads(json.dumps(Dashboard.from_json(board), cls=JSONEncoder)) == board
    broken = json.loads(DASHBOARD.read_text())
    panels(broken)[0]["targets"][0]["exprr"] = "voice_sessions_open"
    assert json.loads(json.dumps(Dashboard.from_json(broken), cls=JSONEncoder)) != broken
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = [
        (x, y)
        for grid in (p["gridPos"] for p in board["panels"])
        for x in range(grid["x"], grid["x"] + grid["w"])
        for y in range(grid["y"], grid["y"] + grid["h"])
    ]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels(board))


def test_every_query_names_a_metric_the_app_or_ray_exports() -> None:
    exported = Exported()
    assert "voice_e2e_latency_ms_bucket" in exported and "ray_voice_autoscaling_load" in exported
    queried: set[str] = set()
    for panel in panels(json.loads(DASHBOARD.read_text())):
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, target["expr"]
            missing = sorted(exported.missing(names))
            assert not missing, f"{panel['title']}: {missing} not exported"
            queried |= names
    # What the dashboard is for: each stage's latency, replicas, sessions, queues and memory lag.
    for wanted in (
        "voice_e2e_latency_ms_bucket",
        "voice_transcription_delay_ms_bucket",
        "voice_llm_ttft_ms_bucket",
        "voice_tts_ttfb_ms_bucket",
        "ray_serve_deployment_processing_latency_ms_bucket",
        "ray_serve_deployment_replica_healthy",
        "voice_sessions_open",
        "ray_serve_deployment_queued_queries",
        "voice_memory_queue_depth",
        "voice_memory_lag_seconds_bucket",
    ):
        assert wanted in queried, wanted


@pytest.mark.parametrize("typo", ["voice_sessions_opened", "ray_serve_deployment_replica_health"])
def test_a_misspelled_metric_is_caught(typo: str) -> None:
    assert typo not in Exported()
