"""``agentstream serve``'s flags fill the settings of one config; every default has one home."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from agent_runtime.config import (
    SERVE_DEFAULTS,
    HubConfig,
    IsolationConfig,
    RedisConfig,
    RunsConfig,
)
from agent_runtime.errors import ConfigError
from agent_runtime.serve_flags import SERVE_FLAGS, add_serve_flags, config_from_flags, default_of
from broker import BrokerConfig
from broker.buffer import ReplayBuffer


def parse(*argv: str) -> HubConfig:
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    return config_from_flags(parser.parse_args(argv))


def test_without_flags_serve_runs_on_the_configs_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AGENTSTREAM_API_KEYS", raising=False)
    assert parse() == HubConfig(**SERVE_DEFAULTS)
    assert parse().store == "sqlite" and HubConfig().store == "memory"


def test_every_flag_fills_a_setting_that_exists() -> None:
    sections = {
        "broker": BrokerConfig,
        "runs": RunsConfig,
        "redis": RedisConfig,
        "isolation": IsolationConfig,
    }
    for flag in SERVE_FLAGS:
        section, _, name = flag.path.rpartition(".")
        if section:
            assert name in {f.name for f in dataclasses.fields(sections[section])}, flag
        else:
            assert name in HubConfig.model_fields, flag


def test_flags_land_in_their_sections() -> None:
    config = parse(
        "--max-events-per-stream", "50", "--retention", "7", "--run-expires-after", "9",
        "--max-concurrent-runs", "2", "--redis", "redis://h:1/0", "--node-id", "n1",
        "--model", "simulated", "--agents", "a", "--agents", "b",
    )  # fmt: skip
    assert config.broker.max_events_per_stream == 50 and config.broker.retention == 7
    assert config.runs.expires_after == 9 and config.runs.max_concurrent_runs == 2
    assert config.redis is not None and (config.redis.url, config.redis.node_id) == (
        "redis://h:1/0",
        "n1",
    )
    assert config.redis.prefix == RedisConfig("x").prefix  # not given: the section's default
    assert config.force_model == "simulated" and [str(p) for p in config.agents] == ["a", "b"]
    # The hub's own gap event name survives a broker section built from flags.
    assert config.broker.gap_event == "thread.stream.gap"


def test_help_shows_the_default_from_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="serve")
    add_serve_flags(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {BrokerConfig().max_events_per_stream})" in text
    assert f"(default: {RunsConfig().expires_after})" in text
    assert "(default: sqlite)" in text  # serve's own default
    assert default_of("broker.retention") == BrokerConfig().retention


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--retention", "-1"], "--retention must be positive"),
        (["--max-events-per-stream", "0"], "--max-events-per-stream must be at least 1"),
        (["--max-concurrent-runs", "0"], "--max-concurrent-runs must be at least 1"),
        (["--port", "70000"], "--port: "),
        (["--redis-prefix", "p"], "--redis-prefix needs --redis URL"),
        (["--redis", "redis://h/0", "--node-lease", "0"], "--node-lease must be positive"),
        (["--adopt-unowned-threads", "k"], "--adopt-unowned-threads needs one of the API keys"),
        (["--run-cpu-seconds", "5"], "--run-cpu-seconds needs isolation mode 'process'"),
    ],
)
def test_a_refused_value_names_its_flag(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTSTREAM_API_KEYS", raising=False)
    with pytest.raises(ConfigError) as raised:
        parse(*argv)
    assert str(raised.value).startswith(message)


def test_buffers_and_streams_keep_no_defaults_of_their_own() -> None:
    params = inspect.signature(ReplayBuffer).parameters
    assert params["max_events"].default is inspect.Parameter.empty
    assert params["max_bytes"].default is inspect.Parameter.empty
    assert dataclasses.fields(RunsConfig)  # the runs' defaults live in RunsConfig alone
    assert HubConfig().runs == RunsConfig() and HubConfig().broker.retention == (
        BrokerConfig().retention
    )
