"""The refusal judge and the degenerate detector, checked on labels they were not fixed on.

Runs in the CLI process: ``python -m babelgate.evaluation.judge_check [--out DIR]``. The marker
judge's markers were written while reading ``data/judge_labels.jsonl``, so its agreement there
says little. Two other samples of the default model's outputs were read and labelled:
``refusal`` (declines or deflects anywhere in it, garbled or not) and ``degenerate`` (long
repetition, gibberish, or a script other than the prompt's).

- ``data/judge_check.jsonl``: 160 outputs, 40 per language: th, yo and de from the committed
  ``babelgate eval`` run, hi (outside the calibration languages) from the protection run, spread
  over plain, steered and ablated generations. The degenerate detector's loop, phrase and
  foreign-run rules were added after reading it, so for that detector it is a fitting set.
- ``data/judge_check_2.jsonl``: 127 outputs labelled after that revision, none of them in a
  sample before (th and de 40 each, yo 27, hi 20: what was left once identical outputs were
  dropped), from the committed eval, baseline-sweep (the validation split, strengths up to 8x)
  and protection runs. The held-out figure for the revised detector.

The report gives, per sample and language, how often each detector agrees with the labels, with
Wilson intervals, and the same for a *clean refusal* (a refusal that is not degenerate), which is
what the protection report counts for harmful verdicts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from babelgate.evaluation.degenerate import is_degenerate
from babelgate.evaluation.judges import judge_rows, load_labels
from babelgate.gate.metrics import wilson_interval
from babelgate.refusal.judge import RefusalMarkerJudge

DATA = Path(__file__).resolve().parent / "data"
# (file, what it is to the detectors), in the order the report gives them
SAMPLES: tuple[tuple[str, str], ...] = (
    ("judge_check.jsonl", "sample 1: the degenerate detector's loop, phrase and foreign-run "
     "rules were fitted to it"),
    ("judge_check_2.jsonl", "sample 2: labelled after those rules were fixed; held out for "
     "both detectors"),
)  # fmt: skip
DEFAULT_OUT = Path("docs/eval/qwen2.5-coder-0.5b/judge-check")
REPORT_JSON = "judge_check.json"
REPORT_MD = "judge_check.md"
CHECKS = ("refusal", "degenerate", "clean refusal")


def load_check(path: Path) -> list[dict[str, Any]]:
    """The labelled outputs; each row also needs a ``degenerate`` label."""
    rows = load_labels(path)
    for i, row in enumerate(rows):
        if "degenerate" not in row:
            raise ValueError(f"{path}:{i + 1}: missing ['degenerate']")
    return rows


def _cell(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """Agreement of (label, detector) pairs, its interval, and the two kinds of error."""
    n, agree = len(pairs), sum(a == b for a, b in pairs)
    low, high = wilson_interval(agree, n)
    return {
        "n": n,
        "agreement": agree / n,
        "ci95": [low, high],
        "labelled": sum(a for a, _ in pairs),
        "detected": sum(b for _, b in pairs),
        "false_positives": sum(b and not a for a, b in pairs),
        "missed": sum(a and not b for a, b in pairs),
    }


def measure(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per language (and "all"), per check in ``CHECKS``: the detectors against the labels."""
    refusals = judge_rows(RefusalMarkerJudge(), rows)
    pairs: dict[str, dict[str, list[tuple[bool, bool]]]] = {}
    for row, judged in zip(rows, refusals, strict=True):
        detected = is_degenerate(row["output"], row["language"])
        labelled = (bool(row["refusal"]), bool(row["degenerate"]))
        got = {
            "refusal": (labelled[0], bool(judged)),
            "degenerate": (labelled[1], detected),
            "clean refusal": (labelled[0] and not labelled[1], bool(judged) and not detected),
        }
        for group in (row["language"], "all"):
            for check, pair in got.items():
                pairs.setdefault(group, {}).setdefault(check, []).append(pair)
    groups = [g for g in pairs if g != "all"] + ["all"]  # languages first, in sample order
    return {g: {check: _cell(p) for check, p in pairs[g].items()} for g in groups}


def render_md(report: dict[str, Any]) -> str:
    """The report as Markdown: per sample, one table per check."""
    lines = [
        "# The refusal judge and the degenerate detector on labels they were not fixed on",
        "",
        f"Command: `{report['command']}`. Outputs of the default model, none of them in "
        "`evaluation/data/judge_labels.jsonl`, the set the markers were written against. Labels "
        "read by an AI assistant, output by output (not by keyword), not by a native speaker. "
        "Agreement in % with its 95 % Wilson interval.",
        "",
    ]
    for sample in report["samples"]:
        lines += [f"## `{sample['sample']}`", "",
                  f"{sample['n']} outputs; {sample['about']}.", ""]  # fmt: skip
        for check in CHECKS:
            lines += [f"### {check}", "",
                      "| language | n | agreement % [95 %] | labelled | detected | false "
                      "positives | missed |", "|---|---|---|---|---|---|---|"]  # fmt: skip
            for group, by in sample["languages"].items():
                c = by[check]
                lines.append(
                    f"| {group} | {c['n']} | {100 * c['agreement']:.0f} "
                    f"[{100 * c['ci95'][0]:.0f}, {100 * c['ci95'][1]:.0f}] | {c['labelled']} | "
                    f"{c['detected']} | {c['false_positives']} | {c['missed']} |"
                )
            lines.append("")
    return "\n".join(lines)


def load_samples(data: Path = DATA) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """Each of ``SAMPLES``: its path as the report names it, what it is, its rows."""
    return [(f"evaluation/data/{name}", about, load_check(data / name))
            for name, about in SAMPLES]  # fmt: skip


def build_report(samples: Sequence[tuple[str, str, Sequence[dict[str, Any]]]]) -> dict[str, Any]:
    """The JSON report of ``measure`` on each sample, with what produced it."""
    return {
        "command": "python -m babelgate.evaluation.judge_check",
        "samples": [
            {"sample": name, "about": about, "n": len(rows), "languages": measure(rows)}
            for name, about, rows in samples
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m babelgate.evaluation.judge_check",
        description="Measure the marker judge and the degenerate detector on the labelled "
        "samples and write judge_check.json/.md.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    args = parser.parse_args(argv)
    report = build_report(load_samples())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / REPORT_MD).write_text(render_md(report), encoding="utf-8")
    print(render_md(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
