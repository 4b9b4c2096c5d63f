"""Settings of ``babelgate serve``: flags > ``BABELGATE_*`` environment > YAML file > defaults.

Runs in the API-server process. One pydantic-settings model holds everything the server and the
engine need, so a deployment can be described by a YAML file (``--config``), by environment
variables (``BABELGATE_PORT=9000``, ``BABELGATE_LANGUAGE_ACTIONS='{"yo": "refuse"}'``) or by flags,
and every source is validated the same way (unknown keys and bad values fail at start).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# The policy vocabulary is the engine's (re-exported under the settings' old names).
from server.engine.types import POLICIES as POLICIES
from server.engine.types import Policy

Action = Literal["steer", "refuse", "flag"]
GateFailureMode = Literal["closed", "open"]

ACTIONS: tuple[str, ...] = ("steer", "refuse", "flag")


class ServeSettings(BaseSettings):
    """Everything ``babelgate serve`` reads; field names are the flags without ``--``."""

    model_config = SettingsConfigDict(
        env_prefix="BABELGATE_",
        extra="forbid",
        yaml_file=None,
        validate_default=True,
    )

    # what to serve
    model: str | None = Field(None, description="model folder or hub id (default: embedded)")
    served_model_name: str | None = Field(None, description="name clients use in `model`")
    artifact: str | None = Field(None, description="gate artifact (default: cached calibration)")
    max_model_len: int | None = Field(None, ge=16)

    # HTTP
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None
    admin_token: SecretStr | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # the guardrail
    policy: Policy = "routing"
    action: Action = "steer"
    language_actions: dict[str, Action] = Field(default_factory=dict)
    # What a request in an *unprotected* language gets (its threshold record says the gate
    # does not separate its examples): flag = serve unchanged, verdict marked unprotected;
    # refuse = templated refusal when the score passes the stricter of its threshold and the
    # zero-shot one; steer = route as if the threshold were trusted.
    unprotected_action: Action = "flag"
    gate_failure: GateFailureMode = "closed"
    default_language: str = "en"
    langid_min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    state_dir: Path | None = Field(None, description="admin DB folder (default: <cache>/state)")
    max_moderation_inputs: int = Field(64, ge=1)
    max_recalibration_examples: int = Field(256, ge=1)

    # vLLM engine options (passed through)
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: str = "auto"
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    enforce_eager: bool | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)
    kv_cache_memory_bytes: int | None = Field(None, ge=1)
    enable_prefix_caching: bool | None = None
    seed: int = 0
    engine_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("language_actions")
    @classmethod
    def _canonical_language_keys(cls, value: dict[str, Action]) -> dict[str, Action]:
        from gate.languages import validate_language

        return {validate_language(lang): action for lang, action in value.items()}

    @field_validator("default_language")
    @classmethod
    def _known_default_language(cls, value: str) -> str:
        from gate.languages import validate_language
        from server.langid import TARGET_LANGUAGES

        lang = validate_language(value)
        if lang not in TARGET_LANGUAGES:
            raise ValueError(
                f"default_language {lang!r} is not a routed language ({' '.join(TARGET_LANGUAGES)})"
            )
        return lang

    @field_validator("engine_args")
    @classmethod
    def _finite_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"engine_args[{key!r}] must be finite, got {item!r}")
        return value

    @model_validator(mode="after")
    def _engine_args_do_not_shadow_flags(self) -> ServeSettings:
        reserved = {*ENGINE_FIELDS, "model", "max_model_len", "served_model_name"}
        clash = sorted(set(self.engine_args) & reserved)
        if clash:
            raise ValueError(
                f"engine_args repeats {', '.join(clash)}: set them as their own options instead"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))

    def action_for(self, language: str) -> Action:
        """The action a harmful verdict triggers for ``language`` (per-language override first)."""
        return self.language_actions.get(language, self.action)

    def engine_kwargs(self) -> dict[str, Any]:
        """vLLM engine arguments: the pass-through options that were set, plus ``engine_args``."""
        out: dict[str, Any] = {
            name: getattr(self, name) for name in ENGINE_FIELDS if getattr(self, name) is not None
        }
        if self.max_model_len is not None:
            out["max_model_len"] = self.max_model_len
        if self.served_model_name is not None:
            out["served_model_name"] = self.served_model_name
        out.update(self.engine_args)
        return out


ENGINE_FIELDS: tuple[str, ...] = (
    "tensor_parallel_size",
    "dtype",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enforce_eager",
    "gpu_memory_utilization",
    "kv_cache_memory_bytes",
    "enable_prefix_caching",
    "seed",
)


def load_settings(config: str | Path | None = None, **overrides: Any) -> ServeSettings:
    """Settings from an optional YAML file, the environment and ``overrides`` (highest priority).

    ``overrides`` whose value is None are dropped, so unset flags do not hide the environment.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if config is None:
        return ServeSettings(**given)
    path = Path(config).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist: fix --config")

    class FileSettings(ServeSettings):
        model_config = SettingsConfigDict(**{**ServeSettings.model_config, "yaml_file": path})

    return FileSettings(**given)
