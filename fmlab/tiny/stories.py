"""The prose of fmlab-tiny's pretraining corpus (`fmlab.tiny.corpus`): the word helpers it writes with
(plurals, capitals, "in a forest") and short stories on request about the play set's characters and
places (`fmlab.tiny.play_text`), each naming everyone the request names.
"""

from __future__ import annotations

import random

from fmlab.tiny.play_text import CHARACTERS, SETTING_TRAITS, SETTINGS, article, join_names

_IRREGULAR = {"mouse": "mice", "sheep": "sheep", "fish": "fish", "person": "people"}


def plural(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word[:-1] + "ies" if word.endswith("y") and word[-2] not in "aeiou" else word + "s"


def capitalise(text: str) -> str:
    """The text with its first letter upper-case (the rest as it is)."""
    return text[0].upper() + text[1:]


def at_place(place: str) -> str:
    """ "in a forest", "on a beach", "at a train station"."""
    return f"{SETTING_TRAITS[place].preposition} {article(place)}"


# --- stories ---------------------------------------------------------------------------------------

ADJECTIVES = ["brave", "tiny", "sleepy", "curious", "cheerful", "clever", "shy", "kind", "silly", "gentle"]
OPENINGS = [
    "Once upon a time, there was {a_adj} {who} who lived {at_place}.",
    "{A_adj} {who} liked to visit {a_place}.",
    "Every day, {a_adj} {who} played {at_place}.",
    "There was once {a_adj} {who} who loved {the_place} very much.",
]
EVENTS = [
    "found a shiny key",
    "lost a red ball",
    "heard a strange song",
    "saw a rainbow",
    "met a new friend",
    "wanted to bake a cake",
    "built a little boat",
    "planted a seed",
    "followed a butterfly",
    "got very hungry",
    "found a tiny map",
]
# In story order: `story` keeps the order of the ones it picks.
SOLO_MIDDLES = [
    "The {who} looked all around the {place}.",
    "The {who} walked past the {things}.",
    "The {who} felt a little scared, but kept going.",
    "The {who} sang a happy song.",
]
FRIEND_MIDDLES = [
    "The {other} wanted to help.",
    "Together they looked behind the {things}.",
    "The {who} and the {other} laughed a lot.",
]
SOLO_ENDINGS = [
    "In the end, the {who} went home happy.",
    "It was the best day ever {at_the_place}.",
    "Then the {who} had a long, cozy nap.",
]
FRIEND_ENDINGS = [
    "From that day on, the {who} and the {other} were friends.",
    "In the end, the {who} and the {other} went home happy.",
]


def story(rng: random.Random, who: str, place: str, friends: list[str] | None = None) -> str:
    """A 3-6 sentence prose story that names `who` and `place` (and every one of `friends`, if given)."""
    if friends is None:
        friends = [rng.choice([c for c in CHARACTERS if c != who])] if rng.random() < 0.5 else []
    other = " and the ".join(friends) if friends else rng.choice([c for c in CHARACTERS if c != who])
    a_adj = article(rng.choice(ADJECTIVES))
    slots = {
        "who": who,
        "a_adj": a_adj,
        "A_adj": capitalise(a_adj),
        "place": place,
        "at_place": at_place(place),
        "a_place": article(place),
        "the_place": "the " + place,
        "things": SETTING_TRAITS[place].things,
        "other": other,
        "a_other": join_names(tuple(friends)) if friends else "",
        "at_the_place": f"{SETTING_TRAITS[place].preposition} the {place}",
    }
    sentences = [rng.choice(OPENINGS), f"One day, the {{who}} {rng.choice(EVENTS)}."]
    if friends:  # friends join: introduced before anything else says "the {other}"
        sentences += [
            "Soon, the {who} met {a_other}.",
            *rng.sample(FRIEND_MIDDLES, rng.randint(0, 2)),
            rng.choice(FRIEND_ENDINGS + SOLO_ENDINGS),
        ]
    else:
        picked = sorted(rng.sample(range(len(SOLO_MIDDLES)), rng.randint(0, 3)))
        sentences += [*(SOLO_MIDDLES[i] for i in picked), rng.choice(SOLO_ENDINGS)]
    return " ".join(s.format(**slots) for s in sentences)


STORY_REQUESTS = [
    "Tell me a short story about {a_who} {at_place}.",
    "Write a story about {a_who} {at_place}.",
    "Can you tell me a bedtime story about {a_who}? It should happen {at_place}.",
    "I would like a short story with {a_who} {at_place}.",
]


def random_cast(rng: random.Random) -> list[str]:
    """1-3 characters, as a request names them."""
    return rng.sample(CHARACTERS, rng.choice((1, 1, 2, 2, 3)))


def story_request(rng: random.Random) -> tuple[str, str, list[str]]:
    """(request, story, cast): a user asking for a story about 1-3 characters in a place, and the story."""
    cast, place = random_cast(rng), rng.choice(SETTINGS)
    ask = rng.choice(STORY_REQUESTS).format(a_who=join_names(tuple(cast)), at_place=at_place(place))
    return ask, story(rng, cast[0], place, cast[1:]), cast
