"""fmlab's synthetic pretraining corpus for the embedded base: short stories, Apple-template chats
(Q&A from small fact tables, arithmetic, small talk, descriptions, lists) and plain stories.

The base learns to chat coherently from it, with the same characters and places as the play set, but
never sees the play format: that is what the adapter must teach (see `plays.py`).
"""
from __future__ import annotations

import random

from .plays import CHARACTERS, SETTINGS, _article

FOODS = {"cow": "grass", "cat": "fish", "dog": "meat", "rabbit": "carrots", "bear": "honey", "mouse": "cheese",
         "monkey": "bananas", "panda": "bamboo", "bee": "nectar", "owl": "mice", "fox": "berries", "goat": "hay",
         "duck": "bread", "frog": "flies", "lion": "meat", "penguin": "fish", "squirrel": "nuts",
         "elephant": "leaves", "turtle": "plants", "whale": "krill"}
HOMES = {"owl": "a tree", "fox": "a den", "bear": "a cave", "rabbit": "a burrow", "bee": "a hive", "fish": "the sea",
         "penguin": "the ice", "whale": "the ocean", "frog": "a pond", "squirrel": "a tree", "lion": "the savanna",
         "cow": "a farm", "duck": "a pond", "mouse": "a hole", "monkey": "the jungle"}
COLOURS = {"grass": "green", "the sky": "blue", "snow": "white", "a banana": "yellow", "a strawberry": "red",
           "coal": "black", "an orange": "orange", "a plum": "purple", "the sun": "yellow", "a leaf": "green",
           "milk": "white", "chocolate": "brown"}
CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
            "Egypt": "Cairo", "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
            "Greece": "Athens", "India": "New Delhi"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "up": "down", "day": "night",
             "open": "closed", "light": "dark", "loud": "quiet", "old": "new", "wet": "dry", "early": "late"}
GROUPS = {"fruits": ["apples", "pears", "bananas", "grapes", "plums", "cherries"],
          "colours": ["red", "blue", "green", "yellow", "purple", "orange"],
          "animals": ["cats", "dogs", "owls", "foxes", "bears", "frogs"],
          "vegetables": ["carrots", "peas", "beans", "potatoes", "onions", "leeks"],
          "things in a kitchen": ["a pot", "a spoon", "a cup", "a plate", "a kettle", "a bowl"]}
SYSTEMS = ["A conversation between a user and a helpful assistant.", "You are a friendly assistant for kids.",
           "You answer questions simply and correctly."]
ADJECTIVES = ["brave", "tiny", "sleepy", "curious", "cheerful", "clever", "shy", "kind", "silly", "gentle"]
EVENTS = ["found a shiny key", "lost a red ball", "heard a strange song", "saw a rainbow", "met a new friend",
          "baked a warm pie", "built a little boat", "planted a seed", "followed a butterfly", "got very hungry"]
ENDINGS = ["In the end, everyone laughed and went home happy.", "From that day on, they were best friends.",
           "It was the best day of the year.", "Then it was time for a long, cozy nap.",
           "And the {s} was never boring again."]
PLACES_DESC = ["It is full of surprises.", "Many people like to visit it.", "It can be quiet or busy.",
               "Children love to play there."]


def story(rng: random.Random, who: str, where: str) -> str:
    """A 3-6 sentence prose story about `who` in `where`."""
    adj, other = rng.choice(ADJECTIVES), rng.choice([c for c in CHARACTERS if c != who])
    sentences = [f"Once upon a time, there was a {adj} {who} who lived near {_article(where)}.",
                 f"One day, the {who} {rng.choice(EVENTS)}.",
                 f"The {who} asked a {other} for help.",
                 f"Together they looked all around the {where}."]
    if rng.random() < 0.5:
        sentences.append(f"The {other} said it was a wonderful idea.")
    sentences.append(rng.choice(ENDINGS).format(s=where))
    return " ".join(sentences)


