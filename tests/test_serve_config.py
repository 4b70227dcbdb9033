"""serve_config.yaml: every key means something to Ray, and the app it names builds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray import serve

from serve_app.programs.config_check import check_serve_config

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "serve_config.yaml").read_text())


def test_shipped_config_is_clean() -> None:
    assert check_serve_config(CONFIG) == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda c: c["applications"][0]["deployments"][0].update(max_ongoing_request=5),
            "max_ongoing_request",
        ),
        (
            lambda c: c["applications"][0]["deployments"][1]["autoscaling_config"].update(max_replica=3),
            "max_replica",
        ),
        (
            lambda c: c["applications"][0]["deployments"][2]["ray_actor_options"].update(num_cpu=0.5),
            "num_cpu",
        ),
        (lambda c: c["http_options"].update(prot=1), "prot"),
        (lambda c: c["applications"][0]["deployments"][3].pop("autoscaling_config"), "no autoscaling_config"),
        (
            lambda c: c["applications"][0]["deployments"][3]["ray_actor_options"].update(num_cpus=1),
            "fraction",
        ),
        (lambda c: c["applications"][0]["args"].update(vad_silense_ms=300), "vad_silense_ms"),
    ],
)
def test_misspelled_or_missing_keys_are_caught(mutate, needle: str) -> None:
    config = copy.deepcopy(CONFIG)
    mutate(config)
    problems = check_serve_config(config)
    assert any(needle in p for p in problems), problems


def test_import_path_builds_the_four_deployments_named_in_the_config() -> None:
    from serve_app.app import build_app

    app = CONFIG["applications"][0]
    module, attr = app["import_path"].split(":")
    assert (module, attr) == ("serve_app.app", "build_app")
    built = build_app(app["args"])
    names = {d.name for d in serve._private.build_app.build_app(built, name="x").deployments}
    assert names == {d["name"] for d in app["deployments"]}
