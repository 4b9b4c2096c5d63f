"""``babelgate serve``: the OpenAI-compatible guardrail server (FastAPI + uvicorn over vLLM).

Runs in the API-server process (vLLM's engine core and workers are its child processes). The
flags are generated from ``server.settings.ServeSettings`` (one flag per field: name, type,
choices, default and help come from the field), so a setting is defined once. Flags mirror
``vllm serve`` where they overlap; every flag can also come from ``BABELGATE_<NAME>`` environment
variables or a YAML file (``--config``, or ``$BABELGATE_CONFIG``); flags win over the
environment, which wins over the file. The server itself is ``server.app.serve``.
"""

from __future__ import annotations

import argparse
import json
import os
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from babelgate.server.settings import ServeSettings, load_settings


def _pairs(kind: str):
    """argparse type for KEY=VALUE options."""

    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        return key.strip(), value.strip()

    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model behind the guardrail with an OpenAI-compatible API",
        description=(
            "Starts vLLM with the babelgate hook and serves /v1/chat/completions, "
            "/v1/moderations, /v1/models, /admin/thresholds, /health, /version and /metrics. "
            "Settings: flags > BABELGATE_* environment > --config YAML > defaults."
        ),
    )
    p.add_argument("--config", default=None, help="YAML file with any of the settings below")
    add_setting_flags(p)
    p.set_defaults(func=run)


def _flag_fields() -> dict[str, FieldInfo]:
    """The settings fields that are flags (all of them: each carries its help group)."""
    return {
        name: info
        for name, info in ServeSettings.model_fields.items()
        if (info.json_schema_extra or {}).get("group")
    }


def _flag_type(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``ServeSettings`` field: ``--<name>`` with the field's type (choices for a
    ``Literal``, ``--x/--no-x`` for a bool, repeated KEY=VALUE pairs for a dict), its description
    and default in the help, grouped as the field says. Every flag defaults to None, so a flag
    not given leaves the environment and the config file in charge."""
    groups: dict[str, Any] = {}
    for name, info in _flag_fields().items():
        extra = info.json_schema_extra or {}
        if extra["group"] not in groups:
            groups[extra["group"]] = parser.add_argument_group(extra["group"])
        kind = _flag_type(info.annotation)
        help_text = (info.description or "").replace("%", "%%")
        if info.default not in (None, PydanticUndefined):
            help_text += f" (default {info.default})"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": help_text}
        if get_origin(kind) is dict:
            metavar = extra["metavar"]
            kwargs |= {"action": "append", "type": _pairs(metavar), "metavar": metavar}
        elif kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(kind) is Literal:
            kwargs["choices"] = get_args(kind)
        elif kind in (int, float):
            kwargs["type"] = kind
        flag = extra["flag"] or "--" + name.replace("_", "-")
        groups[extra["group"]].add_argument(flag, **kwargs)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """Settings from the flags given, the environment and ``--config`` / ``$BABELGATE_CONFIG``."""
    overrides: dict[str, Any] = {}
    for name, info in _flag_fields().items():
        value = getattr(args, name)
        kind = _flag_type(info.annotation)
        if value is not None and get_origin(kind) is dict:
            if get_args(kind)[1] is Any:  # free-form values (engine_args): JSON when it parses
                value = {k: _json_or_text(v) for k, v in value}
            value = dict(value)
        overrides[name] = value
    return load_settings(args.config or os.environ.get("BABELGATE_CONFIG"), **overrides)


def run(args: argparse.Namespace) -> int:
    from babelgate.server.app import serve  # lazy: FastAPI, uvicorn and the engine stack

    return serve(settings_from_args(args))
