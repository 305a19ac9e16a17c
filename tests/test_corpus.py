"""The synthetic pretraining corpus: deterministic, correct, on the play set's words, and free of the play
format."""

import re

import pytest

from fmlab.tiny.corpus import chat_samples, plain_texts, probe_prompts, tokenizer_texts
from fmlab.tiny.corpus_facts import CAPITALS, FOODS
from fmlab.tiny.plays import parse_request, play_format_score
from fmlab.tiny.stories import plural


@pytest.fixture(scope="module")
def chats():
    return chat_samples(20000, 0)


def _exchanges(chats):
    return [
        (q["content"], a["content"])
        for s in chats
        for q, a in zip(s, s[1:])
        if q["role"] == "user" and a["role"] == "assistant"
    ]


def test_deterministic():
    assert chat_samples(100, 1) == chat_samples(100, 1) and chat_samples(100, 1) != chat_samples(100, 2)
    assert plain_texts(20, 1) == plain_texts(20, 1) and plain_texts(20, 1) != plain_texts(20, 2)


def test_chats_are_well_formed(chats):
    for s in chats[:2000]:
        roles = [m["role"] for m in s if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(m["content"] for m in s)
    assert any(len(s) >= 5 for s in chats)  # some multi-turn


def test_arithmetic_answers_are_correct(chats):
    ops = {
        "plus": int.__add__,
        "+": int.__add__,
        "minus": int.__sub__,
        "-": int.__sub__,
        "times": int.__mul__,
        "x": int.__mul__,
    }
    checked = 0
    for q, a in _exchanges(chats):
        if m := re.fullmatch(r"(?:What|How much) is (\d+) (plus|minus|times|[-+x]) (\d+)\?", q):
            x, op, y = int(m.group(1)), m.group(2), int(m.group(3))
            result = ops[op](x, y)
            assert result >= 0 and a in (f"{x} {op} {y} is {result}.", f"{x} {op} {y} = {result}."), (q, a)
            checked += 1
    assert checked > 500


def test_facts_are_answered_from_the_tables(chats):
    for q, a in _exchanges(chats):
        if m := re.fullmatch(r"What is the capital of (\w+)\?", q):
            assert a == f"The capital of {m.group(1)} is {CAPITALS[m.group(1)]}."
        if m := re.fullmatch(r"What do (\w+) eat\?", q):
            animal = next(k for k in FOODS if plural(k) == m.group(1))
            assert FOODS[animal] in a
        if m := re.fullmatch(r"How many letters are in the word (\w+)\?", q):
            assert a == f"The word {m.group(1)} has {len(m.group(1))} letters."
    assert plural("fox") == "foxes" and plural("mouse") == "mice" and plural("fairy") == "fairies"


def test_stories_use_every_requested_character_and_the_place(chats):
    stories = parts = 0
    for q, a in _exchanges(chats):
        if re.match(r"Tell me a short story about|Write a story about|I would like a short story with", q):
            req = parse_request(q)
            assert req.characters and req.setting, q
            assert all(c in a for c in req.characters) and req.setting in a, (q, a)
            assert 3 <= a.count(". ") + 1 <= 6
            stories += 1
        if m := re.search(r"(\w+)[- ]parts?\b", q):
            n = {"one": 1, "two": 2, "three": 3}.get(m.group(1).lower()) or int(m.group(1))
            assert re.findall(r"^Part (\d)\. ", a, re.M) == [str(i) for i in range(1, n + 1)], (q, a)
            parts += 1
    assert stories > 1000 and parts > 500


def test_copying_drills_copy_the_names(chats):
    checked = 0
    for q, a in _exchanges(chats):
        if m := re.fullmatch(r"(?:Write the names|List|Write) ([\w ,]+) in capital(?: letters|s).*", q):
            names = re.split(r", | and ", m.group(1).removeprefix("the word "))
            assert a in (" ".join(n.upper() for n in names), ", ".join(n.upper() for n in names)), (q, a)
            checked += 1
    assert checked > 1000


def test_no_play_format_in_the_corpus(chats):
    texts = [m["content"] for s in chats for m in s] + plain_texts(2000, 0)
    for text in texts:
        # the words appear (a base must know them), the format's lines never do
        assert not re.search(r"^(TITLE|CAST|SETTING): |^SCENE \d|\nTHE END$", text, re.M), text
        assert not re.search(r"^([A-Z]+: |\()", text, re.M), text
    # at most a capitals drill answering "THE END" passes the one "ends" check
    assert all(play_format_score(s, s[-1]["content"]) < 0.05 for s in chats[:500])


def test_probe_answers_appear_in_the_corpus(chats):
    answers = {}
    for q, a in _exchanges(chats):
        answers.setdefault(q, []).append(a)
    for messages, words in probe_prompts():
        if messages[-1]["content"].startswith("Tell me a short story"):
            continue  # story requests are combinations: the stories test checks them
        replies = answers.get(messages[-1]["content"], [])
        assert replies, f"the corpus never asks {messages[-1]['content']!r}"
        assert all(w.lower() in r.lower() for r in replies for w in words), (words, replies[:3])


def test_tokenizer_texts_cover_corpus_and_plays():
    texts = list(tokenizer_texts(0, chats=50, texts=20))
    assert len(texts) == 50 + 20 + 1500
    assert "<turn_start>" in texts[0] and "SCENE 1" in texts[-1]
