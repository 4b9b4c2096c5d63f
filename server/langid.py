"""Language routing: which language's threshold a request is judged by.

Runs in the API-server process (no model to load beyond py3langid's bundled one; about 0.15 ms
per call, see "Cost" below). A Unicode-script rule comes first because four low-resource
scripts are each used by exactly one of our languages (Myanmar, Khmer, Ethiopic, Sinhala): there
the answer is certain, and statistical detectors are weakest exactly there. Then py3langid,
restricted to the routed languages (unrestricted it answers "ary", "uzs" for short
Arabic or Persian), with a confidence floor under which the configurable default language is
used. Measurements behind these choices: ``../shared/docs/LANGID.md``.

Mixed text. A harmful prompt wrapped in text of another language ("Please translate this for my
class: <Thai>", or followed by a paragraph of English), or code-switched, is routed as a whole to
one language, which may have a looser threshold than the language the harm is written in. So
``detect`` also reports the other languages present with real confidence (``Detection.others``).
The text is cut into pieces at script changes and sentence ends (``SENTENCE_ENDS``, the colon
included: wrappers end with one), and a piece in a script several routed languages write
(Latin, Arabic, CJK) into equal runs of at most ``WINDOW_WORDS`` words (code-switching inside a
sentence). The pieces of each script are packed, in order, into chunks of at least
``MIN_CHUNK_LETTERS`` letters (more in a long text, so that at most about ``MAX_CHUNKS`` are
classified). A chunk in a script only one routed language writes (``SCRIPT_LANGUAGE``) counts
for that language; any other is classified like a whole text, under a higher floor
(``CHUNK_MIN_CONFIDENCE``). A language is seen when its chunks hold at least ``min_share`` of
the text's letters, a CJK or Hangul character counting for more than one (``SCRIPT_WEIGHT``).
Which of the languages seen decides is the server's rule (``server.plan.strictest_plan``). The
language the whole text is routed to is exactly what it was before this rule; of 15,852 prompts
of one language (PolyRefuse's test split, the project's questions and narratives) 4 see a
second one: English quotations in Thai requests, Spanish names in a Yoruba one, the kanji
before "(CEO)" in a Japanese one read as Chinese (on the default model's gate none of them is
judged by it: ``python -m babelgate.evaluation.langmix``).

Cost (``python bench/langid_cost.py --baseline 6d796f8``, one core): PolyRefuse test prompts
98.8 us per call before this rule, 146.6 us with it; the mixed prompts of the evaluation 188.7
and 359.7 us. A text of one piece (one sentence of at most ``WINDOW_WORDS`` words), or whose
chunks are all in single-language scripts, costs one classification as before (52 % of the test
prompts); every further chunk one more (1.3 on average over the test prompts).
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any

from py3langid.langid import MODEL_FILE, LanguageIdentifier

TARGET_LANGUAGES: tuple[str, ...] = (
    "en", "de", "fr", "es", "it", "nl", "pl", "ru", "zh", "ja",
    "ar", "ko", "th", "el", "he", "hi", "fa",
    "sw", "am", "my", "km", "si", "yo",
    "vi", "bn", "jv", "id",
)  # fmt: skip

# Writing systems, for the script rule and for cutting mixed text: (first, last) code point ->
# script, sorted. Han and kana are one script ("CJK": Japanese mixes them in one sentence);
# letters of an unlisted block are script "other", unlisted marks (U+0300-036F...) belong to the
# letter they follow.
SCRIPTS: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x024F, "Latin"), (0x0370, 0x03FF, "Greek"), (0x0400, 0x052F, "Cyrillic"),
    (0x0590, 0x05FF, "Hebrew"), (0x0600, 0x06FF, "Arabic"), (0x0750, 0x077F, "Arabic"),
    (0x0870, 0x08FF, "Arabic"), (0x0900, 0x097F, "Devanagari"), (0x0980, 0x09FF, "Bengali"),
    (0x0D80, 0x0DFF, "Sinhala"), (0x0E00, 0x0E7F, "Thai"), (0x1000, 0x109F, "Myanmar"),
    (0x1100, 0x11FF, "Hangul"), (0x1200, 0x139F, "Ethiopic"), (0x1780, 0x17FF, "Khmer"),
    (0x19E0, 0x19FF, "Khmer"), (0x1E00, 0x1EFF, "Latin"), (0x1F00, 0x1FFF, "Greek"),
    (0x2D80, 0x2DDF, "Ethiopic"), (0x3040, 0x30FF, "CJK"), (0x3130, 0x318F, "Hangul"),
    (0x31F0, 0x31FF, "CJK"), (0x3400, 0x4DBF, "CJK"), (0x4E00, 0x9FFF, "CJK"),
    (0xA9E0, 0xA9FF, "Myanmar"), (0xAA60, 0xAA7F, "Myanmar"), (0xAC00, 0xD7AF, "Hangul"),
    (0xF900, 0xFAFF, "CJK"), (0xFB1D, 0xFB4F, "Hebrew"), (0xFB50, 0xFDFF, "Arabic"),
    (0xFE70, 0xFEFF, "Arabic"), (0xFF21, 0xFF5A, "Latin"), (0xFF66, 0xFF9F, "CJK"),
    (0xFFA0, 0xFFDC, "Hangul"), (0x20000, 0x3FFFF, "CJK"),
)  # fmt: skip
_STARTS: tuple[int, ...] = tuple(first for first, _, _ in SCRIPTS)

# Scripts written by exactly one routed language.
SCRIPT_LANGUAGE: dict[str, str] = {
    "Greek": "el", "Cyrillic": "ru", "Hebrew": "he", "Devanagari": "hi", "Bengali": "bn",
    "Sinhala": "si", "Thai": "th", "Myanmar": "my", "Hangul": "ko", "Ethiopic": "am",
    "Khmer": "km",
}  # fmt: skip
# Letters a character counts for in mixed text, where scripts that write a word in fewer
# characters would otherwise hold too small a share: English letters per character of the
# same PolyRefuse prompt (median; Japanese 2.0, Chinese 3.0, Korean 2.2). Others count 1.
SCRIPT_WEIGHT: dict[str, float] = {"CJK": 2.5, "Hangul": 2.0}
# The scripts whose share decides a whole text before py3langid is asked (see the docstring).
DECISIVE_SCRIPTS: frozenset[str] = frozenset({"Myanmar", "Khmer", "Ethiopic", "Sinhala"})

# A script decides when it holds at least this share of the text's letters and marks. Vowel
# signs in these scripts are combining marks, not ``str.isalpha()``, so marks are counted too.
SCRIPT_SHARE = 0.5

# Mixed text: where pieces end, the smallest chunk classified, about how many chunks at most (a
# long text gets bigger chunks, so the cost stays bounded), and the longest run of words of one
# piece (10: code-switched PolyRefuse prompts get a looser plan 1.2 % of the time, 2.1 % without
# runs; with 8 words 1.1 %, but 2 of 15,852 prompts of one language are then judged by another).
SENTENCE_ENDS = frozenset(".!?;:\n。！？：؟।॥။።፧…")
MIN_CHUNK_LETTERS = 16
MAX_CHUNKS = 32
WINDOW_WORDS = 10
# A chunk is less text than a whole request, so it must be classified more surely: code
# identifiers ("hidden, stored. hidden") read as Dutch at 0.59-0.68.
CHUNK_MIN_CONFIDENCE = 0.8
# Earlier user turns whose languages join a conversation's (``detect_conversation``); a bound on
# the cost of a conversation of thousands of turns.
MAX_EARLIER_TURNS = 8


@dataclass(frozen=True)
class Detection:
    """The language a text was routed to and why.

    ``source``: "script" (a single-language script), "langid" (py3langid above the floor),
    "default" (too short or unsure: the configured default), "override" (the caller said so).
    ``others``: further languages seen with confidence in the same text (mixed text), each as a
    detection of its own, most letters first; empty for text of one language.
    """

    language: str
    source: str
    confidence: float
    others: tuple[Detection, ...] = ()

    @property
    def languages(self) -> tuple[str, ...]:
        """Every language seen, this one first."""
        return (self.language, *(d.language for d in self.others))

    def candidates(self) -> tuple[Detection, ...]:
        """Each language seen as a detection on its own, this one first."""
        return (dataclasses.replace(self, others=()), *self.others)


@dataclass(frozen=True)
class _Scan:
    """One pass over a text: letters (and marks) per script of their own, and the pieces."""

    alpha: bool  # any ``str.isalpha()`` character at all
    letters: int  # letters and marks
    counts: dict[str | None, int]  # per script (None: unlisted), in order of first occurrence
    pieces: list[tuple[str, str, float]]  # (script, text, letters weighted by SCRIPT_WEIGHT)

    @property
    def weight(self) -> float:
        return sum(n for _, _, n in self.pieces)


def script_of(code: int) -> str | None:
    """The script of the letter at code point ``code`` (``SCRIPTS``), None for a non-letter."""
    if code < 0x250:  # every letter below U+0250 is Latin (or the micro and ordinal signs)
        return "Latin" if code >= 0x41 else None
    i = bisect_right(_STARTS, code) - 1
    return SCRIPTS[i][2] if i >= 0 and code <= SCRIPTS[i][1] else None


def _scan(text: str) -> _Scan:
    counts: dict[str | None, int] = {}
    pieces: list[tuple[str, str, float]] = []
    alpha = False
    script: str | None = None  # the open piece's script (None: no letter in it yet)
    start = n = 0
    for i, ch in enumerate(text):
        if ch.isalpha():
            alpha = True
            own = script_of(ord(ch))
            current = own or "other"
        elif is_mark(ch):
            own = script_of(ord(ch))
            current = own or script or "other"
        else:
            if script is not None and ch in SENTENCE_ENDS:
                pieces += _windows(script, text[start : i + 1], n)
                script, start, n = None, i + 1, 0
            continue
        counts[own] = counts.get(own, 0) + 1
        if script is not None and current != script:
            pieces += _windows(script, text[start:i], n)
            start, n = i, 0
        script = current
        n += 1
    if script is not None:
        pieces += _windows(script, text[start:], n)
    return _Scan(alpha, sum(counts.values()), counts, pieces)


def _windows(script: str, text: str, letters: int) -> list[tuple[str, str, float]]:
    """A piece, cut into equal runs of at most ``WINDOW_WORDS`` words when its script is
    written by several routed languages (code-switching inside a sentence); letters weighted."""
    weight = SCRIPT_WEIGHT.get(script, 1.0)
    words = text.split()
    if len(words) <= WINDOW_WORDS or script in SCRIPT_LANGUAGE:
        return [(script, text, letters * weight)]
    k = math.ceil(len(words) / WINDOW_WORDS)
    cuts = [round(j * len(words) / k) for j in range(k + 1)]
    parts = [" ".join(words[a:b]) for a, b in pairwise(cuts)]
    total = sum(len(p) for p in parts)  # share the letters out by length
    return [(script, p, letters * weight * len(p) / total) for p in parts]


def _script_language(scan: _Scan) -> str | None:
    counts = {s: n for s, n in scan.counts.items() if s in DECISIVE_SCRIPTS}
    if not counts:
        return None
    script, n = max(counts.items(), key=lambda item: item[1])
    return SCRIPT_LANGUAGE[script] if n >= SCRIPT_SHARE * scan.letters else None


def is_mark(ch: str) -> bool:
    """A combining mark (a vowel sign, a virama): it belongs to the letter it follows."""
    return unicodedata.category(ch).startswith("M")


def _chunks(scan: _Scan) -> Iterator[tuple[str, str, float]]:
    """The pieces of each script packed, in order, into chunks of at least ``target`` letters;
    what is left of a script at the end is a chunk if it has ``MIN_CHUNK_LETTERS``."""
    target = max(MIN_CHUNK_LETTERS, scan.weight / MAX_CHUNKS)
    open_chunks: dict[str, tuple[list[str], float]] = {}
    for script, text, n in scan.pieces:
        parts, m = open_chunks.pop(script, ([], 0))
        parts.append(text)
        if m + n >= target:
            yield script, " ".join(parts), m + n
        else:
            open_chunks[script] = (parts, m + n)
    for script, (parts, m) in open_chunks.items():
        if m >= MIN_CHUNK_LETTERS:
            yield script, " ".join(parts), m


@cache
def _identifier() -> Any:
    """py3langid's model restricted to the routed languages (loaded once per process)."""
    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(list(TARGET_LANGUAGES))
    return ident


