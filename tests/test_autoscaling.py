"""The stages' autoscaling signal (work items in progress, integrated over time) and the policy that
serve_config.yaml names for STT, LLM and TTS, loaded as Serve loads it."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from actors.llm.base import LLMRequest
from actors.llm.stage import LLMStage
from actors.load_meter import LoadMeter
from actors.stt.simulated import SimulatedSTTEngine
from actors.stt.stage import STTStage
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app import deployments
from testkit.fakes import FakeLLMEngine

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "serve_config.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in CONFIG["applications"][0]["deployments"]}
STAGES = ("STTDeployment", "LLMDeployment", "TTSDeployment")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_load_meter_integrates_the_level_over_time() -> None:
    clock = Clock()
    meter = LoadMeter(clock)
    clock.now += 2  # idle
    meter.begin()
    clock.now += 1  # one item for 1 s
    meter.begin()
    clock.now += 0.5  # two items for 0.5 s
    meter.end()
    clock.now += 0.5  # one item for 0.5 s
    meter.end()
    # (0·2 + 1·1 + 2·0.5 + 1·0.5) / 4 s
    assert meter.take_mean() == pytest.approx(2.5 / 4)
    # A new window: one short burst of 100 ms in 3 s counts for exactly that.
    clock.now += 1
    meter.set(3)
    clock.now += 0.1
    meter.set(0)
    clock.now += 1.9
    assert meter.take_mean() == pytest.approx(0.3 / 3)
    assert meter.level == 0


def test_load_meter_reports_a_held_level_across_windows() -> None:
    clock = Clock()
    meter = LoadMeter(clock)
    meter.set(4)
    clock.now += 3
    assert meter.take_mean() == pytest.approx(4)
    clock.now += 3
    assert meter.take_mean() == pytest.approx(4)  # still held: not a burst counted once
    assert meter.take_mean() == 4  # an empty window reads the level


async def test_stt_counts_utterances_from_first_audio_until_finished_or_closed() -> None:
    stage = STTStage(SimulatedSTTEngine("hello there", finalize_delay_ms=0))
    chunk = b"\x00\x01" * 1600
    await stage.feed("a", 0, chunk)
    await stage.feed("b", 0, chunk)
    await stage.feed("a", len(chunk), chunk)  # more of the same utterance: still one
    assert stage.load.level == 2
    assert (await stage.finish("a", 2 * len(chunk)))["text"] == "hello there"
    assert stage.load.level == 1
    await stage.close("b")
    assert stage.load.level == 0
    # A stream whose offset no longer matches is dropped (the caller resends): not counted.
    await stage.feed("c", 0, chunk)
    assert (await stage.feed("c", 99, chunk))["resync"]
    assert stage.load.level == 0


async def test_llm_counts_each_reply_while_it_streams_and_not_after_cancellation() -> None:
    stage = LLMStage(FakeLLMEngine("It will be sunny. Then rain.", ttft_ms=0, tokens_per_s=1000))
    request = LLMRequest(
        messages=[{"role": "user", "content": "weather?"}], max_tokens=50, temperature=0.7, user_id="u"
    )
    first = stage.stream_phrases(request)
    second = stage.stream_tokens(request)
    await anext(first)
    await anext(second)
    assert stage.load.level == 2
    async for _ in first:
        pass
    assert stage.load.level == 1
    await second.aclose()  # barge-in: the router closes the stream
    assert stage.load.level == 0


async def test_tts_counts_each_phrase_while_it_is_synthesised() -> None:
    stage = TTSStage(SimulatedTTSEngine(ttfb_ms=0))
    one = stage.synthesize("Hello there, how are you?", 24_000)
    two = stage.synthesize("Fine.", 24_000)
    await anext(one)
    await anext(two)
    assert stage.load.level == 2
    async for _ in two:
        pass
    await one.aclose()
    assert stage.load.level == 0


def stage_for(name: str) -> STTStage | LLMStage | TTSStage:
    if name == "STTDeployment":
        return STTStage(SimulatedSTTEngine("hello", finalize_delay_ms=0))
    if name == "LLMDeployment":
        return LLMStage(FakeLLMEngine("Hello.", ttft_ms=0))
    return TTSStage(SimulatedTTSEngine(ttfb_ms=0))


@pytest.mark.parametrize("name", STAGES)
async def test_each_stage_reports_the_metric_its_policy_divides(name: str) -> None:
    metric = DEPLOYMENTS[name]["autoscaling_config"]["policy"]["policy_kwargs"]["metric"]
    clock = Clock()
    stage = stage_for(name)
    stage.load = LoadMeter(clock)
    stage.load.set(3)
    clock.now += 2
    # The deployment's own method, on a stand-in for the replica that holds only the stage.
    report = getattr(deployments, name).func_or_class.record_autoscaling_stats(SimpleNamespace(stage=stage))
    if inspect.isawaitable(report):
        report = await report
    assert report == {metric: pytest.approx(3)}


async def test_stt_streams_left_behind_count_only_until_their_last_audio(monkeypatch) -> None:
    # A resync moves an utterance to another replica; the copy left here gets no more calls. Serve's
    # call for the autoscaling report, every few seconds, sweeps it, and it counts until its last audio.
    clock = Clock()
    monkeypatch.setattr("actors.stt.stage.time", SimpleNamespace(monotonic=clock))
    stage = STTStage(SimulatedSTTEngine("hello"), idle_timeout_s=5.0)
    stage.load = LoadMeter(clock)
    chunk = b"\x00\x01" * 1600
    await stage.feed("left-behind", 0, chunk)
    clock.now += 1
    await stage.feed("left-behind", len(chunk), chunk)  # its last audio here
    clock.now += 6  # idle: the utterance went on elsewhere
    report = deployments.STTDeployment.func_or_class.record_autoscaling_stats(SimpleNamespace(stage=stage))
    assert await report == {"utterances": pytest.approx(1 / 7)}  # 1 s of 7
    assert stage.streams_held == 0 and stage.load.level == 0


def test_load_meter_takes_back_an_item_that_stopped_earlier_but_not_what_was_reported() -> None:
    clock = Clock()
    meter = LoadMeter(clock)
    meter.begin()
    clock.now += 2
    assert meter.take_mean() == pytest.approx(1)  # reported: stays reported
    clock.now += 4
    meter.end(last_active=clock.now - 5)  # idle for the last 5 s: only this window's 4 s come back
    clock.now += 4
    assert meter.take_mean() == pytest.approx(0)


def context(
    config: AutoscalingConfig, metrics: dict[str, dict[ReplicaID, float]], target: int
) -> AutoscalingContext:
    deployment = DeploymentID(name="STTDeployment", app_name="voice-agent")
    replicas = [ReplicaID(f"r{i}", deployment) for i in range(target)]
    return AutoscalingContext(
        deployment_id=deployment,
        deployment_name=deployment.name,
        app_name=deployment.app_name,
        current_num_replicas=target,
        target_num_replicas=target,
        running_replicas=replicas,
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics={},
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=config,
    )


@pytest.mark.parametrize("name", STAGES)
def test_the_configured_policy_asks_for_load_over_target_replicas(name: str) -> None:
    config = AutoscalingConfig(**DEPLOYMENTS[name]["autoscaling_config"])
    # As Serve does in its controller: the class comes back from its by-value pickle, made with the
    # configured kwargs.
    policy = config.policy.get_policy()(**config.policy.policy_kwargs)
    metric, target = policy.metric, policy.target_per_replica
    deployment = DeploymentID(name=name, app_name="voice-agent")
    a, b = ReplicaID("a", deployment), ReplicaID("b", deployment)
    wanted, _ = policy(context(config, {metric: {a: 2.5 * target, b: 0.7 * target}}, 2))
    assert wanted == pytest.approx(3.2)
    wanted, _ = policy(context(config, {metric: {a: 0.0, b: 0.0}}, 2))
    assert wanted == 0
    # Replicas that have not reported yet are not read as idle.
    wanted, _ = policy(context(config, {}, 3))
    assert wanted == 3


def test_the_router_scales_on_sessions_with_serves_own_policy_and_drains_them() -> None:
    router = DEPLOYMENTS["Router"]
    assert "policy" not in router["autoscaling_config"]
    # A router replica being removed keeps its calls until they end (never longer than max_session_s).
    from actors.config import Settings

    assert router["graceful_shutdown_timeout_s"] > Settings().max_session_s


def test_the_policy_module_stays_free_of_project_imports() -> None:
    # Serve pickles it by value into the controller, which has none of the project's modules loaded.
    source = (Path(__file__).resolve().parent.parent / "serve_app" / "autoscaling.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in {"__future__", "typing", "ray"} for line in imports), imports
