"""The KubeRay kit in k8s/: every overlay rendered by the real kustomize, each object validated against its
CRD with unknown keys rejected, serveConfigV2 derived from serve_config.yaml and strictly checked, and the
pieces that must agree with each other (placement and worker groups, drains and grace periods, probes,
Secret keys and settings, the Serve environment) checked against each other. Nothing needs a cluster or
the network."""

from __future__ import annotations

import copy
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.serve._private.constants import DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S
from ray.serve.schema import ServeDeploySchema

from actors.config import Settings
from serve_app.programs import k8s_manifests
from serve_app.programs.config_check import check_serve_config, unknown_keys
from serve_app.serve_env import BINARY_PATH_ENV, HAPROXY_LAUNCHER, SERVE_ENV, haproxy_launcher

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
# Vendored CRDs (both Apache-2.0), so the checks need nothing outside the repository.
RAYSERVICE_CRD = K8S / "crd" / "ray.io_rayservices.v1.7.0.yaml"
PODMONITOR_CRD = K8S / "crd" / "monitoring.coreos.com_podmonitors.v0.93.0.yaml"
OVERLAYS = ("base", "overlays/dev", "overlays/prod", "overlays/prod-self-hosted-llm")
SERVE_CONFIG = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
IMAGE_UID = 1000  # the Dockerfile's USER
IMAGE_VENV = Path("/app/.venv")  # where the Dockerfile installs the project


