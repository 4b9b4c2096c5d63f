"""The guardrail service behind the routes: engine lifecycle, threshold resolution, routing plans.

Runs in the API-server process. The HTTP server comes up first and answers ``/health`` with 503
while the model folder, the default calibration and the guarded engine start (minutes the first
time) in a background task; ``/health`` and the log say which phase it is in (a first-use
calibration takes about 15 minutes on 2 CPU cores and shows progress bars), and when the task
fails the process exits with the reason, since a guardrail that cannot guard must not serve.

Thresholds: an override in the admin store wins over the artifact's own threshold, which wins
over the zero-shot fallback (``HarmfulnessGate.threshold``). The live gate's records are never
modified, so deleting an override restores exactly what the artifact said.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from babelgate.gate.artifact import read_manifest
from babelgate.gate.estimator import HarmfulnessGate
from babelgate.gate.hf.embedded import embedded_model
from babelgate.gate.hf.model_source import resolve_model as model_source
from babelgate.gate.languages import UnknownLanguageError, validate_language
from babelgate.paths import cache_root
from babelgate.server.admin_store import OverrideStore
from babelgate.server.app.errors import APIError
from babelgate.server.calibration import ensure_default_artifact
from babelgate.server.engine.guarded_engine import GuardedEngine
from babelgate.server.langid import TARGET_LANGUAGES, Detection, LanguageRouter
from babelgate.server.metrics import ServerMetrics
from babelgate.server.plan import GuardPlan, language_plan, strictest_plan
from babelgate.server.settings import ServeSettings
from babelgate.server.shipped import shipped_artifact
from babelgate.server.store_url import connect_store

if TYPE_CHECKING:
    from babelgate.gate.estimator import ThresholdRecord
    from babelgate.server.engine.types import GuardParams, Verdict

log = logging.getLogger(__name__)

ENGINE_WATCH_S = 0.5  # how often the server looks whether its engine has died


class Engine(Protocol):
    """What the server needs from ``server.engine.guarded_engine.GuardedEngine``."""

    engine: Any  # vLLM's AsyncLLM
    tokenizer: Any
    worker: Any  # ``server.engine.rpc.AsyncWorkerClient`` (the fault switch calls it)

    @property
    def dead(self) -> bool: ...

    def generate(
        self, prompt: Sequence[int], sampling_params: Any, guard: GuardParams, request_id: str
    ) -> AsyncIterator[tuple[Any, Verdict | None]]: ...

    async def abort(self, request_id: str) -> None: ...

    async def verdict(self, guard_id: str, *, release: bool = False) -> Verdict | None: ...

    async def gate_scores(
        self, prompts: Sequence[str | Sequence[int]], language: str
    ) -> list[float]: ...

    async def status(self) -> dict[str, Any]: ...

    def shutdown(self) -> None: ...


class GuardrailService:
    """Holds the engine (once started), the gate's thresholds and the routing configuration."""

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.router = LanguageRouter(
            settings.default_language, settings.langid_min_confidence, settings.langid_min_share
        )
        self.engine: Engine | None = None
        self._gate: HarmfulnessGate | None = None
        self.store: OverrideStore | None = None
        self.tokenizer: Any = None
        self.model_path: Path | None = None
        self.artifact_path: Path | None = None
        self.max_model_len: int | None = None
        self.served_names: tuple[str, ...] = ()
        self._start_task: asyncio.Task[None] | None = None
        self.started_at = time.time()
        # Why the server failed (could not start, or its engine died): it then exits with 1.
        self.failure: str | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.phase = "starting"  # what the start task is doing, for /health and the log

    # ------------------------------------------------------------------------- lifecycle

    @property
    def ready(self) -> bool:
        return self.engine is not None

    @property
    def starting(self) -> bool:
        """The start task is still at work (neither ready nor failed)."""
        return self._start_task is not None and not self._start_task.done()

    def begin_start(self) -> None:
        """Start everything in the background; the process exits if it fails."""
        self._start_task = asyncio.get_running_loop().create_task(self._start_or_exit())

    async def _start_or_exit(self) -> None:
        try:
            await self.start()
        except Exception as exc:
            self.failure = f"could not start: {exc}"
            log.critical("babelgate serve cannot start: %s", exc, exc_info=exc)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_engine())

    async def _watch_engine(self) -> None:
        """Stop the server once the engine has died (its core process killed or crashed).

        vLLM notices a dead engine core within a second (its requests fail with
        ``EngineDeadError``, answered 503 in OpenAI's schema, and ``/health`` turns 503), but
        the process would go on answering 503 for ever: a supervisor restarts only a process
        that exits. So the server stops as on SIGTERM (in-flight responses are finished first)
        and then exits with status 1 (``server.app``'s lifespan).
        """
        while self.engine is not None:
            if self.engine.dead:
                self.failure = "stopped: the vLLM engine died (its engine core process is gone)"
                log.critical("%s; so that the supervisor restarts the server", self.failure)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            await asyncio.sleep(ENGINE_WATCH_S)

    async def start(self) -> None:
        s = self.settings
        self._enter("resolving the model")
        self.model_path = await asyncio.to_thread(resolve_model, s.model)
        self._enter("loading the gate artifact")
        self.artifact_path = await asyncio.to_thread(
            resolve_artifact, s.artifact, s.model, self._calibrating
        )
        manifest = read_manifest(self.artifact_path)
        self._enter("opening the threshold store")
        self.use_store(
            await connect_store(
                s.threshold_store_url(default_state_dir()),
                str(manifest["tensors_sha256"])[:16],
                self.metrics,
                self._enter,
            )
        )
        log.info("threshold overrides: %s", self.store.description)
        self.served_names = served_names(s, self.model_path)
        # The server's own copy of the gate holds the artifact's threshold records; the engine
        # checks that the artifact belongs to the model.
        self._gate = await asyncio.to_thread(HarmfulnessGate.load, self.artifact_path)
        self._enter("starting the guarded vLLM engine and checking its hook")
        engine = await GuardedEngine.start(
            str(self.model_path), str(self.artifact_path), engine_kwargs=s.engine_kwargs()
        )
        self.tokenizer = engine.tokenizer  # has a chat template: the self-check used it
        self.max_model_len = int(engine.engine.model_config.max_model_len)
        self.engine = engine
        for lang in sorted(set(TARGET_LANGUAGES) | set(self.store.overrides())):
            self.publish_threshold(lang)
        unprotected = [
            lang for lang in sorted(set(self._gate.thresholds) | set(self.store.overrides()))
            if not self.threshold(lang).protected
        ]
        if unprotected:
            log.warning(
                "UNPROTECTED languages (the gate does not separate their labelled examples; "
                "requests get --unprotected-action %s): %s",
                s.unprotected_action, ", ".join(unprotected),
            )
        weak = self.publish_family_auroc()
        if weak:
            log.warning(
                "languages the gate is WEAK on for some prompt families (calibration AUROC "
                "below %s; see GET /admin/thresholds): %s",
                self._gate.metadata.get("weak_family_auroc"),
                "; ".join(f"{x} ({', '.join(f)})" for x, f in weak.items()),
            )
        log.info(
            "babelgate ready: model %s (served as %s), gate %s, policy %s, action %s",
            self.model_path, ", ".join(self.served_names), self.artifact_path, s.policy, s.action,
        )

    def _enter(self, phase: str) -> None:
        self.phase = phase
        log.info("startup: %s", phase)

    def _calibrating(self, target: Path) -> None:
        """Called (from the start task's thread) when no cached default calibration exists."""
        self._enter(f"calibrating the gate on first use, cached afterwards at {target}")
        log.warning(
            "no cached calibration for this model: calibrating now (up to 15 minutes on 2 CPU "
            "cores, once); /health stays 503 until it is done"
        )

    def shutdown(self) -> None:
        for task in (self._start_task, self._watch_task):
            if task is not None and not task.done():
                task.cancel()
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        if self.store is not None:
            self.store.close()

    def require_engine(self) -> Engine:
        if self.engine is None:
            raise APIError(
                503,
                "the model is still loading (or failed to load): retry when GET /health is 200",
                code="engine_not_ready",
                headers={"Retry-After": "5"},
            )
        return self.engine

    def check_model(self, name: str | None) -> str:
        """The served name a request asked for; 404 for a model this server does not serve."""
        if name is None:
            return self.served_names[0]
        if name not in self.served_names:
            raise APIError(
                404,
                f"the model {name!r} does not exist: this server serves "
                f"{', '.join(repr(n) for n in self.served_names)} (GET /v1/models)",
                param="model",
                code="model_not_found",
            )
        return name

    # ------------------------------------------------------------------------- thresholds

    def use_store(self, store: OverrideStore) -> None:
        """Resolve thresholds from ``store``; re-publish a language's metrics whenever its
        override changes, through this replica or another one sharing the store."""
        self.store = store
        store.subscribe(lambda language: self.ready and self.publish_threshold(language))

    @property
    def gate(self) -> HarmfulnessGate:
        self.require_engine()
        assert self._gate is not None
        return self._gate

    def threshold(self, language: str) -> ThresholdRecord:
        """The threshold in effect: store override > artifact record > zero-shot fallback."""
        assert self.store is not None
        override = self.store.get(language)
        return override if override is not None else self.gate.threshold(language)

    def publish_threshold(self, language: str) -> ThresholdRecord:
        """Export the threshold in effect and the language's protection status as metrics."""
        record = self.threshold(language)
        self.metrics.threshold.labels(language).set(record.value)
        self.metrics.language_protected.labels(language).set(1 if record.protected else 0)
        return record

    def publish_family_auroc(self) -> dict[str, list[str]]:
        """Export the artifact's per-family AUROC (``gate.style_check``) as metrics; return the
        languages weak on some family, with those families."""
        measured = sorted(self.gate.metadata.get("family_auroc", {}))
        for lang in measured:
            for family, value in self.gate.family_auroc(lang).items():
                self.metrics.family_auroc.labels(lang, family).set(value)
        weak = {lang: self.gate.weak_families(lang) for lang in measured}
        return {lang: families for lang, families in weak.items() if families}

    def origin(self, language: str) -> str:
        """Where ``threshold(language)`` comes from: "override", "artifact" or "zero-shot"."""
        assert self.store is not None
        if self.store.get(language) is not None:
            return "override"
        return "artifact" if language in self.gate.thresholds else "zero-shot"

    def scratch_gate(self) -> HarmfulnessGate:
        """A copy of the gate whose thresholds can be changed without touching the live one."""
        return copy.deepcopy(self.gate)

    # ------------------------------------------------------------------------- routing

    def plan(self, detection: Detection) -> GuardPlan:
        """Threshold, action and engine policy for a chat request (``strictest``); a request
        planned as an unprotected language is counted with the fallback action it gets, and
        one whose text held several languages by the language that decided."""
        plan = self.strictest(detection)
        if not plan.protected:
            self.metrics.unprotected_requests.labels(plan.detection.language, plan.action).inc()
        if plan.detection.others:
            self.metrics.mixed_language_requests.labels(plan.detection.language).inc()
            log.debug(
                "languages %s seen in one request: %s decided (the strictest plan)",
                ",".join(detection.languages), plan.detection.language,
            )
        return plan

    def strictest(self, detection: Detection) -> GuardPlan:
        """The plan of each language seen (``plan_for``), the strictest kept
        (``server.plan.strictest_plan``): text of one language gets its language's plan."""
        return strictest_plan([self.plan_for(d) for d in detection.candidates()])

    def plan_for(self, detection: Detection) -> GuardPlan:
        """The plan for a request routed to ``detection.language`` alone (the rule:
        ``server.plan.plan_request``)."""
        return language_plan(
            detection, self.threshold(detection.language), self.settings, self.gate
        )

    def detect(self, override: str | None, messages: Sequence[dict[str, Any]]) -> Detection:
        """The caller's language if given (validated), else detection on the user text."""
        if override is not None:
            return Detection(validated_language(override), "override", 1.0)
        return self.router.detect_conversation(messages)


