"""``babelgate serve``: the OpenAI-compatible guardrail server (FastAPI + uvicorn over vLLM).

Runs in the API-server process (vLLM's engine core and workers are its child processes). Flags
mirror ``vllm serve`` where they overlap; every flag can also come from ``BABELGATE_<NAME>``
environment variables or a YAML file (``--config``, or ``$BABELGATE_CONFIG``); flags win over
the environment, which wins over the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

from gate.hf.embedded import MODEL_HELP
from server.engine.types import POLICIES

log = logging.getLogger(__name__)


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
    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=MODEL_HELP)
    g.add_argument("--served-model-name", default=None, help="model name clients send")
    g.add_argument(
        "--artifact", default=None, help="gate artifact (default: cached default calibration)"
    )
    g.add_argument("--max-model-len", type=int, default=None, help="context length")
    g = p.add_argument_group("HTTP")
    g.add_argument("--host", default=None, help="bind address (default 0.0.0.0)")
    g.add_argument("--port", type=int, default=None, help="port (default 8000)")
    g.add_argument("--api-key", default=None, help="require this bearer key on /v1/*")
    g.add_argument("--admin-token", default=None, help="bearer token of /admin/* (else closed)")
    g.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"))
    g = p.add_argument_group("guardrail")
    g.add_argument(
        "--policy",
        default=None,
        choices=POLICIES,
        help="engine policy (default routing: steer harmful, ablate harmless)",
    )
    g.add_argument(
        "--action",
        default=None,
        choices=("steer", "refuse", "flag"),
        help="what a harmful verdict triggers (default steer)",
    )
    g.add_argument(
        "--language-action",
        action="append",
        type=_pairs("LANG=ACTION"),
        default=None,
        metavar="LANG=ACTION",
        help="per-language action, e.g. yo=refuse (repeatable)",
    )
    g.add_argument(
        "--unprotected-action",
        default=None,
        choices=("steer", "refuse", "flag"),
        help="action for languages the gate does not separate (marked unprotected at "
        "calibration or recalibration; default flag: served unchanged, verdict says so)",
    )
    g.add_argument(
        "--gate-failure",
        default=None,
        choices=("closed", "open"),
        help="when the gate fails: closed (refuse, default) or open (serve unguarded)",
    )
    g.add_argument("--default-language", default=None, help="language of undetectable text")
    g.add_argument("--langid-min-confidence", type=float, default=None)
    g.add_argument("--state-dir", default=None, help="admin DB folder (default: <cache>/state)")
    g = p.add_argument_group("vLLM engine")
    g.add_argument("--tensor-parallel-size", type=int, default=None)
    g.add_argument("--dtype", default=None)
    g.add_argument("--max-num-seqs", type=int, default=None)
    g.add_argument("--max-num-batched-tokens", type=int, default=None)
    g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--gpu-memory-utilization", type=float, default=None)
    g.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument(
        "--engine-arg",
        action="append",
        type=_pairs("KEY=VALUE"),
        default=None,
        metavar="KEY=VALUE",
        help="any other vLLM engine argument (value parsed as JSON when it is JSON)",
    )
    p.set_defaults(func=run)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


SETTING_FLAGS: tuple[str, ...] = (
    "model", "served_model_name", "artifact", "max_model_len", "host", "port", "api_key",
    "admin_token", "log_level", "policy", "action", "unprotected_action", "gate_failure",
    "default_language", "langid_min_confidence", "state_dir", "tensor_parallel_size", "dtype",
    "max_num_seqs",
    "max_num_batched_tokens", "enforce_eager", "gpu_memory_utilization", "kv_cache_memory_bytes",
    "enable_prefix_caching", "seed",
)  # fmt: skip


def settings_from_args(args: argparse.Namespace):
    from server.settings import load_settings

    overrides: dict[str, Any] = {name: getattr(args, name) for name in SETTING_FLAGS}
    if args.language_action:
        overrides["language_actions"] = dict(args.language_action)
    if args.engine_arg:
        overrides["engine_args"] = {k: _json_or_text(v) for k, v in args.engine_arg}
    return load_settings(args.config or os.environ.get("BABELGATE_CONFIG"), **overrides)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from server.app import create_app

    settings = settings_from_args(args)
    logging.getLogger().setLevel(settings.log_level.upper())
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_keep_alive=30,
    )
    failure = app.state.service.startup_error
    if failure is not None:
        log.error("babelgate serve stopped because it could not start: %s", failure)
        return 1
    return 0
