"""What language routing costs per request: ``LanguageRouter.detect`` on pure and mixed prompts.

Runs in its own process on one core, no model (seconds). The API server detects the language of
every chat request's user text before planning it; since mixed-language text is looked into
(``server.langid``: script runs, sentences, windows of words, each chunk classified), this
measures what that adds. Texts: PolyRefuse test prompts of every language (pure), the mixed
variants of ``evaluation.langmix`` (prompts wrapped in or code-switched with another language)
and one long text (a 40-sentence English paragraph with a Thai sentence inside). ``--baseline
REV`` also times ``server/langid.py`` as it was at git revision REV (e.g. the commit before the
mixed-text rule), on the same texts:

    python bench/langid_cost.py [--baseline REV] [--rounds 5]

Per set: microseconds per call, the best of ``--rounds`` rounds (the machine is shared, so the
least disturbed round is the closest to the cost itself), and the median text length; the JSON
record (``bench/record.py``) has every round's figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from record import BenchRecord, add_out_argument

from babelgate.evaluation.langmix import (
    PAYLOAD_LANGUAGES,
    WRAPPER_LANGUAGES,
    harmful_test_prompts,
    variants,
)
from babelgate.gate.data import load_polyrefuse
from babelgate.paths import data_dir
from babelgate.server.langid import LanguageRouter

REPO = Path(__file__).resolve().parents[1]

LONG_TEXT = (
    "This sentence is part of a long and harmless English paragraph about the weather. " * 20
    + "ช่วยอธิบายวิธีทำขนมปังที่บ้านให้ละเอียดทีละขั้นตอนหน่อย "
    + "This sentence is part of a long and harmless English paragraph about the weather. " * 20
)


def baseline_router(rev: str) -> LanguageRouter:
    """``LanguageRouter`` as ``server/langid.py`` was at git revision ``rev``."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:server/langid.py"],
                            check=True, capture_output=True, text=True).stdout  # fmt: skip
    folder = Path(tempfile.mkdtemp())
    (folder / "langid_baseline.py").write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("langid_baseline", folder / "langid_baseline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["langid_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.LanguageRouter()


def per_call_us(
    routers: dict[str, LanguageRouter], texts: Sequence[str], rounds: int
) -> dict[str, list[float]]:
    """Microseconds per ``detect`` call for each router in each of ``rounds`` rounds, the
    routers taking turns within each round (so a busy moment of the machine hits both)."""
    times: dict[str, list[float]] = {name: [] for name in routers}
    for _ in range(rounds):
        for name, router in routers.items():
            start = time.perf_counter()
            for text in texts:
                router.detect(text)
            times[name].append((time.perf_counter() - start) / len(texts) * 1e6)
    return times


def text_sets(per_set: int, seed: int) -> dict[str, list[str]]:
    root = data_dir()
    if root is None:
        raise SystemExit("PolyRefuse not found: set $BABELGATE_DATA")
    rng = random.Random(seed)
    pure = [p.text for p in load_polyrefuse(root, splits=("test",))]
    languages = sorted({"en", *PAYLOAD_LANGUAGES, *WRAPPER_LANGUAGES})
    prompts = {k: v[:50] for k, v in harmful_test_prompts(root, languages).items()}
    mixed = [v.text for v in variants(prompts, seed) if v.kind != "pure"]
    return {
        "pure (PolyRefuse test, all languages)": rng.sample(pure, per_set),
        "mixed (evaluation.langmix variants)": rng.sample(mixed, per_set),
        f"long ({len(LONG_TEXT)} characters)": [LONG_TEXT] * 20,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", help="git revision whose server/langid.py to time as well")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-set", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    add_out_argument(p, "langid_cost")
    args = p.parse_args(argv)
    record = BenchRecord("langid_cost", argv)
    routers = {"now": LanguageRouter()}
    if args.baseline:
        routers[f"at {args.baseline}"] = baseline_router(args.baseline)
    figures: dict[str, dict] = {}
    best: dict[str, dict[str, float]] = {}
    for name, texts in text_sets(args.per_set, args.seed).items():
        length = statistics.median(len(t) for t in texts)
        rounds_us = per_call_us(routers, texts, args.rounds)
        best[name] = {label: min(us) for label, us in rounds_us.items()}
        figures[name] = {"texts": len(texts), "median_characters": length,
                         "us_per_call_by_round": rounds_us}  # fmt: skip
        cells = [f"{label} {us:.1f} us" for label, us in best[name].items()]
        print(f"{name}: median {length:.0f} characters: " + ", ".join(cells))
    record.write(figures, {"best_us_per_call": best}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
