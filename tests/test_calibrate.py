"""Calibration of the embedded model end to end, and the CLI's refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from babelgate.cli.main import main
from babelgate.gate.hf.embedded import SMOLLM2  # the fast model the mechanism tests run on


@pytest.mark.slow
def test_calibration_separates_and_reports(small_artifact):
    report = json.loads((small_artifact / "calibration_report.json").read_text())
    assert isinstance(report["layer"], int) and 7 <= report["layer"] <= 22
    assert "highest mean high-resource validation AUROC" in report["layer_selection"]["reason"]
    for lang in ("en", "de", "yo"):
        row = report["languages"][lang]
        assert set(row) >= {"auroc", "f1_zero_shot", "f1_k"}
        assert set(row["f1_k"]) == {"1", "4"}
    # A real separation, well above chance, on English held-out prompts (val and test).
    assert report["languages"]["en"]["auroc_val"] >= 0.85
    assert report["languages"]["en"]["auroc"] >= 0.7
    assert len(report["auroc_by_layer"]["en"]) == 30
    assert report["preset"] == "paper" and report["layers"] == [report["layer"]]
    assert report["families"] == {"instruction": 24 * 2 * 10}
    # every evaluated language has a labelled pool here: its protection status is judged
    assert {report["languages"][x]["status"] for x in ("en", "de", "yo")} <= {
        "protected", "unprotected"
    }
    assert report["unprotected_languages"] == [
        x for x in ("en", "de", "yo") if report["languages"][x]["status"] == "unprotected"
    ]
    assert (small_artifact / "calibration_report.md").read_text().startswith("# babelgate")
    png = (small_artifact / "auroc_by_layer.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_artifact_loads_for_its_model_and_scores(small_artifact):
    from babelgate.gate.estimator import HarmfulnessGate
    from babelgate.gate.hf.model_source import model_info

    gate = HarmfulnessGate.load(small_artifact, expect_model=model_info(SMOLLM2.id))
    manifest = json.loads((small_artifact / "manifest.json").read_text())
    assert manifest["model"]["id"] == SMOLLM2.id
    # calibrate stores per-language thresholds from 4 examples per class by default.
    assert gate.threshold("yo").source == "recalibrated" and gate.threshold("yo").k == 4
    assert gate.threshold("sw").source == "default"
    u, c = gate.linear_form()
    assert np.isfinite(u).all() and np.isfinite(c)


@pytest.mark.slow
def test_recalibrate_cli_records_threshold(small_artifact, tmp_path, polyrefuse_dir, capsys):
    from babelgate.gate.data import load_polyrefuse
    from babelgate.gate.estimator import HarmfulnessGate

    artifact = tmp_path / "artifact"
    shutil.copytree(small_artifact, artifact)
    rows = load_polyrefuse(polyrefuse_dir, languages=["yo"], splits=["val"])
    examples = tmp_path / "yo.jsonl"
    picked = [r for r in rows if r.label == 1][:3] + [r for r in rows if r.label == 0][:3]
    examples.write_text(
        "\n".join(json.dumps({"text": r.text, "label": r.label}) for r in picked) + "\n"
    )
    code = main(
        [
            "recalibrate", "--artifact", str(artifact), "--language", "yo",
            "--examples", str(examples), "--k", "2",
        ]
    )
    assert code == 0
    assert "yo: threshold" in capsys.readouterr().out
    record = HarmfulnessGate.load(artifact).threshold("yo")
    assert (record.source, record.k, record.n_harmful, record.n_harmless) == (
        "recalibrated", 2, 2, 2,
    )
    assert str(examples) in record.note


@pytest.mark.slow
def test_recalibrate_band_only_sets_the_band_and_keeps_the_threshold(
    small_artifact, tmp_path, polyrefuse_dir, capsys
):
    """6 harmful examples per language: floor(0.02 * 6) = 0, so the band's edge is the lowest
    harmful score (capped at the threshold), scored here by the gate itself."""
    from babelgate.gate.data import load_polyrefuse
    from babelgate.gate.estimator import HarmfulnessGate
    from babelgate.gate.hf.backend import TransformersBackend

    artifact = tmp_path / "artifact"
    shutil.copytree(small_artifact, artifact)
    before = HarmfulnessGate.load(artifact)
    rows = load_polyrefuse(polyrefuse_dir, languages=["de", "yo"], splits=["train"])
    picked = {lang: [r.text for r in rows if r.label == 1 and r.language == lang][:6]
              for lang in ("de", "yo")}  # fmt: skip
    examples = tmp_path / "band.jsonl"
    examples.write_text("".join(
        json.dumps({"text": t, "label": 1, "language": lang}) + "\n"
        for lang, texts in picked.items() for t in texts))  # fmt: skip
    code = main(["recalibrate", "--artifact", str(artifact), "--band-only", "--language",
                 "de,yo", "--examples", str(examples)])  # fmt: skip
    assert code == 0
    assert "harmless below" in capsys.readouterr().out
    after = HarmfulnessGate.load(artifact)
    backend = TransformersBackend(SMOLLM2.id)
    for lang, texts in picked.items():
        old, new = before.threshold(lang), after.threshold(lang)
        scores = after.score(after.inputs(backend.activations(texts, list(after.layers),
                                                              progress=False)))  # fmt: skip
        assert (new.value, new.source, new.k) == (old.value, old.source, old.k)
        assert new.harmless_below == pytest.approx(min(float(scores.min()), old.value), abs=1e-4)
        assert new.note.endswith("; babelgate recalibrate --band-only: abstain band from 6 "
                                 "harmful train examples")  # fmt: skip


def test_calibrate_refuses_existing_output(tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    assert main(["calibrate", "--out", str(out), "--data", str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_calibrate_refuses_bad_data_before_loading_a_model(tmp_path, capsys):
    data = tmp_path / "one_class.jsonl"
    data.write_text('{"text": "a", "label": 1, "language": "en", "split": "train"}\n')
    assert main(["calibrate", "--out", str(tmp_path / "a"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "needs harmful and harmless examples" in err or "test nor a val split" in err
    assert not (tmp_path / "a").exists()


def test_calibrate_refuses_unknown_language(tmp_path, polyrefuse_dir, capsys):
    args = ["calibrate", "--out", str(tmp_path / "a"), "--data", str(polyrefuse_dir)]
    assert main([*args, "--languages", "xx"]) == 2
    assert "unknown language code" in capsys.readouterr().err
    assert main([*args, "--languages", "sw"]) == 2
    assert "not in" in capsys.readouterr().err


@pytest.mark.slow
def test_robust_preset_trains_on_several_datasets_and_reads_its_chosen_layers(
    tmp_path, polyrefuse_dir, embedded_model_dir, capsys
):
    from babelgate.gate.estimator import HarmfulnessGate
    from babelgate.paths import style_prompts_dir

    out = tmp_path / "robust"
    code = main([
        "calibrate", "--model", SMOLLM2.id, "--preset", "robust", "--data", str(polyrefuse_dir),
        "--data", str(style_prompts_dir()), "--out", str(out), "--languages", "en,yo",
        "--max-per-class", "8", "--no-progress",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["preset"] == "robust"
    assert set(report["families"]) == {"instruction", "question", "narrative"}
    assert "held-out-family AUROC" in report["layer_selection"]["reason"]
    grid = report["layer_selection"]["grid"]
    assert len(grid) > 20 and all(set(g["held_out"]) == set(report["families"]) for g in grid)
    gate = HarmfulnessGate.load(out)
    assert list(gate.layers) == report["layers"] and gate.layer == report["layers"][-1]
    assert gate.config.weight_decay == report["weight_decay"]
    # The style check: every evaluated language measured on each family, cross-fitted, and
    # carried into the artifact (what the server reports) exactly as in the report.
    for lang in ("en", "yo"):
        row = report["languages"][lang]
        assert set(row["family_auroc"]) == {"instruction", "question", "narrative"}
        assert all(0.0 <= v <= 1.0 for v in row["family_auroc"].values())
        assert gate.family_auroc(lang) == row["family_auroc"]
        assert gate.weak_families(lang) == row["weak_families"]
    assert report["weak_languages"] == {
        x: r["weak_families"] for x, r in report["languages"].items() if r["weak_families"]
    }
    assert "weak on a prompt family" in (out / "calibration_report.md").read_text()
    # robust stores thresholds set on the whole train pool, families weighted equally
    assert report["threshold_k"] == "all"
    en = gate.threshold("en")
    assert en.source == "recalibrated" and en.k == 3 * 8  # --max-per-class caps each family
    assert "(instruction, narrative, question) weighted equally" in en.note


@pytest.mark.slow
def test_full_readout_reads_the_whole_residual_and_stores_no_basis(
    tmp_path, polyrefuse_dir, embedded_model_dir, capsys
):
    from babelgate.gate.estimator import HarmfulnessGate
    from babelgate.gate.hf.model_source import model_info

    out = tmp_path / "full"
    code = main([
        "calibrate", "--model", SMOLLM2.id, "--preset", "paper", "--layer", "12", "--readout",
        "full", "--weight-decay", "0.1", "--threshold-k", "all", "--data", str(polyrefuse_dir),
        "--out", str(out), "--languages", "en,yo", "--max-per-class", "8", "--no-progress",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "calibration_report.json").read_text())
    assert report["readout"] == "full" and report["layers"] == [12]
    assert "full readout" in (out / "calibration_report.md").read_text()
    gate = HarmfulnessGate.load(out, expect_model=model_info(SMOLLM2.id))
    hidden = gate.hidden_size
    assert gate.config.readout == "full" and gate.basis is None
    assert gate.config.weight_decay == report["weight_decay"] == 0.1
    assert gate.readout.coef_.shape == (hidden,) and gate.linear_form()[0].shape == (hidden,)
    assert gate.threshold("yo").source == "recalibrated"
    assert report["languages"]["en"]["auroc"] > 0.7


def test_threshold_k_is_a_count_all_or_auto(tmp_path, capsys):
    from babelgate.gate.calibration import CalibrationOptions

    assert CalibrationOptions().stored_threshold_k("robust") == "all"
    assert CalibrationOptions().stored_threshold_k("paper") == 4
    assert CalibrationOptions(threshold_k=2).stored_threshold_k("robust") == 2
    with pytest.raises(ValueError, match="threshold_k"):
        CalibrationOptions(threshold_k=-1)
    with pytest.raises(SystemExit):
        main(["calibrate", "--threshold-k", "some", "--out", str(tmp_path / "x")])
    assert "expected an integer, 'all' or 'auto'" in capsys.readouterr().err


def test_robust_preset_refuses_a_forced_layer(tmp_path, polyrefuse_dir, capsys):
    code = main(["calibrate", "--preset", "robust", "--layer", "9", "--data",
                 str(polyrefuse_dir), "--out", str(tmp_path / "x")])  # fmt: skip
    assert code != 0 and "--preset paper" in capsys.readouterr().err


def test_robust_preset_refuses_single_family_data_before_loading_a_model(
    tmp_path, polyrefuse_dir, capsys
):
    code = main(["calibrate", "--preset", "robust", "--data", str(polyrefuse_dir),
                 "--out", str(tmp_path / "x"), "--backend", "transformers",
                 "--model", str(tmp_path / "no-such-model")])  # fmt: skip
    assert code == 2 and "one family (instruction)" in capsys.readouterr().err


def _rows(families: list[str]) -> list:
    from babelgate.gate.data import LabelledPrompt

    return [
        LabelledPrompt(f"{fam} {lang} {label}", label, lang, "train", f"{fam}.jsonl", fam)
        for fam in families
        for lang in ("en", "de")
        for label in (0, 1)
    ]


def test_auto_preset_is_robust_only_with_two_prompt_families():
    from babelgate.gate.calibration import CalibrationOptions, resolve_preset

    auto = CalibrationOptions()
    assert auto.preset == "auto"
    preset, why = resolve_preset(_rows(["instruction"]), auto)
    assert preset == "paper" and "one prompt family (instruction)" in why
    preset, why = resolve_preset(_rows(["instruction", "question"]), auto)
    assert preset == "robust" and "2 prompt families" in why
    forced = CalibrationOptions(layer=9)
    assert resolve_preset(_rows(["instruction", "question"]), forced)[0] == "paper"
    decay = CalibrationOptions(weight_decay=0.1)  # the robust grid would ignore it: paper
    assert resolve_preset(_rows(["instruction", "question"]), decay) == (
        "paper", "auto: --weight-decay fixes the paper preset's readout")
    with pytest.raises(ValueError, match="--weight-decay fixes the paper preset's readout"):
        CalibrationOptions(preset="robust", weight_decay=0.1)
    asked = CalibrationOptions(preset="paper")
    assert resolve_preset(_rows(["instruction", "question"]), asked) == ("paper", "asked for")


def test_default_calibration_data_has_two_families(polyrefuse_dir, monkeypatch):
    from babelgate.gate.calibration import CalibrationOptions, resolve_preset
    from babelgate.gate.data import load_dataset
    from babelgate.paths import default_data_sources

    monkeypatch.setenv("BABELGATE_DATA", str(polyrefuse_dir))
    sources = default_data_sources()
    assert sources[0] == polyrefuse_dir and sources[1].name == "styles"
    prompts = [p for src in sources for p in load_dataset(src)]
    assert resolve_preset(prompts, CalibrationOptions())[0] == "robust"


def test_paper_layer_takes_the_best_rounded_validation_auroc_and_ties_go_earlier():
    from babelgate.gate.calibration import candidate_layers, paper_layer

    assert candidate_layers(8) == [2, 3, 4, 5, 6]
    assert paper_layer(8, {2: 0.7, 3: 0.9, 4: 0.8}) == 3
    assert paper_layer(8, {3: 0.90001, 5: 0.90004}) == 3  # equal at 4 decimals: earlier wins
    assert paper_layer(8, {3: 0.9001, 5: 0.9002}) == 5
    assert paper_layer(8, {0: 0.99, 1: 0.99}) == 2  # only the middle layers; missing count as 0