def kustomize_command() -> list[str]:
    """The real kustomize: standalone, or the one built into kubectl (`kubectl kustomize`)."""
    if tool := shutil.which("kustomize"):
        return [tool, "build"]
    if tool := shutil.which("kubectl"):
        return [tool, "kustomize"]
    pytest.fail("rendering k8s/ needs kustomize or kubectl (kustomize v5) on PATH")


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _RENDERED:
        done = subprocess.run(
            [*kustomize_command(), str(K8S / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        _RENDERED[overlay] = [d for d in yaml.safe_load_all(done.stdout) if d]
    return copy.deepcopy(_RENDERED[overlay])


def strict(schema: Any) -> Any:
    """A CRD's schema as the API server applies it with strict field validation (kubectl's default):
    an object with declared properties takes no other key, unless it keeps unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(path: Path, version: str) -> Any:
    crd = yaml.safe_load(path.read_text())
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict(found["schema"]["openAPIV3Schema"])


SCHEMAS = {
    "RayService": crd_schema(RAYSERVICE_CRD, "v1"),
    "PodMonitor": crd_schema(PODMONITOR_CRD, "v1"),
}


def objects(overlay: str, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in render(overlay) if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def voice_agent(overlay: str) -> dict[str, Any]:
    (service,) = objects(overlay, "RayService", "voice-agent")
    return service


def groups(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"]} | {g["groupName"]: g for g in cluster["workerGroupSpecs"]}


def container(group: dict[str, Any]) -> dict[str, Any]:
    containers = group["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# ----------------------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_every_custom_object_validates_against_its_crd(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"RayService", "PodMonitor", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        if doc["kind"] in SCHEMAS:
            assert doc["apiVersion"] in ("ray.io/v1", "monitoring.coreos.com/v1")
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])


def test_the_crd_check_rejects_unknown_keys_and_wrong_types() -> None:
    service = voice_agent("overlays/prod")
    jsonschema.validate(service, SCHEMAS["RayService"])
    misspelled = copy.deepcopy(service)
    misspelled["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    with pytest.raises(jsonschema.ValidationError, match="enableInTreeAutoscalling"):
        jsonschema.validate(misspelled, SCHEMAS["RayService"])
    nested = copy.deepcopy(service)
    routers = nested["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    container(routers)["readinesProbe"] = {}
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        jsonschema.validate(nested, SCHEMAS["RayService"])
    wrong_type = copy.deepcopy(service)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, SCHEMAS["RayService"])
    (monitor, *_) = objects("base", "PodMonitor")
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(monitor, SCHEMAS["PodMonitor"])


# ------------------------------------------------------------------------------------ serve config
def test_the_derived_files_are_up_to_date() -> None:
    assert k8s_manifests.main(["--check"]) == 0, "run python -m serve_app.programs.k8s_manifests"


@pytest.mark.parametrize(
    ("overlay", "replicas"),
    [
        ("base", None),
        ("overlays/dev", None),
        ("overlays/prod", k8s_manifests.PROD_REPLICAS),
        ("overlays/prod-self-hosted-llm", k8s_manifests.PROD_REPLICAS),
    ],
)
def test_serve_config_v2_is_serve_config_yaml_placed_on_the_worker_groups(
    overlay: str, replicas: dict[str, tuple[int, int]] | None
) -> None:
    embedded = yaml.safe_load(voice_agent(overlay)["spec"]["serveConfigV2"])
    assert check_serve_config(embedded) == []
    assert embedded == k8s_manifests.cluster_serve_config(SERVE_CONFIG, replicas)
    # Only placement and replica bounds differ from the file `serve run` uses.
    pairs = zip(
        embedded["applications"][0]["deployments"],
        SERVE_CONFIG["applications"][0]["deployments"],
        strict=True,
    )
    for ours, local in pairs:
        ours, local = copy.deepcopy(ours), copy.deepcopy(local)
        for d in (ours, local):
            d["ray_actor_options"].pop("num_cpus")
            d["ray_actor_options"].pop("resources", None)
            for bound in ("min_replicas", "max_replicas"):
                d["autoscaling_config"].pop(bound)
        assert ours == local
    assert {k: v for k, v in embedded.items() if k != "applications"} == {
        k: v for k, v in SERVE_CONFIG.items() if k != "applications"
    }


def test_the_generator_places_a_new_deployment_or_refuses_it() -> None:
    config = copy.deepcopy(SERVE_CONFIG)
    config["applications"][0]["deployments"].append({"name": "Unplaced", "ray_actor_options": {}})
    with pytest.raises(ValueError, match="Unplaced"):
        k8s_manifests.cluster_serve_config(config)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_lands_on_a_worker_group_that_can_hold_its_maximum(overlay: str) -> None:
    service = voice_agent(overlay)
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    pods = groups(service)
    assert pods["head"]["rayStartParams"]["num-cpus"] == "0"  # no replica on the head
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    offered: dict[str, tuple[str, float, int]] = {}  # resource → (group, logical CPUs per pod, max pods)
    for name, group in pods.items():
        if name == "head":
            continue
        resources = yaml.safe_load(yaml.safe_load(group["rayStartParams"]["resources"]))
        cpus = float(group["rayStartParams"]["num-cpus"])
        limit = float(container(group)["resources"]["limits"]["cpu"])
        assert cpus < limit, f"{name}: leave a CPU to Ray's node processes"
        for resource in resources:
            offered[resource] = (name, cpus, group["maxReplicas"])
    need: dict[str, float] = {}
    for deployment in embedded["applications"][0]["deployments"]:
        options = deployment["ray_actor_options"]
        (resource,) = options["resources"]
        assert resource in offered, f"{deployment['name']} asks for {resource}, which no worker group offers"
        most = deployment["autoscaling_config"]["max_replicas"] * options["num_cpus"]
        need[resource] = need.get(resource, 0.0) + most
    for resource, cpus_needed in need.items():
        group, cpus, pods_max = offered[resource]
        room = cpus * pods_max
        assert cpus_needed <= room, f"{group}: {cpus_needed} CPUs of replicas, room for {room}"


# ------------------------------------------------------------------------------- pods and settings
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_gets_the_serve_environment_and_the_secret(overlay: str) -> None:
    maps = {m["metadata"]["name"]: m["data"] for m in objects(overlay, "ConfigMap")}
    for name, group in groups(voice_agent(overlay)).items():
        sources = container(group)["envFrom"]
        (config_map,) = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
        assert config_map.startswith("voice-agent-env-"), "the generated name, with its content hash"
        env = maps[config_map]
        # SERVE_ENV names the launcher in the venv running it; the pods run the image's.
        expected = {**SERVE_ENV, BINARY_PATH_ENV: haproxy_launcher(IMAGE_VENV / "bin")}
        assert {k: env.get(k) for k in expected} == expected, name
        (secret,) = [s["secretRef"] for s in sources if "secretRef" in s]
        assert secret == {"name": "voice-agent", "optional": True}


def _example_secret_keys() -> list[str]:
    """The keys k8s/secret.example.env lists (commented out: a copy used as is sets nothing)."""
    text = (K8S / "secret.example.env").read_text()
    return re.findall(r"^#([A-Z][A-Z0-9_]*)=$", text, flags=re.MULTILINE)


def test_the_secrets_keys_are_the_settings_the_app_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = _example_secret_keys()
    secret_fields = {
        "OPENAI_API_KEY": "openai_api_key",
        "VOICE_API_KEYS": "api_keys",
        "VOICE_USER_KEYS": "user_keys",
        "VOICE_CLIENT_SECRET_SIGNING_KEY": "client_secret_signing_key",
        "LETTA_API_KEY": "letta_api_key",
        "TWILIO_AUTH_TOKEN": "twilio_auth_token",
    }
    assert set(keys) == set(secret_fields) | {"LETTA_BASE_URL", "VOICE_METRICS_KEY"}
    for key in keys:
        monkeypatch.delenv(key, raising=False)
    for key, field in secret_fields.items():
        value = "alice:k1" if key == "VOICE_USER_KEYS" else f"value-of-{key}"
        monkeypatch.setenv(key, value)
        read = getattr(Settings(), field)
        assert read is not None and read.get_secret_value() == value, key
    monkeypatch.setenv("LETTA_BASE_URL", "http://letta:8283")
    assert Settings().letta_base_url == "http://letta:8283"
    # Prometheus reads /metrics with the key the PodMonitor names.
    (app_monitor,) = objects("base", "PodMonitor", "voice-agent-app")
    (endpoint,) = app_monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": "voice-agent", "key": "VOICE_METRICS_KEY"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_equal_limits_and_one_image_everywhere(overlay: str) -> None:
    images = set()
    for name, group in groups(voice_agent(overlay)).items():
        resources = container(group)["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}, name
        assert resources["requests"] == resources["limits"], f"{name}: Guaranteed QoS"
        images.add(container(group)["image"])
    assert len(images) == 1 and ":" in images.pop()


def test_clients_enter_only_through_worker_pods_whose_readyz_answers() -> None:
    for overlay in OVERLAYS:
        service = voice_agent(overlay)
        assert service["spec"]["excludeHeadPodFromServeSvc"] is True
        pods = groups(service)
        for name in ("routers", "stages"):
            probe = container(pods[name])["readinessProbe"]["httpGet"]
            ports = {p["name"]: p["containerPort"] for p in container(pods[name])["ports"]}
            assert probe["path"] == "/readyz" and ports[probe["port"]] == SERVE_CONFIG["http_options"]["port"]
        for group in pods.values():
            # No liveness of ours: a provider outage must not restart pods (KubeRay's own stays); and the
            # head keeps KubeRay's readiness, which KubeRay waits for before it deploys the app.
            assert "livenessProbe" not in container(group)
        assert "readinessProbe" not in container(pods["head"])
    router_routes = (ROOT / "serve_app" / "api" / "router_app.py").read_text()
    assert 'Route("/readyz"' in router_routes


def _prestop(group: dict[str, Any]) -> tuple[str, int]:
    command = container(group)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/app/scripts/k8s-prestop.sh"
    return command[1], int(command[2])


def test_drains_match_serves_graceful_shutdown_and_the_grace_periods_outlast_them() -> None:
    deployments = {d["name"]: d for d in SERVE_CONFIG["applications"][0]["deployments"]}
    for overlay in OVERLAYS:
        pods = groups(voice_agent(overlay))
        placement = {
            "head": ["Router"],  # waits for the routers' sessions cluster-wide
            "routers": ["Router"],
            "stages": ["STTDeployment", "LLMDeployment", "TTSDeployment"],
        }
        for group, names in placement.items():
            mode, deadline = _prestop(pods[group])
            assert mode == ("cluster" if group == "head" else "node")
            for name in names:
                drain = deployments[name].get(
                    "graceful_shutdown_timeout_s", DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_S
                )
                assert deadline >= drain, f"{group}: {name} drains for {drain} s"
            assert pods[group]["template"]["spec"]["terminationGracePeriodSeconds"] > deadline


def test_the_memory_journal_lives_on_the_head_pods_persistent_volume() -> None:
    for overlay in OVERLAYS:
        head = groups(voice_agent(overlay))["head"]
        env = {e["name"]: e.get("value") for e in container(head)["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container(head)["volumeMounts"]}
        volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
        journal = Path(env["VOICE_MEMORY_JOURNAL_PATH"])
        (volume,) = [name for name, path in mounts.items() if journal.is_relative_to(path)]
        claim = volumes[volume]["persistentVolumeClaim"]["claimName"]
        (pvc,) = objects(overlay, "PersistentVolumeClaim", claim)
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        # The image's user can write the journal there.
        assert head["template"]["spec"]["securityContext"]["fsGroup"] == IMAGE_UID


def test_the_podmonitors_select_the_agents_pods_and_ports() -> None:
    pods = groups(voice_agent("overlays/prod"))
    monitors = {m["metadata"]["name"]: m["spec"] for m in objects("overlays/prod", "PodMonitor")}
    for monitor in monitors.values():
        selected = [
            name
            for name, group in pods.items()
            if monitor["selector"]["matchLabels"].items() <= group["template"]["metadata"]["labels"].items()
        ]
        assert selected
        for name in selected:
            ports = {p["name"] for p in container(pods[name])["ports"]}
            assert {e["port"] for e in monitor["podMetricsEndpoints"]} <= ports, name
    # The app's merged /metrics is read on one pod only, or every series would count once per pod.
    assert monitors["voice-agent-app"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "head"


def test_the_self_hosted_llm_is_a_gpu_rayservice_the_llm_stage_points_at() -> None:
    (llm,) = objects("overlays/prod-self-hosted-llm", "RayService", "voice-llm")
    config = yaml.safe_load(llm["spec"]["serveConfigV2"])
    assert unknown_keys(config, ServeDeploySchema) == []
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    model_id = app["args"]["llm_configs"][0]["model_loading_config"]["model_id"]
    gpu = groups(llm)["gpu"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert groups(llm)["head"]["rayStartParams"]["num-cpus"] == "0"
    maps = objects("overlays/prod-self-hosted-llm", "ConfigMap")
    (env,) = [m["data"] for m in maps if "VOICE_LLM_BASE_URL" in m["data"]]
    # KubeRay's Serve Service for a RayService is <name>-serve-svc, on the Serve port.
    prefix = app["route_prefix"].rstrip("/")
    assert env["VOICE_LLM_BASE_URL"] == f"http://{llm['metadata']['name']}-serve-svc:8000{prefix}/v1"
    assert env["VOICE_LLM_MODEL"] == model_id
    settings = Settings(llm_base_url=env["VOICE_LLM_BASE_URL"], llm_engine=env["VOICE_LLM_ENGINE"]).resolved()
    assert settings.llm_engine == "openai" and settings.llm_base_url == env["VOICE_LLM_BASE_URL"]
    # Both RayServices land in the same namespace, where the Service name resolves.
    (voice,) = objects("overlays/prod-self-hosted-llm", "RayService", "voice-agent")
    assert llm["metadata"]["namespace"] == voice["metadata"]["namespace"]


# ------------------------------------------------------------------------------ preStop and image
def _stubbed_path(tmp_path: Path, busy_checks: int) -> tuple[dict[str, str], Path]:
    """PATH with `ray`, `pgrep` and `sleep` stand-ins that log their calls; the replicas (pgrep) or the
    router actors (`ray list actors`) are there for `busy_checks` checks, then gone."""
    calls = tmp_path / "calls"
    left = tmp_path / "left"
    left.write_text(str(busy_checks))
    busy = f'n=$(cat {left}); if [ "$n" -gt 0 ]; then echo $((n-1)) > {left}; BUSY=1; else BUSY=0; fi\n'
    actors = '[ $BUSY = 1 ] && echo \'[{"actor_id": "a1"}]\' || echo "[]"'
    stub = {
        "ray": f'echo "ray $*" >> {calls}\nif [ "$1" = list ]; then {busy} {actors}; fi\n',
        "pgrep": f'echo "pgrep $*" >> {calls}\n{busy} [ $BUSY = 1 ]\n',
        "sleep": "exit 0\n",
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in stub.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def _prestop_script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = str(ROOT / "scripts" / "k8s-prestop.sh")
    return subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=30)


def test_prestop_drains_the_node_and_waits_for_its_replicas(tmp_path: Path) -> None:
    env, calls = _stubbed_path(tmp_path, busy_checks=2)
    done = _prestop_script("node", "3660", env=env)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION")
    assert "--deadline-remaining-seconds 3660" in lines[0]
    assert lines[1:] == ["pgrep -f ServeReplica:"] * 3


def test_prestop_on_the_head_waits_for_the_clusters_routers(tmp_path: Path) -> None:
    env, calls = _stubbed_path(tmp_path, busy_checks=2)
    done = _prestop_script("cluster", "3660", env=env)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 3 and all(line.startswith("ray list actors") for line in lines)
    assert "class_name=ServeReplica:voice-agent:Router" in lines[0] and "state=ALIVE" in lines[0]
    # Nothing drained: the head is not a worker node.
    assert not any("drain-node" in line for line in lines)


def test_prestop_gives_up_at_its_deadline_and_refuses_an_unknown_mode(tmp_path: Path) -> None:
    env, calls = _stubbed_path(tmp_path, busy_checks=10**6)
    done = _prestop_script("node", "0", env=env)
    assert done.returncode == 0
    assert "pgrep" not in calls.read_text()  # the deadline had passed before the first wait
    assert _prestop_script("everything", "30", env=env).returncode == 2


def test_the_dockerfile_builds_from_the_lock_with_what_the_pods_run() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = text.replace("\\\n", " ").splitlines()
    instructions = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for line in instructions:
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _target = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY of a missing path: {source}"
    assert "python:3.11" in text  # pyproject's Python (mypy and ruff target 3.11)
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    uv_version = next(line.split("=")[1] for line in setup.splitlines() if line.startswith("UV_VERSION="))
    assert f"ARG UV_VERSION={uv_version}" in text
    assert text.count("uv sync --frozen --no-dev") == 2
    # The preStop script the manifests call is where they call it.
    assert "COPY scripts/k8s-prestop.sh /app/scripts/" in text
    assert f"useradd --create-home --uid {IMAGE_UID}" in text and f"USER {IMAGE_UID}" in text
    # procps for pgrep (preStop), wget for KubeRay's probes.
    assert all(tool in text for tool in ("procps", "wget"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "offline-llm = [" in pyproject and "EXTRAS=offline-llm" in text
    # The HAProxy launcher serve.env names: a script of the project, installed in the venv the image keeps.
    assert f'{HAPROXY_LAUNCHER} = "serve_app.ingress_haproxy:main"' in pyproject
    assert f"COPY --from=build {IMAGE_VENV} {IMAGE_VENV}" in text
    assert text.index("COPY serve_app ./serve_app") < text.rindex("uv sync --frozen --no-dev --no-editable")


def test_the_generator_runs_as_a_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.programs.k8s_manifests", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