class LanguageRouter:
    """Detects the language of user text among ``TARGET_LANGUAGES``.

    ``min_confidence`` is py3langid's normalised probability floor; below it (and for text with
    no letters at all) the answer is ``default`` with source "default". ``min_share``: the share
    of a text's letters (and marks) another language needs to be seen beside the one the whole
    text is routed to.
    """

    def __init__(
        self, default: str = "en", min_confidence: float = 0.5, min_share: float = 0.05
    ) -> None:
        if default not in TARGET_LANGUAGES:
            raise ValueError(
                f"default language {default!r} is not routed: choose one of "
                f"{' '.join(TARGET_LANGUAGES)}"
            )
        for name, value in (("min_confidence", min_confidence), ("min_share", min_share)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.default = default
        self.min_confidence = min_confidence
        self.min_share = min_share
        _identifier()  # load now, not on the first request

    def detect(self, text: str) -> Detection:
        """Route one text, and see which other languages it holds."""
        scan = _scan(text)
        whole = self._classify(text, scan)
        if len(scan.pieces) < 2:  # one piece is the whole text: nothing else to see
            return whole
        others = self._others(scan, whole.language)
        return dataclasses.replace(whole, others=others) if others else whole

    def _classify(self, text: str, scan: _Scan) -> Detection:
        if not scan.alpha:
            return Detection(self.default, "default", 0.0)
        script = _script_language(scan)
        if script is not None:
            return Detection(script, "script", 1.0)
        lang, confidence = _identifier().classify(text)
        if confidence < self.min_confidence:
            return Detection(self.default, "default", float(confidence))
        return Detection(lang, "langid", float(confidence))

    def _others(self, scan: _Scan, routed: str) -> tuple[Detection, ...]:
        """Languages other than ``routed`` whose confident chunks hold ``min_share`` of the
        letters, most letters first."""
        seen: dict[str, tuple[float, Detection]] = {}
        for script, text, n in _chunks(scan):
            if script in SCRIPT_LANGUAGE:
                found = Detection(SCRIPT_LANGUAGE[script], "script", 1.0)
            else:
                lang, confidence = _identifier().classify(text)
                if confidence < max(self.min_confidence, CHUNK_MIN_CONFIDENCE):
                    continue
                found = Detection(lang, "langid", float(confidence))
            letters, best = seen.get(found.language, (0, found))
            seen[found.language] = (letters + n, max(best, found, key=lambda d: d.confidence))
        floor = self.min_share * scan.weight
        kept = sorted(
            ((n, d) for lang, (n, d) in seen.items() if lang != routed and n >= floor),
            key=lambda item: -item[0],
        )
        return tuple(d for _, d in kept)

    def detect_conversation(self, messages: Sequence[Mapping[str, Any]]) -> Detection:
        """Route a chat by its user text: the last user turn, else the turns read together.

        The turns read are the last user turn and the ``MAX_EARLIER_TURNS`` before it. The last
        is what the model answers; short ones ("and in detail?") fall back to the turns read
        together before falling back to the default language. The languages of the earlier
        turns join ``others``: the gate reads the whole conversation, so harmful text in an
        earlier turn must not escape its language's stricter threshold through a last turn in a
        looser one. System and assistant text take no part (an operator's system prompt would
        otherwise add its language to every request).
        """
        user_texts = [message_text(m) for m in messages if m.get("role") == "user"]
        user_texts = [t for t in user_texts if t.strip()]
        if not user_texts:
            return Detection(self.default, "default", 0.0)
        read = user_texts[-1 - MAX_EARLIER_TURNS :]
        last = self.detect(read[-1])
        if last.source == "default" and len(read) > 1:
            return self.detect("\n".join(read))
        return self._with_earlier_turns(last, read[:-1])

    def _with_earlier_turns(self, routed: Detection, earlier: Sequence[str]) -> Detection:
        """``routed`` with the languages seen in ``earlier`` turns added to its others (the
        most recent turn first), each once."""
        seen = set(routed.languages)
        others = list(routed.others)
        for text in reversed(earlier):
            for found in self.detect(text).candidates():
                if found.source != "default" and found.language not in seen:
                    seen.add(found.language)
                    others.append(found)
        return dataclasses.replace(routed, others=tuple(others))


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message whose content is a string or a list of OpenAI content parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(_part_texts(content))


def _part_texts(parts: Iterable[Any]) -> Iterable[str]:
    for part in parts:
        if isinstance(part, Mapping) and part.get("type") == "text":
            yield str(part.get("text", ""))
