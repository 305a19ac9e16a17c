"""fmlab's synthetic pretraining corpus for the embedded base `fmlab-tiny`: chats (short prose stories on
request, stories in numbered parts, Q&A from small fact tables, arithmetic, spelling, small talk,
descriptions, lists, drills in copying names; some multi-turn) and plain texts (stories and fact
paragraphs) for language modelling.

The base learns to chat coherently from it, with the same characters and places as the play set
(`fmlab.tiny.plays`), but it never sees the play format: that is what an adapter has to teach. Every answer is
correct (see `fmlab.tiny.corpus_facts`), so a trained base can be checked with greedy answers to
`probe_prompts()`. Deterministic for a seed; 50k chats take about a second.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator

from fmlab.data.chat_template import render_text
from fmlab.tiny.corpus_facts import (
    CAPITALS,
    COLOURS,
    CREATURES,
    FOODS,
    GROUPS,
    HOMES,
    LEGS,
    OPPOSITES,
    PEOPLE,
    PLACES,
    SOUNDS,
)
from fmlab.tiny.play_text import (
    CHARACTER_TRAITS,
    CHARACTERS,
    SCENE_WORDS,
    SETTINGS,
    article,
    join_names,
)
from fmlab.tiny.plays import split_samples
from fmlab.tiny.stories import at_place, capitalise, plural, random_cast, story, story_request

SYSTEMS = [
    "A conversation between a user and a helpful assistant.",
    "You are a friendly assistant for kids.",
    "You answer questions simply and correctly.",
    "You are a helpful assistant.",
]
# --- copying and counting --------------------------------------------------------------------------
# A tiny base copies words from the prompt badly unless it is drilled on it, and an adapter can only
# build on skills the base has. These teach copying names (as they are and in capitals) and counting
# numbered parts: the skills a request-following format needs, without the play format itself.

PART_REQUESTS = [
    "Tell me a {n_word}-part story about {chars} {at_place}.",
    "Write a story in {n} part{s} about {chars} {at_place}.",
    "Can you tell a story with {chars} {at_place}? {N_word} part{s} please.",
    "I need a story {at_place} with {chars}, in {n_word} part{s}.",
]


def _parts_story(rng: random.Random) -> tuple[str, str, list[str]]:
    """A story told in 1-3 numbered parts, as asked."""
    cast, place, n = random_cast(rng), rng.choice(SETTINGS), rng.randint(1, 3)
    word = SCENE_WORDS[n]
    ask = rng.choice(PART_REQUESTS).format(
        n=n,
        n_word=word,
        N_word=capitalise(word),
        s="" if n == 1 else "s",
        chars=join_names(tuple(cast)),
        at_place=at_place(place),
    )
    sentences = story(rng, cast[0], place, cast[1:]).split(". ")
    cuts = sorted(rng.sample(range(1, len(sentences)), n - 1)) if n > 1 else []
    parts = [". ".join(sentences[a:b]) for a, b in zip([0, *cuts], [*cuts, len(sentences)])]
    body = "\n".join(f"Part {i}. {p.rstrip('.')}." for i, p in enumerate(parts, start=1))
    return ask, body + "\nThat is the whole story.", cast


def _capitals(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.3:
        word = rng.choice(CHARACTERS + PLAY_WORDS)
        return f"Write the word {word} in capital letters.", word.upper()
    names = rng.sample(CHARACTERS, rng.choice((2, 3)))
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    if rng.random() < 0.5:
        return f"Write {listed} in capital letters.", " ".join(n.upper() for n in names)
    return (
        rng.choice(
            (
                f"List {listed} in capital letters, with commas.",
                f"Write the names {listed} in capitals, separated by commas.",
            )
        ),
        ", ".join(n.upper() for n in names),
    )


def _who_was_in_it(cast: list[str]) -> tuple[str, str]:
    """A follow-up that copies names from an earlier turn."""
    return ("Who was in that story? Write their names in capital letters.", ", ".join(n.upper() for n in cast))


def _repeat(rng: random.Random) -> tuple[str, str]:
    cast, place = random_cast(rng), rng.choice(SETTINGS)
    said = f"The {' and the '.join(cast)} went to the {place}."
    return f"Please repeat this sentence: {said}", said


# --- questions and answers -------------------------------------------------------------------------


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    op = rng.choice(("plus", "minus", "times"))
    a, b = (rng.randint(0, 10), rng.randint(0, 10)) if op == "times" else (rng.randint(0, 20), rng.randint(0, 20))
    if op == "minus":
        a, b = max(a, b), min(a, b)  # no negative numbers for kids
    result = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    symbol = {"plus": "+", "minus": "-", "times": "x"}[op]
    if rng.random() < 0.3:
        return f"What is {a} {symbol} {b}?", f"{a} {symbol} {b} = {result}."
    return rng.choice((f"What is {a} {op} {b}?", f"How much is {a} {op} {b}?")), f"{a} {op} {b} is {result}."


def _animal_fact(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        animal = rng.choice(list(FOODS))
        if rng.random() < 0.5:
            return f"What do {plural(animal)} eat?", f"{capitalise(plural(animal))} eat {FOODS[animal]}."
        return f"What does {article(animal)} eat?", f"{capitalise(article(animal))} eats {FOODS[animal]}."
    if kind == 1:
        animal = rng.choice(list(HOMES))
        if rng.random() < 0.5:
            return f"Where do {plural(animal)} live?", f"{capitalise(plural(animal))} live {HOMES[animal]}."
        return f"Where does {article(animal)} live?", f"{capitalise(article(animal))} lives {HOMES[animal]}."
    if kind == 2:
        animal = rng.choice(list(SOUNDS))
        return f"What sound does {article(animal)} make?", f"{capitalise(article(animal))} says {SOUNDS[animal]}."
    animal = rng.choice(list(LEGS))
    return f"How many legs does {article(animal)} have?", f"{capitalise(article(animal))} has {LEGS[animal]} legs."


def _word_fact(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(CHARACTERS + [s for s in SETTINGS if " " not in s])
    kind = rng.randrange(3)
    if kind == 0:
        return f"How many letters are in the word {word}?", f"The word {word} has {len(word)} letters."
    if kind == 1:
        return f"How do you spell {word}?", f"{capitalise(word)} is spelled {'-'.join(word)}."
    return f"What letter does {word} start with?", f"{capitalise(word)} starts with the letter {word[0]}."


def _describe(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        place = rng.choice(SETTINGS)
        return f"Describe {article(place)}.", PLACES[place]
    who = rng.choice(CHARACTERS)
    traits = CHARACTER_TRAITS[who]
    kind = "person" if who in PEOPLE else CREATURES.get(who, "animal")
    can = re.sub(r"\bmy\b", "its" if kind == "animal" else "their", traits.can)
    pronoun = "They" if who in PEOPLE else "It"
    return f"Describe {article(who)}.", (
        f"{capitalise(article(who))} is {article(kind)}. This one is {traits.adjective} "
        f"and loves {traits.likes}. {pronoun} can {can}."
    )


# The words an adapter will need (upper-case names, TITLE, SCENE, ...) without the play format itself:
# a base that has never seen a token has a near-zero embedding row for it, and a frozen tied embedding
# would then make that token almost impossible for a LoRA adapter to produce.
PLAY_WORDS = ["title", "cast", "setting", "scene", "the end"]
THEATRE_FACTS = {
    "What is a play?": "A play is a story that actors act out on a stage for an audience.",
    "What is a scene?": "A scene is one part of a play. A new scene often starts in a new place or time.",
    "What is a cast?": "The cast is the group of actors who are in a play or a film.",
    "What is a stage direction?": "A stage direction tells the actors what to do, for example where to walk.",
    "What does the end mean?": "It means the story is over.",
    "What is a title?": "A title is the name of a book, a song, a film or a play.",
}


def _qa(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(11)
    if kind == 9:
        return _capitals(rng)
    if kind == 10:
        question = rng.choice(list(THEATRE_FACTS))
        return question, THEATRE_FACTS[question]
    if kind == 0:
        return _arithmetic(rng)
    if kind in (1, 2):
        return _animal_fact(rng)
    if kind == 3:
        thing = rng.choice(list(COLOURS))
        return f"What colour is {thing}?", f"{capitalise(thing)} is {COLOURS[thing]}."
    if kind == 4:
        country = rng.choice(list(CAPITALS))
        ask = rng.choice((f"What is the capital of {country}?", f"Which city is the capital of {country}?"))
        return ask, f"The capital of {country} is {CAPITALS[country]}."
    if kind == 5:
        word = rng.choice(list(OPPOSITES))
        return f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."
    if kind == 6:
        return _word_fact(rng)
    if kind == 7:
        group = rng.choice(list(GROUPS))
        items = rng.sample(GROUPS[group], 3)
        listed = f"{items[0]}, {items[1]} and {items[2]}"
        return f"Name three {group}.", rng.choice(
            (f"Here are three {group}: {listed}.", f"Three {group} are {listed}.")
        )
    return _describe(rng)


SMALL_TALK = {
    "Hello!": [
        "Hello! How can I help you today?",
        "Hello! What would you like to talk about?",
        "Hello there! It is nice to meet you.",
    ],
    "Hi!": ["Hi! How can I help you?", "Hi there! What shall we talk about?"],
    "Good morning!": ["Good morning! I hope you have a lovely day."],
    "How are you?": ["I am doing well, thank you for asking.", "I am fine, thank you! How are you?"],
    "What can you do?": ["I can answer questions, tell short stories and help with simple sums."],
    "Can you help me?": ["Of course. What do you need?", "Yes, I would be happy to help."],
    "I am sad.": ["I am sorry you feel sad. Would you like to hear a happy story?"],
    "Tell me a joke.": [
        "Why did the cat sit on the computer? To keep an eye on the mouse!",
        "What do you call a sleeping dinosaur? A dino-snore!",
    ],
    "Goodbye!": ["Goodbye! Have a wonderful day."],
    "Good night.": ["Good night! Sleep well."],
}
THANKS = ("Thank you!", ["You are welcome!", "You are welcome! I am happy to help."])


# --- the corpus ------------------------------------------------------------------------------------


def _exchanges(rng: random.Random) -> list[tuple[str, str]]:
    """One topic: a story (maybe followed by "another one" or "who was in it?"), a copying drill, a
    question (maybe followed by thanks), or small talk."""
    kind = rng.random()
    if kind < 0.35:
        ask, answer, cast = story_request(rng) if rng.random() < 0.6 else _parts_story(rng)
        out = [(ask, answer)]
        follow = rng.random()
        if follow < 0.2:  # a follow-up that needs the first turn: same character, new place
            out.append((f"Tell me another story about the {cast[0]}.", story(rng, cast[0], rng.choice(SETTINGS))))
        elif follow < 0.45:
            out.append(_who_was_in_it(cast))
        return out
    if kind < 0.5:
        return [_capitals(rng) if rng.random() < 0.7 else _repeat(rng)]
    if kind < 0.9:
        out = [_qa(rng)]
        if rng.random() < 0.15:
            out.append((THANKS[0], rng.choice(THANKS[1])))
        return out
    user = rng.choice(list(SMALL_TALK))
    return [(user, rng.choice(SMALL_TALK[user]))]


def chat_samples(n: int, seed: int = 0) -> list[list[dict]]:
    """`n` chats in Apple's message format: an optional system turn (half of them), then 1-3 topics."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.5 else []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            for user, reply in _exchanges(rng):
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        out.append(messages)
    return out


