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

from babelgate.gate.hf.embedded import MODEL_HELP
from babelgate.gate.languages import validate_language

# The policy vocabulary is the engine's (re-exported under the settings' old names).
from babelgate.server.engine.types import POLICIES as POLICIES
from babelgate.server.engine.types import Policy
from babelgate.server.langid import TARGET_LANGUAGES
from babelgate.server.store_url import check_state_url, sqlite_url

Action = Literal["steer", "refuse", "flag"]
Ablation = Literal["band", "always", "never"]
GateFailureMode = Literal["closed", "open"]

ACTIONS: tuple[str, ...] = ("steer", "refuse", "flag")

# Groups of ``babelgate serve --help``; every field below belongs to one.
MODEL, HTTP, GUARDRAIL, ENGINE = "model", "HTTP", "guardrail", "vLLM engine"


def setting(
    default: Any,
    group: str,
    description: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    **constraints: Any,
) -> Any:
    """A settings field with what its ``babelgate serve`` flag needs: the help ``group`` and the
    ``description`` (the flag is ``--<field-name>``; a dict field takes repeated KEY=VALUE pairs
    under ``flag``, e.g. ``--language-action``). A mutable default becomes a factory."""
    extra = {"group": group, "flag": flag, "metavar": metavar}
    if isinstance(default, dict):
        return Field(default_factory=dict, description=description, json_schema_extra=extra,
                     **constraints)  # fmt: skip
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class ServeSettings(BaseSettings):
    """Everything ``babelgate serve`` reads. Each field is also a flag (``--<name>``, generated from
    the field by ``cli.serve``: type, choices, default and help come from here)."""

    model_config = SettingsConfigDict(
        env_prefix="BABELGATE_",
        extra="forbid",
        yaml_file=None,
        validate_default=True,
        hide_input_in_errors=True,  # inputs may be secrets (API key, admin token, state URL)
    )

    # what to serve
    model: str | None = setting(None, MODEL, MODEL_HELP)
    served_model_name: str | None = setting(None, MODEL, "model name clients send")
    artifact: str | None = setting(
        None, MODEL, "gate artifact (default: shipped or cached default calibration)"
    )
    max_model_len: int | None = setting(None, MODEL, "context length", ge=16)

    # HTTP
    host: str = setting(
        "0.0.0.0", HTTP, "bind address (the default is every interface: set --api-key, or bind "
        "127.0.0.1 behind a proxy)",
    )  # fmt: skip
    port: int = setting(8000, HTTP, "port", ge=0, le=65535)
    api_key: SecretStr | None = setting(
        None, HTTP, "require this bearer key on /v1/* (or BABELGATE_API_KEY, out of the process "
        "list)",
    )  # fmt: skip
    admin_token: SecretStr | None = setting(
        None, HTTP, "bearer token of /admin/* (else closed); prefer BABELGATE_ADMIN_TOKEN, since a "
        "flag is visible to every local user in the process list",
    )  # fmt: skip
    admin_host: str = setting("127.0.0.1", HTTP, "bind address of the admin listener")
    admin_port: int | None = setting(
        None, HTTP, "serve /admin/* on this port (at --admin-host) only, not on --port",
        ge=0, le=65535,
    )  # fmt: skip
    log_level: Literal["debug", "info", "warning", "error"] = setting("info", HTTP, "log level")
    max_queue_depth: int = setting(
        128, HTTP, "chat and moderation requests in flight (generating or waiting for the "
        "engine) beyond which a new one is answered 429 with Retry-After at once", ge=1,
    )  # fmt: skip

    # the guardrail
    policy: Policy = setting(
        "routing", GUARDRAIL, "engine policy (routing: steer harmful, ablate harmless)"
    )
    # Defaults from the held-out protection benchmark (docs/eval/qwen2.5-coder-0.5b/protection):
    # steering broke about 1 in 5 of the model's own refusals and ended in a clean refusal on
    # 59 % of harmful verdicts; ablation on gate misses removed refusals the model would have made,
    # even below the calibrated band. refuse + never is the only way of serving measured there
    # that keeps every native refusal.
    action: Action = setting(
        "refuse", GUARDRAIL, "what a harmful verdict triggers: refuse = the templated refusal in "
        "the request's language; steer = add the refusal direction (the paper's routing); flag "
        "= served unchanged, the verdict says so",
    )  # fmt: skip
    ablation: Ablation = setting(
        "never", GUARDRAIL, "when a harmless verdict ablates the harm direction: never; band = "
        "only when the score is below the language's harmless_below edge (measured at "
        "calibration; between it and the threshold the verdict is unsure and nothing is done); "
        "always = every harmless verdict (the paper's routing)",
    )  # fmt: skip
    language_actions: dict[str, Action] = setting(
        {}, GUARDRAIL, "per-language action, e.g. yo=refuse (repeatable)",
        flag="--language-action", metavar="LANG=ACTION",
    )  # fmt: skip
    unprotected_action: Action = setting(
        "flag",
        GUARDRAIL,
        "action for languages the gate does not separate (marked unprotected at calibration or "
        "recalibration): flag = served unchanged, verdict says so; refuse = templated refusal "
        "when the score passes the stricter of its threshold and the zero-shot one; steer = "
        "route as if the threshold were trusted",
    )
    gate_failure: GateFailureMode = setting(
        "closed",
        GUARDRAIL,
        "when the gate gives no score: closed = treated as harmful (templated refusal; under "
        "the flag action flagged, as a harmful request would be) or open = treated as harmless "
        "(served as the engine left it)",
    )
    default_language: str = setting("en", GUARDRAIL, "language of undetectable text")
    langid_min_confidence: float = setting(
        0.5, GUARDRAIL, "language-ID confidence below which the default language is used",
        ge=0.0, le=1.0,
    )  # fmt: skip
    langid_min_share: float = setting(
        0.05, GUARDRAIL, "share of a text's letters another language needs to be seen beside the "
        "detected one; a request is judged by the strictest plan of the languages seen", ge=0.0,
        le=1.0,
    )  # fmt: skip
    state_dir: Path | None = setting(
        None, GUARDRAIL, "folder of the SQLite threshold store (default: <cache>/state)"
    )
    state_url: SecretStr | None = setting(
        None, GUARDRAIL,
        "threshold store: sqlite:///DIR (one replica; sqlite:////abs/dir) or "
        "postgresql://user:password@host:port/db (shared by every replica naming it; changes "
        "reach them within 2 s) (default: sqlite:///<state-dir>)",
    )  # fmt: skip
    max_moderation_inputs: int = setting(64, GUARDRAIL, "inputs per /v1/moderations call", ge=1)
    max_recalibration_examples: int = setting(
        256, GUARDRAIL, "examples per admin recalibration call", ge=1
    )

    # vLLM engine options (passed through)
    tensor_parallel_size: int = setting(1, ENGINE, "tensor-parallel workers", ge=1)
    dtype: str = setting("auto", ENGINE, "model dtype")
    max_num_seqs: int | None = setting(None, ENGINE, "sequences per engine step", ge=1)
    max_num_batched_tokens: int | None = setting(None, ENGINE, "tokens per engine step", ge=1)
    enforce_eager: bool | None = setting(
        None, ENGINE, "eager mode instead of vLLM's compiled graph (the guard runs in both)"
    )
    gpu_memory_utilization: float | None = setting(
        None, ENGINE, "share of GPU memory vLLM may use", gt=0.0, le=1.0
    )
    kv_cache_memory_bytes: int | None = setting(None, ENGINE, "KV cache size in bytes", ge=1)
    enable_prefix_caching: bool | None = setting(None, ENGINE, "vLLM prefix caching")
    seed: int = setting(0, ENGINE, "sampling seed")
    engine_args: dict[str, Any] = setting(
        {}, ENGINE, "any other vLLM engine argument (value parsed as JSON when it is JSON)",
        flag="--engine-arg", metavar="KEY=VALUE",
    )  # fmt: skip

    @field_validator("language_actions")
    @classmethod
    def _canonical_language_keys(cls, value: dict[str, Action]) -> dict[str, Action]:
        return {validate_language(lang): action for lang, action in value.items()}

    @field_validator("default_language")
    @classmethod
    def _known_default_language(cls, value: str) -> str:
        lang = validate_language(value)
        if lang not in TARGET_LANGUAGES:
            raise ValueError(
                f"default_language {lang!r} is not a routed language ({' '.join(TARGET_LANGUAGES)})"
            )
        return lang

    @model_validator(mode="after")
    def _one_known_state_location(self) -> ServeSettings:
        if self.state_url is None:
            return self
        if self.state_dir is not None:
            raise ValueError(
                "state_dir and state_url both set: give one (state_url sqlite:///DIR names the "
                "folder state_dir would)"
            )
        check_state_url(self.state_url.get_secret_value())
        return self

    def threshold_store_url(self, default_dir: Path) -> str:
        """The store ``state_url`` names, else the SQLite store in ``state_dir`` or
        ``default_dir``."""
        if self.state_url is not None:
            return self.state_url.get_secret_value()
        return sqlite_url(self.state_dir or default_dir)

    @field_validator("engine_args")
    @classmethod
    def _finite_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"engine_args[{key!r}] must be finite, got {item!r}")
        return value

    @model_validator(mode="after")
    def _two_listeners(self) -> ServeSettings:
        if self.admin_port and self.admin_port == self.port:
            raise ValueError(
                f"admin_port {self.admin_port} is the API's port: give the admin listener a port "
                "of its own, or drop admin_port to serve /admin/* on the API's port"
            )
        return self

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


ENGINE_FIELDS: tuple[str, ...] = tuple(
    name
    for name, info in ServeSettings.model_fields.items()
    if (info.json_schema_extra or {}).get("group") == ENGINE and name != "engine_args"
)
"""The pass-through vLLM options (the "vLLM engine" group but ``engine_args``)."""


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
