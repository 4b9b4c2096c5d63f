"""Which token positions should the gate read? Last token against pooled readouts, held out.

A developer's experiment, not part of the package (issue 23: "the readout itself: last token
against a pooled prompt"). The gate reads the residual at the prompt's last token (the chat
template's post-instruction newline, METHOD §1). This script compares, per layer, the same
full readout (``gate.selection.fit_on``, AdamW, the library's estimator) fitted on:

- ``last``: the last token (what serving reads today);
- ``post``: the mean over the post-instruction tokens (the template's tokens after the user's
  text, ``<|im_end|>\\n<|im_start|>assistant\\n`` for Qwen2.5);
- ``content``: the mean over the user's own tokens;
- ``end``: the first post-instruction token (the end-of-turn token right after the text).

Train: PolyRefuse train and the style prompts in the 10 training languages (the shipped
crossdata gate's sources), ``--per-class`` per class and language. Scored, never fitted on: the
English dev rows gate_search chooses on (Do-Not-Answer, SimpleSafetyTests, XSTest) and XSafety
(the search's test), ``--eval-per-class`` per class and language. The positions are taken in one
forward pass per batch (transformers, on this machine's CPU), not from the activation cache,
which keeps only the last token.

    python scripts/readout_positions.py --out docs/eval/qwen2.5-coder-0.5b/readout-positions
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from gate_search import by_language, per_language_sample
from tqdm import tqdm

from babelgate.evaluation.heldout import load_heldout
from babelgate.gate.data import load_dataset, subsample
from babelgate.gate.hf.backend import TransformersBackend
from babelgate.gate.languages import HIGH_RESOURCE
from babelgate.gate.metrics import auroc, recall_at_fpr
from babelgate.gate.selection import Candidate, fit_on

STYLES = Path("evaluation/data/styles")
LAYERS = (10, 12, 14, 16, 18)
POSITIONS = ("last", "post", "content", "end")
MAX_FPR = 0.1


def template_span(backend: TransformersBackend) -> tuple[int, int]:
    """(prefix, suffix) token counts the chat template puts around any user text."""
    a, b = backend.chat_prompt_ids("alpha"), backend.chat_prompt_ids("omega beta")
    prefix = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    suffix = next(i for i, (x, y) in enumerate(zip(a[::-1], b[::-1], strict=False)) if x != y)
    return prefix, suffix


@torch.inference_mode()
def pooled(backend: TransformersBackend, texts: list[str], batch: int = 16) -> np.ndarray:
    """(n, len(POSITIONS), len(LAYERS), d) readouts of each text."""
    prefix, suffix = template_span(backend)
    enc = [backend.chat_prompt_ids(t) for t in texts]
    out = np.empty((len(texts), len(POSITIONS), len(LAYERS), backend.hidden_size), np.float32)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    for start in tqdm(range(0, len(order), batch), desc="positions", unit="batch"):
        idx = order[start : start + batch]
        width = max(len(enc[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(enc[i])] = torch.tensor(enc[i])
            mask[row, : len(enc[i])] = 1
        captured = backend._run_capturing(ids, mask, list(LAYERS))
        for row, i in enumerate(idx):
            n = len(enc[i])
            spans = {"last": slice(n - 1, n), "post": slice(n - suffix, n),
                     "content": slice(prefix, max(prefix + 1, n - suffix)),
                     "end": slice(n - suffix, n - suffix + 1)}  # fmt: skip
            for p, name in enumerate(POSITIONS):
                for j, layer in enumerate(LAYERS):
                    out[i, p, j] = captured[layer][row, spans[name]].float().mean(0).numpy()
    return out


def render(meta: dict, results: list[dict]) -> str:
    """The report: test and dev AUROC, and recall at FPR <= 10 %, per position and layer."""
    lines = [
        "# Which positions should the gate read? (held out)",
        "",
        f"Model `{meta['model']}`. Command: `{meta['command']}` ({meta['wall_time_s']} s). The "
        f"full readout (weight decay {meta['weight_decay']:g}) fitted on {meta['train']} rows of "
        "PolyRefuse train and the style prompts (10 training languages), scored on "
        f"{meta['test']} XSafety rows (10 languages, the gate search's test) and {meta['dev']} "
        "English rows of Do-Not-Answer, SimpleSafetyTests and XSTest (its dev). Test cells: mean "
        "over languages. Recall at FPR <= 10 % takes the best threshold per language (an upper "
        "bound).",
        "",
        "| position | layer | test AUROC | test recall at FPR <= 10 % | dev AUROC |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['position']} | {r['layer']} | {r['test_mean']['auroc']:.3f} | "
            f"{r['test_mean']['recall_at_fpr']:.3f} | {r['dev']['auroc']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:qwen2.5-coder-0.5b")
    parser.add_argument("--polyrefuse", default="../shared/data/polyrefuse")
    parser.add_argument("--per-class", type=int, default=48)
    parser.add_argument("--eval-per-class", type=int, default=40)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.monotonic()
    backend = TransformersBackend(args.model)
    train_rows = [p for p in load_dataset(args.polyrefuse, splits=["train"]) + load_dataset(STYLES)
                  if p.split == "train" and p.language in HIGH_RESOURCE]  # fmt: skip
    train_rows = per_language_sample(train_rows, args.per_class, args.seed)
    heldout = load_heldout()
    dev_rows = subsample([p for p in heldout if p.language == "en"
                          and not (p.style or "").startswith("xsafety-")],
                         4 * args.eval_per_class, args.seed)  # fmt: skip
    test_rows = per_language_sample(
        [p for p in heldout if (p.style or "").startswith("xsafety-")], args.eval_per_class,
        args.seed)  # fmt: skip
    rows = train_rows + dev_rows + test_rows
    print(f"train {len(train_rows)}, dev {len(dev_rows)}, test {len(test_rows)}", flush=True)
    acts = pooled(backend, [r.text for r in rows])
    tr, dv = slice(0, len(train_rows)), slice(len(train_rows), len(train_rows) + len(dev_rows))
    te = slice(len(train_rows) + len(dev_rows), len(rows))
    dev_y = np.array([r.label for r in dev_rows])
    results = []
    for p, name in enumerate(POSITIONS):
        for j, layer in enumerate(LAYERS):
            train = by_language(train_rows, acts[tr, p, j][:, None])
            gate = fit_on(Candidate((0,), args.weight_decay, "full"), train, rank=10,
                          seed=args.seed)  # fmt: skip
            test = by_language(test_rows, acts[te, p, j][:, None])
            per = {lang: {"auroc": auroc(gate.score_all_layers(a), y),
                          "recall_at_fpr": recall_at_fpr(gate.score_all_layers(a), y, MAX_FPR)}
                   for lang, (a, y) in test.items()}  # fmt: skip
            dev_s = gate.score_all_layers(acts[dv, p, j][:, None])
            entry = {"position": name, "layer": layer,
                     "dev": {"auroc": auroc(dev_s, dev_y),
                             "recall_at_fpr": recall_at_fpr(dev_s, dev_y, MAX_FPR)},
                     "test": per,
                     "test_mean": {k: float(np.mean([v[k] for v in per.values()]))
                                   for k in ("auroc", "recall_at_fpr")}}  # fmt: skip
            results.append(entry)
            print(
                name,
                layer,
                {k: round(v, 3) for k, v in entry["dev"].items()},
                {k: round(v, 3) for k, v in entry["test_mean"].items()},
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "train": len(train_rows), "dev": len(dev_rows),
            "test": len(test_rows), "weight_decay": args.weight_decay, "seed": args.seed,
            "wall_time_s": round(time.monotonic() - started),
            "command": f"python scripts/readout_positions.py --out {args.out}"}  # fmt: skip
    (args.out / "positions.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1) + "\n", encoding="utf-8"
    )
    (args.out / "positions.md").write_text(render(meta, results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
