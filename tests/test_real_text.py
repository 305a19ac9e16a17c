"""The WordNet reader (on hand-written lines in WordNet's format) and the real-text task made from it:
balanced, deterministic splits disjoint by synset and by word; the shipped files are the generator's
output and valid chat data."""

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from fmlab.data.validate import read_messages
from fmlab.errors import FmlabError
from fmlab.tiny import real_text
from fmlab.tiny.wordnet import (
    DEFAULT_DIR,
    LEXNAMES,
    parse_line,
    read_data_file,
    read_sense_counts,
    read_synsets,
    split_gloss,
    synset_count,
)

DATA = Path(__file__).resolve().parent.parent / "data"
HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
NOUN = (
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 002 @ 02083346 n 0000 ~ 01322604 n 0000 "
    '| a member of the genus Canis; "the dog barked all night"; "a dog\'s life; hard"- Anon  '
)
VERB = (
    "00001740 29 v 02 breathe 0 respire 3 001 $ 00002325 v 0000 02 + 02 00 + 08 00 "
    '| draw air into, and expel out of, the lungs; "I can breathe better when the air is clean"  '
)
ADJ = '00014358 00 s 02 abounding 0 galore(ip) 0 001 & 00013887 a 0000 | existing in abundance; "whiskey galore"  '


def test_parse_line_reads_words_domain_definition_and_examples():
    dog = parse_line(NOUN, "data.noun:2")
    assert (dog.offset, dog.pos, dog.lexname) == (2084071, "noun", "noun.animal")
    assert dog.lemmas == ("dog", "domestic dog", "Canis familiaris")
    assert dog.definition == "a member of the genus Canis"
    assert dog.examples == ("the dog barked all night", "a dog's life; hard")  # ';' inside quotes kept
    assert dog.sense_key(0) == "dog%1:05:00::"
    verb = parse_line(VERB, "data.verb:9")
    assert (verb.pos, verb.lexname, verb.lex_ids) == ("verb", "verb.body", (0, 3))
    assert verb.examples == ("I can breathe better when the air is clean",)
    adj = parse_line(ADJ, "data.adj:1")
    assert (adj.pos, adj.ss_type, adj.lemmas) == ("adj", "s", ("abounding", "galore"))  # marker (ip) dropped


def test_split_gloss_without_examples_and_with_several_definitions():
    assert split_gloss("a; b") == ("a; b", ())
    assert split_gloss('"only an example"') == ("", ("only an example",))


@pytest.mark.parametrize(
    "line, what",
    [
        (NOUN.replace(" | ", " "), "no ' | '"),
        (NOUN.replace(" 05 n ", " 77 n "), "lexicographer file number 77"),
        (NOUN.replace(" 05 n ", " 05 x "), "synset type"),
        (NOUN.replace(" 03 dog", " 05 dog"), "w_cnt"),
        (NOUN.replace(" 002 @", " 009 @"), "p_cnt 9"),
        (VERB.replace(" 02 + 02", " 03 + 02"), "f_cnt 3"),
        (NOUN.replace("02084071", "O2084071"), "offset 'O2084071' is not a decimal number"),
    ],
)
def test_malformed_lines_name_file_line_and_problem(tmp_path, line, what):
    path = tmp_path / "data.noun"
    path.write_text(HEADER + NOUN + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(FmlabError, match=rf"data\.noun:3: malformed WordNet data line \(.*{what}"):
        read_data_file(path)


def test_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FmlabError, match="apt-get install wordnet-base"):
        read_synsets(tmp_path / "nowhere")
    with pytest.raises(FmlabError, match="data.noun not found.*apt-get install wordnet-base"):
        read_synsets(tmp_path, ("noun",))
    (tmp_path / "cntlist.rev").write_text("dog%1:05:00:: 1 42\ngarbage\n")
    with pytest.raises(FmlabError, match=r"cntlist.rev:2: malformed"):
        read_sense_counts(tmp_path)


def _fixture_wordnet(root: Path, per_label: int = 12) -> None:
    """A small WordNet in the real layout: per task label `per_label` noun synsets, each sharing its
    second word with the next synset (so word-disjoint splits must skip some), all tagged."""
    lines, counts, offset = [HEADER], [], 1000
    for lexname in real_text.LABELS:
        domain = lexname.split(".")[1]
        for i in range(per_label):
            word, shared = f"{domain}word{chr(97 + i)}", f"{domain}pair{chr(97 + i // 2)}"
            definition = f"the {i}th thing of kind {domain} seen here"
            example = f'; "we saw one in {domain} land"' if i % 2 else ""
            lines.append(
                f"{offset:08d} {LEXNAMES.index(lexname):02d} n 02 {word} 0 {shared} 0 000 | {definition}{example}  \n"
            )
            counts.append(f"{word}%1:{LEXNAMES.index(lexname):02d}:00:: 1 {i + 1}\n")
            offset += 100
    (root / "data.noun").write_text("".join(lines), encoding="utf-8")
    (root / "cntlist.rev").write_text("".join(counts), encoding="utf-8")


SIZES = {"test": 32, "valid": 16, "train": 48}


def _words_by_split(items):
    return {name: {w.lower() for s, _, _ in rows for w in s.lemmas} for name, rows in items.items()}