def generation_failed(exc: Exception, engine: Engine) -> APIError:
    """What a failed generation is answered with (``APIError``s as they are): 503
    ``engine_dead`` when the engine has died (the server then stops, so that its supervisor
    restarts it: ``GuardrailService._watch_engine``), else 500."""
    if isinstance(exc, APIError):
        return exc
    log.error("generation failed (engine %s)", "dead" if engine.dead else "alive", exc_info=exc)
    if engine.dead:
        return APIError(
            503,
            "the engine died while generating: the server is restarting, retry shortly",
            code="engine_dead",
            headers={"Retry-After": "5"},
        )
    return APIError(500, f"generation failed ({type(exc).__name__}): {exc}")


def validated_language(code: str, param: str = "babelgate.language") -> str:
    try:
        return validate_language(code)
    except UnknownLanguageError as err:
        raise APIError(400, str(err), param=param, code="invalid_language") from err


def resolve_model(model: str | None) -> Path:
    """The model folder: ``--model`` if given, else the embedded model (converted once)."""
    _, load_path = model_source(model)
    path = Path(load_path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--model {model}: no such folder; babelgate serve needs a local Hugging Face "
            "model folder (download it first), or no --model for the embedded model"
        )
    return path


def resolve_artifact(
    artifact: str | None,
    model: str | None,
    on_calibrate: Callable[[Path], None] | None = None,
) -> Path:
    """The gate artifact: ``--artifact`` if given, else the calibration shipped for an embedded
    model (``server.shipped``), else the model's cached default calibration (made on first use:
    minutes on a small CPU machine; ``on_calibrate`` is told first)."""
    if artifact is not None:
        path = Path(artifact).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"--artifact {artifact}: no such folder; create one with `babelgate calibrate "
                "--out DIR` or omit --artifact to use the cached default calibration"
            )
        return path
    if (shipped := shipped_artifact(model)) is not None:
        return shipped
    return ensure_default_artifact(model, progress=True, on_calibrate=on_calibrate)


def default_state_dir() -> Path:
    return cache_root() / "state"


def served_names(settings: ServeSettings, model_path: Path) -> tuple[str, ...]:
    """Names clients may use: ``--served-model-name``, else the ``--model`` argument, else the
    embedded model's name."""
    if settings.served_model_name:
        return (settings.served_model_name,)
    if (spec := embedded_model(settings.model)) is not None:
        return (spec.name,)
    return (str(settings.model),)
