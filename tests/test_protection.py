"""The held-out protection benchmark (``babelgate eval --protection``): its data, its sampling,
its metrics against hand-computed cases, the plan each request gets, and one run end to end on
the embedded SmolLM2 model through real vLLM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from babelgate.evaluation.heldout import (
    CALIBRATION_LANGUAGES,
    load_heldout,
    stratified_sample,
)
from babelgate.evaluation.protection import (
    ProtectionOptions,
    benign_family_auroc,
    refusal_metrics,
    refused_by_template,
    serve_guard,
    threshold_rules,
)
from babelgate.gate.data import LabelledPrompt, load_dataset
from babelgate.gate.estimator import HarmfulnessGate
from babelgate.gate.hf.embedded import SMOLLM2
from babelgate.paths import style_prompts_dir
from babelgate.server.refusal_templates import refusal_text
from babelgate.server.shipped import shipped_artifact

REPO = Path(__file__).resolve().parents[1]
QWEN_ROBUST = REPO / "server" / "artifacts" / "qwen2.5-coder-0.5b" / "robust"


def test_heldout_covers_ten_languages_two_outside_calibration_and_no_calibration_text(
    polyrefuse_dir,
) -> None:
    rows = load_heldout()
    languages = {p.language for p in rows}
    assert {"en", "zh", "ar", "es", "fr", "de", "ja", "ru", "hi", "bn"} <= languages
    assert languages - CALIBRATION_LANGUAGES == {"hi", "bn"}
    for lang in languages:  # both classes everywhere
        assert {p.label for p in rows if p.language == lang} == {0, 1}, lang
    calibration = {p.text for p in load_dataset(polyrefuse_dir)}
    calibration |= {p.text for p in load_dataset(style_prompts_dir())}
    assert not {p.text for p in rows} & calibration


def _rows(spec: dict[tuple[int, str], int]) -> list[LabelledPrompt]:
    return [LabelledPrompt(f"{label}-{style}-{i}", label, "en", "test", "t", style)
            for (label, style), n in spec.items() for i in range(n)]  # fmt: skip


def test_stratified_sample_spreads_over_families_and_fills_from_the_larger() -> None:
    rows = _rows({(1, "a"): 5, (1, "b"): 1, (0, "c"): 3, (0, "d"): 3})
    got = stratified_sample(rows, 4, seed=0)
    count = {s: sum(p.style == s for p in got) for s in "abcd"}
    assert count == {"a": 3, "b": 1, "c": 2, "d": 2}
    assert got == stratified_sample(rows, 4, seed=0)  # seeded
    assert len(stratified_sample(rows, 100, seed=0)) == len(rows)
    assert stratified_sample(rows, None, seed=0) == rows


def _gen(policy: str, i: int, label: int, intervention: str = "none") -> dict:
    return {"key": f"{policy}/en/{i}", "policy": policy, "label": label,
            "guard": {"intervention": intervention}}  # fmt: skip


def test_refusal_metrics_count_the_native_refusals_routing_kept() -> None:
    # harmful 0-3, benign 4-5; unguarded refuses harmful 0, 1, 2 and benign 4
    gens = [_gen("none", i, int(i < 4)) for i in range(6)]
    gens += [_gen("routing", 0, 1, "steer"), _gen("routing", 1, 1, "ablate"),
             _gen("routing", 2, 1, "ablate"), _gen("routing", 3, 1, "steer"),
             _gen("routing", 4, 0, "ablate"), _gen("routing", 5, 0, "steer")]  # fmt: skip
    refused = {"none/en/0": True, "none/en/1": True, "none/en/2": True, "none/en/3": False,
               "none/en/4": True, "none/en/5": False, "routing/en/0": True,
               "routing/en/1": False, "routing/en/2": False, "routing/en/3": True,
               "routing/en/4": False, "routing/en/5": True}  # fmt: skip
    out = refusal_metrics(gens, refused, ("none", "routing"))
    assert out["none"]["harmful_refused"]["k"] == 3 and out["none"]["harmful_refused"]["n"] == 4
    assert out["routing"]["harmful_refused"]["k"] == 2
    assert out["routing"]["benign_refused"]["k"] == 1
    kept = out["routing"]["native_refusals_kept"]
    assert (kept["k"], kept["n"]) == (1, 3)  # of 0, 1, 2 only 0 is still refused
    assert out["routing"]["native_refusals_lost_by_intervention"] == {"ablate": 2}


def test_a_refuse_variant_is_its_steer_twin_with_the_template_on_harmful_verdicts() -> None:
    gens = [{**_gen("routing-band", 0, 1, "steer"), "language": "de", "output": "Sicher!",
             "guard": {"decision": "harmful", "intervention": "steer"}},
            {**_gen("routing-band", 1, 0), "language": "de", "output": "Gern.",
             "guard": {"decision": "unsure", "intervention": "none"}},
            {**_gen("none", 0, 1), "language": "de", "output": "x"}]  # fmt: skip
    rows = refused_by_template(gens, "routing-band-refuse")
    assert [r["key"] for r in rows] == ["routing-band-refuse/en/0", "routing-band-refuse/en/1"]
    assert rows[0]["output"] == refusal_text("de") != "Sicher!"
    assert rows[1]["output"] == "Gern."
    with pytest.raises(ValueError, match="unknown variant"):
        ProtectionOptions(artifact="a", out="o", policies=("routing", "always-refuse"))


def test_requests_are_planned_as_serve_plans_them() -> None:
    gate = HarmfulnessGate.load(QWEN_ROBUST)
    en = serve_guard(gate, "routing", "en")
    assert (en.policy, en.threshold, en.threshold_source) == (
        "routing", gate.threshold("en").value, "recalibrated")
    hi = serve_guard(gate, "routing", "hi")  # no threshold of its own: the zero-shot fallback
    assert (hi.threshold, hi.threshold_source) == (gate.zero_shot_threshold, "default")
    assert serve_guard(gate, "none", "en").policy == "none"


def test_threshold_rules_score_on_the_half_they_did_not_read() -> None:
    gate = HarmfulnessGate.load(QWEN_ROBUST)
    scores = [{"key": f"{lang}/{i}", "language": lang, "label": i % 2,
               "score": (3.0 if i % 2 else -3.0) + shift}
              for lang, shift in (("en", 0.0), ("sw", 2.0)) for i in range(40)]  # fmt: skip
    rules = threshold_rules(scores, gate, "en", seed=0)
    sw = rules["sw"]
    assert sw["traffic"]["threshold"] == pytest.approx(gate.threshold("en").value + 2.0)
    assert sw["traffic"]["recall"] == 1.0 and sw["traffic"]["fpr"] == 0.0
    assert sw["k=4"]["recall"] == 1.0 and sw["k=4"]["fpr"] == 0.0


@pytest.mark.slow
@pytest.mark.vllm
def test_protection_runs_end_to_end_and_resumes_without_an_engine(tmp_path) -> None:
    out = tmp_path / "protection"
    cmd = [sys.executable, "-m", "babelgate", "eval", "--protection", "--model", SMOLLM2.id,
           "--artifact", str(shipped_artifact(SMOLLM2.id)), "--languages", "en,hi",
           "--per-class", "2", "--gate-per-class", "6", "--max-new-tokens", "4",
           "--out", str(out), "--no-progress"]  # fmt: skip
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    report = json.loads((out / "protection.json").read_text())
    assert set(report["languages"]) == {"en", "hi"}
    gens = (out / "generations.jsonl").read_text().splitlines()
    # 4 generating variants (each -refuse one reuses its steer twin's) x 2 languages x 2 x 2
    assert len(gens) == 4 * 2 * 4
    hi = report["languages"]["hi"]
    assert not hi["calibration_language"] and hi["gate"]["n_harmful"] == 6
    assert hi["routing"]["harmful_refused"]["n"] == 2
    assert hi["routing-band-refuse"]["harmful_refused"]["n"] == 2
    assert hi["routing-never-refuse"]["harmful_refused"]["n"] == 2
    # everything stored: the rerun rewrites the report without starting an engine
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Initializing a V1 LLM engine" not in again.stderr
    assert "# Protection on held-out data" in again.stdout
    # and it still says how the rows were produced: the first run's command and timings
    rerun = json.loads((out / "protection.json").read_text())
    assert report["timings"]["generations_s"] > 0
    assert (rerun["command"], rerun["timings"]) == (report["command"], report["timings"])


def test_benign_family_auroc_pits_every_harmful_row_against_one_family() -> None:
    rows = [{"label": 1, "style": "crimes", "score": 2.0},
            {"label": 1, "style": "crimes", "score": 0.0},
            {"label": 0, "style": "ethics", "score": 1.0},  # between the two harmful: 0.5
            {"label": 0, "style": "distress", "score": -1.0},  # below both: 1.0
            {"label": 0, "style": "distress", "score": -2.0}]  # fmt: skip
    got = benign_family_auroc(rows)
    assert got == {"distress": {"n": 2, "auroc": 1.0}, "ethics": {"n": 1, "auroc": 0.5}}
