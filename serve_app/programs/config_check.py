"""Strict check of a Serve config: Ray's schema accepts misspelled keys silently, this does not.

Walks the YAML against Ray's own pydantic models (ServeDeploySchema and what it nests) and builds an
`AutoscalingConfig` from every `autoscaling_config`, then checks what this project needs on top:
fractional `num_cpus` and an `autoscaling_config` on every deployment, and our Settings for `args`.

    python -m serve_app.programs.config_check serve_config.yaml
"""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from actors.config import Settings


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic model classes inside an annotation (Optional[...], list[...], unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def unknown_keys(data: Any, model: type[BaseModel], path: str = "") -> list[str]:
    """Every key in `data` that `model` (recursively) does not define."""
    if not isinstance(data, dict):
        return []
    problems = []
    fields = model.model_fields
    names = {name: f for name, f in fields.items()} | {f.alias: f for f in fields.values() if f.alias}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        field = names.get(key)
        if field is None:
            problems.append(f"{where}: unknown key for {model.__name__}")
            continue
        nested = _models_in(field.annotation)
        if not nested:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            sub = f"{where}[{i}]" if isinstance(value, list) else where
            problems += unknown_keys(item, nested[0], sub)
    return problems


def check_serve_config(config: dict[str, Any]) -> list[str]:
    problems = unknown_keys(config, ServeDeploySchema)
    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        problems.append(f"schema: {exc}")
    for app in config.get("applications", []):
        try:
            Settings(**(app.get("args") or {}))
        except ValidationError as exc:
            problems.append(f"applications.{app.get('name')}.args: {exc}")
        for dep in app.get("deployments", []):
            name = dep.get("name", "?")
            autoscaling = dep.get("autoscaling_config")
            if not isinstance(autoscaling, dict):
                problems.append(f"deployment {name}: no autoscaling_config")
            else:
                problems += [
                    f"deployment {name}.autoscaling_config: {p}"
                    for p in unknown_keys(autoscaling, AutoscalingConfig)
                ]
                try:
                    AutoscalingConfig(**autoscaling)
                except (ValidationError, ValueError) as exc:
                    problems.append(f"deployment {name}.autoscaling_config: {exc}")
            cpus = (dep.get("ray_actor_options") or {}).get("num_cpus")
            if not isinstance(cpus, int | float) or not 0 < cpus < 1:
                problems.append(f"deployment {name}: ray_actor_options.num_cpus must be a fraction of a CPU")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0] if args else "serve_config.yaml")
    problems = check_serve_config(yaml.safe_load(path.read_text()))
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path}: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
