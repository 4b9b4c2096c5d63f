"""``babelgate serve`` settings: flags > BABELGATE_* environment > YAML > defaults, validation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from babelgate.cli import serve
from babelgate.server.settings import Policy, ServeSettings, load_settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    serve.register(sub)
    return parser.parse_args(["serve", *argv])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BABELGATE_PORT", "BABELGATE_ACTION", "BABELGATE_POLICY", "BABELGATE_CONFIG",
                 "BABELGATE_LANGUAGE_ACTIONS", "BABELGATE_API_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    s = ServeSettings()
    assert (s.port, s.policy, s.action, s.ablation, s.gate_failure, s.default_language) == (
        8000, "routing", "refuse", "never", "closed", "en"
    )
    assert s.engine_kwargs() == {"tensor_parallel_size": 1, "dtype": "auto", "seed": 0}


def test_precedence_flags_env_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "babelgate.yaml"
    config.write_text(
        "port: 7000\naction: flag\npolicy: shadow\nlanguage_actions: {yo: refuse, SW: flag}\n"
        "engine_args: {block_size: 16}\n"
    )
    monkeypatch.setenv("BABELGATE_PORT", "7100")
    monkeypatch.setenv("BABELGATE_ACTION", "refuse")
    s = serve.settings_from_args(parse(["--config", str(config), "--port", "7200"]))
    assert s.port == 7200  # flag beats env and file
    assert s.action == "refuse"  # env beats file
    assert s.policy == "shadow"  # file beats default
    assert s.language_actions == {"yo": "refuse", "sw": "flag"}
    assert s.action_for("yo") == "refuse" and s.action_for("de") == "refuse"
    assert s.engine_kwargs()["block_size"] == 16


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("gate_failure: open\n")
    monkeypatch.setenv("BABELGATE_CONFIG", str(config))
    monkeypatch.setenv("BABELGATE_LANGUAGE_ACTIONS", '{"am": "flag"}')
    s = serve.settings_from_args(parse([]))
    assert s.gate_failure == "open"
    assert s.language_actions == {"am": "flag"}


def test_flags_reach_settings_and_engine() -> None:
    args = parse([
        "--model", "/m", "--max-model-len", "512",
        "--api-key", "key-123", "--admin-token", "tok-456",
        "--language-action", "yo=refuse", "--language-action", "km=flag", "--enforce-eager",
        "--kv-cache-memory-bytes", "1073741824", "--max-num-seqs", "16",
        "--engine-arg", "block_size=16", "--engine-arg", "disable_log_stats=false",
    ])  # fmt: skip
    s = serve.settings_from_args(args)
    assert s.api_key.get_secret_value() == "key-123"
    assert s.admin_token.get_secret_value() == "tok-456"
    assert "key-123" not in repr(s) and "tok-456" not in repr(s)  # secrets are not printed
    assert s.language_actions == {"yo": "refuse", "km": "flag"}
    kwargs = s.engine_kwargs()
    assert kwargs["max_model_len"] == 512
    assert kwargs["enforce_eager"] is True
    assert kwargs["kv_cache_memory_bytes"] == 1 << 30
    assert kwargs["max_num_seqs"] == 16
    assert kwargs["block_size"] == 16 and kwargs["disable_log_stats"] is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy": "sometimes"}, "policy"),
        ({"action": "block"}, "action"),
        ({"language_actions": {"xx": "refuse"}}, "unknown language"),
        ({"default_language": "pt"}, "not a routed language"),
        ({"port": 70000}, "port"),
        ({"engine_args": {"max_num_seqs": 3}}, "set them as their own options"),
        ({"engine_args": {"x": float("nan")}}, "finite"),
        ({"typo_setting": 1}, "typo_setting"),
    ],
)
def test_invalid_settings_fail_at_start(overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_settings(**overrides)


def test_unknown_yaml_key_and_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("prot: 1\n")
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config)
    with pytest.raises(FileNotFoundError, match="--config"):
        load_settings(tmp_path / "missing.yaml")


def test_malformed_pairs_are_rejected() -> None:
    with pytest.raises(SystemExit):
        parse(["--language-action", "yo"])


def test_every_setting_is_a_flag_generated_from_its_field() -> None:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers(dest="command"))
    sub = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    actions = {a.dest: a for a in sub._actions}
    assert set(ServeSettings.model_fields) <= set(actions)
    assert actions["policy"].choices == get_args(Policy)
    assert "(default 8000)" in actions["port"].help
    s = serve.settings_from_args(
        parse(["--max-moderation-inputs", "8", "--no-enable-prefix-caching", "--port", "9001"])
    )
    assert (s.max_moderation_inputs, s.enable_prefix_caching, s.port) == (8, False, 9001)
