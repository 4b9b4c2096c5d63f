"""``babelgate sweep`` (``cli.sweep``, ``evaluation.sweep``): argument handling (fast) and a tiny
real run on the embedded model."""

from __future__ import annotations

import argparse
import json

import pytest

from babelgate.cli import sweep as sweep_cli
from babelgate.evaluation import sweep
from babelgate.gate.hf.embedded import SMOLLM2  # the fast model the mechanism tests run on


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="babelgate")
    sweep_cli.register(p.add_subparsers(dest="command", required=True))
    return p


def test_parse_list_and_default_layers() -> None:
    assert sweep_cli.parse_list("8, 14,20", int, "layers") == [8, 14, 20]
    assert sweep_cli.parse_list(None, int, "layers") is None
    with pytest.raises(ValueError, match="--lambdas"):
        sweep_cli.parse_list("1,x", float, "lambdas")
    assert sweep.default_layers(30) == [7, 11, 15, 18, 22]
    assert sweep.default_layers(2) == [0, 1]


def test_existing_results_are_not_overwritten_without_force(tmp_path) -> None:
    (tmp_path / sweep.SWEEP_JSON).write_text("{}")
    args = parser().parse_args(["sweep", "--out", str(tmp_path)])
    with pytest.raises(FileExistsError, match="--force"):
        args.func(args)


def test_render_table_and_heatmap_from_a_report() -> None:
    cells = [
        {"layer": layer, "lambda": lam, "alpha": 2.0 * lam, "harmful_refusal": 10.0 * lam,
         "harmless_refusal": 5.0, "selectivity": 10.0 * lam - 5.0}
        for layer in (3, 5) for lam in (1.0, 2.0)
    ]
    report = {
        "model": "m", "languages": ["en"], "n_per_class": 4, "split": "val",
        "max_new_tokens": 8, "judge": "refusal-markers", "direction_source": "d",
        "baseline": {"harmful_refusal": 25.0, "harmless_refusal": 0.0, "selectivity": 25.0},
        "cells": cells, "best": cells[1],
    }
    table = sweep.render_table(report)
    assert "| none | — | — | 25.0 | 0.0 | +25.0 |" in table
    assert "| 5 | 2 | 4.00 | 20.0 | 5.0 | +15.0 |" in table
    assert sweep.render_heatmap(report)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tiny_sweep_writes_table_json_and_png(tmp_path, polyrefuse_dir, capsys) -> None:
    out = tmp_path / "sweep"
    args = parser().parse_args([
        "sweep", "--model", SMOLLM2.id, "--data", str(polyrefuse_dir),
        "--layers", "8,14", "--lambdas", "1,4",
        "--n", "2", "--fit-n", "8", "--max-new-tokens", "8", "--out", str(out), "--no-progress",
    ])
    assert args.func(args) == 0
    report = json.loads((out / sweep.SWEEP_JSON).read_text())
    assert [(c["layer"], c["lambda"]) for c in report["cells"]] == [
        (8, 1.0), (8, 4.0), (14, 1.0), (14, 4.0)
    ]
    for cell in report["cells"]:
        assert len(cell["harmful_outputs"]) == 2 and len(cell["harmless_outputs"]) == 2
        assert cell["alpha"] == pytest.approx(cell["lambda"] * report["alpha_at_lambda_1"][
            str(cell["layer"])])
        assert cell["selectivity"] == pytest.approx(
            cell["harmful_refusal"] - cell["harmless_refusal"]
        )
    assert len(report["prompts"]["harmful"]) == 2 and len(report["prompts"]["harmless"]) == 2
    assert (out / sweep.SWEEP_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / sweep.SWEEP_MD).read_text()
    # Each layer x lambda cell is a row of the pooled table and of the per-language one.
    assert table.count("\n| 8 |") == 4 and table.count("\n| 14 |") == 4
    assert set(report["best_by_language"]) == set(report["languages"])
    assert "Best per language" in table
    assert "| none |" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_with_an_artifact_uses_its_layer(tmp_path, polyrefuse_dir, embedded_model_dir):
    """An artifact fixes the layer; a different --layers is refused before any generation."""
    import numpy as np

    from babelgate.gate.estimator import GateConfig, HarmfulnessGate
    from babelgate.gate.hf.model_source import model_info

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(8, 576)).astype(np.float32)
    acts[:4, 0] += 5.0
    labels = np.array([1] * 4 + [0] * 4)
    gate = HarmfulnessGate(GateConfig(layer=12, rank=1), model_info(embedded_model_dir))
    gate.fit({"en": (acts, labels)}).save(tmp_path / "artifact")
    args = parser().parse_args([
        "sweep", "--model", str(embedded_model_dir), "--data", str(polyrefuse_dir),
        "--artifact", str(tmp_path / "artifact"), "--layers", "8", "--out",
        str(tmp_path / "o"), "--no-progress",
    ])
    with pytest.raises(ValueError, match="layer 12 only"):
        args.func(args)


def test_best_by_language_is_each_language_own_selectivity_ties_to_the_smaller_lambda() -> None:
    def cell(layer, lam, harmful, harmless):
        return {"layer": layer, "lambda": lam, "alpha": lam, "harmful_refusal": 0.0,
                "harmless_refusal": 0.0, "selectivity": 0.0,
                "harmful_refusal_by_language": harmful, "harmless_refusal_by_language": harmless}

    cells = [
        cell(14, 1.0, {"th": 12.5, "de": 50.0}, {"th": 0.0, "de": 0.0}),
        cell(14, 2.0, {"th": 25.0, "de": 75.0}, {"th": 12.5, "de": 0.0}),  # th 12.5 again
        cell(14, 4.0, {"th": 37.5, "de": 87.5}, {"th": 0.0, "de": 50.0}),
    ]
    best = sweep.best_by_language(cells, ["de", "th", "yo"])
    assert best["de"] == {"layer": 14, "lambda": 2.0, "selectivity": 75.0, "harmful_refusal": 75.0}
    assert best["th"]["lambda"] == 4.0 and best["th"]["selectivity"] == 37.5
    assert "yo" not in best  # no cell measured it
    cells[2]["harmful_refusal_by_language"]["th"] = 12.5  # now 1, 2 and 4 tie at +12.5
    assert sweep.best_by_language(cells, ["th"])["th"]["lambda"] == 1.0
    report = {
        "model": "m", "languages": ["de", "th"], "n_per_class": 8, "split": "val",
        "max_new_tokens": 8, "judge": "refusal-markers", "direction_source": "d",
        "baseline": {"harmful_refusal": 0.0, "harmless_refusal": 0.0, "selectivity": 0.0,
                     "harmful_refusal_by_language": {"de": 0.0, "th": 12.5}},
        "cells": cells, "best": {**cells[1], "selectivity": 60.0}, "best_by_language": best,
    }
    table = sweep.render_table(report)
    assert "| none | — | 0.0 | 12.5 |" in table
    assert "| 14 | 2 | 75.0 | 25.0 |" in table
    assert "de layer 14, lambda 2 (+75.0); th layer 14, lambda 4 (+37.5)." in table