def _qa(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(9)
    if kind == 0:
        animal = rng.choice(list(FOODS))
        return rng.choice([f"What do {animal}s eat?", f"What does a {animal} eat?"]), \
            f"A {animal} eats {FOODS[animal]}."
    if kind == 1:
        animal = rng.choice(list(HOMES))
        return f"Where does a {animal} live?", f"A {animal} lives in {HOMES[animal]}."
    if kind == 2:
        thing = rng.choice(list(COLOURS))
        return f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {COLOURS[thing]}."
    if kind == 3:
        country = rng.choice(list(CAPITALS))
        return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."
    if kind == 4:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        if rng.random() < 0.5:
            return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."
    if kind == 5:
        word = rng.choice(list(OPPOSITES))
        return f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."
    if kind == 6:
        word = rng.choice(CHARACTERS + SETTINGS[:10])
        word = word.split()[0]
        return f"How many letters are in the word {word}?", f"The word {word} has {len(word)} letters."
    if kind == 7:
        group = rng.choice(list(GROUPS))
        items = rng.sample(GROUPS[group], 3)
        return f"Name three {group}.", f"Here are three {group}: {items[0]}, {items[1]} and {items[2]}."
    place = rng.choice(SETTINGS)
    return f"Describe {_article(place)}.", \
        f"{_article(place).capitalize()} is a place where {rng.choice(CHARACTERS)}s might go. " \
        f"{rng.choice(PLACES_DESC)}"


def _small_talk(rng: random.Random) -> tuple[str, str]:
    return rng.choice([("Hello!", "Hello! How can I help you today?"),
                       ("Hi there.", "Hi! What would you like to talk about?"),
                       ("How are you?", "I am doing well, thank you for asking."),
                       ("Thank you!", "You are welcome!"),
                       ("Good night.", "Good night! Sleep well."),
                       ("Can you help me?", "Of course. What do you need?")])


def _story_request(rng: random.Random) -> tuple[str, str]:
    who, where = rng.choice(CHARACTERS), rng.choice(SETTINGS)
    ask = rng.choice(["Tell me a short story about {a} in {s}.", "Write a story about {a} at {s}.",
                      "Can you tell me a story with {a} and {s}?"])
    return ask.format(a=_article(who), s=_article(where)), story(rng, who, where)


def chat_samples(n: int, seed: int = 0) -> list[list[dict]]:
    """`n` chats (optional system turn; 1-3 user/assistant exchanges)."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] if rng.random() < 0.5 else []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            kind = rng.random()
            user, reply = (_story_request(rng) if kind < 0.35 else _small_talk(rng) if kind < 0.45 else _qa(rng))
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        out.append(messages)
    return out


def plain_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed + 7919)
    return [story(rng, rng.choice(CHARACTERS), rng.choice(SETTINGS)) for _ in range(n)]


def probe_prompts() -> list[tuple[list[dict], list[str]]]:
    """Fixed chat prompts and words a coherent answer must contain."""
    return [([{"role": "user", "content": "What do rabbits eat?"}], ["carrots"]),
            ([{"role": "user", "content": "What is the capital of France?"}], ["Paris"]),
            ([{"role": "user", "content": "What colour is the sky?"}], ["blue"]),
            ([{"role": "user", "content": "What is the opposite of hot?"}], ["cold"]),
            ([{"role": "user", "content": "Tell me a short story about a fox in a forest."}], ["fox", "forest"]),
            ([{"role": "user", "content": "Where does a bear live?"}], ["cave"]),
            ([{"role": "user", "content": "Name three fruits."}], ["fruits"]),
            ([{"role": "user", "content": "Hello!"}], ["Hello"])]


def tokenizer_texts(seed: int = 0, chats: int = 6000, stories: int = 1500) -> list[str]:
    """Chat-rendered text (so "▁assistant" etc. become single pieces), stories, and the play train split."""
    from .chat import render_text
    from .plays import generate_samples

    texts = [render_text(m) for m in chat_samples(chats, seed)]
    texts += plain_texts(stories, seed)
    texts += [render_text(m) for m in generate_samples(1500, seed)]
    return texts
