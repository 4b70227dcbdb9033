"""k8s/rayservice.yaml validates against the KubeRay RayService CRD and serves serve_config.yaml."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from serve_app.programs.config_check import check_serve_config
from serve_app.serve_env import SERVE_ENV

ROOT = Path(__file__).resolve().parent.parent
# KubeRay v1.7.0's own CRD (Apache-2.0), vendored so the check needs nothing outside the repository.
CRD = ROOT / "k8s" / "crd" / "ray.io_rayservices.v1.7.0.yaml"
MANIFEST = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == MANIFEST["apiVersion"].split("/")[1])
    return version["schema"]["openAPIV3Schema"]


def test_manifest_validates_against_the_rayservice_crd() -> None:
    assert MANIFEST["kind"] == "RayService"
    jsonschema.validate(MANIFEST, crd_schema())
    # The validator is strict enough to catch a misplaced field.
    broken = yaml.safe_load((ROOT / "k8s" / "rayservice.yaml").read_text())
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, crd_schema())


def test_serve_config_v2_is_serve_config_yaml() -> None:
    embedded = yaml.safe_load(MANIFEST["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert check_serve_config(embedded) == []


def test_the_memory_journal_lives_on_the_head_pods_persistent_volume() -> None:
    # The memory actor is pinned to the head node: its journal path must be on the claimed volume there.
    head = MANIFEST["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    journal = Path(env["VOICE_MEMORY_JOURNAL_PATH"])
    (volume,) = [name for name, path in mounts.items() if journal.is_relative_to(path)]
    claim = volumes[volume]["persistentVolumeClaim"]["claimName"]
    pvc = yaml.safe_load((ROOT / "k8s" / "memory-pvc.yaml").read_text())
    assert (pvc["kind"], pvc["metadata"]["name"]) == ("PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_every_pod_runs_with_the_serve_environment_scripts_run_exports() -> None:
    cluster = MANIFEST["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV
