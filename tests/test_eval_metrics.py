"""Evaluation metrics by hand: selectivity, refusal tables, the refuse action, F1 at a threshold,
and the k-shot sampler (k examples from train only, never a test row)."""

from __future__ import annotations

import numpy as np
import pytest

from babelgate.evaluation.kshot import (
    ScoredPool,
    draw_k,
    f1_at,
    kshot_curve,
    recalibrated_threshold,
)
from babelgate.evaluation.policies import policy, select_policies
from babelgate.evaluation.report import mmlu_table, refusal_table, refuse_rows, strength_sweep
from babelgate.evaluation.runner import EvalOptions
from babelgate.gate.metrics import selectivity
from babelgate.server.refusal_templates import refusal_text


def _row(policy_name, lang, label, index, decision=None, output="ok"):
    return {"key": f"{policy_name}/{lang}/{index}", "policy": policy_name, "language": lang,
            "label": label, "index": index, "output": output,
            "guard": {"decision": decision, "intervened": decision == "harmful"}}


def test_selectivity_by_hand():
    assert selectivity(0.75, 0.25) == pytest.approx(50.0)
    assert selectivity(0.0, 0.5) == pytest.approx(-50.0)


def test_refusal_table_by_hand():
    specs = [policy("none")]
    # yo: harmful refused 3 of 4, harmless refused 1 of 2 -> 75 - 50 = 25 points.
    rows = [_row("none", "yo", 1, i) for i in range(4)] + [_row("none", "yo", 0, i + 4)
                                                           for i in range(2)]
    verdicts = [True, True, True, False, True, False]
    # sw: 1 of 2 harmful, 0 of 2 harmless -> 50 points.
    rows += [_row("none", "sw", 1, i) for i in range(2)] + [_row("none", "sw", 0, i + 2)
                                                            for i in range(2)]
    verdicts += [True, False, False, False]
    table = refusal_table(rows, verdicts, specs, ["yo", "sw"])["none"]
    assert table["yo"]["harmful_refusal"] == pytest.approx(0.75)
    assert table["yo"]["harmless_refusal"] == pytest.approx(0.5)
    assert table["yo"]["selectivity"] == pytest.approx(25.0)
    assert (table["yo"]["n_harmful"], table["yo"]["n_harmless"]) == (4, 2)
    assert table["sw"]["selectivity"] == pytest.approx(50.0)
    assert table["yo"]["degenerate"] == 0.0 and table["yo"]["clean_selectivity"] == 25.0
    assert table["lrl"]["selectivity"] == pytest.approx(37.5)  # both are low-resource
    assert table["lrl"]["languages"] == ["yo", "sw"]
    assert table["non-hrl"]["languages"] == ["yo", "sw"]
    # th (mid-resource): harmful 1 of 1, harmless 0 of 1 -> 100 points; in non-hrl, not in lrl.
    th_rows = [_row("none", "th", 1, 9), _row("none", "th", 0, 10)]
    wide = refusal_table(rows + th_rows, [*verdicts, True, False], specs,
                         ["yo", "sw", "th"])["none"]  # fmt: skip
    assert wide["lrl"]["languages"] == ["yo", "sw"]
    assert wide["non-hrl"]["languages"] == ["yo", "sw", "th"]
    assert wide["non-hrl"]["selectivity"] == pytest.approx((25.0 + 50.0 + 100.0) / 3)


def test_refuse_action_rows_replace_harmful_verdicts_with_the_template():
    spec = policy("routing-k4+refuse")
    source = [_row("routing-k4", "yo", 1, 0, "harmful", "here is how"),
              _row("routing-k4", "yo", 0, 1, "harmless", "a poem")]
    rows = refuse_rows(source, spec)
    assert [r["output"] for r in rows] == [refusal_text("yo"), "a poem"]
    assert [r["policy"] for r in rows] == [spec.name] * 2
    assert rows[0]["key"] == "routing-k4+refuse/yo/0"
    assert source[0]["output"] == "here is how"  # the routing rows are left as they were


def test_select_policies_adds_the_routing_row_a_refuse_row_reuses():
    names = [p.name for p in select_policies(["routing-k4+refuse", "none"])]
    assert names == ["none", "routing-k4", "routing-k4+refuse"]
    # the serving default: scored in shadow (nothing changed), the template on a harmful verdict
    default = policy("shadow-k4+refuse")
    assert (default.kind, default.source) == ("refuse", "shadow-k4")
    assert policy("shadow-k4").guard_policy == "shadow"
    assert [p.name for p in select_policies(["shadow-k4+refuse"])] == [
        "shadow-k4", "shadow-k4+refuse"]
    with pytest.raises(ValueError, match="unknown policy"):
        select_policies(["nope"])


