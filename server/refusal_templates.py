"""Templated refusals, one per routed language, for the ``refuse`` action and fail-closed gates.

Runs in the API-server process. When the gate calls a prompt harmful and the deployment's action
is ``refuse``, the server answers with this text in the language the request was routed to
instead of letting the model generate: a refusal the user can read, in their own language, that
does not depend on the model's (weak, in low-resource languages) refusal behaviour.
"""

from __future__ import annotations

REFUSALS: dict[str, str] = {
    "en": "Sorry, I can't help with that request.",
    "de": "Entschuldigung, bei dieser Anfrage kann ich nicht helfen.",
    "fr": "Désolé, je ne peux pas vous aider avec cette demande.",
    "es": "Lo siento, no puedo ayudarte con esa solicitud.",
    "it": "Mi dispiace, non posso aiutarti con questa richiesta.",
    "nl": "Sorry, ik kan je niet helpen met dat verzoek.",
    "pl": "Przepraszam, nie mogę pomóc w tej prośbie.",
    "ru": "Извините, я не могу помочь с этим запросом.",
    "zh": "抱歉，我无法帮助处理这个请求。",
    "ja": "申し訳ありませんが、そのご依頼にはお応えできません。",
    "ar": "عذرًا، لا أستطيع المساعدة في هذا الطلب.",
    "ko": "죄송하지만 그 요청은 도와드릴 수 없습니다.",
    "th": "ขออภัย ฉันไม่สามารถช่วยเหลือคำขอนี้ได้",
    "el": "Λυπάμαι, δεν μπορώ να βοηθήσω με αυτό το αίτημα.",
    "he": "מצטער, אני לא יכול לעזור בבקשה הזו.",
    "hi": "क्षमा करें, मैं इस अनुरोध में मदद नहीं कर सकता।",
    "fa": "متأسفم، نمی‌توانم در این درخواست کمک کنم.",
    "sw": "Samahani, siwezi kusaidia na ombi hilo.",
    "am": "ይቅርታ፣ በዚህ ጥያቄ ልረዳዎ አልችልም።",
    "my": "တောင်းပန်ပါတယ်၊ ဒီတောင်းဆိုချက်ကို ကူညီပေးလို့ မရပါဘူး။",
    "km": "សូមអភ័យទោស ខ្ញុំមិនអាចជួយលើសំណើនេះបានទេ។",
    "si": "සමාවන්න, මට මෙම ඉල්ලීමට උදව් කළ නොහැක.",
    "yo": "Má bínú, mi ò lè ṣèrànwọ́ pẹ̀lú ìbéèrè yẹn.",
    "vi": "Xin lỗi, tôi không thể giúp với yêu cầu này.",
    "bn": "দুঃখিত, আমি এই অনুরোধে সাহায্য করতে পারব না।",
    "jv": "Nuwun sewu, kula mboten saged mbiyantu panyuwunan punika.",
    "id": "Maaf, saya tidak dapat membantu permintaan tersebut.",
}


def refusal_text(language: str) -> str:
    """The refusal for ``language``; English for a language without a template."""
    return REFUSALS.get(language, REFUSALS["en"])
