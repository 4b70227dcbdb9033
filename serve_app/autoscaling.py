"""The autoscaling policy of the STT, LLM and TTS deployments (named in serve_config.yaml).

A stage's load is its work items in progress: utterances being transcribed (STT), replies being
generated (LLM), phrases being synthesised (TTS). Each replica reports the time-averaged number since
its previous report (`record_autoscaling_stats` in `serve_app/deployments.py`, `actors/load_meter.py`),
and this policy asks for enough replicas to hold `target_per_replica` of them each:

    replicas = Σ over running replicas of (mean load over look_back_period_s) / target_per_replica

Serve's default policy does the same division with ongoing requests, but samples them at a handle every
few seconds: a stage call lasts ~1–300 ms, so the samples are mostly 0 with the odd burst, and an STT
utterance is many short calls whose stream stays on the replica between them. README "Autoscaling"
has the measurements. Serve applies the deployment's min/max replicas, up/down-scale delays and
scaling factors around this function.

Serve pickles this module by value into the controller: it imports nothing of the project.
"""

from __future__ import annotations

from typing import Any

from ray.serve.config import AutoscalingContext
from ray.util.metrics import Gauge


class StageLoadPolicy:
    """Replicas = total reported load ÷ `target_per_replica` (`policy_kwargs` in serve_config.yaml)."""

    def __init__(self, metric: str, target_per_replica: float) -> None:
        if target_per_replica <= 0:
            raise ValueError(f"target_per_replica must be positive, got {target_per_replica}")
        self.metric = metric
        self.target_per_replica = target_per_replica
        # What the policy divides, for dashboards and bench/scale_out.py (Serve exports its own
        # inputs as serve_autoscaling_total_requests; this is ours beside it).
        self._gauge = Gauge(
            "voice_autoscaling_load",
            description="A stage's load as its autoscaling policy sees it: work items in progress, "
            "mean over look_back_period_s, summed over its running replicas.",
            tag_keys=("deployment", "metric"),
        )

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        per_replica = (ctx.aggregated_metrics or {}).get(self.metric, {})
        if not per_replica:
            # No report yet (replicas just started): keep the current target rather than read it as 0.
            return ctx.target_num_replicas, {}
        load = sum(per_replica.values())
        self._gauge.set(load, tags={"deployment": ctx.deployment_name, "metric": self.metric})
        return load / self.target_per_replica, {}