def test_scaled_baselines_parse_and_sort_after_their_method():
    spec = policy("cast@2.5")
    assert (spec.name, spec.kind, spec.method, spec.scale) == ("cast@2.5", "baseline", "cast", 2.5)
    assert spec.description.endswith("2.5 x its fitted strength")
    assert policy("cast").scale == 1.0
    names = [p.name for p in select_policies(["cast@4", "adasteer@0.5", "cast", "none"])]
    assert names == ["none", "adasteer@0.5", "cast", "cast@4"]
    for bad, message in (("routing-k4@2", "only the baselines"), ("cast@x", "must be a number"),
                         ("cast@0", "finite number > 0"), ("cast@nan", "finite number > 0"),
                         ("nope@2", "unknown policy")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            policy(bad)


def test_eval_options_take_only_the_test_or_val_split():
    assert EvalOptions(artifact="a", out="o", split="val").split == "val"
    with pytest.raises(ValueError, match="--split must be one of test, val"):
        EvalOptions(artifact="a", out="o", split="train")


def test_mmlu_table_counts_refused_questions_as_wrong():
    rows = [
        {"mmlu": "m", "policy": "routing-k4", "answer": "A", "predicted": "A",
         "guard": {"decision": "harmful"}},
        {"mmlu": "m", "policy": "routing-k4", "answer": "B", "predicted": "B",
         "guard": {"decision": "harmless"}},
    ]
    specs = select_policies(["routing-k4+refuse"])
    out = mmlu_table(rows, specs, {"m": {"language": "en", "n": 2}})["m"]["policies"]
    assert out["routing-k4"]["accuracy"] == 1.0
    assert out["routing-k4+refuse"]["accuracy"] == 0.5
    assert out["routing-k4"]["flagged_harmful"] == 0.5


def test_f1_at_threshold_by_hand():
    test = ScoredPool(np.array([3.0, 1.0, 2.0, -1.0]), np.array([1, 1, 0, 0]), ("a", "b", "c", "d"))
    # tau 1.5: predicts [1, 0, 1, 0] -> TP 1, FP 1, FN 1 -> F1 = 2/4.
    assert f1_at(test, 1.5) == pytest.approx(0.5)
    assert f1_at(test, 0.0) == pytest.approx(2 * 2 / (2 * 2 + 1))


def _leaky_pools():
    """A train pool where half of each class's texts are also test texts."""
    train_texts = tuple(f"t{i}" for i in range(20))
    labels = np.array([1] * 10 + [0] * 10)
    scores = np.where(labels == 1, 1.0, -1.0) + np.linspace(0, 0.1, 20)
    train = ScoredPool(scores, labels, train_texts)
    test_texts = ("t0", "t1", "t2", "t3", "t4", "t10", "t11", "t12", "t13", "t14")
    test = ScoredPool(np.array([1.0] * 5 + [-1.0] * 5), np.array([1] * 5 + [0] * 5), test_texts)
    return train, test


def test_kshot_sampler_never_draws_a_test_row():
    train, test = _leaky_pools()
    rng = np.random.default_rng(0)
    for k in (1, 2, 4, 5):
        for _ in range(20):
            idx = draw_k(train, test.texts, k, rng)
            drawn = {train.texts[i] for i in idx}
            assert not drawn & set(test.texts)
            assert sorted(train.labels[idx].tolist()) == [0] * k + [1] * k
    with pytest.raises(ValueError, match="only 5 usable"):
        draw_k(train, test.texts, 6, rng)
    _tau, used = recalibrated_threshold(train, test.texts, 2, np.random.default_rng(1))
    assert not set(used) & set(test.texts)


def test_kshot_curve_zero_shot_draws_and_unavailable_k():
    train, test = _leaky_pools()
    curve = kshot_curve(train, test, zero_shot_threshold=5.0, ks=(0, 1, 4, 8), draws=3, seed=0)
    assert curve[0]["draws"] == 1
    assert curve[0]["mean"] == 0.0  # threshold 5 flags nothing
    assert curve[1]["draws"] == 3 and curve[4]["mean"] == pytest.approx(1.0)
    assert 8 not in curve  # only 5 usable train rows per class
    again = kshot_curve(train, test, zero_shot_threshold=5.0, ks=(0, 1, 4, 8), draws=3, seed=0)
    assert again == curve


def test_strength_sweep_picks_the_best_mean_selectivity_ties_to_the_smaller_scale():
    specs = select_policies(["none", "cast@0.5", "cast", "cast@2", "adasteer@2", "adasteer"])
    def cell(sel, clean, deg=0.0):
        return {"all": {"selectivity": sel, "clean_selectivity": clean, "degenerate": deg}}

    refusal = {
        "none": cell(50.0, 50.0),
        "cast@0.5": cell(10.0, 10.0),
        "cast": cell(30.0, 30.0),
        "cast@2": cell(40.0, 30.0, 0.1),
        "adasteer": cell(-5.0, -5.0),
        "adasteer@2": cell(24.0, 4.2, 0.4),  # its selectivity is garbled output: not chosen
    }
    out = strength_sweep(refusal, specs)
    assert out["cast"]["best"] == "cast"  # clean 30 at scale 1 and 2: the smaller
    assert [r["scale"] for r in out["cast"]["scales"]] == [0.5, 1.0, 2.0]
    assert out["cast"]["scales"][2] == {"policy": "cast@2", "scale": 2.0, "selectivity": 40.0,
                                        "degenerate": 0.1, "clean_selectivity": 30.0}
    assert out["adasteer"]["best"] == "adasteer@2"
    refusal["adasteer@2"] = cell(24.0, -6.0, 0.4)
    assert strength_sweep(refusal, specs)["adasteer"]["best"] == "adasteer"
    assert strength_sweep(refusal, select_policies(["none", "cast"])) == {}  # one scale: none


def test_clean_selectivity_counts_a_degenerate_output_as_a_failure_on_both_classes():
    garbled = "I " * 40  # a loop: degenerate (evaluation.degenerate), whatever the judge says
    rows = [_row("cast", "de", 1, 0, output=garbled), _row("cast", "de", 1, 1),
            _row("cast", "de", 0, 2, output=garbled), _row("cast", "de", 0, 3)]
    # The judge called the garbled harmful output a refusal and the garbled harmless one not.
    cell = refusal_table(rows, [True, True, False, False], [policy("cast")], ["de"])["cast"]["de"]
    assert cell["selectivity"] == pytest.approx(100.0)  # 2 of 2 refused, 0 of 2
    assert cell["degenerate"] == pytest.approx(0.5)
    assert cell["clean_selectivity"] == pytest.approx(0.0)  # 1 of 2 clean refusals, 1 of 2 failed
