"""Language routing: script rule, restricted py3langid, confidence floor, default, conversations."""

from __future__ import annotations

import pytest

from server.langid import TARGET_LANGUAGES, LanguageRouter, message_text

# One everyday prompt per routed language (a how-to question or request, not a single word).
SAMPLES: dict[str, str] = {
    "en": "How do I bake a loaf of bread at home?",
    "de": "Wie backe ich zu Hause ein Brot?",
    "fr": "Comment faire du pain à la maison ?",
    "es": "¿Cómo puedo hacer pan en casa?",
    "it": "Come posso fare il pane in casa?",
    "nl": "Hoe bak ik thuis een brood?",
    "pl": "Jak upiec chleb w domu?",
    "ru": "Как испечь хлеб дома?",
    "zh": "我怎样在家里烤面包？",
    "ja": "家でパンを焼くにはどうすればいいですか？",
    "ar": "كيف أخبز الخبز في المنزل؟",
    "ko": "집에서 빵을 어떻게 굽나요?",
    "th": "ฉันจะอบขนมปังที่บ้านได้อย่างไร",
    "el": "Πώς μπορώ να ψήσω ψωμί στο σπίτι;",
    "he": "איך אופים לחם בבית?",
    "hi": "मैं घर पर रोटी कैसे बनाऊं?",
    "fa": "چگونه در خانه نان بپزم؟",
    "sw": "Ninawezaje kuoka mkate nyumbani?",
    "am": "በቤት ውስጥ ዳቦ እንዴት መጋገር እችላለሁ?",
    "my": "အိမ်မှာ ပေါင်မုန့် ဘယ်လို ဖုတ်ရမလဲ။",
    "km": "តើខ្ញុំដុតនំបុ័ងនៅផ្ទះដោយរបៀបណា?",
    "si": "මම ගෙදර පාන් පුළුස්සන්නේ කොහොමද?",
    "yo": "Báwo ni mo ṣe lè ṣe búrẹ́dì nílé?",
    "vi": "Làm thế nào để tôi nướng bánh mì ở nhà?",
    "bn": "আমি কীভাবে বাড়িতে রুটি বানাব?",
    "jv": "Piye carane nggawe roti ing omah?",
    "id": "Bagaimana cara membuat roti di rumah?",
}


@pytest.fixture(scope="module")
def router() -> LanguageRouter:
    return LanguageRouter(default="en", min_confidence=0.5)


def test_samples_cover_the_target_set() -> None:
    assert set(SAMPLES) == set(TARGET_LANGUAGES)
    assert len(TARGET_LANGUAGES) == 27


@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_routes_each_language(router: LanguageRouter, language: str) -> None:
    detection = router.detect(SAMPLES[language])
    assert detection.language == language, detection


@pytest.mark.parametrize("language", ["am", "my", "km", "si"])
def test_single_language_scripts_are_certain(router: LanguageRouter, language: str) -> None:
    detection = router.detect(SAMPLES[language])
    assert (detection.source, detection.confidence) == ("script", 1.0)


def test_script_rule_counts_combining_marks() -> None:
    # Burmese vowel signs are combining marks, not letters: the script must still win.
    detection = LanguageRouter().detect("ကို ပို")
    assert detection.language == "my"


def test_mixed_text_goes_to_the_majority(router: LanguageRouter) -> None:
    # A few Ethiopic letters inside English text do not make it Amharic.
    detection = router.detect("Please translate the word ሰላም into English for me, thanks")
    assert detection.language == "en"


@pytest.mark.parametrize("text", ["", "   ", "1234 5678", "?!", "ok"])
def test_short_or_letterless_text_falls_back_to_the_default(text: str) -> None:
    detection = LanguageRouter(default="sw").detect(text)
    assert (detection.language, detection.source) == ("sw", "default")


def test_floor_zero_always_trusts_langid() -> None:
    detection = LanguageRouter(min_confidence=0.0).detect("ok")
    assert detection.source == "langid"
    assert detection.language in TARGET_LANGUAGES


def test_refuses_unrouted_default() -> None:
    with pytest.raises(ValueError, match="not routed"):
        LanguageRouter(default="pt")
    with pytest.raises(ValueError, match="min_confidence"):
        LanguageRouter(min_confidence=1.5)


def test_conversation_uses_the_last_user_turn(router: LanguageRouter) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": SAMPLES["de"]},
        {"role": "assistant", "content": "Mit Mehl, Wasser und Hefe."},
        {"role": "user", "content": SAMPLES["sw"]},
    ]
    assert router.detect_conversation(messages).language == "sw"


def test_conversation_short_last_turn_uses_all_user_text(router: LanguageRouter) -> None:
    messages = [
        {"role": "user", "content": SAMPLES["id"] + " Saya ingin resep yang mudah."},
        {"role": "assistant", "content": "Tentu."},
        {"role": "user", "content": "ok?"},
    ]
    detection = router.detect_conversation(messages)
    assert (detection.language, detection.source) == ("id", "langid")


def test_conversation_ignores_system_and_assistant_text(router: LanguageRouter) -> None:
    messages = [
        {"role": "system", "content": "Réponds toujours en français, s'il te plaît."},
        {"role": "user", "content": [{"type": "text", "text": SAMPLES["yo"]}]},
    ]
    assert router.detect_conversation(messages).language == "yo"
    assert router.detect_conversation([{"role": "system", "content": "x"}]).source == "default"


def test_message_text_reads_content_parts() -> None:
    message = {"content": [{"type": "text", "text": "a"}, {"type": "image_url"},
                           {"type": "text", "text": "b"}]}  # fmt: skip
    assert message_text(message) == "a\nb"
    assert message_text({"content": None}) == ""
