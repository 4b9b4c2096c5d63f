"""Templated refusals: one per routed language, in that language, recognised as refusals."""

from __future__ import annotations

import pytest

from babelgate.refusal.judge import is_refusal
from babelgate.server.langid import TARGET_LANGUAGES, LanguageRouter
from babelgate.server.refusal_templates import REFUSALS, refusal_text


def test_one_template_per_routed_language() -> None:
    assert set(REFUSALS) == set(TARGET_LANGUAGES)
    assert len(set(REFUSALS.values())) == len(REFUSALS)


@pytest.mark.parametrize("language", sorted(REFUSALS))
def test_template_is_in_its_language_and_a_refusal(language: str) -> None:
    text = REFUSALS[language]
    assert LanguageRouter().detect(text).language == language
    assert is_refusal(text, language)


def test_unknown_language_gets_english() -> None:
    assert refusal_text("pt") == REFUSALS["en"]