# --- JSON drills -----------------------------------------------------------------------------------
# Apps ask for structured output (guided generation), and a tokenizer that never saw JSON spends an
# untrained byte piece on every brace and quote. These teach JSON's punctuation and shapes on the
# corpus's own facts; none of them has the play outline's fields, which stay the adapter's to learn.

JSON_ASKS = ["Give me {what} as JSON.", "Answer in JSON: {what}.", "Write {what} as a JSON object."]


def _json_exchange(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        animal = rng.choice([a for a in FOODS if a in HOMES])
        record = {"animal": animal, "eats": FOODS[animal], "home": HOMES[animal]}
        if animal in LEGS:
            record["legs"] = LEGS[animal]
        what = f"the facts about {article(animal)}"
    elif kind == 1:
        country = rng.choice(list(CAPITALS))
        record, what = {"country": country, "capital": CAPITALS[country]}, f"the capital of {country}"
    else:
        group = rng.choice(list(GROUPS))
        items = rng.sample(GROUPS[group], rng.randint(2, 4))
        record, what = {"group": group, "names": items, "count": len(items)}, f"{len(items)} {group}"
    compact = rng.random() < 0.5
    text = json.dumps(record, separators=(",", ":") if compact else None)
    return rng.choice(JSON_ASKS).format(what=what), text


def json_chats(n: int, seed: int = 0) -> list[list[dict]]:
    """`n` one-turn chats whose answer is a JSON object built from the corpus's facts."""
    rng = random.Random(f"fmlab.corpus.json:{seed}")
    return [
        [{"role": "user", "content": ask}, {"role": "assistant", "content": reply}]
        for ask, reply in (_json_exchange(rng) for _ in range(n))
    ]


def _fact_paragraph(rng: random.Random) -> str:
    animal = rng.choice([a for a in FOODS if a in HOMES or a in SOUNDS])
    facts = [f"{capitalise(plural(animal))} eat {FOODS[animal]}."]
    if animal in HOMES:
        facts.append(f"{capitalise(article(animal))} lives {HOMES[animal]}.")
    if animal in SOUNDS:
        facts.append(f"{capitalise(article(animal))} says {SOUNDS[animal]}.")
    if animal in LEGS:
        facts.append(f"It has {LEGS[animal]} legs.")
    return " ".join(rng.sample(facts, len(facts)))


def plain_texts(n: int, seed: int = 0) -> list[str]:
    """`n` plain texts (no chat template): mostly stories, some paragraphs of animal or place facts."""
    rng, out = random.Random(f"fmlab.corpus.plain:{seed}"), []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.7:
            out.append(story(rng, rng.choice(CHARACTERS), rng.choice(SETTINGS)))
        elif kind < 0.85:
            out.append(_fact_paragraph(rng))
        else:
            out.append(" ".join(PLACES[p] for p in rng.sample(SETTINGS, 2)))
    return out


def tokenizer_texts(seed: int = 0, chats: int = 6000, texts: int = 1500) -> Iterator[str]:
    """Text to train the tokenizer on: chat-rendered corpus chats (so "▁assistant" and the template's
    words become single pieces), plain texts, and the play train split (so play words tokenise well)."""

    yield from (render_text(m) for m in chat_samples(chats, seed))
    yield from plain_texts(texts, seed)
    yield from (render_text(m) for m in split_samples(seed)["train"])


def probe_prompts() -> list[tuple[list[dict], list[str]]]:
    """Fixed chat prompts, each with words a coherent answer must contain (any case): the corpus answers
    every one of them this way, so a base pretrained on it should too."""
    probes = [
        ("What do cows eat?", ["grass"]),
        ("Where does a bear live?", ["cave"]),
        ("What is the capital of France?", ["Paris"]),
        ("What colour is the sky?", ["blue"]),
        ("What is the opposite of hot?", ["cold"]),
        ("Name three fruits.", ["fruits"]),
        ("Tell me a short story about a fox in a forest.", ["fox", "forest"]),
        ("Hello!", ["Hello"]),
    ]
    return [([{"role": "user", "content": text}], words) for text, words in probes]
