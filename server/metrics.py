"""Prometheus metrics of the guardrail server.

Runs in the API-server process. The metrics live in prometheus-client's default registry, the one
vLLM's front end registers its engine metrics in (``vllm:*``, with log stats on), so ``/metrics``
shows both. Label values are bounded: languages are the routed ones, decisions, policies and
actions are closed sets.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Gate logits: the readout is a logistic unit, so its useful range is a few units around 0.
SCORE_BUCKETS = (-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0,
                 4.0, 6.0, 8.0, 12.0)  # fmt: skip
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


class ServerMetrics:
    """The server's collectors, registered once per registry (the default one when serving)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "babelgate_requests",
            "Chat completion requests by routed language, gate decision, policy and action.",
            ["language", "decision", "policy", "action"],
            registry=registry,
        )
        self.moderation_inputs = Counter(
            "babelgate_moderation_inputs",
            "Moderation inputs by routed language and gate decision.",
            ["language", "decision"],
            registry=registry,
        )
        self.gate_score = Histogram(
            "babelgate_gate_score",
            "Gate logit of each request (chat and moderation) by routed language.",
            ["language"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.threshold = Gauge(
            "babelgate_threshold",
            "Threshold in effect per language (override, artifact, or zero-shot fallback).",
            ["language"],
            registry=registry,
        )
        self.language_protected = Gauge(
            "babelgate_language_protected",
            "1 if the gate separates the language's labelled examples (its threshold means "
            "something), 0 if the language is unprotected and gets the fallback action.",
            ["language"],
            registry=registry,
        )
        self.family_auroc = Gauge(
            "babelgate_language_family_auroc",
            "The gate's AUROC per language and prompt family (style), measured at calibration "
            "by cross-fitting; below the calibration's floor the language is weak on it.",
            ["language", "family"],
            registry=registry,
        )
        self.unprotected_requests = Counter(
            "babelgate_unprotected_requests",
            "Requests routed to an unprotected language, by the fallback action applied.",
            ["language", "action"],
            registry=registry,
        )
        self.mixed_language_requests = Counter(
            "babelgate_mixed_language_requests",
            "Chat requests whose user text held several languages with confidence (a prompt "
            "wrapped in or mixed with another language), by the language whose plan decided "
            "(the strictest).",
            ["language"],
            registry=registry,
        )
        self.gateway_checks = Counter(
            "babelgate_gateway_checks",
            "Guardrail calls from a gateway (LiteLLM's generic guardrail API, Portkey's "
            "webhook) by gateway, routed language, gate decision and answer: block, allow, "
            "unavailable (no gate score: answered 503, the gateway's fail-open or fail-closed "
            "setting decides) or invalid (a conversation that cannot be judged: 400).",
            ["gateway", "language", "decision", "answer"],
            registry=registry,
        )
        self.output_refusals = Counter(
            "babelgate_output_refusals",
            "Completions the refusal judge calls refusals, by language and gate decision.",
            ["language", "decision"],
            registry=registry,
        )
        self.gate_failures = Counter(
            "babelgate_gate_failures",
            "Requests whose gate verdict was missing or failed, by the failure mode applied.",
            ["mode"],
            registry=registry,
        )
        self.ttft = Histogram(
            "babelgate_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.e2e_latency = Histogram(
            "babelgate_e2e_request_latency_seconds",
            "Time from request arrival to the last token (or the refusal).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "babelgate_prompt_tokens", "Prompt tokens processed.", registry=registry
        )
        self.completion_tokens = Counter(
            "babelgate_completion_tokens", "Completion tokens returned.", registry=registry
        )
        self.threshold_changes = Counter(
            "babelgate_threshold_changes",
            "Threshold overrides this replica applied (set, recalibrated or deleted here or on "
            "another replica sharing its store), by language.",
            ["language"],
            registry=registry,
        )
        self.threshold_store_up = Gauge(
            "babelgate_threshold_store_up",
            "1 while the threshold store's database answers, 0 while it does not (serving goes "
            "on with the thresholds last read; admin writes answer 503).",
            registry=registry,
        )
        self.threshold_store_errors = Counter(
            "babelgate_threshold_store_errors",
            "Failed threshold store operations (read, write, listen), each while the database "
            "could not be reached.",
            ["operation"],
            registry=registry,
        )
        self.rejected = Counter(
            "babelgate_rejected_requests",
            "Requests answered 429 because --max-queue-depth requests were in flight, by route.",
            ["route"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "babelgate_requests_in_flight",
            "Chat and moderation requests being processed now.",
            registry=registry,
        )
