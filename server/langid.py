"""Language routing: which language's threshold a request is judged by.

Runs in the API-server process (about 25 us per call, no model to load beyond py3langid's
bundled one). A Unicode-script rule comes first because four low-resource scripts are each
used by exactly one of our languages (Myanmar, Khmer, Ethiopic, Sinhala): there the answer is
certain, and statistical detectors are weakest exactly there. Then py3langid, restricted to the
routed languages (unrestricted it answers "ary", "uzs" for short Arabic or Persian), with a
confidence floor under which the configurable default language is used. Measurements behind
these choices: ``../shared/docs/LANGID.md``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from py3langid.langid import MODEL_FILE, LanguageIdentifier

TARGET_LANGUAGES: tuple[str, ...] = (
    "en", "de", "fr", "es", "it", "nl", "pl", "ru", "zh", "ja",
    "ar", "ko", "th", "el", "he", "hi", "fa",
    "sw", "am", "my", "km", "si", "yo",
    "vi", "bn", "jv", "id",
)  # fmt: skip

# Scripts used by exactly one routed language: (first, last) code point -> language.
SCRIPT_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x1000, 0x109F, "my"), (0xA9E0, 0xA9FF, "my"), (0xAA60, 0xAA7F, "my"),
    (0x1780, 0x17FF, "km"), (0x19E0, 0x19FF, "km"),
    (0x1200, 0x139F, "am"), (0x2D80, 0x2DDF, "am"),
    (0x0D80, 0x0DFF, "si"),
)  # fmt: skip

# A script decides when it holds at least this share of the text's letters and marks. Vowel
# signs in these scripts are combining marks, not ``str.isalpha()``, so marks are counted too.
SCRIPT_SHARE = 0.5


@dataclass(frozen=True)
class Detection:
    """The language a text was routed to and why.

    ``source``: "script" (a single-language script), "langid" (py3langid above the floor),
    "default" (too short or unsure: the configured default), "override" (the caller said so).
    """

    language: str
    source: str
    confidence: float


def _script_language(text: str) -> str | None:
    counts: dict[str, int] = {}
    letters = 0
    for ch in text:
        if not (ch.isalpha() or _is_mark(ch)):
            continue
        letters += 1
        code = ord(ch)
        for first, last, lang in SCRIPT_RANGES:
            if first <= code <= last:
                counts[lang] = counts.get(lang, 0) + 1
                break
    if not counts:
        return None
    lang, n = max(counts.items(), key=lambda item: item[1])
    return lang if n >= SCRIPT_SHARE * letters else None


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


@cache
def _identifier() -> Any:
    """py3langid's model restricted to the routed languages (loaded once per process)."""
    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(list(TARGET_LANGUAGES))
    return ident


class LanguageRouter:
    """Detects the language of user text among ``TARGET_LANGUAGES``.

    ``min_confidence`` is py3langid's normalised probability floor; below it (and for text with
    no letters at all) the answer is ``default`` with source "default".
    """

    def __init__(self, default: str = "en", min_confidence: float = 0.5) -> None:
        if default not in TARGET_LANGUAGES:
            raise ValueError(
                f"default language {default!r} is not routed: choose one of "
                f"{' '.join(TARGET_LANGUAGES)}"
            )
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        self.default = default
        self.min_confidence = min_confidence
        _identifier()  # load now, not on the first request

    def detect(self, text: str) -> Detection:
        """Route one text."""
        if not any(ch.isalpha() for ch in text):
            return Detection(self.default, "default", 0.0)
        script = _script_language(text)
        if script is not None:
            return Detection(script, "script", 1.0)
        lang, confidence = _identifier().classify(text)
        if confidence < self.min_confidence:
            return Detection(self.default, "default", float(confidence))
        return Detection(lang, "langid", float(confidence))

    def detect_conversation(self, messages: Sequence[Mapping[str, Any]]) -> Detection:
        """Route a chat by its user text: the last user turn, else all user turns together.

        The last turn is what the model answers; short ones ("and in detail?") fall back to the
        whole user side of the conversation before falling back to the default language.
        """
        user_texts = [message_text(m) for m in messages if m.get("role") == "user"]
        user_texts = [t for t in user_texts if t.strip()]
        if not user_texts:
            return Detection(self.default, "default", 0.0)
        last = self.detect(user_texts[-1])
        if last.source != "default" or len(user_texts) == 1:
            return last
        return self.detect("\n".join(user_texts))


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
