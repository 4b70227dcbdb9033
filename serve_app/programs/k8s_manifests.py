"""Writes what `k8s/` derives from `serve_config.yaml` and the app's metrics, or checks it is up to date.

    python -m serve_app.programs.k8s_manifests            # rewrite the derived files
    python -m serve_app.programs.k8s_manifests --check    # exit 1 naming each file that is out of date

Derived files:

- `k8s/base/rayservice.yaml`: its `serveConfigV2` block is `serve_config.yaml` with the cluster placement
  below (the rest of the file is edited by hand and kept as it is);
- `k8s/overlays/prod/serve-config.yaml`: the same with the production replica bounds (a patch: kustomize
  replaces a string field whole, so the prod overlay carries the whole config);
- `k8s/base/dashboards/voice-agent.json`: the Grafana dashboard (`serve_app/programs/grafana_dashboard.py`).

The cluster placement, and why it differs from `serve_config.yaml` (which must also run on a laptop):

- every deployment asks for one unit of a custom resource that only its worker group offers
  (`voice_router` or `voice_stages`): routers hold WebSockets for up to an hour and drain that long, stage
  replicas serve short calls and stop in seconds, so they live on pods with different termination
  settings; and no replica lands on the head, which runs with `num-cpus: 0` anyway;
- `num_cpus: 0.5` for every replica: a replica at its autoscaling target burns about half a core
  (README "Scaling out"), so a pod's logical CPUs fill as its real cores do. The laptop config uses
  smaller fractions so that five replicas fit on two cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "serve_config.yaml"
BASE_RAYSERVICE = ROOT / "k8s" / "base" / "rayservice.yaml"
PROD_SERVE_CONFIG = ROOT / "k8s" / "overlays" / "prod" / "serve-config.yaml"
DASHBOARD = ROOT / "k8s" / "base" / "dashboards" / "voice-agent.json"

ROUTER_RESOURCE = "voice_router"
STAGES_RESOURCE = "voice_stages"
# Deployment → the custom resource of the worker group it runs on.
PLACEMENT = {
    "Router": ROUTER_RESOURCE,
    "STTDeployment": STAGES_RESOURCE,
    "LLMDeployment": STAGES_RESOURCE,
    "TTSDeployment": STAGES_RESOURCE,
}
REPLICA_CPUS = 0.5
# Production bounds: the 1,000-session plan of README "Capacity plan" (router 50, STT 17, LLM 4, TTS 4
# replicas at their targets) with about a quarter of headroom, and at least two of each (two pods).
PROD_REPLICAS = {
    "Router": (2, 64),
    "STTDeployment": (2, 24),
    "LLMDeployment": (2, 8),
    "TTSDeployment": (2, 8),
}


def cluster_serve_config(
    config: dict[str, Any], replicas: dict[str, tuple[int, int]] | None = None
) -> dict[str, Any]:
    """`config` (serve_config.yaml) placed on the cluster's worker groups, with `replicas` bounds if given."""
    placed = copy.deepcopy(config)
    for app in placed["applications"]:
        for deployment in app["deployments"]:
            name = deployment["name"]
            if name not in PLACEMENT:
                raise ValueError(f"deployment {name} has no worker group in PLACEMENT")
            options = deployment.setdefault("ray_actor_options", {})
            options["num_cpus"] = REPLICA_CPUS
            options["resources"] = {PLACEMENT[name]: 1}
            if replicas is not None:
                low, high = replicas[name]
                deployment["autoscaling_config"].update(min_replicas=low, max_replicas=high)
    return placed


def _serve_config_text() -> str:
    """serve_config.yaml's own text, comments kept, less its opening comment (about running it locally)."""
    text = SERVE_CONFIG.read_text()
    return text[text.index("proxy_location:") :]


def placed_text(config_text: str) -> str:
    """serve_config.yaml's text with the placement written into each deployment's ray_actor_options."""
    out: list[str] = []
    name = ""
    for line in config_text.splitlines():
        found = re.match(r"\s*- name: (\S+)", line)
        if found:
            name = found.group(1)
        cpus = re.match(r"(\s*)num_cpus: ", line)
        if cpus and name in PLACEMENT:
            indent = cpus.group(1)
            out.append(f"{indent}num_cpus: {REPLICA_CPUS}")
            out.append(f"{indent}resources:")
            out.append(f"{indent}  {PLACEMENT[name]}: 1")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else "\n" for line in text.splitlines(keepends=True))


def render_base_rayservice(current: str) -> str:
    """`current` (k8s/base/rayservice.yaml) with its serveConfigV2 block rewritten."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    text = placed_text(_serve_config_text())
    if yaml.safe_load(text) != cluster_serve_config(config):
        raise ValueError("serve_config.yaml's text could not be placed line by line")
    start = current.index("  serveConfigV2: |\n") + len("  serveConfigV2: |\n")
    end = current.index("  rayClusterConfig:", start)
    return current[:start] + _indent(text, 4) + current[end:]


def render_prod_serve_config() -> str:
    config = cluster_serve_config(yaml.safe_load(SERVE_CONFIG.read_text()), PROD_REPLICAS)
    header = (
        "# Generated by `python -m serve_app.programs.k8s_manifests` from serve_config.yaml: the cluster\n"
        '# placement of k8s/base with the production replica bounds (README "Capacity plan").\n'
        "# Do not edit; edit serve_config.yaml or the generator and run it again.\n"
    )
    patch = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "voice-agent"},
        "spec": {"serveConfigV2": yaml.safe_dump(config, sort_keys=False, width=110)},
    }
    return header + yaml.safe_dump(patch, sort_keys=False, width=110)


def render_dashboard() -> str:
    from serve_app.programs.grafana_dashboard import dashboard_json  # the Grafana SDK is a dev extra

    return json.dumps(dashboard_json(), indent=2, sort_keys=True) + "\n"


def derived_files() -> dict[Path, str]:
    return {
        BASE_RAYSERVICE: render_base_rayservice(BASE_RAYSERVICE.read_text()),
        PROD_SERVE_CONFIG: render_prod_serve_config(),
        DASHBOARD: render_dashboard(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report files that are out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in derived_files().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    for path in stale:
        print(f"out of date: {path} (run python -m serve_app.programs.k8s_manifests)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
