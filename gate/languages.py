"""Language codes babelgate knows, and the paper's resource tiers.

Runs in any process. Codes are ISO 639-1 (two letters) where one exists, else ISO 639-3; the
gate's thresholds are keyed by them, so every entry point validates through here.
"""

from __future__ import annotations

import re

HIGH_RESOURCE: tuple[str, ...] = ("en", "de", "fr", "es", "it", "nl", "pl", "ru", "zh", "ja")
MID_RESOURCE: tuple[str, ...] = ("ar", "ko", "th", "el", "he", "hi", "fa")
LOW_RESOURCE: tuple[str, ...] = ("sw", "am", "my", "km", "si", "yo")
PAPER_LANGUAGES: tuple[str, ...] = HIGH_RESOURCE + MID_RESOURCE + LOW_RESOURCE

# English names, used in reports and error messages. Covers the paper's 23 languages, the
# common others the router detects, and the rest of ISO 639-1 that language-ID libraries emit.
LANGUAGE_NAMES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "br": "Breton", "bs": "Bosnian",
    "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German",
    "el": "Greek", "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian",
    "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fo": "Faroese", "fr": "French",
    "ga": "Irish", "gl": "Galician", "gu": "Gujarati", "ha": "Hausa", "he": "Hebrew",
    "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian",
    "hy": "Armenian", "id": "Indonesian", "ig": "Igbo", "is": "Icelandic", "it": "Italian",
    "ja": "Japanese", "jv": "Javanese", "ka": "Georgian", "kk": "Kazakh", "km": "Khmer",
    "kn": "Kannada", "ko": "Korean", "ku": "Kurdish", "ky": "Kyrgyz", "la": "Latin",
    "lb": "Luxembourgish", "lo": "Lao", "lt": "Lithuanian", "lv": "Latvian", "mg": "Malagasy",
    "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi", "ms": "Malay",
    "mt": "Maltese", "my": "Burmese", "nb": "Norwegian Bokmål", "ne": "Nepali", "nl": "Dutch",
    "nn": "Norwegian Nynorsk", "no": "Norwegian", "oc": "Occitan", "or": "Odia",
    "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "qu": "Quechua",
    "ro": "Romanian", "ru": "Russian", "rw": "Kinyarwanda", "se": "Northern Sami",
    "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian", "so": "Somali", "sq": "Albanian",
    "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "tg": "Tajik", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "ug": "Uyghur",
    "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "vo": "Volapük",
    "wa": "Walloon", "xh": "Xhosa", "yi": "Yiddish", "yo": "Yoruba", "zh": "Chinese",
    "zu": "Zulu", "fil": "Filipino", "yue": "Cantonese",
}

_CODE = re.compile(r"^[a-z]{2,3}$")


class UnknownLanguageError(ValueError):
    """A language code that is not a known ISO 639 code (after normalisation)."""


def normalise_language(code: str) -> str:
    """Return the canonical form of ``code`` ("EN", " en-US ", "en_GB" -> "en").

    Region subtags are dropped: thresholds are per language, not per locale.
    """
    if not isinstance(code, str):
        raise UnknownLanguageError(f"language code must be a string, got {type(code).__name__}")
    base = code.strip().lower().replace("_", "-").split("-", 1)[0]
    return base


def validate_language(code: str) -> str:
    """Normalise ``code`` and check it is a language babelgate knows; return the canonical code.

    Raises UnknownLanguageError naming the accepted form, so a typo ("eng", "english") does not
    silently create a threshold nobody routes to.
    """
    base = normalise_language(code)
    if not _CODE.match(base) or base not in LANGUAGE_NAMES:
        raise UnknownLanguageError(
            f"unknown language code {code!r}: use an ISO 639-1 code such as 'en', 'sw' or 'yo' "
            f"(known: {', '.join(sorted(LANGUAGE_NAMES))})"
        )
    return base


def tier(code: str) -> str:
    """The paper's resource tier of a language: 'high', 'mid', 'low' or 'other'."""
    if code in HIGH_RESOURCE:
        return "high"
    if code in MID_RESOURCE:
        return "mid"
    if code in LOW_RESOURCE:
        return "low"
    return "other"


def language_name(code: str) -> str:
    """English name of a language code, or the code itself when unknown."""
    return LANGUAGE_NAMES.get(code, code)