def _check_disjoint(items):
    keys = {name: [(s.pos, s.offset) for s, _, _ in rows] for name, rows in items.items()}
    for rows in keys.values():
        assert len(rows) == len(set(rows))
    words = _words_by_split(items)
    names = list(items)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not set(keys[a]) & set(keys[b]), (a, b)
            assert not words[a] & words[b], (a, b, sorted(words[a] & words[b])[:5])


def test_fixture_splits_are_balanced_disjoint_and_deterministic(tmp_path):
    _fixture_wordnet(tmp_path)
    synsets, counts = read_synsets(tmp_path, ("noun",)), read_sense_counts(tmp_path)
    assert all(synset_count(s, counts) > 0 for s in synsets)
    items = real_text.split_items(synsets, counts, seed=0, sizes=SIZES)
    assert {name: len(rows) for name, rows in items.items()} == SIZES
    _check_disjoint(items)
    for name, rows in items.items():
        per_label = Counter(label for _, _, label in rows)
        assert set(per_label) == set(real_text.LABELS.values())
        assert max(per_label.values()) - min(per_label.values()) <= 1, name
        assert all(real_text.LABELS[s.lexname] == label for s, _, label in rows)
    again = real_text.split_items(synsets, counts, seed=0, sizes=SIZES)
    assert real_text.samples_from_items(items) == real_text.samples_from_items(again)
    other = real_text.split_items(synsets, counts, seed=1, sizes=SIZES)
    assert [s.offset for s, _, _ in other["test"]] != [s.offset for s, _, _ in items["test"]]
    with pytest.raises(FmlabError, match="too few usable synsets"):
        real_text.split_items(synsets, counts, seed=0, sizes={"test": 16 * 13})


def test_sample_lists_every_label_and_answers_with_one(tmp_path):
    _fixture_wordnet(tmp_path, per_label=2)
    synsets = read_synsets(tmp_path, ("noun",))
    rng = random.Random(0)
    for s in synsets:
        messages = real_text.render_sample(s, s.lemmas[0], real_text.LABELS[s.lexname], rng)
        user = messages[-2]["content"]
        assert all(label in user for label in real_text.LABELS.values())
        assert s.definition in user or s.definition[0].upper() + s.definition[1:] in user
        assert messages[-1] == {"role": "assistant", "content": real_text.LABELS[s.lexname]}


def test_pretraining_texts_cover_each_synset_once_except_held_out(tmp_path):
    _fixture_wordnet(tmp_path, per_label=3)
    synsets = read_synsets(tmp_path, ("noun",))
    held_out = frozenset(("noun", s.offset) for s in synsets[:5])
    texts = real_text.pretraining_texts(synsets, seed=0, exclude=held_out)
    assert texts == real_text.pretraining_texts(synsets, seed=0, exclude=held_out)
    joined = " ".join(texts)
    for i, s in enumerate(synsets):
        assert joined.count(f"{s.lemmas[0]} is {s.definition}.") == (0 if i < 5 else 1), s.lemmas[0]
    assert "For example" in joined or "As in" in joined or "We saw one" in joined


@pytest.fixture(scope="module")
def shipped():
    return {name: (DATA / file).read_text(encoding="utf-8") for name, file in real_text.FILE_NAMES.items()}


def test_shipped_splits_are_valid_chat_data_with_balanced_labels(shipped):
    sizes = {"train": 1500, "valid": 150, "test": 300}
    prompts = {}
    for name, file in real_text.FILE_NAMES.items():
        samples = read_messages(DATA / file)
        assert len(samples) == sizes[name] == shipped[name].count("\n")
        answers = Counter(s.messages[-1]["content"] for s in samples)
        assert set(answers) == set(real_text.LABELS.values())
        assert max(answers.values()) - min(answers.values()) <= 1
        prompts[name] = {json.dumps(s.prompt) for s in samples}
    assert not prompts["test"] & prompts["train"] and not prompts["valid"] & prompts["train"]


@pytest.mark.skipif(not (DEFAULT_DIR / "data.noun").is_file(), reason="WordNet not installed (wordnet-base)")
def test_regeneration_reproduces_the_shipped_files_and_splits_are_word_disjoint(shipped):
    items = real_text.wordnet_items(DEFAULT_DIR, seed=0)
    _check_disjoint(items)
    for name, samples in real_text.samples_from_items(items, seed=0).items():
        assert real_text.jsonl_text(samples) == shipped[name], f"{name}: run python -m fmlab.tiny.real_text"


def test_definition_chats_are_valid_chat_data_without_domains(tmp_path):
    _fixture_wordnet(tmp_path, per_label=2)
    synsets = read_synsets(tmp_path, ("noun",))
    held_out = frozenset({("noun", synsets[0].offset)})
    chats = real_text.definition_chats(synsets, seed=0, exclude=held_out)
    assert len(chats) == len(synsets) - 1 and chats == real_text.definition_chats(synsets, 0, held_out)
    path = tmp_path / "chats.jsonl"
    path.write_text(real_text.jsonl_text(chats), encoding="utf-8")
    assert len(read_messages(path)) == len(chats)
    assert not any(re.search(rf"\b{synsets[0].lemmas[0]}\b", json.dumps(c)) for c in chats)
    assert not any(c[-1]["content"] in real_text.LABELS.values() for c in chats)
