"""The synthetic pretraining corpus: deterministic, correct, and free of the play format."""
import re

from fmlab.corpus import chat_samples, plain_texts, probe_prompts


def test_deterministic():
    assert chat_samples(100, 1) == chat_samples(100, 1) and chat_samples(100, 1) != chat_samples(100, 2)
    assert plain_texts(20, 1) == plain_texts(20, 1)


def test_arithmetic_answers_are_correct():
    checked = 0
    for messages in chat_samples(2000, 0):
        for q, a in zip(messages, messages[1:]):
            m = re.fullmatch(r"What is (\d+) (plus|minus) (\d+)\?", q["content"])
            if m and q["role"] == "user":
                x, op, y = int(m.group(1)), m.group(2), int(m.group(3))
                assert a["content"] == f"{x} {op} {y} is {x + y if op == 'plus' else x - y}."
                checked += 1
    assert checked > 50


def test_no_play_format_in_the_corpus():
    texts = [m["content"] for s in chat_samples(3000, 0) for m in s] + plain_texts(500, 0)
    assert not any(marker in t for t in texts for marker in ("SCENE", "CAST:", "THE END", "TITLE:"))


def test_probe_answers_appear_in_the_corpus():
    answers = " ".join(m["content"] for s in chat_samples(5000, 0) for m in s if m["role"] == "assistant")
    for _, words in probe_prompts():
        assert all(w in answers for w in words), words
