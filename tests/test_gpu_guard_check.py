"""``bench/gpu_guard_check.py`` in its fast CPU mode: the script the first GPU run will use, run
as a subprocess the way it will be run there (loading ``guard_graph.py`` by path, no vLLM).

The script checks the guard's maths itself (eager against the plan and the unguarded stack,
torch.compile against eager; CUDA graphs are skipped on the CPU) and exits 1 on any mismatch;
this test also holds it to covering every path: each policy, harmful, harmless and unsure
routing decisions, chunked prompts, reused slots, padded steps, and all four timing sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = [("routing", "harmful"), ("routing", "harmless"), ("routing", "unsure"),
         ("always-steer", ""), ("always-ablate", ""), ("shadow", "")]  # fmt: skip


@pytest.mark.timeout(900)
def test_fast_mode_passes_and_covers_every_path(tmp_path):
    out = tmp_path / "record.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench/gpu_guard_check.py"), "--fast", "--out", str(out)],
        capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    print(done.stdout[-4000:], done.stderr[-4000:])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["mode"] == "fast" and record["mismatches"] == []
    assert record["runs"] == ["compiled", "eager", "plain"] and record["checks"] > 500
    covered = record["coverage"]
    for policy, plan in PATHS:
        prefix = f"decided {policy} {plan}"
        assert sum(n for key, n in covered.items() if key.startswith(prefix)), (prefix, covered)
    assert min(covered["chunked_prompts"], covered["reused_slots"], covered["padded_steps"]) > 0
    assert [row["tokens"] for row in record["timing"]] == [1, 8, 64, 256]
    assert record["commit"] and record["machine"]["torch"]
